package main

import (
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

func TestRevocationsAcrossInstances(t *testing.T) {
	t.Parallel()

	t.Run("a logout on one instance is refused by another after one poll", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t)
		_, access, _ := a.user(t)
		b.page(t, access).want(t, 200, "")
		a.do(t, "POST", "/auth/logout", nil, "authorization_access", access).want(t, 200, "")
		a.page(t, access).want(t, 401, "token_revoked") // the same instance: at once
		if err := b.deps.revocations.sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		b.page(t, access).want(t, 401, "token_revoked")
	})

	t.Run("the background poll brings a logout within the sync interval", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t)
		ctx, cancel := context.WithCancel(t.Context())
		t.Cleanup(cancel)
		const interval = 100 * time.Millisecond
		go b.deps.revocations.poll(ctx, interval, time.Hour)
		_, access, _ := a.user(t)
		a.do(t, "POST", "/auth/logout", nil, "authorization_access", access).want(t, 200, "")
		// A generous bound that only catches a poll that never comes; the figure itself is the
		// interval, which the test cannot time on a shared machine.
		deadline := time.Now().Add(50 * interval)
		for b.page(t, access).status == 200 {
			if time.Now().After(deadline) {
				t.Fatalf("instance b still accepts a token revoked %v ago", 50*interval)
			}
			time.Sleep(interval / 4)
		}
		b.page(t, access).want(t, 401, "token_revoked")
	})

	t.Run("a revocation written by an instance whose clock lags is still seen", func(t *testing.T) {
		t.Parallel()
		a, b := newTestPair(t)
		b.clock.Advance(5 * time.Second) // b runs ahead of a
		if err := b.deps.revocations.sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		_, access, _ := a.user(t)
		a.do(t, "POST", "/auth/logout", nil, "authorization_access", access).want(t, 200, "")
		if err := b.deps.revocations.sync(t.Context()); err != nil {
			t.Fatal(err)
		}
		b.page(t, access).want(t, 401, "token_revoked")
	})

	t.Run("a new instance loads every live revocation at start", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t)
		a := newTestEnvOn(t, db)
		_, access, _ := a.user(t)
		a.do(t, "POST", "/auth/logout", nil, "authorization_access", access).want(t, 200, "")
		a.clock.Advance(time.Minute)
		newTestEnvOn(t, db).page(t, access).want(t, 401, "token_revoked")
	})
}

func TestExpiredRevocationsLeaveMemoryAndTheDatabase(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	for i := range 3 {
		_, access, refresh := e.user(t)
		e.do(t, "POST", "/auth/logout", nil, "authorization_access", access, "authorization_refresh", refresh).want(t, 200, "")
		_ = i
	}
	r := e.deps.revocations
	if r.size() != 3*3 { // per logout: two token ids and one session id
		t.Fatalf("size %d, want 9", r.size())
	}
	count := func() int64 {
		n, err := e.store.blacklist.CountDocuments(t.Context(), bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	if count() != 9 {
		t.Fatalf("%d blacklist documents, want 9", count())
	}
	// Access tokens (3m) expire first: their entries go, the sessions' stay.
	e.clock.Advance(3*time.Minute + 2*defaultLeeway)
	r.forgetExpired()
	if err := e.store.Purge(t.Context(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if r.size() != 6 || count() != 6 {
		t.Fatalf("after the access tokens expired: %d in memory, %d stored, want 6 and 6", r.size(), count())
	}
	e.clock.Advance(5 * time.Minute)
	r.forgetExpired()
	if err := e.store.Purge(t.Context(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	if r.size() != 0 || count() != 0 {
		t.Fatalf("after everything expired: %d in memory, %d stored, want none", r.size(), count())
	}
}

func TestVerifiedTokenCacheStaysBounded(t *testing.T) {
	t.Parallel()
	now := time.Now()
	v := newVerifiedCache(100)
	for i := range 1000 {
		v.put("token-"+strconv.Itoa(i), &claims{Expiry: now.Add(time.Minute).Unix()}, &verifyKey{}, now)
		if len(v.m) > 100 {
			t.Fatalf("%d entries after %d puts, want at most 100", len(v.m), i+1)
		}
	}
	if _, ok := v.get("token-999"); !ok {
		t.Fatal("the newest entry is missing")
	}
}

func TestCachedTokensAreStillCheckedForExpiryAndRevocation(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	e.page(t, access).want(t, 200, "") // now cached
	e.clock.Advance(3*time.Minute + defaultLeeway)
	e.page(t, access).want(t, 401, "token_expired")

	_, access, _ = e.user(t)
	e.page(t, access).want(t, 200, "")
	e.do(t, "POST", "/auth/logout", nil, "authorization_access", access).want(t, 200, "")
	e.page(t, access).want(t, 401, "token_revoked")
}

// With REVOCATION_MAX_LAG, an instance that cannot read the blacklist for longer than that stops
// vouching for any token, says so, and starts again when a poll succeeds. Without it (the default)
// it keeps checking tokens against the copy it has.
func TestRevocationMaxLag(t *testing.T) {
	t.Parallel()
	socket, _ := startOwnDevDB(t, newDataDir(t))
	bounded := func(c *config) { c.revocationMaxLag = 3 * time.Second }
	a, _ := newTestEnvThrough(t, socket, "", bounded)
	b, cutB := newTestEnvThrough(t, socket, "", bounded)
	unbounded, cutU := newTestEnvThrough(t, socket, "")
	_, kept, _ := a.user(t)
	_, ended, _ := a.user(t)
	for _, e := range []*testEnv{b, unbounded} {
		e.page(t, ended).want(t, 200, "")
	}
	a.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+ended).want(t, 200, "")

	// The database stops answering b and the unbounded instance just after the logout.
	cutB.cut()
	cutU.cut()
	poll := func(e *testEnv, advance time.Duration) error {
		e.clock.Advance(advance)
		return e.deps.revocations.sync(t.Context())
	}
	for _, e := range []*testEnv{b, unbounded} {
		if err := poll(e, 2*time.Second); err == nil {
			t.Fatal("a poll succeeded with the database cut off")
		}
	}
	t.Run("within the bound an instance checks tokens against the copy it has", func(t *testing.T) {
		b.page(t, ended).want(t, 200, "") // the cost of riding out an outage: a logout unseen
		b.page(t, kept).want(t, 200, "")
	})
	for _, e := range []*testEnv{b, unbounded} {
		poll(e, 2*time.Second)
	}
	t.Run("past the bound it refuses every token with 503 and says so", func(t *testing.T) {
		for _, tok := range []string{kept, ended} {
			r := b.page(t, tok).want(t, 503, "unavailable")
			if r.header.Get("Retry-After") == "" {
				t.Fatal("503 without Retry-After")
			}
		}
		b.do(t, "POST", "/auth/verify", map[string]string{"token": kept}).want(t, 503, "unavailable")
		if got := metricValue(t, scrape(t, b), "auth_revocation_stale"); got != 1 {
			t.Fatalf("auth_revocation_stale = %v, want 1", got)
		}
		if !strings.Contains(b.logs.String(), "revocation list older than REVOCATION_MAX_LAG") {
			t.Fatal("no warning in the log")
		}
	})
	t.Run("without the bound, as by default, it goes on from the copy it has", func(t *testing.T) {
		unbounded.page(t, ended).want(t, 200, "")
	})

	cutB.connect(socket)
	t.Run("it is not ready until a poll succeeds, then vouches again with the logout seen", func(t *testing.T) {
		b.do(t, "GET", "/readyz", nil).want(t, 503, "unavailable")
		deadline := time.Now().Add(30 * time.Second)
		for b.deps.revocations.sync(t.Context()) != nil {
			if time.Now().After(deadline) {
				t.Fatal("no poll succeeded after the database came back")
			}
			time.Sleep(100 * time.Millisecond)
		}
		b.do(t, "GET", "/readyz", nil).want(t, 200, "")
		b.page(t, ended).want(t, 401, "token_revoked")
		b.page(t, kept).want(t, 200, "")
		if got := metricValue(t, scrape(t, b), "auth_revocation_stale"); got != 0 {
			t.Fatalf("auth_revocation_stale = %v, want 0", got)
		}
	})
}
