package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// The flows an app builds on client.js, in a real Chromium: the second factor at sign-in and for
// step-up, the state events, a fresh token on demand and Request objects. The page, the service
// (under /auth/) and a guarded API (under /api/) share one origin here, as behind a proxy, so
// that a call may carry any header without a preflight.
func TestClientFlowsInABrowser(t *testing.T) {
	t.Parallel()
	browser := startChromium(t)
	expire := func(e *testEnv) { e.clock.Advance(e.cfg.accessTTL + e.cfg.leeway + time.Second) }

	t.Run("a user with a second factor signs in with a code, and signing in ends the session before", func(t *testing.T) {
		e := newTestEnv(t)
		front := startAppFront(t, e)
		email := e.newUser(t)
		access, _ := e.login(t, email, "correct horse battery")
		secret, recovery := e.enrolTOTP(t, access)
		w := newWindow(t, browser)
		a, b := w.open(t, front.URL+"/"), w.open(t, front.URL+"/")
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b)
		before := a.stored(t).AccessToken

		type started struct {
			State   string   `json:"state"`
			Status  int      `json:"status"`
			Methods []string `json:"methods"`
		}
		signIn := fmt.Sprintf(`auth.signIn(%q, "correct horse battery").then(r => ({state: r.state, status: r.status, methods: r.methods}))`, email)
		got := evaluate[started](t, a, signIn)
		if got.State != "mfa_required" || !slices.Contains(got.Methods, "totp") || !slices.Contains(got.Methods, "recovery_code") {
			t.Fatalf("signIn of a user with a second factor: %+v, want mfa_required naming totp and recovery_code", got)
		}
		e.page(t, before).want(t, 401, "token_revoked")
		if s := a.stored(t); s.AccessToken != "" || strings.Contains(fmt.Sprint(s), "mfa") {
			t.Fatalf("while the code is awaited, storage holds %+v; want no tokens", s)
		}

		w.expect(401)
		if got := evaluate[string](t, a, `auth.verifySecondFactor({code: "000000"}).then(r => r.state)`); got != "refused" {
			t.Fatalf("a wrong code: %q, want refused", got)
		}
		code := oathtool(t, secret, e.clock.Now())
		if got := evaluate[string](t, a, fmt.Sprintf(`auth.verifySecondFactor({code: %q}).then(r => r.state)`, code)); got != "signed_in" {
			t.Fatalf("verifySecondFactor with the code: %q, want signed_in", got)
		}
		for name, p := range map[string]*tab{"the tab that signed in": a, "the other tab": b} {
			waitFor(t, name+" to see the user with the second factor", func() bool { return p.session(t).Email == email })
		}
		a.call(t, front.URL+"/api/strong/orders").want(t, 200, "a call that needs the second factor")

		evaluate[int](t, a, `auth.signOut().then(r => r.status)`)
		if got := evaluate[started](t, a, signIn); got.State != "mfa_required" {
			t.Fatalf("signing in again: %+v, want mfa_required", got)
		}
		js := fmt.Sprintf(`auth.verifySecondFactor({recovery_code: %q}).then(r => r.state)`, recovery[0])
		if got := evaluate[string](t, a, js); got != "signed_in" {
			t.Fatalf("verifySecondFactor with a recovery code: %q, want signed_in", got)
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("a step-up with a code lets the refused call pass, and every tab hears of it", func(t *testing.T) {
		e := newTestEnv(t)
		front := startAppFront(t, e)
		w := newWindow(t, browser)
		a, b := w.open(t, front.URL+"/"), w.open(t, front.URL+"/")
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b)
		secret, _ := e.enrolTOTP(t, a.stored(t).AccessToken)

		r := a.call(t, front.URL+"/api/strong/orders")
		if r.Status != 401 || !strings.Contains(r.Body, `"mfa_required"`) {
			t.Fatalf("a password-only session calling a route that needs a second factor: %d %s, want 401 mfa_required", r.Status, r.Body)
		}
		if !evaluate[bool](t, a, fmt.Sprintf(`auth.fetch(%q).then(r => auth.needsStepUp(r))`, front.URL+"/api/strong/orders")) {
			t.Fatal("needsStepUp did not tell a refusal for want of a second factor")
		}
		code := oathtool(t, secret, e.clock.Now())
		if got := evaluate[int](t, a, fmt.Sprintf(`auth.stepUp(%q).then(r => r.status)`, code)); got != 200 {
			t.Fatalf("stepUp: %d, want 200", got)
		}
		a.call(t, front.URL+"/api/strong/orders").want(t, 200, "the call after the step-up")
		waitFor(t, "the other tab to take the raised session", func() bool { return b.stored(t).AccessToken == a.stored(t).AccessToken })
		b.call(t, front.URL+"/api/strong/orders").want(t, 200, "the other tab")
		for name, p := range map[string]*tab{"the tab that stepped up": a, "the other tab": b} {
			waitFor(t, name+" to hear of the step-up", func() bool {
				return slices.Equal(p.events(t), []string{"signed_in", "stepped_up"})
			})
		}
		w.wantRefreshes(t, e, 0, 0)
	})

	t.Run("onChange tells every tab of a sign-in, a refresh and a sign-out with its reason, until unsubscribed", func(t *testing.T) {
		e := newTestEnv(t)
		front := startAppFront(t, e)
		w := newWindow(t, browser)
		a, b, c := w.open(t, front.URL+"/"), w.open(t, front.URL+"/"), w.open(t, front.URL+"/")
		evaluate[bool](t, c, `(window.unsubscribed = [], auth.onChange((ev) => unsubscribed.push(ev.type))(), true)`)
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b, c)
		expire(e)
		b.call(t, front.URL+"/api/orders").want(t, 200)
		evaluate[int](t, a, `auth.signOut().then(r => r.status)`)
		want := []string{"signed_in", "refreshed", "signed_out:signed_out"}
		for i, p := range []*tab{a, b, c} {
			waitFor(t, fmt.Sprintf("tab %d to hear of all three changes", i), func() bool { return slices.Equal(p.events(t), want) })
			if got := p.signOuts(t); !slices.Equal(got, []string{"signed_out"}) {
				t.Fatalf("tab %d: onSignOut heard %q, want the one sign-out", i, got)
			}
		}
		if got := evaluate[[]string](t, c, `unsubscribed`); len(got) != 0 {
			t.Fatalf("a listener that unsubscribed heard %q", got)
		}
	})

	t.Run("getAccessToken refreshes a token about to expire, once for all tabs", func(t *testing.T) {
		e := newTestEnv(t)
		front := startAppFront(t, e)
		w := newWindow(t, browser)
		a, b := w.open(t, front.URL+"/"), w.open(t, front.URL+"/")
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b)
		old := a.stored(t).AccessToken
		if got := evaluate[string](t, a, `auth.getAccessToken()`); got != old {
			t.Fatal("getAccessToken refreshed a token with its whole lifetime ahead")
		}
		w.wantRefreshes(t, e, 0, 0)

		// Both tabs' clocks move to two seconds before the token expires.
		ahead := (e.cfg.accessTTL - 2*time.Second).Milliseconds()
		tokens := make([]string, 2)
		var wg sync.WaitGroup
		for i, p := range []*tab{a, b} {
			evaluate[bool](t, p, fmt.Sprintf(`(() => { const now = Date.now; Date.now = () => now() + %d; return true; })()`, ahead))
			// Five callers in each tab at once.
			wg.Go(func() {
				got := evaluate[[]string](t, p, `Promise.all([1, 2, 3, 4, 5].map(() => auth.getAccessToken()))`)
				if len(slices.Compact(slices.Clone(got))) != 1 {
					t.Errorf("tab %d: its callers got different tokens", i)
				}
				tokens[i] = got[0]
			})
		}
		wg.Wait()
		if tokens[0] == old || tokens[0] != tokens[1] {
			t.Fatalf("getAccessToken near expiry gave the old token: %v, or the tabs different ones: %v", tokens[0] == old, tokens[0] != tokens[1])
		}
		e.page(t, tokens[0]).want(t, 200, "")
		w.wantRefreshes(t, e, 1, 0)
	})

	t.Run("a Request keeps its method, headers and body, sent again after a refresh", func(t *testing.T) {
		e := newTestEnv(t)
		front := startAppFront(t, e)
		w := newWindow(t, browser)
		a := w.open(t, front.URL+"/")
		a.signIn(t, e.newUser(t))
		expire(e)
		r := evaluate[callResult](t, a, `call(new Request("/api/orders", {method: "POST", headers: {"X-Trace": "t-1", "Content-Type": "text/plain"}, body: "two apples"}))`)
		got := r.want(t, 200).echoed(t)
		if got.Method != "POST" || got.Header.Get("X-Trace") != "t-1" || got.Body != "two apples" ||
			got.Header.Get("Authorization") != "Bearer "+a.stored(t).AccessToken {
			t.Fatalf("the API saw %+v; want the POST with its header, its body and the new token", got)
		}
		w.wantCount(t, "POST", "/api/orders", 2)
		w.wantRefreshes(t, e, 1, 0)

		// As fetch does, init overrides the Request: its method, its headers (all of them) and its body.
		expire(e)
		r = evaluate[callResult](t, a, `call(new Request("/api/orders", {method: "POST", headers: {"X-Trace": "t-1"}, body: "two apples"}), {method: "PUT", headers: {"X-Other": "o-1"}, body: "three pears"})`)
		got = r.want(t, 200).echoed(t)
		if got.Method != "PUT" || got.Header.Get("X-Trace") != "" || got.Header.Get("X-Other") != "o-1" ||
			got.Body != "three pears" || got.Header.Get("Authorization") != "Bearer "+a.stored(t).AccessToken {
			t.Fatalf("the API saw %+v; want init's PUT, its header alone, its body and the new token", got)
		}
		w.wantRefreshes(t, e, 2, 0)
	})

	t.Run("a session ended elsewhere or past its age signs every tab out, with the reason", func(t *testing.T) {
		for _, tt := range []struct {
			reason string
			max    time.Duration
			heard  []string // what each tab hears, the end aside
			// end ends the session; call makes a call in a tab that passes.
			end func(t *testing.T, e *testEnv, email string, call func())
		}{
			{"token_revoked", 0, []string{"signed_in"}, func(t *testing.T, e *testEnv, email string, call func()) {
				other, _ := e.login(t, email, "correct horse battery") // another device
				e.do(t, "POST", "/auth/logout?scope=others", nil, "Authorization", "Bearer "+other).want(t, 200, "")
				expire(e)
			}},
			// The refresh tokens expire with the session; within the leeway after it, the service
			// says that the session ended.
			// An access token is taken for its leeway past the session's end, as long as the service
			// says session_expired to its refresh: a tab hears it when it refreshes ahead of a 401,
			// as getAccessToken does near the token's expiry by the tab's clock.
			{"session_expired", 7 * time.Minute, []string{"signed_in", "refreshed"}, func(t *testing.T, e *testEnv, email string, call func()) {
				e.clock.Advance(4 * time.Minute)
				call()
				e.clock.Advance(3*time.Minute + time.Second)
			}},
		} {
			t.Run(tt.reason, func(t *testing.T) {
				e := newTestEnv(t, func(c *config) { c.sessionMaxAge = tt.max })
				front := startAppFront(t, e)
				w := newWindow(t, browser)
				a, b := w.open(t, front.URL+"/"), w.open(t, front.URL+"/")
				email := e.newUser(t)
				a.signIn(t, email)
				waitSignedIn(t, b)
				tt.end(t, e, email, func() { a.call(t, front.URL+"/api/orders").want(t, 200) })
				w.expect(401)
				if tt.max == 0 {
					r := b.call(t, front.URL+"/api/orders")
					if r.Status != 401 || !strings.Contains(r.Body, `"`+tt.reason+`"`) {
						t.Fatalf("the call after the session ended: %d %s, want 401 %s", r.Status, r.Body, tt.reason)
					}
				} else {
					js := fmt.Sprintf(`(() => { const now = Date.now; Date.now = () => now() + %d; return auth.getAccessToken(); })()`, e.cfg.accessTTL.Milliseconds())
					if got := evaluate[*string](t, b, js); got != nil {
						t.Fatal("getAccessToken after the session's end gave a token")
					}
				}
				for name, p := range map[string]*tab{"the tab that called": b, "the other tab": a} {
					waitFor(t, name+" to hear why the session ended", func() bool {
						return slices.Equal(p.events(t), append(slices.Clone(tt.heard), "signed_out:"+tt.reason))
					})
				}
			})
		}
	})
}

// events are what auth.onChange told the tab, as "type" or "type:reason".
func (p *tab) events(tb testing.TB) []string {
	tb.Helper()
	return evaluate[[]string](tb, p, `events`)
}

// startAppFront serves, on one origin, the test page, the service e under /auth/ and an echo API
// under /api/ that asks the service about the caller's token first (and for a second factor
// under /api/strong/), as a proxy in front of an app does.
func startAppFront(tb testing.TB, e *testEnv) *httptest.Server {
	tb.Helper()
	service, err := url.Parse(e.srv.URL)
	if err != nil {
		tb.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.Handle("/", http.FileServer(http.Dir("testdata/browser")))
	mux.Handle("/auth/", httputil.NewSingleHostReverseProxy(service))
	mux.HandleFunc("/api/", func(w http.ResponseWriter, r *http.Request) {
		check, _ := http.NewRequest("GET", e.srv.URL+forwardAuthPath, nil)
		check.Header.Set("Authorization", r.Header.Get("Authorization"))
		if strings.HasPrefix(r.URL.Path, "/api/strong/") {
			check.Header.Set("X-Auth-Require", "aal2")
		}
		res, err := http.DefaultClient.Do(check)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		defer res.Body.Close()
		if res.StatusCode != http.StatusOK {
			for _, name := range []string{"WWW-Authenticate", "Content-Type"} {
				w.Header().Set(name, res.Header.Get(name))
			}
			w.WriteHeader(res.StatusCode)
			io.Copy(w, res.Body)
			return
		}
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(echoed{r.Method, r.RequestURI, r.Header, string(body)})
	})
	return httptestServer(tb, mux)
}
