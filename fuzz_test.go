package main

import (
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"runtime"
	"strconv"
	"strings"
	"testing"
)

// The fuzz targets feed hostile client input to the parsers and to the real handler. Each starts
// one service (and database) per fuzzing process, not per input. Run one with, for example:
//
//	go test -run='^$' -fuzz='^FuzzRequestBodies$' -fuzztime=60s .

// newFuzzEnv is one service for a whole fuzzing process. It logs only warnings and errors: an
// access log line per input would grow without bound.
func newFuzzEnv(f *testing.F) (*testEnv, http.Handler) {
	e := newTestEnv(f, func(c *config) { c.logLevel = slog.LevelWarn })
	return e, newHandler(e.deps, e.cfg)
}

// serve sends r through the whole handler and fails on a 500, which is also what the recoverer
// makes of a panic: nothing a client sends may produce either.
func serve(t *testing.T, h http.Handler, r *http.Request) *httptest.ResponseRecorder {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, r)
	if rec.Code == http.StatusInternalServerError || rec.Header().Get("Content-Type") != "application/json" {
		t.Fatalf("%s %s answered %d %q %s", r.Method, r.URL.Path, rec.Code, rec.Header().Get("Content-Type"), rec.Body)
	}
	return rec
}

func FuzzTokenHeaders(f *testing.F) {
	e, h := newFuzzEnv(f)
	pair, err := e.deps.tokens.issue("user-1", "ada@example.com", "session-1")
	if err != nil {
		f.Fatal(err)
	}
	access, refresh := pair.AccessToken, pair.RefreshToken
	for _, seed := range [][3]string{
		{"Bearer " + access, "", ""},
		{"", access, refresh},
		{"bearer  " + access + " ", "Bearer " + refresh, ""},
		{"Bearer", "bearer ", "Bearer Bearer " + access},
		{"Basic dXNlcjpwYXNz", "", "null"},
		{access[:len(access)-2], strings.Replace(access, ".", "..", 1), refresh + "x"},
		{"eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", "", ""},
	} {
		f.Add(seed[0], seed[1], seed[2])
	}
	f.Fuzz(func(t *testing.T, authorization, accessHeader, refreshHeader string) {
		for _, v := range []string{authorization, accessHeader, refreshHeader} {
			if b := bearer(v); b != strings.TrimSpace(b) {
				t.Fatalf("bearer(%q) = %q, not trimmed", v, b)
			}
		}
		for _, req := range []struct{ method, path string }{
			{"GET", "/auth/page"},
			{"POST", "/auth/verify"},
			{"POST", "/auth/refresh"},
		} {
			r := httptest.NewRequest(req.method, req.path, nil)
			// Set directly: the handler must cope with values net/http's client would refuse
			// to send but a raw client can.
			r.Header["Authorization"] = []string{authorization}
			r.Header["Authorization_access"] = []string{accessHeader}
			r.Header["Authorization_refresh"] = []string{refreshHeader}
			rec := serve(t, h, r)
			if rec.Code == http.StatusOK && req.path == "/auth/page" {
				raw, err := accessToken(r)
				if err != nil {
					t.Fatalf("page let through headers it refuses: %v", err)
				}
				if c, err := e.deps.tokens.parse(raw, useAccess); err != nil || c.Subject != "user-1" {
					t.Fatalf("page let through %q: %v", raw, err)
				}
			}
		}
		if c, err := e.deps.tokens.parse(bearer(authorization), ""); err == nil &&
			(c == nil || c.Issuer != e.cfg.issuer || (c.Use != useAccess && c.Use != useRefresh)) {
			t.Fatalf("parse accepted %q as %+v", authorization, c)
		}
	})
}

func FuzzRequestBodies(f *testing.F) {
	e, h := newFuzzEnv(f)
	pair, err := e.deps.tokens.issue("user-1", "ada@example.com", "session-1")
	if err != nil {
		f.Fatal(err)
	}
	paths := []string{"/auth/signup", "/auth/login", "/auth/refresh", "/auth/logout", "/auth/verify",
		"/auth/password", "/auth/mfa/verify", "/auth/mfa/totp/confirm", "/auth/password/forgot",
		"/auth/password/reset", "/auth/email/verify", "/auth/email/resend", "/auth/email/change"}
	for i, body := range []string{
		`{"email":"ada@example.com","password":"correct horse battery"}`,
		`{"email":"ada@example.com","password":"correct horse battery"}`,
		`{"refresh_token":"` + pair.RefreshToken + `"}`,
		`{"refresh_token":"Bearer ` + pair.RefreshToken + `"}`,
		`{"token":"` + pair.AccessToken + `"}`,
		``, `null`, `[]`, `"x"`, `{}`, `{"email":1,"password":true}`, `{"email":"a@b.c"} {}`,
		`{"email":"\u0041@EXAMPLE.com ","password":"\ud800\udc00aaaaaaa"}`,
		`{"token":{"a":[1,2,{"b":null}]}}`, `{"refresh_token":1e999}`, `{"email":"a@b.c","email":"d@e.f"}`,
		`{"password":"` + strings.Repeat("a", 1025) + `","email":"x@y.z"}`,
		`{"current_password":"correct horse battery","new_password":"x"}`,
		`{"mfa_token":"` + newID() + `","code":"123456"}`,
		`{"mfa_token":"x","recovery_code":"abcde-fghij"}`,
		`{"code":"12345678901234567890"}`,
		`{"email":"ada@example.com"}`,
		`{"token":"` + newID() + `","password":"correct horse battery"}`,
		`{"token":"` + newID() + `"}`,
		`{"email":"ada@example.com"}`,
		`{"new_email":"b@example.com","password":"correct horse battery"}`,
	} {
		f.Add(uint8(i), body)
	}
	f.Fuzz(func(t *testing.T, endpoint uint8, body string) {
		path := paths[int(endpoint)%len(paths)]
		r := httptest.NewRequest("POST", path, strings.NewReader(body))
		r.Header.Set("Content-Type", "application/json")
		// The endpoints of a signed-in user read their body too (after the token, whose session
		// the database does not know: they answer 401 then, which is fine here).
		r.Header.Set("Authorization", "Bearer "+pair.AccessToken)
		serve(t, h, r)
	})
}

func FuzzClientInput(f *testing.F) {
	clients := clientIPs{trusted: []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8"), netip.MustParsePrefix("::1/128")}}
	for _, seed := range [][4]string{
		{"203.0.113.7", "10.0.0.1:5000", "req-1", "Ada@Example.com"},
		{"203.0.113.7, 10.0.0.2", "[::1]:80", "a b", " ada@example.com "},
		{"::ffff:10.1.2.3, 2001:db8::1", "[::ffff:10.0.0.1]:1", strings.Repeat("x", 129), "a@b@example.com"},
		{",,, ,garbage", "not an address", "\x00\n", "@example.com"},
		{"fe80::1%eth0", "10.0.0.1", "İ", "İ@example.com"},
	} {
		f.Add(seed[0], seed[1], seed[2], seed[3])
	}
	f.Fuzz(func(t *testing.T, xff, remote, requestID, email string) {
		r := httptest.NewRequest("GET", "/", nil)
		r.RemoteAddr = remote
		r.Header["X-Forwarded-For"] = []string{xff}
		a := clients.of(r)
		if !a.IsValid() || a.Is4In6() {
			t.Fatalf("client of %q via %q = %v", xff, remote, a)
		}
		if peer, err := netip.ParseAddrPort(remote); err == nil && !clients.isTrusted(peer.Addr()) && a != peer.Addr().Unmap() {
			t.Fatalf("an untrusted peer %v was replaced by %v from X-Forwarded-For %q", peer, a, xff)
		}

		if saneRequestID(requestID) && strconv.Quote(requestID) != `"`+requestID+`"` {
			t.Fatalf("request id %q passed but needs quoting in a log", requestID)
		}

		got := normalizeEmail(email)
		if !validEmail(got) {
			return
		}
		if got != strings.TrimSpace(got) || got != strings.ToLower(got) || len(got) > 254 || strings.Count(got, "@") != 1 {
			t.Fatalf("normalizeEmail(%q) = %q", email, got)
		}
		if again := normalizeEmail(got); !validEmail(again) || again != got {
			t.Fatalf("normalizeEmail is not stable: %q -> %q -> %q", email, got, again)
		}
	})
}

func FuzzCheckPassword(f *testing.F) {
	for _, seed := range [][2]string{
		{hashPassword("correct horse battery"), "correct horse battery"},
		{"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U", "x"},
		{"$argon2id$v=19$m=4194304,t=100,p=255$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U", "x"},
		{"$argon2id$v=19$m=-1,t=-1,p=0$$", ""},
		{"$argon2i$v=19$m=19456,t=2,p=1$c2FsdA$a2V5", "x"},
		{"$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "password"},
		{"$2b$31$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", "password"},
		{"$2y$", ""},
		{"$$$$$$", "$"},
	} {
		f.Add(seed[0], seed[1])
	}
	f.Fuzz(func(t *testing.T, hash, password string) {
		ok, rehash := checkPassword(hash, password)
		if ok && !strings.HasPrefix(hash, "$argon2id$") && !strings.HasPrefix(hash, "$2") {
			t.Fatalf("checkPassword accepted %q", hash)
		}
		if rehash && !ok && !strings.HasPrefix(hash, "$2") {
			t.Fatalf("checkPassword asks to rehash a failed argon2id check of %q", hash)
		}
	})
}

func TestCheckPasswordRefusesHashesThatAskTooMuch(t *testing.T) {
	// Not parallel: the test reads the process's allocation count.
	for _, hash := range []string{
		// 4 GiB and 100 passes: the old bound let this run.
		"$argon2id$v=19$m=4194304,t=100,p=1$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
		"$argon2id$v=19$m=19456,t=2,p=200$c2FsdHNhbHRzYWx0c2FsdA$a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2V5a2U",
		// A derived key of 768 bytes.
		"$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$" + strings.Repeat("A", 1<<10),
		// bcrypt cost 31: days per check.
		"$2b$31$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy",
	} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		ok, _ := checkPassword(hash, "x")
		runtime.ReadMemStats(&after)
		if ok {
			t.Fatalf("accepted %q", hash)
		}
		if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
			t.Fatalf("checking %.40q... allocated %d MiB; it should have been refused unread", hash, grew>>20)
		}
	}
}
