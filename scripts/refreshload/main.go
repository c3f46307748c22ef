// Command refreshload measures the service's refresh: it signs up and logs in u users, then for d
// runs one client per user, each refreshing its own session's chain as fast as answers come (send
// the refresh token, take the next one from the answer, repeat), and prints refreshes per second
// and the p50 and p99 latencies. scripts/refreshcompare.sh runs it against two builds in turn.
//
// The accounts are reused across runs against one service (a taken address is logged into), so
// that only the first run pays for the sign-ups; every run logs in afresh. The service must let
// one client sign up u accounts (SIGNUP_MAX_PER_CLIENT=0 or at least u) and keep refresh tokens
// alive for the run (REFRESH_TOKEN_TTL above d). Loopback addresses only. A refresh answered 503
// is retried with the same token, as a client would, and counted; any other failure ends its
// user's chain and makes the command exit non-zero.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strconv"
	"sync"
	"time"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "refreshload:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("refreshload", flag.ContinueOnError)
	base := fs.String("url", "http://127.0.0.1:7878", "the service's base URL")
	users := fs.Int("u", 32, "users, each refreshing its own session")
	dur := fs.Duration("d", 10*time.Second, "how long to refresh")
	warmup := fs.Duration("warmup", time.Second, "refreshing before the measured time, not counted")
	prefix := fs.String("prefix", "refreshload", "the accounts' addresses are <prefix>-<i>@example.com")
	if err := fs.Parse(args); err != nil {
		return err
	}
	u, err := url.Parse(*base)
	if err != nil || u.Scheme != "http" || u.Hostname() != "127.0.0.1" {
		return errors.New("-url: want http://127.0.0.1:PORT")
	}
	if *users < 1 || *dur <= 0 {
		return errors.New("-u and -d must be positive")
	}
	c := &client{
		base: *base,
		http: &http.Client{
			Timeout:   30 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: *users, MaxConnsPerHost: *users},
		},
	}

	// Two at a time: sign-ups and logins hash a password, and the service serves few hashes at once.
	tokens := make([]string, *users)
	errs := make([]error, *users)
	sem := make(chan struct{}, 2)
	var wg sync.WaitGroup
	for i := range *users {
		wg.Go(func() {
			sem <- struct{}{}
			defer func() { <-sem }()
			tokens[i], errs[i] = c.logIn(fmt.Sprintf("%s-%d@example.com", *prefix, i))
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}

	var (
		mu          sync.Mutex
		latencies   []time.Duration
		failures    = map[string]int{}
		unavailable int
	)
	start := time.Now()
	from, until := start.Add(*warmup), start.Add(*warmup+*dur)
	for i := range *users {
		wg.Go(func() {
			var mine []time.Duration
			fails, retried := map[string]int{}, 0
			tok := tokens[i]
			t0 := time.Now()
			for t0.Before(until) {
				next, wait, err := c.refresh(tok)
				if wait > 0 {
					// 503: the service could not reach its database in time. A client retries
					// the same token after Retry-After and gets its successor; the refresh's
					// latency runs from its first try.
					retried++
					time.Sleep(min(wait, time.Until(until)))
					continue
				}
				if err != nil {
					fails[err.Error()]++
					break // the chain is lost with its token
				}
				tok = next
				if !t0.Before(from) {
					mine = append(mine, time.Since(t0))
				}
				t0 = time.Now()
			}
			mu.Lock()
			defer mu.Unlock()
			latencies = append(latencies, mine...)
			unavailable += retried
			for k, n := range fails {
				failures[k] += n
			}
		})
	}
	wg.Wait()

	slices.Sort(latencies)
	pct := func(p float64) float64 {
		if len(latencies) == 0 {
			return 0
		}
		return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
	}
	rate := float64(len(latencies)) / dur.Seconds()
	failed := 0
	for _, n := range failures {
		failed += n
	}
	// One line a script can read: the rate, p50 and p99 in milliseconds, then the counts.
	fmt.Fprintf(stdout, "refreshes/s %.1f p50_ms %.2f p99_ms %.2f ok %d failed %d retried_503 %d users %d secs %g\n",
		rate, pct(0.50), pct(0.99), len(latencies), failed, unavailable, *users, dur.Seconds())
	if failed > 0 {
		for msg, n := range failures {
			fmt.Fprintf(stdout, "  failed (%s): %d\n", msg, n)
		}
		return fmt.Errorf("%d refreshes failed", failed)
	}
	return nil
}

type client struct {
	base string
	http *http.Client
}

// logIn signs the account up (an address already taken by an earlier run is fine) and logs it
// in, returning its refresh token.
func (c *client) logIn(email string) (string, error) {
	body := fmt.Sprintf(`{"email":%q,"password":"refresh-load-password"}`, email)
	code, ans, err := c.post("/auth/signup", body, nil)
	if err != nil {
		return "", err
	}
	if code != http.StatusCreated && !(code == http.StatusConflict && ans.Error == "email_taken") {
		return "", fmt.Errorf("sign-up of %s: %d %s", email, code, ans.Error)
	}
	code, ans, err = c.post("/auth/login", body, nil)
	if err != nil {
		return "", err
	}
	if code != http.StatusOK || ans.RefreshToken == "" {
		return "", fmt.Errorf("login of %s: %d %s", email, code, ans.Error)
	}
	return ans.RefreshToken, nil
}

// refresh exchanges tok for its successor; on an answer of 503 it returns the answer's
// Retry-After (at least a second) instead.
func (c *client) refresh(tok string) (string, time.Duration, error) {
	code, ans, err := c.post("/auth/refresh", "", http.Header{"Authorization_refresh": {tok}})
	if err != nil {
		return "", 0, err
	}
	if code == http.StatusServiceUnavailable {
		return "", max(ans.retryAfter, time.Second), nil
	}
	if code != http.StatusOK || ans.RefreshToken == "" {
		return "", 0, fmt.Errorf("%d %s", code, ans.Error)
	}
	return ans.RefreshToken, 0, nil
}

type answer struct {
	RefreshToken string `json:"refresh_token"`
	Error        string `json:"error"`
	retryAfter   time.Duration
}

// post sends body to path and decodes the answer. An answer of 503 to a sign-up or a login (the
// service's hashing slots are full on a busy machine) is retried after its Retry-After, a few times.
func (c *client) post(path, body string, h http.Header) (int, answer, error) {
	for try := 0; ; try++ {
		req, err := http.NewRequestWithContext(context.Background(), "POST", c.base+path, bytes.NewBufferString(body))
		if err != nil {
			return 0, answer{}, err
		}
		for k, v := range h {
			req.Header[k] = v
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		res, err := c.http.Do(req)
		if err != nil {
			return 0, answer{}, err
		}
		var ans answer
		err = json.NewDecoder(res.Body).Decode(&ans)
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		secs, _ := strconv.Atoi(res.Header.Get("Retry-After"))
		ans.retryAfter = time.Duration(secs) * time.Second
		if res.StatusCode == http.StatusServiceUnavailable && path != "/auth/refresh" && try < 10 {
			time.Sleep(max(ans.retryAfter, time.Second))
			continue
		}
		if err != nil {
			return res.StatusCode, ans, fmt.Errorf("%s: %d, unreadable answer: %w", path, res.StatusCode, err)
		}
		return res.StatusCode, ans, nil
	}
}
