// Command loginstorm sends n logins at the same instant, each on its own connection, and counts
// the answers. It exits non-zero unless every request got an answer of 200, 429 or 503.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sort"
	"strings"
	"sync"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "loginstorm:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("loginstorm", flag.ContinueOnError)
	url := fs.String("url", "http://127.0.0.1:7878/auth/login", "login endpoint")
	n := fs.Int("n", 400, "simultaneous logins")
	email := fs.String("email", "storm@example.com", "account to log in as")
	password := fs.String("password", "correct horse battery", "its password")
	timeout := fs.Duration("timeout", 30*time.Second, "how long one login may take before it counts as a timeout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body := fmt.Sprintf(`{"email":%q,"password":%q}`, *email, *password)
	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{DisableKeepAlives: true, MaxConnsPerHost: 0},
	}

	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		failures = map[string]int{}
		slowest  time.Duration
		wg       sync.WaitGroup
	)
	start := make(chan struct{})
	for range *n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			res, err := client.Post(*url, "application/json", strings.NewReader(body))
			if err == nil {
				_, err = io.Copy(io.Discard, res.Body)
				res.Body.Close()
			}
			took := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			switch {
			case err == nil:
				statuses[res.StatusCode]++
			case isTimeout(err):
				failures["timeout"]++
			default:
				failures[err.Error()]++
			}
		}()
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)

	fmt.Fprintf(stdout, "%d logins in %s (slowest %s)\n", *n, elapsed.Round(time.Millisecond), slowest.Round(time.Millisecond))
	codes := make([]int, 0, len(statuses))
	for c := range statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	bad := 0
	for _, c := range codes {
		fmt.Fprintf(stdout, "  %d: %d\n", c, statuses[c])
		if c != 200 && c != 429 && c != 503 {
			bad += statuses[c]
		}
	}
	for msg, k := range failures {
		fmt.Fprintf(stdout, "  no answer (%s): %d\n", msg, k)
		bad += k
	}
	if bad > 0 {
		return fmt.Errorf("%d of %d logins got no answer or an unexpected one", bad, *n)
	}
	return nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
