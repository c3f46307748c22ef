package main

import (
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/chromedp/chromedp"
)

const (
	nginxPortalConf = "deploy/nginx-portal.conf"
	caddyfilePortal = "deploy/Caddyfile-portal"
)

// The nginx file of deploy/ protects two apps with the portal, in real Chromium: sign-in and
// back, single sign-on, a second factor where a route asks for it, an allow list, sign-out.
func TestPortalProtectsAppsBehindNginx(t *testing.T) {
	t.Parallel()
	bin := nginxBinary(t)
	testPortalBehind(t, func(tb testing.TB, addr, publicURL, auth, app1, app2 string) error {
		return runNginx(tb, bin, nginxConfFile(tb, bin, nginxPortalSite(tb, addr, publicURL, auth, app1, app2)), addr)
	})
}

// The Caddyfile of deploy/ does as the nginx file does, through GET /auth/forward's redirects.
func TestPortalProtectsAppsBehindCaddy(t *testing.T) {
	t.Parallel()
	bin := caddyBinary(t)
	testPortalBehind(t, func(tb testing.TB, addr, publicURL, auth, app1, app2 string) error {
		dir := tb.TempDir()
		conf := "{\n\tadmin off\n\tauto_https off\n}\n" + caddyPortalSite(tb, addr, publicURL, auth, app1, app2)
		if err := os.WriteFile(dir+"/Caddyfile", []byte(conf), 0o600); err != nil {
			tb.Fatal(err)
		}
		return runCaddy(tb, bin, dir, addr)
	})
}

// testPortalBehind runs the portal's story through a proxy that start starts on addr, serving the
// portal as auth.example.test and two echo apps as app1.example.test and app2.example.test, all
// on addr's port, with the cookie on example.test. Chromium resolves those names to 127.0.0.1.
func testPortalBehind(t *testing.T, start func(tb testing.TB, addr, publicURL, auth, app1, app2 string) error) {
	addr := freeLoopbackAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	publicURL := "http://auth.example.test:" + port
	// Plain http, as PUBLIC_URL may be only on localhost in production; the cookie is then not
	// Secure, and Chromium keeps it on http.
	e := newTestEnv(t, func(c *config) {
		c.portalCfg.publicURL, c.portalCfg.secure, c.portalCfg.cookieDomain = publicURL, false, "example.test"
	})
	one, two := startSeenApp(t), startSeenApp(t)
	if err := start(t, addr, publicURL, hostPort(t, e.srv.URL), hostPort(t, one.srv.URL), hostPort(t, two.srv.URL)); err != nil {
		t.Fatal(err) // a port taken in between: rare, and the test would need a new service too
	}
	browser := startChromium(t,
		chromedp.Flag("host-resolver-rules", "MAP *.example.test 127.0.0.1"),
		chromedp.Flag("explicitly-allowed-ports", port),
		chromedp.Flag("no-proxy-server", true),
		// Chromium would first try https for a typed http address.
		chromedp.Flag("disable-features", "site-per-process,Translate,BlinkGenPropertyTrees,HttpsUpgrades,HttpsFirstBalancedModeAutoEnable"),
	)
	app1, app2 := "http://app1.example.test:"+port, "http://app2.example.test:"+port
	login := publicURL + "/login?rd="

	// Ada has an authenticator app: her sign-in asks for its code.
	ada, access, _ := e.user(t)
	adaID := userID(t, e, access)
	secret, _ := e.enrolTOTP(t, access)
	a := newPortalTab(t, browser)
	a.navigate(t, app1+"/reports/7?view=week", 200)
	a.wantAt(t, login+"http%3A%2F%2Fapp1.example.test%3A"+port+"%2Freports%2F7%3Fview%3Dweek", login+"http://app1.example.test:"+port+"/reports/7?view=week")
	a.submit(t, map[string]string{"email": ada, "password": "correct horse battery"}, 200)
	if !strings.Contains(a.text(t), "Enter the code from your authenticator app") {
		t.Fatalf("after the password: %s, want the code page", a.text(t))
	}
	a.submit(t, map[string]string{"code": oathtool(t, secret, e.clock.Now())}, 200)
	a.wantAt(t, app1+"/reports/7?view=week")
	got := a.echoed(t)
	got.wantIdentity(t, adaID, ada)
	if acr := got.Header.Get("X-User-Acr"); acr != "aal2" {
		t.Fatalf("the app saw X-User-Acr %q after a sign-in with the code, want aal2", acr)
	}

	// Single sign-on: the other app opens without a sign-in, and so does a route asking for aal2.
	a.navigate(t, app2+"/", 200)
	a.wantAt(t, app2+"/")
	a.echoed(t).wantIdentity(t, adaID, ada)
	a.navigate(t, app1+"/admin/users", 200)
	a.wantAt(t, app1+"/admin/users")
	a.echoed(t).wantIdentity(t, adaID, ada)

	// An allow list Ada is not on: 403, and the app never sees the request.
	a.navigate(t, app1+"/finance/q3", 403)
	if one.saw("/finance/q3") {
		t.Fatal("the app behind an allow list saw a user who is not on it")
	}

	// Signed out, both apps send her to the sign-in page again.
	a.navigate(t, publicURL+"/logout", 200)
	a.submit(t, nil, 200)
	if !strings.Contains(a.text(t), "You are signed out") {
		t.Fatalf("after signing out: %s", a.text(t))
	}
	a.navigate(t, app1+"/reports/7", 200)
	a.wantAt(t, login+"http%3A%2F%2Fapp1.example.test%3A"+port+"%2Freports%2F7", login+"http://app1.example.test:"+port+"/reports/7")
	a.navigate(t, app2+"/", 200)
	a.wantAt(t, login+"http%3A%2F%2Fapp2.example.test%3A"+port+"%2F", login+"http://app2.example.test:"+port+"/")
	if one.saw("/reports/7") || two.count("/") != 1 {
		t.Fatal("an app saw a request after the sign-out")
	}

	// Bob signs in with a password alone, in another browser: the route asking for aal2 sends
	// him to the step-up page, which says that his account has no second factor yet.
	bob := e.newUser(t)
	b := newPortalTab(t, browser)
	b.navigate(t, app2+"/admin/", 200)
	b.submit(t, map[string]string{"email": bob, "password": "correct horse battery"}, 403)
	b.wantAt(t, publicURL+"/step-up?rd=http%3A%2F%2Fapp2.example.test%3A"+port+"%2Fadmin%2F",
		publicURL+"/step-up?rd=http://app2.example.test:"+port+"/admin/")
	if !strings.Contains(b.text(t), "your account has none") {
		t.Fatalf("a password-only session on a route asking for aal2: %s, want the step-up page", b.text(t))
	}
	b.navigate(t, app2+"/", 200)
	b.wantAt(t, app2+"/")
}

// nginxPortalSite is deploy/nginx-portal.conf for the test: its addresses replaced, and its app's
// server block served twice, as app1 and app2.
func nginxPortalSite(tb testing.TB, listen, publicURL, auth, app1, app2 string) string {
	tb.Helper()
	site := readDeployFile(tb, nginxPortalConf)
	block := site[strings.Index(site, "# The protected app."):]
	site += "upstream app2 { server " + app2 + "; }\n" +
		replaceIn(tb, nginxPortalConf, block,
			[3]string{"server_name app.example.com;", "server_name app2.example.test;", "1"},
			[3]string{"proxy_pass http://app;", "proxy_pass http://app2;", "4"})
	return replaceIn(tb, nginxPortalConf, site,
		[3]string{"listen 80;", "listen " + listen + ";", "3"},
		[3]string{"server 127.0.0.1:7878;", "server " + auth + ";", "1"},
		[3]string{"server 127.0.0.1:8080;", "server " + app1 + ";", "1"},
		[3]string{"server_name auth.example.com;", "server_name auth.example.test;", "1"},
		[3]string{"server_name app.example.com;", "server_name app1.example.test;", "1"},
		[3]string{"https://auth.example.com/", publicURL + "/", "6"})
}

// caddyPortalSite is deploy/Caddyfile-portal for the test, as nginxPortalSite is for nginx.
func caddyPortalSite(tb testing.TB, listen, publicURL, auth, app1, app2 string) string {
	tb.Helper()
	_, port, _ := net.SplitHostPort(listen)
	site := readDeployFile(tb, caddyfilePortal)
	block := site[strings.Index(site, "# The protected app."):]
	site += replaceIn(tb, caddyfilePortal, block,
		[3]string{"app.example.com {", "http://app2.example.test:" + port + " {", "1"},
		[3]string{"reverse_proxy app:8080", "reverse_proxy " + app2, "1"})
	return replaceIn(tb, caddyfilePortal, site,
		[3]string{"auth.example.com {", publicURL + " {", "1"},
		[3]string{"reverse_proxy auth:7878", "reverse_proxy " + auth, "1"},
		[3]string{" auth:7878 {", " " + auth + " {", "6"},
		[3]string{"app.example.com {", "http://app1.example.test:" + port + " {", "1"},
		[3]string{"reverse_proxy app:8080", "reverse_proxy " + app1, "1"})
}

func readDeployFile(tb testing.TB, path string) string {
	tb.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		tb.Fatal(err)
	}
	return string(b)
}

// replaceIn makes each replacement {old, new, count} in s, failing unless s holds old exactly
// count times: a changed deploy file must not leave the test running something else.
func replaceIn(tb testing.TB, file, s string, rs ...[3]string) string {
	tb.Helper()
	for _, r := range rs {
		if n := strings.Count(s, r[0]); r[2] != strconv.Itoa(n) {
			tb.Fatalf("%s holds %d of %q, which the test replaces, want %s", file, n, r[0], r[2])
		}
		s = strings.ReplaceAll(s, r[0], r[1])
	}
	return s
}

// portalTab is one tab in a browser context of its own: a user's browser, cookies and all.
type portalTab struct{ ctx context.Context }

func newPortalTab(tb testing.TB, browser context.Context) *portalTab {
	tb.Helper()
	ctx, cancel := chromedp.NewContext(browser, chromedp.WithNewBrowserContext())
	tb.Cleanup(cancel)
	return &portalTab{ctx}
}

// navigate opens u and fails unless the page it ends on (after redirects) answers status.
func (p *portalTab) navigate(tb testing.TB, u string, status int64) {
	tb.Helper()
	res, err := chromedp.Run(p.ctx, chromedp.NavigateResponse(u))
	if err != nil {
		tb.Fatalf("opening %s: %v", u, err)
	}
	if res.Status != status {
		tb.Fatalf("opening %s: ended on %s with %d, want %d: %s", u, res.URL, res.Status, status, p.text(tb))
	}
}

// submit fills the page's form with fields (by id) and sends it, failing unless the page it ends
// on answers status.
func (p *portalTab) submit(tb testing.TB, fields map[string]string, status int64) {
	tb.Helper()
	for id, v := range fields {
		if err := chromedp.Do(p.ctx, chromedp.SetValue(chromedp.ID(id), v)); err != nil {
			tb.Fatalf("filling in %s: %v", id, err)
		}
	}
	res, err := chromedp.RunResponse(p.ctx, chromedp.Click(chromedp.CSS("button[type=submit]")))
	if err != nil {
		tb.Fatalf("sending the form: %v", err)
	}
	if res.Status != status {
		tb.Fatalf("sending the form: ended on %s with %d, want %d: %s", res.URL, res.Status, status, p.text(tb))
	}
}

// wantAt fails unless the tab is at one of urls.
func (p *portalTab) wantAt(tb testing.TB, urls ...string) {
	tb.Helper()
	at, err := chromedp.Run(p.ctx, chromedp.Location())
	if err != nil {
		tb.Fatal(err)
	}
	for _, u := range urls {
		if at == u {
			return
		}
	}
	tb.Fatalf("the browser is at %s, want %s: %s", at, urls[0], p.text(tb))
}

func (p *portalTab) text(tb testing.TB) string {
	tb.Helper()
	s, err := chromedp.Run(p.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

// echoed is what the echo app the tab shows saw of the request.
func (p *portalTab) echoed(tb testing.TB) echoed {
	tb.Helper()
	var got echoed
	if err := json.Unmarshal([]byte(p.text(tb)), &got); err != nil {
		tb.Fatalf("the page is not the app's echo: %v: %s", err, p.text(tb))
	}
	return got
}

// seenApp is an app that echoes each request, as startEchoApp's does, and keeps the paths asked
// for: Chromium asks for /favicon.ico on its own, so a count of requests would not tell.
type seenApp struct {
	srv   *httptest.Server
	mu    sync.Mutex
	paths []string
}

func startSeenApp(tb testing.TB) *seenApp {
	tb.Helper()
	echo, _ := startEchoApp(tb)
	a := &seenApp{}
	a.srv = httptestServer(tb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		a.mu.Lock()
		a.paths = append(a.paths, r.URL.RequestURI())
		a.mu.Unlock()
		echo.Config.Handler.ServeHTTP(w, r)
	}))
	return a
}

func (a *seenApp) count(uri string) int {
	a.mu.Lock()
	defer a.mu.Unlock()
	n := 0
	for _, p := range a.paths {
		if p == uri {
			n++
		}
	}
	return n
}

func (a *seenApp) saw(uri string) bool { return a.count(uri) > 0 }
