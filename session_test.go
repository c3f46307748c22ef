package main

import (
	"context"
	"fmt"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// claimsOf reads a token's claims as /auth/verify reports them.
func (e *testEnv) claimsOf(tb testing.TB, token string) map[string]any {
	tb.Helper()
	r := e.do(tb, "POST", "/auth/verify", map[string]string{"token": token}).want(tb, 200, "")
	c, _ := r.body["claims"].(map[string]any)
	return c
}

// refreshAll presents one refresh token n times at once, spread over the given instances.
func refreshAll(tb testing.TB, token string, n int, envs ...*testEnv) []response {
	tb.Helper()
	out := make([]response, n)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			out[i] = envs[i%len(envs)].refresh(tb, token)
		}()
	}
	close(start)
	wg.Wait()
	return out
}

func TestEndedSessionsStayEnded(t *testing.T) {
	t.Parallel()

	// A rolling deploy that shortens the token lifetimes: the instance that logs the session out
	// issues shorter tokens than the one that issued the session's.
	t.Run("whatever token lifetimes the other instances have", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t)
		short := newTestEnvOn(t, db, func(c *config) { c.accessTTL, c.refreshTTL = time.Minute, time.Minute })
		long := newTestEnvOn(t, db, func(c *config) { c.accessTTL, c.refreshTTL = 10*time.Minute, 10*time.Minute })
		_, access, refresh := long.user(t)
		short.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+access).want(t, 200, "")
		for _, e := range []*testEnv{short, long} {
			e.clock.Advance(3 * time.Minute) // past the short instance's lifetimes, within the long one's
			if err := e.deps.revocations.sync(t.Context()); err != nil {
				t.Fatal(err)
			}
			e.deps.revocations.forgetExpired()
			if err := e.store.Purge(t.Context(), e.clock.Now()); err != nil {
				t.Fatal(err)
			}
		}
		for _, e := range []*testEnv{short, long} {
			e.page(t, access).want(t, 401, "token_revoked")
			e.refresh(t, refresh).want(t, 401, "token_revoked")
		}
		newTestEnvOn(t, db, func(c *config) {}).page(t, access).want(t, 401, "token_revoked")
	})

	t.Run("after SESSION_MAX_AGE however often it is refreshed", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, func(c *config) { c.sessionMaxAge = 7 * time.Minute })
		_, _, refresh := e.user(t)
		e.clock.Advance(4 * time.Minute)
		r := e.refresh(t, refresh).want(t, 200, "")
		if left, _ := r.body["refresh_expires_in"].(float64); left > 180 {
			t.Fatalf("refresh_expires_in %v: the refresh token outlives the session's 7 minutes", left)
		}
		e.clock.Advance(3*time.Minute + time.Second) // past the end, within the leeway
		e.refresh(t, r.str("refresh_token")).want(t, 401, "session_expired")
		e.clock.Advance(e.cfg.leeway)
		e.refresh(t, r.str("refresh_token")).want(t, 401, "token_expired")
	})
}

// A refresh token signed before refresh tokens carried their session's end (sxp) learns it from
// the session's record: it is exchanged, its successor carries the end, and past the end such a
// token is refused as an expired session.
func TestARefreshTokenWithoutItsSessionsEndLearnsItFromTheSessionsRecord(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.sessionMaxAge = 7 * time.Minute })
	withoutEnd := func(tb testing.TB, token string) string {
		tb.Helper()
		c := jwtPart(tb, token, 1)
		delete(c, "sxp")
		return forge(tb, jwt.SigningMethodHS256, e.secret, jwt.MapClaims(c), map[string]any{"kid": hmacKID(e.secret)})
	}
	_, _, refresh := e.user(t)
	end := jwtPart(t, refresh, 1)["sxp"]
	e.clock.Advance(4 * time.Minute) // so that the successor lives until the session's end
	next := e.refresh(t, withoutEnd(t, refresh)).want(t, 200, "").str("refresh_token")
	if got := jwtPart(t, next, 1)["sxp"]; got != end {
		t.Fatalf("the successor says the session ends at %v, want %v", got, end)
	}
	e.clock.Advance(3*time.Minute + time.Second) // past the end, within the leeway
	e.refresh(t, withoutEnd(t, next)).want(t, 401, "session_expired")
}

// The README and the metrics' help promise 15 s by default: REFRESH_REUSE_INTERVAL's 10 s after
// the first use's answer was due, which the database timeout's 5 s bounds.
func TestTheReuseWindowIsTheIntervalPlusTheDatabaseTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if e.cfg.reuseInterval != 10*time.Second || e.cfg.dbWait != 5*time.Second {
		t.Fatalf("defaults %v and %v, want 10s and 5s", e.cfg.reuseInterval, e.cfg.dbWait)
	}
	_, _, refresh := e.user(t)
	next := e.refresh(t, refresh).want(t, 200, "").str("refresh_token")
	e.clock.Advance(14 * time.Second)
	if again := e.refresh(t, refresh).want(t, 200, "").str("refresh_token"); again != next {
		t.Fatal("at 14 s the retired token did not get its successor")
	}
	e.clock.Advance(2 * time.Second)
	e.refresh(t, refresh).want(t, 401, "token_reused")
}

func TestRefreshRotation(t *testing.T) {
	t.Parallel()

	t.Run("a retired token presented again within the reuse interval continues the same session", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		_, _, refresh := e.user(t)
		first := e.refresh(t, refresh).want(t, 200, "")
		e.clock.Advance(9 * time.Second)
		second := e.refresh(t, refresh).want(t, 200, "")
		if e.claimsOf(t, first.str("access_token"))["sid"] != e.claimsOf(t, second.str("access_token"))["sid"] {
			t.Fatal("the second refresh started another session")
		}
		if first.str("refresh_token") != second.str("refresh_token") {
			t.Fatal("the second refresh forked the session: it got a refresh token of its own")
		}
		e.page(t, first.str("access_token")).want(t, 200, "")
		e.page(t, second.str("access_token")).want(t, 200, "")
	})

	t.Run("a retired token presented after the reuse interval ends the whole session", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		email, access, refresh := e.user(t)
		otherAccess, _ := e.login(t, email, "correct horse battery")
		rotated := e.refresh(t, refresh).want(t, 200, "")
		e.clock.Advance(e.reuseWindow())

		r := e.refresh(t, refresh).want(t, 401, "token_reused")
		if r.header.Get("WWW-Authenticate") == "" {
			t.Fatal("401 without WWW-Authenticate")
		}
		e.page(t, access).want(t, 401, "token_reused")
		e.page(t, rotated.str("access_token")).want(t, 401, "token_reused")
		// Refresh says why the session ended, to the user's client as to the thief's.
		e.refresh(t, rotated.str("refresh_token")).want(t, 401, "token_reused")
		e.page(t, otherAccess).want(t, 200, "")
	})

	t.Run("eight simultaneous refreshes with one token all get the same successor and one logout ends them all", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		_, _, refresh := e.user(t)
		results := witnesses(t, refreshAll(t, refresh, 8, e))
		for _, r := range results {
			r.want(t, 200, "")
			e.page(t, r.str("access_token")).want(t, 200, "")
			if r.str("refresh_token") != results[0].str("refresh_token") {
				t.Fatalf("two different successors: the session forked")
			}
		}
		for _, r := range witnesses(t, refreshAll(t, results[0].str("refresh_token"), 8, e)) {
			r.want(t, 200, "")
		}
		e.do(t, "POST", "/auth/logout", nil, "authorization_access", results[len(results)-1].str("access_token")).want(t, 200, "")
		for _, r := range results {
			e.page(t, r.str("access_token")).want(t, 401, "token_revoked")
		}
	})

	t.Run("simultaneous refreshes across two instances all get the same successor", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t)
		_, _, refresh := a.user(t)
		results := witnesses(t, refreshAll(t, refresh, 8, a, b))
		for _, r := range results {
			r.want(t, 200, "")
			if r.str("refresh_token") != results[0].str("refresh_token") {
				t.Fatalf("two different successors: the session forked")
			}
		}
	})

	// A thief replaying a stolen token within the interval gets the user's own successor, not a
	// chain of their own: whichever of the two uses it second, past the interval, ends it all.
	t.Run("a replay within the interval joins the one chain and the later use of it ends the session", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		_, _, stolen := e.user(t)
		user := e.refresh(t, stolen).want(t, 200, "")
		e.clock.Advance(2 * time.Second)
		thief := e.refresh(t, stolen).want(t, 200, "")
		if thief.str("refresh_token") != user.str("refresh_token") {
			t.Fatal("the replay started a chain of its own")
		}
		userNext := e.refresh(t, user.str("refresh_token")).want(t, 200, "")
		e.clock.Advance(e.reuseWindow())
		e.refresh(t, thief.str("refresh_token")).want(t, 401, "token_reused")
		e.page(t, userNext.str("access_token")).want(t, 401, "token_reused")
		e.page(t, thief.str("access_token")).want(t, 401, "token_reused")
		e.refresh(t, userNext.str("refresh_token")).want(t, 401, "token_reused")
	})

	// The first use is claimed with a unique-key insert: among any number of racing refreshes,
	// exactly one is first, on MongoDB and FerretDB alike, and the others get what it recorded.
	t.Run("exactly one of many racing refreshes is the first use", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		_, _, refresh := e.user(t)
		const n = 16
		results := witnesses(t, refreshAll(t, refresh, n, e))
		for _, r := range results {
			r.want(t, 200, "")
			if r.str("refresh_token") != results[0].str("refresh_token") {
				t.Fatal("two different successors: more than one first use")
			}
		}
		// A racer answered 503 is counted under neither; it may have been the first use.
		fams := scrape(t, e)
		if rotated, grace := metricValue(t, fams, "auth_refreshes_total", "outcome", "rotated"),
			metricValue(t, fams, "auth_refreshes_total", "outcome", "reuse_grace"); rotated > 1 ||
			rotated+grace != float64(len(results)) || len(results) == n && rotated != 1 {
			t.Fatalf("%v first uses and %v repeats of %d answered, want 1 and the rest", rotated, grace, len(results))
		}
	})

	t.Run("reuse seen by another instance is refused there and everywhere", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t)
		_, access, refresh := a.user(t)
		a.refresh(t, refresh).want(t, 200, "")
		b.clock.Advance(b.reuseWindow())
		b.refresh(t, refresh).want(t, 401, "token_reused")
		b.page(t, access).want(t, 401, "token_reused")
		if err := a.deps.revocations.sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		a.page(t, access).want(t, 401, "token_reused")
	})
}

// witnesses are the racers the service answered. One answered 503 (the database too slow, on a
// busy machine under -race) saw nothing, and the race's rule holds among the others, as
// unknownOutcome has it in races_test.go.
func witnesses(t *testing.T, results []response) []response {
	t.Helper()
	var out []response
	for i, r := range results {
		if r.status == http.StatusServiceUnavailable {
			t.Logf("racer %d: 503, no witness: %s", i, r.raw)
			continue
		}
		out = append(out, r)
	}
	if len(out) == 0 {
		t.Fatal("no racer was answered")
	}
	return out
}

// loginFrom sends a login as if from client ip through a trusted proxy.
func (e *testEnv) loginFrom(tb testing.TB, ip, email, password string) response {
	tb.Helper()
	return e.do(tb, "POST", "/auth/login", credentials{email, password}, "X-Forwarded-For", ip)
}

func trustLoopback(c *config) {
	c.trustedProxies = []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
}

func TestLoginThrottling(t *testing.T) {
	t.Parallel()
	const attacker, victim = "203.0.113.5", "198.51.100.7"

	t.Run("locks an account for the client that failed too often, with Retry-After", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback)
		email, _, _ := e.user(t)
		for range 5 {
			e.loginFrom(t, attacker, email, "wrong guess").want(t, 401, "invalid_credentials")
		}
		r := e.loginFrom(t, attacker, email, "correct horse battery").want(t, 429, "too_many_attempts")
		if s, _ := strconv.Atoi(r.header.Get("Retry-After")); s <= 0 || s > 300 {
			t.Fatalf("Retry-After %q, want 1..300 seconds", r.header.Get("Retry-After"))
		}
		t.Run("but not for the account's owner on another client", func(t *testing.T) {
			e.loginFrom(t, victim, email, "correct horse battery").want(t, 200, "")
		})
		t.Run("until the window passes", func(t *testing.T) {
			e.clock.Advance(5*time.Minute + time.Second)
			e.loginFrom(t, attacker, email, "correct horse battery").want(t, 200, "")
		})
	})

	t.Run("ignores X-Forwarded-For from an untrusted peer", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		email, _, _ := e.user(t)
		for i := range 5 {
			e.loginFrom(t, "192.0.2."+strconv.Itoa(i), email, "wrong guess").want(t, 401, "invalid_credentials")
		}
		e.loginFrom(t, "192.0.2.99", email, "wrong guess").want(t, 429, "too_many_attempts")
	})

	t.Run("caps one client's failures across many accounts", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback, func(c *config) { c.maxClientFails = 3 })
		for i := range 3 {
			e.loginFrom(t, attacker, "nobody"+strconv.Itoa(i)+"@example.com", "guess").want(t, 401, "invalid_credentials")
		}
		email, _, _ := e.user(t)
		e.loginFrom(t, attacker, email, "correct horse battery").want(t, 429, "too_many_attempts")
		e.loginFrom(t, victim, email, "correct horse battery").want(t, 200, "")
	})

	t.Run("is off when its limits are zero", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback, func(c *config) { c.maxFailures, c.maxClientFails = 0, 0 })
		email, _, _ := e.user(t)
		for range 8 {
			e.loginFrom(t, attacker, email, "wrong guess").want(t, 401, "invalid_credentials")
		}
		e.loginFrom(t, attacker, email, "correct horse battery").want(t, 200, "")
	})

	t.Run("forgets an account's failures after a success", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback)
		email, _, _ := e.user(t)
		for range 2 {
			for range 4 {
				e.loginFrom(t, victim, email, "typo").want(t, 401, "invalid_credentials")
			}
			e.loginFrom(t, victim, email, "correct horse battery").want(t, 200, "")
		}
	})

	t.Run("leaves no attempt behind after a success", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback)
		email, _, _ := e.user(t) // the first try: its attempt is removed after the answer
		account, clientKey := loginKeys(netip.MustParseAddr(victim), email)
		e.loginFrom(t, victim, email, "typo").want(t, 401, "invalid_credentials")
		e.loginFrom(t, victim, email, "correct horse battery").want(t, 200, "") // waits: it clears a failure
		if n := e.attempts(t, account); n != 0 {
			t.Fatalf("%d attempts at the account right after a success that cleared a failure, want 0", n)
		}
		e.loginFrom(t, victim, email, "correct horse battery").want(t, 200, "")
		waitFor(t, "the successful attempts' records to go, the typo's alone to stay", func() bool {
			return e.attempts(t, account) == 0 && e.attempts(t, clientKey) == 1
		})
	})

	// Each attempt is counted before its hash runs: a burst cannot slip guesses past the limit.
	for _, instances := range []int{1, 2} {
		t.Run(fmt.Sprintf("lets at most the limit of 40 simultaneous wrong logins through on %d instances", instances), func(t *testing.T) {
			t.Parallel()
			roomy := func(c *config) { c.hashQueue, c.hashWait, c.writeTimeout = 64, time.Minute, 2*time.Minute }
			db := newTestDB(t)
			var envs []*testEnv
			for range instances {
				envs = append(envs, newTestEnvOn(t, db, trustLoopback, roomy))
			}
			email, _, _ := envs[0].user(t)
			const n = 40
			out := make([]response, n)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range n {
				wg.Go(func() {
					<-start
					out[i] = envs[i%instances].loginFrom(t, attacker, email, "wrong guess")
				})
			}
			close(start)
			wg.Wait()
			counts := map[string]int{}
			for _, r := range out {
				counts[strconv.Itoa(r.status)+" "+r.str("error")]++
			}
			max := envs[0].cfg.maxFailures
			if counts["401 invalid_credentials"] > max || counts["401 invalid_credentials"]+counts["429 too_many_attempts"] != n {
				t.Fatalf("outcomes %v, want at most %d invalid_credentials and too_many_attempts for the rest", counts, max)
			}
			t.Logf("outcomes %v", counts)
			envs[0].loginFrom(t, victim, email, "correct horse battery").want(t, 200, "")
		})
	}

	t.Run("keeps an account's count whatever other accounts' failures from its client, with no client limit", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback, func(c *config) { c.maxClientFails = 0 })
		email, _, _ := e.user(t)
		for range 5 {
			e.loginFrom(t, attacker, email, "wrong guess").want(t, 401, "invalid_credentials")
		}
		// 1,100 newer failures from the same client on other accounts, as if just made.
		now := e.clock.Now()
		var others []Attempt
		for i := range 1100 {
			account, client := loginKeys(netip.MustParseAddr(attacker), fmt.Sprintf("other%d@example.com", i))
			for _, key := range []string{account, client} {
				others = append(others, Attempt{ID: newID(), Key: key, At: now, ExpiresAt: now.Add(time.Hour)})
			}
		}
		if err := e.store.AddAttempts(t.Context(), others...); err != nil {
			t.Fatal(err)
		}
		e.loginFrom(t, attacker, email, "correct horse battery").want(t, 429, "too_many_attempts")
	})

	t.Run("holds across instances sharing the database", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t, trustLoopback)
		email, _, _ := a.user(t)
		for range 5 {
			a.loginFrom(t, attacker, email, "wrong guess").want(t, 401, "invalid_credentials")
		}
		b.loginFrom(t, attacker, email, "wrong guess").want(t, 429, "too_many_attempts")
	})
}

func TestClientIPs(t *testing.T) {
	t.Parallel()
	trusted, err := parseTrustedProxies("10.0.0.0/8, 192.0.2.1")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name, remote, xff string
		trusted           bool
		want              string
	}{
		{"uses the peer when nothing is trusted", "203.0.113.9:1000", "1.2.3.4", false, "203.0.113.9"},
		{"uses the peer when it is not a trusted proxy", "203.0.113.9:1000", "1.2.3.4", true, "203.0.113.9"},
		{"reads the client a trusted proxy names", "10.1.2.3:1000", "1.2.3.4", true, "1.2.3.4"},
		{"skips trusted hops from the right", "10.1.2.3:1000", "1.2.3.4, 5.6.7.8, 10.9.9.9", true, "5.6.7.8"},
		{"trusts a single address", "192.0.2.1:1000", "1.2.3.4", true, "1.2.3.4"},
		{"stops at garbage", "10.1.2.3:1000", "nonsense", true, "10.1.2.3"},
		{"handles IPv6 peers", "[2001:db8::1]:1000", "1.2.3.4", true, "2001:db8::1"},
		{"unmaps IPv4-in-IPv6", "[::ffff:203.0.113.9]:1000", "", false, "203.0.113.9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c := clientIPs{}
			if tt.trusted {
				c.trusted = trusted
			}
			r, _ := http.NewRequest("GET", "/", nil)
			r.RemoteAddr = tt.remote
			if tt.xff != "" {
				r.Header.Set("X-Forwarded-For", tt.xff)
			}
			if got := c.of(r).String(); got != tt.want {
				t.Fatalf("got %s, want %s", got, tt.want)
			}
		})
	}
	t.Run("counts an IPv6 client by its /64", func(t *testing.T) {
		a, b := netip.MustParseAddr("2001:db8:1:2::1"), netip.MustParseAddr("2001:db8:1:2:ffff::9")
		if clientPrefix(a) != clientPrefix(b) {
			t.Fatalf("%s and %s differ", clientPrefix(a), clientPrefix(b))
		}
	})
}

func TestSignupThrottling(t *testing.T) {
	t.Parallel()
	const attacker, victim = "203.0.113.5", "198.51.100.7"
	signupFrom := func(t *testing.T, e *testEnv, ip, email string) response {
		t.Helper()
		return e.do(t, "POST", "/auth/signup", credentials{email, "password123"}, "X-Forwarded-For", ip)
	}

	t.Run("counts every sign-up of a client, taken addresses too, then answers 429 with Retry-After", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback, func(c *config) { c.signupMax = 3 })
		signupFrom(t, e, attacker, "a@example.com").want(t, 201, "")
		signupFrom(t, e, attacker, "a@example.com").want(t, 409, "email_taken")
		signupFrom(t, e, attacker, "b@example.com").want(t, 201, "")
		r := signupFrom(t, e, attacker, "c@example.com").want(t, 429, "too_many_attempts")
		if s, _ := strconv.Atoi(r.header.Get("Retry-After")); s <= 0 || s > 600 {
			t.Fatalf("Retry-After %q, want 1..600 seconds", r.header.Get("Retry-After"))
		}
		t.Run("but another client may sign up", func(t *testing.T) {
			signupFrom(t, e, victim, "c@example.com").want(t, 201, "")
		})
		t.Run("and the client again once the window has passed", func(t *testing.T) {
			e.clock.Advance(e.cfg.signupWindow + time.Second)
			signupFrom(t, e, attacker, "d@example.com").want(t, 201, "")
		})
	})

	t.Run("does not count a sign-up refused for its input", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, trustLoopback, func(c *config) { c.signupMax = 1 })
		signupFrom(t, e, attacker, "not an address").want(t, 400, "invalid_email")
		signupFrom(t, e, attacker, "e@example.com").want(t, 201, "")
	})

	t.Run("holds across instances", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t, trustLoopback, func(c *config) { c.signupMax = 2 })
		signupFrom(t, a, attacker, "f@example.com").want(t, 201, "")
		signupFrom(t, b, attacker, "g@example.com").want(t, 201, "")
		signupFrom(t, a, attacker, "h@example.com").want(t, 429, "too_many_attempts")
	})

	// Sign-ups may hold only half the hashing slots: logins go past a backlog of them.
	t.Run("leaves logins served while sign-ups flood from many clients", func(t *testing.T) {
		t.Parallel()
		// The sign-ups may wait a minute for a hashing slot: the server must not cut their answers
		// off first (under the race detector a hash takes about a second).
		e := newTestEnv(t, trustLoopback, func(c *config) {
			c.hashConcurrent, c.hashWait, c.writeTimeout = 2, time.Minute, 3*time.Minute
		})
		email, _, _ := e.user(t)
		const flood = 30
		var wg sync.WaitGroup
		for i := range flood {
			wg.Go(func() {
				signupFrom(t, e, fmt.Sprintf("192.0.2.%d", i+1), fmt.Sprintf("flood%d@example.com", i))
			})
		}
		defer wg.Wait()
		deadline := time.Now().Add(time.Minute)
		for e.deps.hasher.signupsAdmitted() < flood/3 {
			if time.Now().After(deadline) {
				t.Fatal("the sign-ups never queued up")
			}
			time.Sleep(5 * time.Millisecond)
		}
		for i := range 4 {
			e.loginFrom(t, fmt.Sprintf("198.51.100.%d", i+1), email, "correct horse battery").want(t, 200, "")
		}
		if left := e.deps.hasher.signupsAdmitted(); left == 0 {
			t.Fatal("every sign-up was done before the logins: they waited behind the flood")
		}
	})
}

// Racing refreshes of one token, across instances with different token lifetimes, then a logout:
// every token the refreshes handed out expires before the session's blacklist entry does. Only
// the first use writes the session's record; the repeats get tokens that expire no later than
// what it wrote.
func TestNoTokenOfARacingRefreshOutlivesItsSessionsEnd(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	short := newTestEnvOn(t, db, func(c *config) { c.accessTTL, c.refreshTTL = time.Minute, time.Minute })
	long := newTestEnvOn(t, db, func(c *config) { c.accessTTL, c.refreshTTL = 10*time.Minute, 10*time.Minute })
	for round := range 5 {
		_, access, refresh := short.user(t)
		sid := short.claimsOf(t, access)["sid"].(string)
		results := witnesses(t, refreshAll(t, refresh, 8, short, long))
		short.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+access).want(t, 200, "")
		revs, err := short.store.RevocationsSince(t.Context(), time.Time{}, short.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		var entry time.Time
		for _, r := range revs {
			if r.ID == sidPrefix+sid {
				entry = r.ExpiresAt
			}
		}
		for i, r := range results {
			r.want(t, 200, "")
			for _, tok := range []string{r.str("access_token"), r.str("refresh_token")} {
				c, err := short.deps.tokens.parse(tok, "")
				if err != nil {
					t.Fatal(err)
				}
				if until := short.deps.tokens.until(c.expiresAt()); until.After(entry) {
					t.Fatalf("round %d, refresh %d: a %s token accepted until %s outlives the session's end entry (%s)",
						round, i, c.Use, until.Format(time.RFC3339), entry.Format(time.RFC3339))
				}
			}
		}
	}
}

// attempts counts the throttle's attempts under key within its window.
func (e *testEnv) attempts(tb testing.TB, key string) int {
	tb.Helper()
	got, err := e.store.Attempts(context.Background(), key, e.clock.Now().Add(-time.Hour), "", 1000)
	if err != nil {
		tb.Fatal(err)
	}
	return len(got)
}
