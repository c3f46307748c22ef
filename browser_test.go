package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/page"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	dto "github.com/prometheus/client_model/go"
)

// The browser tests run client.js, as the service serves it, in a real Chromium driven over the
// DevTools protocol. A test page (testdata/browser/index.html) imports the module and lets the test
// call it; several tabs of one browser context share localStorage, Web Locks and storage events,
// as the tabs of one user's browser do. The service runs on its settable clock, so a test expires
// tokens by moving that clock rather than by sleeping: the module reacts to the service's 401s,
// never to its own idea of the time, so a browser clock that disagrees changes nothing.
//
// Every request the tabs make, preflights included, is counted through the DevTools protocol and
// checked against the service's /metrics. A console error fails the test, but for the browser's
// own "Failed to load resource" line about an answer the test expects (a 401, or a 503 during an
// outage), which Chromium logs for every such fetch.

// nginxSPAConf is the nginx configuration for a single-page app that the README shows; the tests
// run exactly this text, with only the addresses and the application's directory changed.
const nginxSPAConf = "deploy/nginx-spa.conf"

func TestClientInABrowserAcrossOrigins(t *testing.T) {
	t.Parallel()
	browser := startChromium(t)
	// The app's own origin, another than the service's: the service lists it for CORS.
	app := httptestServer(t, http.FileServer(http.Dir("testdata/browser")))
	listed := func(c *config) { c.corsOrigins = []string{app.URL} }
	// open opens a tab of w on the test page, set up for the service e and the query q.
	open := func(t *testing.T, w *window, e *testEnv, q string) *tab {
		return w.open(t, app.URL+"/?service="+url.QueryEscape(e.srv.URL)+q)
	}
	// expire moves e's clock past the access token's lifetime, and then some.
	expire := func(e *testEnv, extra time.Duration) {
		e.clock.Advance(e.cfg.accessTTL + e.cfg.leeway + time.Second + extra)
	}

	t.Run("preflights pass, a signed-out call carries no token, and the challenge is readable", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		a := open(t, w, e, "")
		pageURL := e.srv.URL + "/auth/page"

		r := a.call(t, pageURL)
		if r.Status != 401 || r.Challenge != "Bearer" || !strings.Contains(r.Body, `"token_missing"`) {
			t.Fatalf("signed out: got %d %q %s, want 401 with the bare Bearer challenge of token_missing", r.Status, r.Challenge, r.Body)
		}
		if sent := w.find("GET", "/auth/page"); len(sent) != 1 || sent[0].auth != "" {
			t.Fatalf("signed out, the call went as %+v, want one request without Authorization", sent)
		}
		email := newEmail()
		if got := evaluate[int](t, a, fmt.Sprintf(`auth.signUp(%q, "correct horse battery").then(r => r.status)`, email)); got != 201 {
			t.Fatalf("signUp: %d, want 201", got)
		}
		a.signIn(t, email)
		a.call(t, pageURL).want(t, 200)
		// A bad token's challenge names the error, and a script on another origin can read it.
		challenge := evaluate[string](t, a, fmt.Sprintf(`fetch(%q, {headers: {Authorization: "Bearer not.a.token"}}).then(r => r.headers.get("WWW-Authenticate"))`, pageURL))
		if !strings.HasPrefix(challenge, `Bearer error="invalid_token"`) {
			t.Fatalf("the script read WWW-Authenticate %q, want the invalid_token challenge", challenge)
		}

		preflights := w.count("OPTIONS", "")
		if preflights < 3 { // signup, login and the page with a token, at least
			t.Fatalf("%d preflights seen, want one for each kind of call at least", preflights)
		}
		m := scrape(t, e)
		if got := served(m, "preflight", "OPTIONS", 204); got != preflights {
			t.Fatalf("the service answered %d preflights with 204, the browser sent %d", got, preflights)
		}
		if got := served(m, "", "OPTIONS", 0); got != preflights {
			t.Fatalf("the service saw %d OPTIONS, the browser sent %d preflights", got, preflights)
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("an expired access token is refreshed once and the call sent again", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		a := open(t, w, e, "")
		a.signIn(t, e.newUser(t))
		expire(e, 0)

		a.call(t, e.srv.URL+"/auth/page").want(t, 200)
		w.wantCount(t, "GET", "/auth/page", 2) // the 401, and the retry
		w.wantRefreshes(t, e, 1, 0)
		t.Logf("requests: %s", w.summary())
	})

	t.Run("ten calls refused at once make one refresh", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		a := open(t, w, e, "")
		a.signIn(t, e.newUser(t))
		expire(e, 0)

		got := evaluate[[]callResult](t, a, fmt.Sprintf(`Promise.all(Array.from({length: 10}, () => call(%q)))`, e.srv.URL+"/auth/page"))
		for i, r := range got {
			r.want(t, 200, fmt.Sprintf("call %d", i))
		}
		w.wantCount(t, "GET", "/auth/page", 20)
		w.wantRefreshes(t, e, 1, 0)
		t.Logf("requests: %s", w.summary())
	})

	t.Run("four tabs expiring together make one refresh and all stay signed in", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		tabs := []*tab{open(t, w, e, ""), open(t, w, e, ""), open(t, w, e, ""), open(t, w, e, "")}
		tabs[0].signIn(t, e.newUser(t))
		waitSignedIn(t, tabs...)
		expire(e, 0)

		results := make([]callResult, len(tabs))
		var wg sync.WaitGroup
		for i, p := range tabs {
			wg.Go(func() { results[i] = p.call(t, e.srv.URL+"/auth/page") })
		}
		wg.Wait()
		for i, r := range results {
			r.want(t, 200, fmt.Sprintf("tab %d", i))
		}
		w.wantRefreshes(t, e, 1, 0)
		for i, p := range tabs {
			if got := p.signOuts(t); len(got) != 0 {
				t.Fatalf("tab %d was told of a sign-out: %q", i, got)
			}
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("a tab idle past the reuse interval takes the rotated tokens and stays signed in", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		active, idle := open(t, w, e, ""), open(t, w, e, "")
		active.signIn(t, e.newUser(t))
		waitSignedIn(t, idle)
		idle.call(t, e.srv.URL+"/auth/page").want(t, 200)
		// A background tab is frozen: no script of it runs, no event reaches it.
		idle.setLifecycle(t, page.SetWebLifecycleStateStateFrozen)

		expire(e, 0)
		active.call(t, e.srv.URL+"/auth/page").want(t, 200)
		expire(e, e.reuseWindow())
		idle.setLifecycle(t, page.SetWebLifecycleStateStateActive)
		idle.call(t, e.srv.URL+"/auth/page").want(t, 200, "the tab that woke up")

		presented := w.refreshTokens(t)
		if len(presented) != 2 || presented[0] == presented[1] {
			t.Fatalf("refresh tokens presented: %d, distinct %v; want two refreshes, each with the token then current",
				len(presented), len(presented) == 2 && presented[0] != presented[1])
		}
		w.wantRefreshes(t, e, 2, 0)
		for _, p := range []*tab{active, idle} {
			if got := p.signOuts(t); len(got) != 0 {
				t.Fatalf("a tab was told of a sign-out: %q", got)
			}
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("a tab whose copy of localStorage still shows a token retired long ago does not present it", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		a, b := open(t, w, e, ""), open(t, w, e, "")
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b)
		// Chromium brings a tab's copy of localStorage up to date a moment after another tab
		// writes, and a tab waking from a freeze may read the old tokens in that moment. Here b's
		// copy is held back on purpose, until half a second after b starts its call.
		evaluate[bool](t, b, `(() => {
			const held = localStorage.getItem("auth"), read = Storage.prototype.getItem;
			Storage.prototype.getItem = function (k) { return k === "auth" && window.lagging ? held : read.call(this, k); };
			return window.lagging = true;
		})()`)

		expire(e, 0)
		a.call(t, e.srv.URL+"/auth/page").want(t, 200)
		e.clock.Advance(e.reuseWindow()) // presenting the old token now ends the session
		r := evaluate[callResult](t, b, fmt.Sprintf(`(setTimeout(() => window.lagging = false, 500), call(%q))`, e.srv.URL+"/auth/page"))
		r.want(t, 200, "the lagging tab")

		w.wantRefreshes(t, e, 1, 0)
		if got := metricValue(t, scrape(t, e), "auth_refreshes_total", "outcome", "reused"); got != 0 {
			t.Fatal("the lagging tab presented the retired refresh token")
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("a replayed refresh token ends the session in every tab, with the reason", func(t *testing.T) {
		for _, tt := range []struct {
			name   string
			reason string
			// steal plays the thief with the refresh token taken from the tab, around the tab's
			// own refresh (rotate).
			steal func(t *testing.T, e *testEnv, stolen string, rotate func())
		}{
			{"the thief replays a token the tab has since rotated", "token_reused",
				func(t *testing.T, e *testEnv, stolen string, rotate func()) {
					expire(e, 0)
					rotate()
					e.clock.Advance(e.reuseWindow())
					e.refresh(t, stolen).want(t, 401, "token_reused")
				}},
			{"the thief rotates the token first, and the tab presents it after the reuse interval", "token_reused",
				func(t *testing.T, e *testEnv, stolen string, rotate func()) {
					e.refresh(t, stolen).want(t, 200, "")
					expire(e, e.reuseWindow())
				}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				e := newTestEnv(t, listed)
				w := newWindow(t, browser)
				a, b := open(t, w, e, ""), open(t, w, e, "")
				a.signIn(t, e.newUser(t))
				waitSignedIn(t, b)
				stolen := a.stored(t).RefreshToken
				tt.steal(t, e, stolen, func() { a.call(t, e.srv.URL+"/auth/page").want(t, 200) })

				r := b.call(t, e.srv.URL+"/auth/page")
				if r.Status != 401 || !strings.Contains(r.Body, `"`+tt.reason+`"`) {
					t.Fatalf("after the replay, the call got %d %s; want 401 %s", r.Status, r.Body, tt.reason)
				}
				for name, p := range map[string]*tab{"the tab that called": b, "the other tab": a} {
					waitFor(t, name+" is told why the session ended", func() bool {
						return slices.Equal(p.signOuts(t), []string{tt.reason})
					})
				}
				if got := scrape(t, e); metricValue(t, got, "auth_refreshes_total", "outcome", "reused") != 1 {
					t.Fatal("the service did not count one replayed refresh token")
				}
				t.Logf("requests: %s", w.summary())
			})
		}
	})

	t.Run("signing out in one tab signs out every tab", func(t *testing.T) {
		e := newTestEnv(t, listed)
		w := newWindow(t, browser)
		a, b := open(t, w, e, ""), open(t, w, e, "")
		a.signIn(t, e.newUser(t))
		waitSignedIn(t, b)
		b.call(t, e.srv.URL+"/auth/page").want(t, 200)
		access := a.stored(t).AccessToken

		if got := evaluate[int](t, a, `auth.signOut().then(r => r.status)`); got != 200 {
			t.Fatalf("signOut: %d, want 200", got)
		}
		for name, p := range map[string]*tab{"the tab that signed out": a, "the other tab": b} {
			waitFor(t, name+" is told of the sign-out", func() bool {
				return slices.Equal(p.signOuts(t), []string{"signed_out"})
			})
		}
		before := len(w.find("GET", "/auth/page"))
		r := b.call(t, e.srv.URL+"/auth/page")
		if r.Status != 401 || r.Challenge != "Bearer" {
			t.Fatalf("after signing out: %d %q, want 401 with the bare Bearer challenge", r.Status, r.Challenge)
		}
		if sent := w.find("GET", "/auth/page")[before:]; len(sent) != 1 || sent[0].auth != "" {
			t.Fatalf("after signing out the call went as %+v, want one request without Authorization", sent)
		}
		e.page(t, access).want(t, 401, "token_revoked")
		t.Logf("requests: %s", w.summary())
	})

	t.Run("refreshing ahead of expiry, one tab asks the service for each new token", func(t *testing.T) {
		e := newTestEnv(t, listed, func(c *config) { c.accessTTL = 3 * time.Second })
		w := newWindow(t, browser)
		// Each tab sets a timer for a second after each new token; all fire together.
		tabs := []*tab{open(t, w, e, "&ahead=2"), open(t, w, e, "&ahead=2"), open(t, w, e, "&ahead=2")}
		tabs[0].signIn(t, e.newUser(t))
		waitFor(t, "three refreshes ahead of expiry", func() bool {
			return metricValue(t, scrape(t, e), "auth_refreshes_total", "outcome", "rotated") >= 3
		})
		// Signing out stops the timers; then the counts hold still.
		evaluate[int](t, tabs[1], `auth.signOut().then(r => r.status)`)
		waitFor(t, "every refresh the browser sent to be answered", func() bool {
			return served(scrape(t, e), "POST /auth/refresh", "POST", 0) == w.count("POST", "/auth/refresh")
		})

		// A refresh in flight when the session ended is refused, so the count of rotations may fall
		// one short of the refreshes sent; but no token may be presented twice.
		presented := w.refreshTokens(t)
		if len(presented) != len(slices.Compact(slices.Sorted(slices.Values(presented)))) {
			t.Fatalf("a refresh token was presented twice: %d refreshes", len(presented))
		}
		m := scrape(t, e)
		for _, outcome := range []string{"reuse_grace", "reused"} {
			if got := metricValue(t, m, "auth_refreshes_total", "outcome", outcome); got != 0 {
				t.Fatalf("auth_refreshes_total{outcome=%q} is %v, want 0: a tab presented a token another had used", outcome, got)
			}
		}
		t.Logf("requests: %s; rotated %v", w.summary(), metricValue(t, m, "auth_refreshes_total", "outcome", "rotated"))
	})
}

func TestClientInABrowserBehindNginx(t *testing.T) {
	t.Parallel()
	bin := nginxBinary(t)
	browser := startChromium(t)

	t.Run("the shell is public, the API guarded, and the app signs in, refreshes and signs out", func(t *testing.T) {
		e := newTestEnv(t)
		px := startNginxSPA(t, e, bin)
		for _, path := range []string{"/", "/login", "/orders/42"} {
			r := px.do(t, "GET", path, "")
			if r.status != 200 || !strings.Contains(r.raw, "client.js") {
				t.Fatalf("GET %s without a token: %d, want the application's page", path, r.status)
			}
		}
		if r := px.do(t, "GET", "/auth/client.js", ""); r.status != 200 || !strings.Contains(r.raw, "export function createAuth") {
			t.Fatalf("GET /auth/client.js: %d, want the module", r.status)
		}
		if r := px.do(t, "GET", "/api/orders", ""); r.status != 401 || px.appHits.Load() != 0 {
			t.Fatalf("GET /api/orders without a token: %d, the API reached %d times; want 401 and never", r.status, px.appHits.Load())
		}

		w := newWindow(t, browser)
		a := w.open(t, px.url+"/login")
		email := e.newUser(t)
		a.signIn(t, email)
		id := a.session(t).UserID
		a.call(t, "/api/orders").want(t, 200).echoed(t).wantIdentity(t, id, email)
		// Whatever identity a client claims, under any spelling, the API is told the token's.
		px.echo(t, "/api/orders", append(spoofedIdentity(), "Authorization", "Bearer "+a.stored(t).AccessToken)...).
			wantIdentity(t, id, email)

		e.clock.Advance(e.cfg.accessTTL + e.cfg.leeway + time.Second)
		a.call(t, "/api/orders").want(t, 200).echoed(t).wantIdentity(t, id, email)
		w.wantCount(t, "GET", "/api/orders", 3) // 200; 401 from nginx, then 200 after the refresh
		w.wantRefreshes(t, e, 1, 0)
		w.wantCount(t, "OPTIONS", "", 0)

		evaluate[int](t, a, `auth.signOut().then(r => r.status)`)
		r := a.call(t, "/api/orders")
		if r.Status != 401 || r.Challenge != "Bearer" {
			t.Fatalf("signed out: %d %q, want nginx's 401 with the bare Bearer challenge", r.Status, r.Challenge)
		}
		t.Logf("requests: %s", w.summary())
	})

	t.Run("a refresh during a database outage keeps the user signed in and succeeds after it", func(t *testing.T) {
		dbAddr, _ := startOwnDevDB(t, newDataDir(t))
		e, db := newTestEnvThrough(t, dbAddr, "")
		t.Cleanup(func() {
			if t.Failed() {
				t.Logf("the service's errors:\n%s", serviceErrors(e))
			}
		})
		px := startNginxSPA(t, e, bin)
		w := newWindow(t, browser)
		// Chromium logs each refused refresh, as it does a 401. Rarely the service answers one
		// with 500 instead of 503 (logged below); that is the service's to fix, and the client
		// retries any 5xx alike.
		w.expect(503)
		w.expect(500)
		a := w.open(t, px.url+"/?retryFor=60")
		a.signIn(t, e.newUser(t))
		a.call(t, "/api/orders").want(t, 200)

		e.clock.Advance(e.cfg.accessTTL + e.cfg.leeway + time.Second)
		db.cut()
		done := make(chan callResult, 1)
		go func() { done <- a.call(t, "/api/orders") }()
		waitFor(t, "two refreshes answered 503", func() bool {
			return served(scrape(t, e), "POST /auth/refresh", "POST", 503) >= 2
		})
		if a.stored(t).RefreshToken == "" || len(a.signOuts(t)) != 0 {
			t.Fatal("the tab dropped its tokens during the outage")
		}
		db.connect(dbAddr)
		(<-done).want(t, 200, "the call made during the outage")

		m := scrape(t, e)
		refreshes := w.count("POST", "/auth/refresh")
		ok, unavailable := served(m, "POST /auth/refresh", "POST", 200), served(m, "POST /auth/refresh", "POST", 503)
		internal := served(m, "POST /auth/refresh", "POST", 500)
		if internal > 0 {
			t.Logf("the service answered %d refreshes with 500 rather than 503 during the outage:\n%s", internal, serviceErrors(e))
		}
		if ok != 1 || ok+unavailable+internal != refreshes {
			t.Fatalf("the browser sent %d refreshes; the service answered %d with 200 and %d with 503 (%d with 500), want 1 and the rest",
				refreshes, ok, unavailable, internal)
		}
		if len(a.signOuts(t)) != 0 || a.session(t).UserID == "" {
			t.Fatal("the outage signed the user out")
		}
		t.Logf("requests: %s", w.summary())
	})
}

func TestBrowserModuleSendsTheTokenOnlyToAllowedOrigins(t *testing.T) {
	t.Parallel()
	// api stands for the app's API on other origins than the page's. It lets the page read its
	// answers and notes the Authorization header of each call, by path. A call without a token
	// gets the challenge that makes the module refresh and send again, so that a retry would show.
	var mu sync.Mutex
	got := map[string][]string{}
	var app *httptest.Server
	api := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Access-Control-Allow-Origin", app.URL)
		h.Set("Access-Control-Allow-Headers", "Authorization")
		h.Set("Access-Control-Expose-Headers", "WWW-Authenticate")
		if r.Method == http.MethodOptions {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		mu.Lock()
		got[r.URL.Path] = append(got[r.URL.Path], r.Header.Get("Authorization"))
		mu.Unlock()
		if r.Header.Get("Authorization") == "" {
			h.Set("WWW-Authenticate", `Bearer error="invalid_token"`)
			w.WriteHeader(http.StatusUnauthorized)
		}
	}))
	// Every name under .test, on any port, reaches api: a look-alike of a listed origin, a port
	// or a scheme other than the listed one's, is then a server that would see a token sent to it.
	browser := startChromium(t, chromedp.Flag("host-resolver-rules", "MAP *.test "+hostPort(t, api.URL)))
	app = httptestServer(t, http.FileServer(http.Dir("testdata/browser")))
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{app.URL} })
	w := newWindow(t, browser)
	w.expect(404)
	q := url.Values{"service": {e.srv.URL}, "api": {"http://api.test", "https://secure.test"}}
	a := w.open(t, app.URL+"/?"+q.Encode())
	a.signIn(t, e.newUser(t))
	bearer := "Bearer " + a.stored(t).AccessToken

	a.call(t, e.srv.URL+"/auth/page").want(t, 200, "the service's own origin")
	for _, tt := range []struct {
		name, input string // input is what auth.fetch is given, in JavaScript
		path        string // where it arrives
		token       bool
		refused     bool // by fetch itself: nothing arrives
	}{
		{"a listed origin", `"http://api.test/listed"`, "/listed", true, false},
		{"a listed origin, spelled otherwise", `"HTTP://API.Test:80/spelled"`, "/spelled", true, false},
		{"a Request to a listed origin", `new Request("http://api.test/request")`, "/request", true, false},
		{"an unlisted origin", `"http://other.test/unlisted"`, "/unlisted", false, false},
		{"a name that begins with a listed one", `"http://api.test.evil.test/prefix"`, "/prefix", false, false},
		{"a listed name on another port", `"http://api.test:8080/port"`, "/port", false, false},
		{"a listed name with http, listed with https", `"http://secure.test/scheme"`, "/scheme", false, false},
		{"a Request to an unlisted origin", `new Request("http://other.test/request-other")`, "/request-other", false, false},
		// fetch refuses a URL with credentials; the module must not be the one to send it.
		{"a listed origin as the userinfo of another", `"http://api.test@evil.test/userinfo"`, "/userinfo", false, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := evaluate[callResult](t, a, fmt.Sprintf(`call(%s).catch((e) => ({status: 0, body: String(e)}))`, tt.input))
			mu.Lock()
			seen := got[tt.path]
			mu.Unlock()
			switch {
			case tt.refused:
				if r.Status != 0 || len(seen) != 0 {
					t.Fatalf("got %d %s, want fetch to refuse the URL", r.Status, r.Body)
				}
			case tt.token:
				if r.Status != 200 || !slices.Equal(seen, []string{bearer}) {
					t.Fatalf("got %d; the API saw Authorization %q; want 200 and the token, once", r.Status, seen)
				}
			default:
				// Sent once, without a token, and answered as the API answered: not refreshed, not sent again.
				if r.Status != 401 || !slices.Equal(seen, []string{""}) {
					t.Fatalf("got %d; the API saw Authorization %q; want one call without a token, and its 401", r.Status, seen)
				}
			}
		})
	}

	// The page's own origin is not the service's here, and not listed.
	a.call(t, app.URL+"/missing").want(t, 404, "the page's own origin")
	if sent := w.find("GET", "/missing"); len(sent) != 1 || sent[0].auth != "" {
		t.Fatalf("a call to the page's own origin went as %+v, want one request without Authorization", sent)
	}
	w.wantCount(t, "POST", "/auth/refresh", 0)
	t.Logf("requests: %s", w.summary())
}

// callResult is what the test page's call() reports of an auth.fetch.
type callResult struct {
	Status    int    `json:"status"`
	Body      string `json:"body"`
	Challenge string `json:"challenge"`
}

func (r callResult) want(tb testing.TB, status int, what ...string) callResult {
	tb.Helper()
	if r.Status != status {
		tb.Fatalf("%s: got %d %s (WWW-Authenticate %q), want %d", strings.Join(append(what, "auth.fetch"), ": "), r.Status, r.Body, r.Challenge, status)
	}
	return r
}

// echoed is what the echo API saw of a call that reached it.
func (r callResult) echoed(tb testing.TB) echoed {
	tb.Helper()
	var got echoed
	if err := json.Unmarshal([]byte(r.Body), &got); err != nil {
		tb.Fatalf("the API's answer %q: %v", r.Body, err)
	}
	return got
}

// newUser signs up a fresh account on e and returns its email; the password is the one
// tab.signIn uses.
func (e *testEnv) newUser(tb testing.TB) string {
	tb.Helper()
	email := newEmail()
	e.signup(tb, email, "correct horse battery")
	return email
}

func newEmail() string { return strings.ToLower("user-" + newID()[:8] + "@example.com") }

// chromium finds Debian's Chromium (or a Chrome), or skips: it is a system package.
func chromium(tb testing.TB) string {
	tb.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "google-chrome-stable"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	tb.Skip("Chromium is not installed (apt-get install chromium); skipping the browser tests of client.js")
	return ""
}

// startChromium starts one headless Chromium for the test, with a fresh profile and any extra
// options, and stops it when the test ends. Background networking is off: the browser makes no
// request the test did not ask for, and on a closed network it does not wait on any.
func startChromium(tb testing.TB, extra ...chromedp.ExecAllocatorOption) context.Context {
	tb.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chromium(tb)),
		chromedp.UserDataDir(tb.TempDir()),
		chromedp.NoSandbox, // tests often run as root, where Chromium's sandbox refuses to start
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true),
	)
	opts = append(opts, extra...)
	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	browser, cancel := chromedp.NewContext(alloc)
	tb.Cleanup(func() { cancel(); cancelAlloc() })
	if err := chromedp.Do(browser); err != nil {
		tb.Fatalf("starting Chromium: %v", err)
	}
	return browser
}

// window is one browser context: its tabs share localStorage, Web Locks and storage events, as
// the tabs of one user's browser do, and nothing with another window. It records every request
// its tabs send and every console error.
type window struct {
	browser context.Context
	first   context.Context // the first tab, whose context owns the browser context

	mu       sync.Mutex
	requests []sentRequest
	problems []string
	expected []int // statuses of the "Failed to load resource" lines that the test expects
}

type sentRequest struct {
	method, path string
	auth         string // the Authorization header
	body         string
}

// newWindow opens a browser context of browser; when the test ends, any console error fails it.
func newWindow(tb testing.TB, browser context.Context) *window {
	tb.Helper()
	w := &window{browser: browser, expected: []int{401}}
	tb.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		for _, p := range w.problems {
			tb.Errorf("browser console: %s", p)
		}
	})
	return w
}

// expect allows the browser's "Failed to load resource" line for answers with this status.
func (w *window) expect(status int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.expected = append(w.expected, status)
}

// tab is one page of a window.
type tab struct {
	ctx context.Context
}

// open opens a tab of w at pageURL and waits until the test page has loaded client.js.
func (w *window) open(tb testing.TB, pageURL string) *tab {
	tb.Helper()
	parent, opts := w.first, []chromedp.ContextOption{chromedp.WithListener(w.listen)}
	if parent == nil {
		parent, opts = w.browser, append(opts, chromedp.WithNewBrowserContext())
	}
	ctx, cancel := chromedp.NewContext(parent, opts...)
	tb.Cleanup(cancel)
	if w.first == nil {
		w.first = ctx
	}
	p := &tab{ctx: ctx}
	if err := chromedp.Do(ctx, chromedp.Navigate(pageURL)); err != nil {
		tb.Fatalf("opening %s: %v", pageURL, err)
	}
	// The page sets window.ready once it has imported client.js; an error in the module fails the
	// test through the console check, and this wait then ends.
	if !evaluate[bool](tb, p, `new Promise((done) => {
		const until = Date.now() + 20000;
		const wait = () => (window.ready || Date.now() > until ? done(window.ready === true) : setTimeout(wait, 20));
		wait();
	})`) {
		tb.Fatalf("the page at %s did not load client.js within 20s", pageURL)
	}
	return p
}

// listen records what the tabs of w do. It runs in the loop that reads the tab's messages, so it
// only takes notes.
func (w *window) listen(ev any) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch ev := ev.(type) {
	case *network.EventRequestWillBeSent:
		u, err := url.Parse(ev.Request.URL)
		if err != nil || !strings.HasPrefix(u.Scheme, "http") {
			return
		}
		r := sentRequest{method: ev.Request.Method, path: u.Path}
		for name, v := range ev.Request.Headers {
			if s, ok := v.(string); ok && strings.EqualFold(name, "Authorization") {
				r.auth = s
			}
		}
		for _, part := range ev.Request.PostDataEntries {
			r.body += string(part.Bytes)
		}
		w.requests = append(w.requests, r)
	case *runtime.EventConsoleAPICalled:
		if ev.Type == runtime.ConsoleAPICalledTypeError || ev.Type == runtime.ConsoleAPICalledTypeAssert {
			var args []string
			for _, a := range ev.Args {
				args = append(args, a.Description+string(a.Value))
			}
			w.problems = append(w.problems, fmt.Sprintf("console.%s %s", ev.Type, strings.Join(args, " ")))
		}
	case *runtime.EventExceptionThrown:
		d := ev.ExceptionDetails
		desc := d.Text
		if d.Exception != nil {
			desc += " " + d.Exception.Description
		}
		w.problems = append(w.problems, fmt.Sprintf("uncaught %s at %s:%d", desc, d.URL, d.LineNumber+1))
	case *log.EventEntryAdded:
		if ev.Entry.Level != log.EntryLevelError {
			return
		}
		for _, status := range w.expected {
			if strings.HasPrefix(ev.Entry.Text, fmt.Sprintf("Failed to load resource: the server responded with a status of %d ", status)) {
				return
			}
		}
		w.problems = append(w.problems, fmt.Sprintf("%s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL))
	}
}

// find returns the requests the tabs sent with method to path, in order.
func (w *window) find(method, path string) []sentRequest {
	w.mu.Lock()
	defer w.mu.Unlock()
	var found []sentRequest
	for _, r := range w.requests {
		if r.method == method && (path == "" || r.path == path) {
			found = append(found, r)
		}
	}
	return found
}

// count is how many requests the tabs sent with method to path ("" for any path).
func (w *window) count(method, path string) int { return len(w.find(method, path)) }

func (w *window) wantCount(tb testing.TB, method, path string, want int) {
	tb.Helper()
	if got := w.count(method, path); got != want {
		tb.Fatalf("the browser sent %d %s %s, want %d; it sent %s", got, method, path, want, w.summary())
	}
}

// refreshTokens are the refresh tokens the tabs presented to /auth/refresh, in order.
func (w *window) refreshTokens(tb testing.TB) []string {
	tb.Helper()
	var tokens []string
	for _, r := range w.find("POST", "/auth/refresh") {
		var body struct {
			RefreshToken string `json:"refresh_token"`
		}
		if err := json.Unmarshal([]byte(r.body), &body); err != nil || body.RefreshToken == "" {
			tb.Fatalf("a refresh went with the body %q, want {\"refresh_token\"}", r.body)
		}
		tokens = append(tokens, body.RefreshToken)
	}
	return tokens
}

// wantRefreshes checks, through the browser and through the service's own counts, that the tabs
// sent exactly this many refreshes, and that the service rotated each and took none of them for
// a second use of one token.
func (w *window) wantRefreshes(tb testing.TB, e *testEnv, rotated, again int) {
	tb.Helper()
	w.wantCount(tb, "POST", "/auth/refresh", rotated+again)
	m := scrape(tb, e)
	if got := served(m, "POST /auth/refresh", "POST", 0); got != rotated+again {
		tb.Fatalf("the service answered %d refreshes, the browser sent %d", got, rotated+again)
	}
	for outcome, want := range map[string]int{"rotated": rotated, "reuse_grace": again} {
		if got := metricValue(tb, m, "auth_refreshes_total", "outcome", outcome); got != float64(want) {
			tb.Fatalf("auth_refreshes_total{outcome=%q} is %v, want %d", outcome, got, want)
		}
	}
}

// summary lists the requests sent, by method and path, for the test's log.
func (w *window) summary() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	counts := map[string]int{}
	for _, r := range w.requests {
		counts[r.method+" "+r.path]++
	}
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(counts)) {
		parts = append(parts, fmt.Sprintf("%s x%d", k, counts[k]))
	}
	return strings.Join(parts, ", ")
}

// evaluate runs a JavaScript expression in the tab, waits for it if it is a promise, and decodes
// its value. A minute is far more than any call here takes; it only keeps a hang from lasting.
func evaluate[T any](tb testing.TB, p *tab, js string) T {
	tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](js, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.Fatalf("%s: %v", js, err)
	}
	return v
}

// call is auth.fetch(url) in the tab. It may run on a goroutine of its own, so it reports a
// failure with Errorf and an empty result, which the caller's check then fails on.
func (p *tab) call(tb testing.TB, url string) callResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	js := fmt.Sprintf("call(%q)", url)
	v, err := chromedp.Run(ctx, chromedp.Evaluate[callResult](js, chromedp.EvalAwaitPromise))
	if err != nil {
		tb.Errorf("%s: %v", js, err)
	}
	return v
}

// signIn signs the tab in as email, with the password newUser gives every account.
func (p *tab) signIn(tb testing.TB, email string) {
	tb.Helper()
	if got := evaluate[int](tb, p, fmt.Sprintf(`auth.signIn(%q, "correct horse battery").then(r => r.status)`, email)); got != 200 {
		tb.Fatalf("signIn: %d, want 200", got)
	}
}

func (p *tab) signOuts(tb testing.TB) []string {
	tb.Helper()
	return evaluate[[]string](tb, p, `signOuts`)
}

type storedTokens struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	Ended        string `json:"ended"`
}

// stored is what the tab's localStorage holds for client.js.
func (p *tab) stored(tb testing.TB) storedTokens {
	tb.Helper()
	return evaluate[storedTokens](tb, p, `JSON.parse(localStorage.getItem("auth") ?? "{}")`)
}

type sessionInfo struct {
	UserID string `json:"userId"`
	Email  string `json:"email"`
}

func (p *tab) session(tb testing.TB) sessionInfo {
	tb.Helper()
	return evaluate[sessionInfo](tb, p, `auth.session() ?? {}`)
}

// waitSignedIn waits until each tab has seen, in its copy of localStorage, the tokens another tab
// stored. Chromium brings a tab's copy up to date a moment after another tab writes, as it
// delivers the storage event.
func waitSignedIn(tb testing.TB, tabs ...*tab) {
	tb.Helper()
	for i, p := range tabs {
		waitFor(tb, fmt.Sprintf("tab %d to see the sign-in", i), func() bool { return p.session(tb).UserID != "" })
	}
}

// setLifecycle freezes the tab, as Chromium does to a background tab, or wakes it.
func (p *tab) setLifecycle(tb testing.TB, state page.SetWebLifecycleStateState) {
	tb.Helper()
	if _, err := chromedp.Call(p.ctx, page.SetWebLifecycleState, page.SetWebLifecycleStateParams{State: state}); err != nil {
		tb.Fatalf("setting the tab %s: %v", state, err)
	}
}

// served is how many requests the service answered, by its auth_http_requests_total: route ""
// and status 0 match any.
func served(fams map[string]*dto.MetricFamily, route, method string, status int) int {
	var n float64
	for _, m := range fams["auth_http_requests_total"].GetMetric() {
		if (route == "" || labelOf(m, "route") == route) && labelOf(m, "method") == method &&
			(status == 0 || labelOf(m, "status") == fmt.Sprint(status)) {
			n += m.GetCounter().GetValue()
		}
	}
	return int(n)
}

// serviceErrors is the lines of e's log at level ERROR.
func serviceErrors(e *testEnv) string {
	var lines []string
	for _, line := range strings.Split(e.logs.String(), "\n") {
		if strings.Contains(line, `"level":"ERROR"`) {
			lines = append(lines, line)
		}
	}
	return strings.Join(lines, "\n")
}

// echo sends a request through the proxy that must reach the echo API, and returns what it saw.
func (px *proxyFront) echo(tb testing.TB, path string, headers ...string) echoed {
	tb.Helper()
	r := px.do(tb, "GET", path, "", headers...)
	var got echoed
	if r.status != http.StatusOK || json.Unmarshal([]byte(r.raw), &got) != nil {
		tb.Fatalf("GET %s through %s: got %d %s, want 200 from the API", path, px.name, r.status, r.raw)
	}
	return got
}

// startNginxSPA runs nginx with deploy/nginx-spa.conf in front of e, an echo app as the API, and
// testdata/browser as the application, and stops it when the test ends.
func startNginxSPA(tb testing.TB, e *testEnv, bin string) *proxyFront {
	tb.Helper()
	api, hits := startEchoApp(tb)
	root, err := filepath.Abs("testdata/browser")
	if err != nil {
		tb.Fatal(err)
	}
	px := newProxyFront(tb, "nginx", hits)
	for attempt := 1; ; attempt++ {
		addr := freeLoopbackAddr(tb)
		dir := nginxSPAConfig(tb, bin, addr, hostPort(tb, e.srv.URL), hostPort(tb, api.URL), root)
		err := runNginx(tb, bin, dir, addr)
		if err == nil {
			px.url = "http://" + addr
			return px
		}
		if !errors.Is(err, errAddrInUse) || attempt == 3 {
			tb.Fatal(err)
		}
	}
}

// nginxSPAConfig is a whole nginx.conf for a test: deploy/nginx-spa.conf inside an http block, with
// its addresses and directory replaced, and every file nginx writes kept in a temporary directory.
func nginxSPAConfig(tb testing.TB, bin, listen, auth, api, root string) (dir string) {
	tb.Helper()
	b, err := os.ReadFile(nginxSPAConf)
	if err != nil {
		tb.Fatal(err)
	}
	site := string(b)
	for _, r := range [][2]string{
		{"listen 80;", "listen " + listen + ";"},
		{"server 127.0.0.1:7878;", "server " + auth + ";"},
		{"server 127.0.0.1:8080;", "server " + api + ";"},
		{"root /srv/app;", fmt.Sprintf("root %q;", root)},
	} {
		if strings.Count(site, r[0]) != 1 {
			tb.Fatalf("%s no longer holds exactly one %q, which the test replaces", nginxSPAConf, r[0])
		}
		site = strings.Replace(site, r[0], r[1], 1)
	}
	dir = tb.TempDir()
	var c strings.Builder
	fmt.Fprintf(&c, "daemon off;\nmaster_process off;\npid %q;\nerror_log %q notice;\n",
		filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"))
	if os.Geteuid() == 0 {
		c.WriteString("user root;\n") // otherwise nginx, started by root, switches to "nobody"
	}
	c.WriteString("events { worker_connections 64; }\nhttp {\naccess_log off;\n")
	// What the stock nginx.conf's "include mime.types" gives the application's files.
	c.WriteString("types { text/html html; text/javascript js; }\n")
	fmt.Fprintf(&c, "client_body_temp_path %q;\nproxy_temp_path %q;\n",
		filepath.Join(dir, "body"), filepath.Join(dir, "proxy"))
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !strings.Contains(string(v), "--without-http_"+m+"_module") {
			fmt.Fprintf(&c, "%s_temp_path %q;\n", m, filepath.Join(dir, m))
		}
	}
	c.WriteString(site)
	c.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(c.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return dir
}
