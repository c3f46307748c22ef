package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
	"golang.org/x/oauth2"
)

// Speed lives here and in scripts/loadtest.sh, never in timed assertions; BENCHMARKS.md has the
// figures and the commands that made them.

func benchTokens() *tokens {
	return newTokens([]byte(testSecret), "auth", 3*time.Minute, 5*time.Minute, defaultLeeway, time.Now)
}

func BenchmarkTokenIssue(b *testing.B) {
	tok := benchTokens()
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.issue("user-id", "user@example.com", "session-id"); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenParse is a first sight of a token: signature, JSON and claims checks.
func BenchmarkTokenParse(b *testing.B) {
	tok := benchTokens()
	pair, _ := tok.issue("user-id", "user@example.com", "session-id")
	b.ReportAllocs()
	for b.Loop() {
		tok.verified = newVerifiedCache(1) // defeat the cache: measure the full parse
		if _, err := tok.parse(pair.AccessToken, useAccess); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenParseCached is every later sight of the same token.
func BenchmarkTokenParseCached(b *testing.B) {
	tok := benchTokens()
	pair, _ := tok.issue("user-id", "user@example.com", "session-id")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := tok.parse(pair.AccessToken, useAccess); err != nil {
			b.Fatal(err)
		}
	}
}

// benchDeps are the service's parts signing with alg, over store (nil for none): an asymmetric
// key is made and installed in memory, as a poll of the database would install it.
func benchDeps(b *testing.B, alg string, store Store) *deps {
	cfg := testConfig(b)
	cfg.jwtAlg = alg
	d := newDeps(cfg, store, newMetrics(), []byte(testSecret), time.Now, slog.New(slog.DiscardHandler))
	if alg != algHS256 {
		now := time.Now()
		rec, err := newSigningKey(alg, d.keys.keks[0], 1, now, now)
		if err != nil {
			b.Fatal(err)
		}
		d.keys.mu.Lock()
		err = d.keys.install([]SigningKey{*rec}, true)
		d.keys.mu.Unlock()
		if err != nil {
			b.Fatal(err)
		}
	}
	return d
}

// BenchmarkSign is the cost of signing one token, by algorithm: a login or refresh signs two.
func BenchmarkSign(b *testing.B) {
	for _, alg := range allAlgs {
		b.Run(alg, func(b *testing.B) {
			tok := benchDeps(b, alg, nil).tokens
			now := time.Now()
			c := claims{Subject: "user-id", Email: "user@example.com", Session: "session-id", Use: useAccess,
				ID: newID(), IssuedAt: now.Unix(), Expiry: now.Add(time.Minute).Unix()}
			b.ReportAllocs()
			for b.Loop() {
				if _, err := tok.sign(c); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkVerify is a first sight of a token, by algorithm: signature, JSON and claims checks.
// Every later sight of the same token is BenchmarkTokenParseCached, whatever the algorithm.
func BenchmarkVerify(b *testing.B) {
	for _, alg := range allAlgs {
		b.Run(alg, func(b *testing.B) {
			tok := benchDeps(b, alg, nil).tokens
			pair, err := tok.issue("user-id", "user@example.com", "session-id")
			if err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				tok.verified = newVerifiedCache(1) // defeat the cache: measure the full parse
				if _, err := tok.parse(pair.AccessToken, useAccess); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// benchHandlerAlg is the whole middleware chain and routes over an in-memory-only path:
// /auth/page never reaches the store, but the routes take its methods (readyz's ping). It returns an access token and the
// value of a portal session cookie (the portal is on, as in development) of one user.
func benchHandlerAlg(b *testing.B, alg string) (h http.Handler, access, cookie string) {
	cfg := testConfig(b)
	cfg.jwtAlg = alg
	store, err := newMongoStore(context.Background(), newTestDB(b), nil)
	if err != nil {
		b.Fatal(err)
	}
	d := benchDeps(b, alg, store)
	pair, err := d.tokens.issue("user-id", "user@example.com", "session-id")
	if err != nil {
		b.Fatal(err)
	}
	u := &User{ID: "user-id", Email: "user@example.com"}
	web, err := d.sessions.cookieOf(u, &Session{ID: "cookie-session-id", ExpiresAt: time.Now().Add(cfg.portalCfg.ttl)}, levelPassword)
	if err != nil {
		b.Fatal(err)
	}
	d.revocations.add(Revocation{ID: sidPrefix + "another-session", ExpiresAt: time.Now().Add(time.Hour)})
	return newHandler(d, cfg), pair.AccessToken, web.cookie.value
}

// BenchmarkPage is one forward-auth check through the full handler chain, as a proxy makes it.
func BenchmarkPage(b *testing.B) { benchPage(b, algHS256, false) }

// BenchmarkPageCookie is BenchmarkPage with the portal's session cookie instead of the bearer
// token, as a proxy checks a browser's navigation.
func BenchmarkPageCookie(b *testing.B) { benchPage(b, algHS256, true) }

// BenchmarkPageEdDSA is BenchmarkPage with Ed25519 tokens: the verified-token cache keeps the
// signature check, ten times an HMAC's, off the repeat checks.
func BenchmarkPageEdDSA(b *testing.B) { benchPage(b, algEdDSA, false) }

func benchPage(b *testing.B, alg string, withCookie bool) {
	h, access, cookie := benchHandlerAlg(b, alg)
	req := httptest.NewRequest("GET", "/auth/page", nil)
	if withCookie {
		req.Header.Set("Cookie", cookieName+"="+cookie)
	} else {
		req.Header.Set("Authorization", "Bearer "+access)
	}
	b.ReportAllocs()
	for b.Loop() {
		w := httptest.NewRecorder()
		h.ServeHTTP(w, req)
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body.String())
		}
	}
}

// BenchmarkPageParallel is the same check from every core at once, to expose lock contention.
func BenchmarkPageParallel(b *testing.B) {
	h, access, _ := benchHandlerAlg(b, algHS256)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		req := httptest.NewRequest("GET", "/auth/page", nil)
		req.Header.Set("Authorization", "Bearer "+access)
		for pb.Next() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, req)
			if w.Code != 200 {
				b.Error(w.Code)
				return
			}
		}
	})
}

// BenchmarkPasswordHash is the floor of a login: one argon2id check.
func BenchmarkPasswordHash(b *testing.B) {
	hash := hashPassword("correct horse battery")
	for b.Loop() {
		if ok, _ := checkPassword(hash, "correct horse battery"); !ok {
			b.Fatal("no match")
		}
	}
}

// BenchmarkPasswordHashSettings times today's argon2id setting beside the earlier versions', two
// that OWASP counts as equal. With -cpu 1,2: at 2 the hashes run two at a time, as in a storm's
// two slots, and ns/op is the pair's time per hash, so 3s over it is what two slots hash in 3s.
func BenchmarkPasswordHashSettings(b *testing.B) {
	salt := make([]byte, argonSaltLen)
	for _, s := range []struct{ mem, passes uint32 }{{argonMemory, argonTime}, {earlierArgonMemory, earlierArgonTime}} {
		b.Run(fmt.Sprintf("m=%d,t=%d", s.mem, s.passes), func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					argon2.IDKey([]byte("correct horse battery"), salt, s.passes, s.mem, argonThreads, argonKeyLen)
				}
			})
		})
	}
}

// BenchmarkLogin is a whole successful login against the database, session record included.
// Each round also times a bare check of the same password, alternately with the login so that a
// shared machine's drift hits both alike, and reports what the work around the hash adds to it
// (overhead-%, the budget is 10). It runs under the service's runtime settings (tuneRuntime),
// which tests otherwise leave alone: without them the collector runs during most hashes.
func BenchmarkLogin(b *testing.B) {
	gcPercent, memLimit := debug.SetGCPercent(100), debug.SetMemoryLimit(-1)
	b.Cleanup(func() { debug.SetGCPercent(gcPercent); debug.SetMemoryLimit(memLimit) })
	tuneRuntime(config{memoryLimit: 160 << 20}, func(string) string { return "" })
	e := newTestEnv(b)
	e.signup(b, "bench@example.com", "correct horse battery")
	u, err := e.deps.store.UserByEmail(context.Background(), "bench@example.com")
	if err != nil {
		b.Fatal(err)
	}
	body := `{"email":"bench@example.com","password":"correct horse battery"}`
	h := e.srv.Config.Handler
	var logins, hashes time.Duration
	for b.Loop() {
		started := time.Now()
		if ok, _ := checkPassword(u.PasswordHash, "correct horse battery"); !ok {
			b.Fatal("no match")
		}
		hashes += time.Since(started)
		started = time.Now()
		w := httptest.NewRecorder()
		r := httptest.NewRequestWithContext(context.Background(), "POST", "/auth/login", strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		h.ServeHTTP(w, r)
		if w.Code != 200 {
			b.Fatal(w.Code, w.Body.String())
		}
		logins += time.Since(started)
	}
	b.ReportMetric(float64(logins.Milliseconds())/float64(b.N), "login-ms")
	b.ReportMetric(float64(hashes.Milliseconds())/float64(b.N), "hash-ms")
	b.ReportMetric(100*float64(logins-hashes)/float64(hashes), "overhead-%")
	e.deps.passwords.times.mu.Lock()
	b.ReportMetric(float64(e.deps.passwords.times.avg[hashKind(u.PasswordHash)].Microseconds())/1000, "inlogin-hash-ms")
	e.deps.passwords.times.mu.Unlock()
}

// BenchmarkFailedLogin: a failed login must cost the client the same time whether the email has
// no account, an argon2id one, or one imported from the Node service with bcrypt cost 10, so that
// the clock does not tell them apart.
func BenchmarkFailedLogin(b *testing.B) {
	e := newTestEnv(b, func(c *config) { c.maxFailures, c.maxClientFails = 0, 0 })
	e.signup(b, "argon@example.com", "correct horse battery")
	hash, _ := bcrypt.GenerateFromPassword([]byte("correct horse battery"), 10)
	if err := e.store.CreateUser(context.Background(), &User{ID: "imported", Email: "bcrypt@example.com",
		PasswordHash: string(hash), CreatedAt: time.Now()}); err != nil {
		b.Fatal(err)
	}
	e.deps.passwords.learnImportedHashes(context.Background())
	h := e.srv.Config.Handler
	for _, account := range []struct{ name, email string }{
		{"unknown_email", "nobody@example.com"},
		{"argon2id_account", "argon@example.com"},
		{"bcrypt10_account", "bcrypt@example.com"},
	} {
		b.Run(account.name, func(b *testing.B) {
			body := `{"email":"` + account.email + `","password":"wrong horse battery"}`
			for b.Loop() {
				w := httptest.NewRecorder()
				r := httptest.NewRequestWithContext(context.Background(), "POST", "/auth/login", strings.NewReader(body))
				r.Header.Set("Content-Type", "application/json")
				h.ServeHTTP(w, r)
				if w.Code != 401 {
					b.Fatal(w.Code, w.Body.String())
				}
			}
		})
	}
}

// BenchmarkRevocationPoll is one instance's poll for new revocations when none are new, with n
// entries in force: what REVOCATION_SYNC_INTERVAL costs the database and the instance each time.
func BenchmarkRevocationPoll(b *testing.B) {
	for _, n := range []int{0, 1000, 10000} {
		b.Run(fmt.Sprint("entries=", n), func(b *testing.B) {
			ctx := context.Background()
			store, err := newMongoStore(ctx, newTestDB(b), nil)
			if err != nil {
				b.Fatal(err)
			}
			now := time.Now().UTC().Truncate(time.Millisecond)
			for i := 0; i < n; i += 1000 {
				revs := make([]Revocation, min(1000, n-i))
				for j := range revs {
					revs[j] = Revocation{ID: fmt.Sprintf("sid:ended-%d", i+j), Reason: "logout",
						CreatedAt: now.Add(-time.Minute), ExpiresAt: now.Add(time.Hour)}
				}
				if err := store.Revoke(ctx, revs...); err != nil {
					b.Fatal(err)
				}
			}
			b.ResetTimer()
			for b.Loop() {
				if revs, err := store.RevocationsSince(ctx, now, now); err != nil || len(revs) != 0 {
					b.Fatal(len(revs), err)
				}
			}
		})
	}
}

// BenchmarkOpenIDCodeFlow is a relying party's whole sign-in through the OpenID provider, as
// go-oidc and x/oauth2 make it over HTTP: the authorization request, the portal's sign-in form
// when the browser has no session (with-sign-in, a password hash included) or single sign-on when
// it has one (signed-in), the code exchange with PKCE at the token endpoint, and the check of the
// ID token against the published keys (RS256).
func BenchmarkOpenIDCodeFlow(b *testing.B) {
	e := newOIDCEnv(b)
	email, _, _ := e.user(b)
	c := registerClient(b, e, map[string]any{"type": "confidential", "first_party": true})
	verify := c.provider.Verifier(&oidc.Config{ClientID: c.id})
	flow := func(br *browser) {
		verifier := oauth2.GenerateVerifier()
		tok, err := c.cfg.Exchange(c.ctx, codeFlow(b, e, br, c, email, verifier), oauth2.VerifierOption(verifier))
		if err != nil {
			b.Fatal(err)
		}
		if _, err := verify.Verify(c.ctx, tok.Extra("id_token").(string)); err != nil {
			b.Fatal(err)
		}
	}
	b.Run("signed-in", func(b *testing.B) {
		br := newBrowser(e)
		br.signIn(b, email, "")
		for b.Loop() {
			flow(br)
		}
	})
	b.Run("with-sign-in", func(b *testing.B) {
		for b.Loop() {
			flow(newBrowser(e))
		}
	})
}

// BenchmarkOpenIDTokenRefresh is the token endpoint's refresh_token grant under load: 16
// goroutines per core, each a client session of its own rotating its refresh token over HTTP, as
// scripts/refreshcompare.sh's 32 users do the API's. Its ns/op is wall time per request, so its
// requests per second are 1e9 / ns/op (each goroutine's first code flow included: run it long).
func BenchmarkOpenIDTokenRefresh(b *testing.B) {
	e := newOIDCEnv(b)
	email, _, _ := e.user(b)
	c := registerClient(b, e, map[string]any{"type": "confidential", "first_party": true})
	b.SetParallelism(16)
	b.RunParallel(func(pb *testing.PB) {
		refresh := exchange(b, e, c, url.Values{"code": {codeFlow(b, e, newBrowser(e), c, email, "")}}).want(b, 200, "").str("refresh_token")
		for pb.Next() {
			refresh = exchange(b, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh}}).want(b, 200, "").str("refresh_token")
		}
	})
}
