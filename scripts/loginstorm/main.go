// Command loginstorm sends n logins at the same instant, each on its own connection and, through
// X-Forwarded-For, from a client of its own (as a storm after an outage comes from many users), and
// counts the answers. Before the storm it times rounds of as many logins at once as the service
// has hashing slots, to know how many the slots can serve within its hashing wait: all slots at
// once, as in a storm, since hashes that share a machine's memory bandwidth run slower side by side
// than one alone (which is timed too, and printed). With -measure it does only that, and prints
// the round's time, so that the storm can hit another instance, freshly started, given -round.
//
// It exits non-zero unless every request got an answer of 200, 429 or 503, the slowest within
// wait plus a second, and at least 70% of that capacity succeeded.
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
	"slices"
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
	slots := fs.Int("slots", 2, "the service's HASH_CONCURRENCY")
	wait := fs.Duration("wait", 3*time.Second, "the service's HASH_WAIT")
	timeout := fs.Duration("timeout", 30*time.Second, "how long one login may take before it counts as a timeout")
	measure := fs.Bool("measure", false, "only time the rounds of logins, and print a round's time")
	given := fs.Duration("round", 0, "the time of a round of slots logins at once, measured before with -measure; then none is timed here")
	if err := fs.Parse(args); err != nil {
		return err
	}
	body := fmt.Sprintf(`{"email":%q,"password":%q}`, *email, *password)
	client := &http.Client{
		Timeout:   *timeout,
		Transport: &http.Transport{DisableKeepAlives: true, MaxConnsPerHost: 0},
	}
	// Clients from 198.18.0.0/15, the range set aside for benchmarks; the service must trust the
	// sender's X-Forwarded-For (TRUSTED_PROXIES=127.0.0.1).
	login := func(i int) (int, error) {
		req, err := http.NewRequest("POST", *url, strings.NewReader(body))
		if err != nil {
			return 0, err
		}
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-Forwarded-For", fmt.Sprintf("198.18.%d.%d", i/250, i%250+1))
		res, err := client.Do(req)
		if err != nil {
			return 0, err
		}
		defer res.Body.Close()
		_, err = io.Copy(io.Discard, res.Body)
		return res.StatusCode, err
	}

	// Rounds of slots logins at once, from clients the storm does not use: how long a turn of the
	// service's slots takes on this machine when all of them hash. And one login alone, to show.
	round, one := *given, time.Duration(0)
	if round == 0 {
		var rounds, alone []time.Duration
		next := *n
		for range 9 {
			t0 := time.Now()
			if err := loginsAtOnce(login, next, 1); err != nil {
				return err
			}
			alone = append(alone, time.Since(t0))
			next++
			t0 = time.Now()
			if err := loginsAtOnce(login, next, *slots); err != nil {
				return err
			}
			rounds = append(rounds, time.Since(t0))
			next += *slots
		}
		round, one = median(rounds), median(alone)
	}
	if *measure {
		fmt.Fprintln(stdout, round)
		return nil
	}
	capacity := int(time.Duration(*slots) * *wait / round)

	var (
		mu       sync.Mutex
		statuses = map[int]int{}
		failures = map[string]int{}
		slowest  time.Duration
		inTime   int // successes answered within wait
		times    = map[int][]time.Duration{}
		wg       sync.WaitGroup
	)
	start := make(chan struct{})
	for i := range *n {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			code, err := login(i)
			took := time.Since(t0)
			mu.Lock()
			defer mu.Unlock()
			slowest = max(slowest, took)
			switch {
			case err == nil:
				statuses[code]++
				times[code] = append(times[code], took)
				if code == 200 && took <= *wait {
					inTime++
				}
			case isTimeout(err):
				failures["timeout"]++
			default:
				failures[err.Error()]++
			}
		})
	}
	t0 := time.Now()
	close(start)
	wg.Wait()
	elapsed := time.Since(t0)

	if one > 0 {
		fmt.Fprintf(stdout, "one login alone: %s; %d at once: %s (medians of 9); %d slots can serve %d within %s\n",
			one.Round(100*time.Microsecond), *slots, round.Round(100*time.Microsecond), *slots, capacity, *wait)
	} else {
		fmt.Fprintf(stdout, "%d logins at once: %s (given); %d slots can serve %d within %s\n",
			*slots, round.Round(100*time.Microsecond), *slots, capacity, *wait)
	}
	fmt.Fprintf(stdout, "%d logins in %s (slowest %s)\n", *n, elapsed.Round(time.Millisecond), slowest.Round(time.Millisecond))
	codes := make([]int, 0, len(statuses))
	for c := range statuses {
		codes = append(codes, c)
	}
	sort.Ints(codes)
	var problems []string
	bad := 0
	for _, c := range codes {
		ts := times[c]
		slices.Sort(ts)
		fmt.Fprintf(stdout, "  %d: %d, answered after %s (first), %s (median), %s (last)\n", c, statuses[c],
			ts[0].Round(time.Millisecond), ts[len(ts)/2].Round(time.Millisecond), ts[len(ts)-1].Round(time.Millisecond))
		if c != 200 && c != 429 && c != 503 {
			bad += statuses[c]
		}
	}
	for msg, k := range failures {
		fmt.Fprintf(stdout, "  no answer (%s): %d\n", msg, k)
		bad += k
	}
	share := float64(statuses[200]) / float64(max(capacity, 1))
	fmt.Fprintf(stdout, "succeeded: %d (%d within %s), %.0f%% of what the slots can serve in time (goal 70%%)\n",
		statuses[200], inTime, *wait, 100*share)
	if bad > 0 {
		problems = append(problems, fmt.Sprintf("%d of %d logins got no answer or an unexpected one", bad, *n))
	}
	if slowest > *wait+time.Second {
		problems = append(problems, fmt.Sprintf("the slowest answer took %s, over %s", slowest.Round(time.Millisecond), *wait+time.Second))
	}
	if share < 0.7 {
		problems = append(problems, "fewer than 70% of the logins the slots can serve succeeded")
	}
	if len(problems) > 0 {
		return errors.New(strings.Join(problems, "; "))
	}
	return nil
}

// loginsAtOnce sends k logins at once, from clients first to first+k-1, and waits for all.
func loginsAtOnce(login func(int) (int, error), first, k int) error {
	errs := make([]error, k)
	var wg sync.WaitGroup
	for j := range k {
		wg.Go(func() {
			if code, err := login(first + j); err != nil || code != 200 {
				errs[j] = fmt.Errorf("a login before the storm: %d %v", code, err)
			}
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, context.DeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}
