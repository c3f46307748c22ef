package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

const testPortalURL = "https://auth.example.test"

// portalConfigFor is the portal of these tests: https, the cookie on example.test, and one more
// host a login may return to.
func withPortal(c *config) {
	c.portalCfg.publicURL, c.portalCfg.secure = testPortalURL, true
	c.portalCfg.cookieDomain, c.portalCfg.redirectHosts = "example.test", []string{"other.test"}
}

// browser is a browser on e's portal: it keeps the cookies it is given (by name, whatever the
// domain), follows no redirect, and posts forms from the portal's own pages.
type browser struct {
	e       *testEnv
	cookies map[string]string
	last    string // the last page's body
}

func newBrowser(e *testEnv) *browser { return &browser{e: e, cookies: map[string]string{}} }

type portalPage struct {
	status int
	header http.Header
	body   string
}

func (b *browser) send(tb testing.TB, method, path string, form url.Values, headers ...string) portalPage {
	tb.Helper()
	var body io.Reader
	if form != nil {
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.e.srv.URL+path, body)
	if err != nil {
		tb.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	for name, v := range b.cookies {
		req.AddCookie(&http.Cookie{Name: name, Value: v})
	}
	for i := 0; i+1 < len(headers); i += 2 {
		if headers[i+1] == "" {
			req.Header.Del(headers[i])
		} else {
			req.Header.Set(headers[i], headers[i+1])
		}
	}
	client := *b.e.srv.Client()
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	res, err := client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	for _, c := range res.Cookies() {
		if c.MaxAge < 0 {
			delete(b.cookies, c.Name)
		} else {
			b.cookies[c.Name] = c.Value
		}
	}
	b.last = string(raw)
	return portalPage{res.StatusCode, res.Header, string(raw)}
}

var (
	csrfField     = regexp.MustCompile(`name="csrf" value="([^"]+)"`)
	mfaTokenField = regexp.MustCompile(`name="mfa_token" value="([^"]+)"`)
)

// post sends form from the last page, with its CSRF token.
func (b *browser) post(tb testing.TB, path string, form url.Values, headers ...string) portalPage {
	tb.Helper()
	if m := csrfField.FindStringSubmatch(b.last); m != nil && !form.Has("csrf") {
		form.Set("csrf", m[1])
	}
	return b.send(tb, "POST", path, form, headers...)
}

// signIn signs in on the portal with the password, returning to rd, and answers the last page.
func (b *browser) signIn(tb testing.TB, email, rd string) portalPage {
	tb.Helper()
	b.send(tb, "GET", "/login?rd="+url.QueryEscape(rd), nil)
	return b.post(tb, "/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "rd": {rd}})
}

// forward asks the forward-auth check with the browser's cookies.
func (b *browser) forward(tb testing.TB, path string, headers ...string) portalPage {
	tb.Helper()
	return b.send(tb, "GET", path, nil, headers...)
}

func wantPage(tb testing.TB, p portalPage, status int, contains string) {
	tb.Helper()
	if p.status != status || !strings.Contains(p.body, contains) {
		tb.Fatalf("got %d %s, want %d with %q", p.status, p.body, status, contains)
	}
}

func TestPortalSignInSetsACookieThatPassesForwardAuth(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	p := b.signIn(t, email, "https://app.example.test/dashboard?x=1")
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "https://app.example.test/dashboard?x=1" {
		t.Fatalf("got %d to %q, want 303 to the app: %s", p.status, p.header.Get("Location"), p.body)
	}
	var set, clearedHostOnly bool
	for _, line := range p.header.Values("Set-Cookie") {
		if !strings.HasPrefix(line, cookieName+"=") {
			continue
		}
		if strings.Contains(line, "Max-Age=0") {
			clearedHostOnly = clearedHostOnly || !strings.Contains(line, "Domain=")
			continue
		}
		set = true
		for _, attr := range []string{"Domain=example.test", "Path=/", "HttpOnly", "Secure", "SameSite=Lax", "Max-Age="} {
			if !strings.Contains(line, attr) {
				t.Fatalf("the cookie %q lacks %s", line, attr)
			}
		}
	}
	if !set || !clearedHostOnly {
		t.Fatalf("set %v, cleared host-only %v: %q", set, clearedHostOnly, p.header.Values("Set-Cookie"))
	}
	f := b.forward(t, "/auth/page")
	if f.status != 200 || f.header.Get("X-User-Email") != email || f.header.Get("X-User-Id") == "" || f.header.Get("X-User-Acr") != "aal1" {
		t.Fatalf("forward auth with the cookie: %d %v %s", f.status, f.header, f.body)
	}
}

func TestACookieIsNoBearerTokenAndAnAccessTokenIsNoCookie(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	cookie := b.cookies[cookieName]
	e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+cookie).want(t, 401, "token_invalid")
	e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+cookie).want(t, 401, "token_invalid")
	e.do(t, "POST", "/auth/verify", nil, "Authorization", "Bearer "+cookie).want(t, 401, "token_invalid")
	e.do(t, "POST", "/auth/refresh", nil, "authorization_refresh", cookie).want(t, 401, "token_invalid")
	e.do(t, "GET", "/auth/page", nil, "Cookie", cookieName+"="+access).want(t, 401, "token_invalid")
	// Two cookies of the name fail closed, whichever is good.
	e.do(t, "GET", "/auth/page", nil, "Cookie", cookieName+"="+cookie+"; "+cookieName+"=x").want(t, 401, "invalid_request")
	// Among the apps' own cookies it is found, and counted across Cookie lines (HTTP/2 sends one a cookie).
	e.do(t, "GET", "/auth/page", nil, "Cookie", "theme=dark;"+cookieName+"="+cookie+" ; lang=en").want(t, 200, "")
	r := httptest.NewRequest("GET", "/auth/page", nil)
	r.Header["Cookie"] = []string{"a=1; " + cookieName + "=" + cookie, "b=2", cookieName + "=x"}
	if _, n := sessionCookieValue(r); n != 2 {
		t.Fatalf("%d session cookies counted over three Cookie lines, want 2", n)
	}
}

func TestTheCookieCheckSendsNoDatabaseCommand(t *testing.T) {
	t.Parallel()
	var l commandLog
	cfg := testConfig(t)
	withPortal(&cfg)
	e := newMonitoredEnv(t, &l, cfg)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	l.afterLogin(t)
	l.take()
	b.signIn(t, email, "")
	l.afterLogin(t)
	l.take()
	for range 20 {
		if f := b.forward(t, "/auth/page"); f.status != 200 {
			t.Fatalf("forward auth: %d %s", f.status, f.body)
		}
		if f := b.forward(t, "/auth/forward", "Sec-Fetch-Mode", "navigate"); f.status != 200 {
			t.Fatalf("forward: %d %s", f.status, f.body)
		}
	}
	if sent, _ := l.take(); len(sent) > 0 {
		t.Fatalf("40 cookie checks sent %d database commands: %q", len(sent), sent)
	}
}

func TestCookieSessionsAreListedAndEndLikeTheOthers(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		end  func(t *testing.T, e *testEnv, email, access, refresh string)
	}{
		{"logout with scope others", func(t *testing.T, e *testEnv, _, access, refresh string) {
			e.do(t, "POST", "/auth/logout?scope=others", nil, "Authorization", "Bearer "+access, "authorization_refresh", refresh).want(t, 200, "")
		}},
		{"a password change", func(t *testing.T, e *testEnv, _, access, _ string) {
			e.do(t, "POST", "/auth/password", map[string]string{"current_password": "correct horse battery", "new_password": "another good password"},
				"Authorization", "Bearer "+access).want(t, 200, "")
		}},
		{"ending it by id", func(t *testing.T, e *testEnv, _, access, _ string) {
			list := e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(t, 200, "")
			for _, s := range list.body["sessions"].([]any) {
				if s := s.(map[string]any); s["current"] != true {
					e.do(t, "DELETE", "/auth/sessions/"+s["id"].(string), nil, "Authorization", "Bearer "+access).want(t, 204, "")
				}
			}
		}},
		{"disabling the account", func(t *testing.T, e *testEnv, email, access, _ string) {
			id := e.page(t, access).want(t, 200, "").header.Get("X-User-Id")
			e.adminDo(t, "POST", "/admin/users/"+id+"/disable", nil).want(t, 200, "")
		}},
	} {
		t.Run("the cookie's session ends with "+tt.name, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t, withPortal)
			email, access, refresh := e.user(t)
			b := newBrowser(e)
			b.signIn(t, email, "")
			list := e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(t, 200, "")
			if n := len(list.body["sessions"].([]any)); n != 2 {
				t.Fatalf("%d sessions listed, want the API's and the cookie's: %s", n, list.raw)
			}
			tt.end(t, e, email, access, refresh)
			if f := b.forward(t, "/auth/page"); f.status != 401 || !strings.Contains(f.body, "token_revoked") {
				t.Fatalf("forward auth after the end: %d %s", f.status, f.body)
			}
		})
	}
}

func TestPortalLogoutEndsTheSessionAndClearsBothCookies(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	cookie := b.cookies[cookieName]
	wantPage(t, b.send(t, "GET", "/logout", nil), 200, email)
	p := b.post(t, "/logout", url.Values{})
	wantPage(t, p, 200, "signed out")
	var hostOnly, onDomain bool
	for _, line := range p.header.Values("Set-Cookie") {
		if strings.HasPrefix(line, cookieName+"=;") && strings.Contains(line, "Max-Age=0") {
			hostOnly = hostOnly || !strings.Contains(line, "Domain=")
			onDomain = onDomain || strings.Contains(line, "Domain=example.test")
		}
	}
	if !hostOnly || !onDomain {
		t.Fatalf("cleared host-only %v, on the domain %v: %q", hostOnly, onDomain, p.header.Values("Set-Cookie"))
	}
	e.do(t, "GET", "/auth/page", nil, "Cookie", cookieName+"="+cookie).want(t, 401, "token_revoked")
}

func TestEverySignInOpensAFreshSession(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	first := b.cookies[cookieName]
	b.signIn(t, email, "")
	c1, _ := e.deps.tokens.parse(first, useCookie)
	c2, _ := e.deps.tokens.parse(b.cookies[cookieName], useCookie)
	if c1 == nil || c2 == nil || c1.Session == c2.Session {
		t.Fatalf("two sign-ins share a session: %+v %+v", c1, c2)
	}
}

func TestPortalSignInRefusalsArePagesThatKeepTheEmailNotThePassword(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	b.send(t, "GET", "/login", nil)
	p := b.post(t, "/login", url.Values{"email": {email}, "password": {"wrong password 123"}})
	wantPage(t, p, 401, `value="`+email+`"`)
	if strings.Contains(p.body, "wrong password 123") || !strings.Contains(p.body, "Email or password is incorrect") ||
		!strings.HasPrefix(p.header.Get("Content-Type"), "text/html") {
		t.Fatalf("the refusal page: %s", p.body)
	}
	// An unknown address reads the same.
	p = b.post(t, "/login", url.Values{"email": {"nobody@example.com"}, "password": {"wrong password 123"}})
	wantPage(t, p, 401, "Email or password is incorrect")
	wantPage(t, b.post(t, "/login", url.Values{"email": {email}}), 400, "Enter your email and password")
}

func TestPortalFormsAreRefusedWithoutTheirCSRFTokenOrFromAnotherOrigin(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	form := func() url.Values {
		return url.Values{"email": {email}, "password": {"correct horse battery"}}
	}
	for _, tt := range []struct {
		name    string
		csrf    string // "" takes the page's
		headers []string
		status  int
	}{
		{"without the token", "-", nil, 403},
		{"with another token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", nil, 403},
		{"from another site", "", []string{"Sec-Fetch-Site", "cross-site"}, 403},
		{"from a sibling host", "", []string{"Sec-Fetch-Site", "same-site"}, 403},
		{"without Sec-Fetch-Site from another origin", "", []string{"Sec-Fetch-Site", "", "Origin", "https://evil.test"}, 403},
		{"without Sec-Fetch-Site nor Origin", "", []string{"Sec-Fetch-Site", ""}, 403},
		{"without Sec-Fetch-Site from the portal's origin", "", []string{"Sec-Fetch-Site", "", "Origin", testPortalURL}, 303},
		{"from the portal's own page", "", nil, 303},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newBrowser(e)
			b.send(t, "GET", "/login", nil)
			f := form()
			switch tt.csrf {
			case "-":
				f.Set("csrf", "")
			case "":
			default:
				f.Set("csrf", tt.csrf)
			}
			p := b.post(t, "/login", f, tt.headers...)
			if p.status != tt.status {
				t.Fatalf("got %d, want %d: %s", p.status, tt.status, p.body)
			}
			if tt.status == 403 && b.cookies[cookieName] != "" {
				t.Fatal("a refused form signed in")
			}
		})
	}
}

// withPlainPortal is withPortal over plain http: the CSRF cookie then has no __Host- prefix, and a
// sibling host can plant one.
func withPlainPortal(c *config) {
	withPortal(c)
	c.portalCfg.publicURL, c.portalCfg.secure = "http://auth.example.test", false
}

func TestACSRFPairFromOneSignedInBrowserIsRefusedOnAnotherBrowsersSession(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPlainPortal)
	victim, _, _ := e.user(t)
	attacker, _, _ := e.user(t)
	mine, theirs := newBrowser(e), newBrowser(e)
	mine.signIn(t, attacker, "")
	wantPage(t, mine.send(t, "GET", "/account", nil), 200, attacker)
	theirs.signIn(t, victim, "")
	theirs.send(t, "GET", "/account", nil)
	// The attacker plants their browser's CSRF cookie in the victim's, with its form's token.
	for name, v := range mine.cookies {
		if strings.Contains(name, "auth_csrf") {
			theirs.cookies[name] = v
		}
	}
	theirs.last = mine.last
	for _, path := range []string{"/logout", "/account/sessions/end-others"} {
		wantPage(t, theirs.post(t, path, url.Values{}), 403, "Form expired")
	}
	wantPasses(t, theirs, true)
	// So is a pair from before the sign-in: it rotates the cookie, and binds the token to the session.
	b := newBrowser(e)
	b.send(t, "GET", "/login", nil)
	before := b.last
	b.signIn(t, victim, "")
	b.last = before
	wantPage(t, b.post(t, "/logout", url.Values{}), 403, "Form expired")
	wantPasses(t, b, true)
}

func TestPortalPagesSendTheirSecurityHeaders(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	b := newBrowser(e)
	for _, path := range []string{"/login", "/logout", "/step-up"} {
		p := b.send(t, "GET", path, nil)
		h := p.header
		csp := h.Get("Content-Security-Policy")
		if !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "default-src 'none'") || strings.Contains(csp, "unsafe-inline") ||
			h.Get("X-Frame-Options") != "DENY" || h.Get("Referrer-Policy") != "same-origin" || h.Get("Cache-Control") != "no-store" {
			t.Fatalf("%s: headers %v", path, h)
		}
		// The one script is the login page's passkey script, from the portal's own origin.
		scripts := strings.Count(p.body, "<script")
		if path == "/login" && (scripts != 1 || !strings.Contains(p.body, `<script src="/login/passkeys.js" defer></script>`)) ||
			path != "/login" && scripts != 0 || strings.Contains(csp, "unsafe-eval") {
			t.Fatalf("%s has a script of its own: %s %s", path, csp, p.body)
		}
	}
	if p := b.send(t, "GET", "/login", nil); !strings.Contains(p.body, `autocomplete="current-password"`) ||
		!strings.Contains(p.body, `<label for="email">`) || !strings.Contains(p.body, "· auth</title>") {
		t.Fatalf("the login page: %s", p.body)
	}
}

func TestUnknownPagesAndMethodsUnderThePortalsPathsArePagesWithTheirHeadersAndTheAPIsStayJSON(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	b := newBrowser(e)
	for _, tt := range []struct {
		method, path string
		status       int
		page         bool
	}{
		{"GET", "/login/nope", 404, true},
		{"GET", "/account/x", 404, true},
		{"GET", "/verify-email/", 404, true},
		{"PUT", "/login", 405, true},
		{"GET", "/account/sessions/end", 405, true},
		{"DELETE", "/signup", 405, true},
		{"GET", "/auth/nope", 404, false},
		{"GET", "/loginx", 404, false},
		{"PUT", "/auth/login", 405, false},
	} {
		p := b.send(t, tt.method, tt.path, nil)
		h := p.header
		if p.status != tt.status {
			t.Fatalf("%s %s: %d, want %d", tt.method, tt.path, p.status, tt.status)
		}
		if tt.status == 405 && h.Get("Allow") == "" {
			t.Fatalf("%s %s: a 405 without Allow", tt.method, tt.path)
		}
		if !tt.page {
			if !strings.HasPrefix(h.Get("Content-Type"), "application/json") || !strings.Contains(p.body, `"error"`) {
				t.Fatalf("%s %s: %v %s, want JSON", tt.method, tt.path, h, p.body)
			}
			continue
		}
		if !strings.HasPrefix(h.Get("Content-Type"), "text/html") || !strings.Contains(h.Get("Content-Security-Policy"), "frame-ancestors 'none'") ||
			h.Get("X-Frame-Options") != "DENY" || h.Get("Cache-Control") != "no-store" || !strings.Contains(p.body, `href="/login"`) {
			t.Fatalf("%s %s: %v %s, want the portal's page", tt.method, tt.path, h, p.body)
		}
	}
}

func TestForwardSendsABrowsersNavigationToTheSignInPage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	orig := []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "app.example.test", "X-Forwarded-Uri", "/reports?q=1"}
	want := testPortalURL + "/login?rd=" + url.QueryEscape("https://app.example.test/reports?q=1")
	for _, nav := range [][]string{{"Sec-Fetch-Mode", "navigate"}, {"Accept", "text/html,application/xhtml+xml"}} {
		if p := b.forward(t, "/auth/forward", append(nav, orig...)...); p.status != 302 || p.header.Get("Location") != want {
			t.Fatalf("%v: got %d to %q, want 302 to %q", nav, p.status, p.header.Get("Location"), want)
		}
	}
	for _, other := range [][]string{{"Sec-Fetch-Mode", "cors", "Accept", "text/html"}, {"Accept", "application/json"}} {
		if p := b.forward(t, "/auth/forward", append(other, orig...)...); p.status != 401 || !strings.Contains(p.body, "token_missing") {
			t.Fatalf("%v: got %d %s, want 401 as /auth/page", other, p.status, p.body)
		}
	}
	if p := b.forward(t, "/auth/page", "Sec-Fetch-Mode", "navigate"); p.status != 401 {
		t.Fatalf("/auth/page answered a navigation %d, want 401 as ever", p.status)
	}
	// Signed in, the navigation passes; asked for aal2, it goes to the step-up page and back.
	b.signIn(t, email, "")
	if p := b.forward(t, "/auth/forward", append([]string{"Sec-Fetch-Mode", "navigate"}, orig...)...); p.status != 200 || p.header.Get("X-User-Email") != email {
		t.Fatalf("signed in: %d %s", p.status, p.body)
	}
	p := b.forward(t, "/auth/forward", append([]string{"Sec-Fetch-Mode", "navigate", "X-Auth-Require", "aal2"}, orig...)...)
	stepUp := testPortalURL + "/step-up?rd=" + url.QueryEscape("https://app.example.test/reports?q=1")
	if p.status != 302 || p.header.Get("Location") != stepUp {
		t.Fatalf("aal2 asked of an aal1 cookie: %d to %q, want %q", p.status, p.header.Get("Location"), stepUp)
	}
	wantPage(t, b.send(t, "GET", "/step-up?rd="+url.QueryEscape("https://app.example.test/reports?q=1"), nil), 403, "your account has none")
	b.send(t, "GET", "/login", nil) // a form's CSRF token
	wantPage(t, b.post(t, "/step-up", url.Values{"code": {"123456"}, "rd": {"https://app.example.test/reports?q=1"}}), 403, "your account has none")
}

func TestPortalSecondFactorSignInOpensAnAal2CookieSession(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	e.clock.Advance(totpStep) // the enrolment used this step's code
	b := newBrowser(e)
	p := b.signIn(t, email, "https://other.test/")
	wantPage(t, p, 200, `autocomplete="one-time-code"`)
	token := mfaTokenField.FindStringSubmatch(p.body)
	if token == nil || b.cookies[cookieName] != "" {
		t.Fatalf("no challenge, or a cookie before the code: %s", p.body)
	}
	// The portal's challenge gives the API no tokens.
	e.do(t, "POST", "/auth/mfa/verify", map[string]string{"mfa_token": token[1], "code": oathtool(t, secret, e.clock.Now())}).want(t, 401, "token_invalid")
	wantPage(t, b.post(t, "/login/code", url.Values{"mfa_token": {token[1]}, "code": {"000000"}, "rd": {"https://other.test/"}}), 401, "")
	p = b.post(t, "/login/code", url.Values{"mfa_token": {token[1]}, "code": {oathtool(t, secret, e.clock.Now())}, "rd": {"https://other.test/"}})
	if p.status != 303 || p.header.Get("Location") != "https://other.test/" {
		t.Fatalf("the code: %d to %q: %s", p.status, p.header.Get("Location"), p.body)
	}
	if f := b.forward(t, "/auth/page", "X-Auth-Require", "aal2"); f.status != 200 || f.header.Get("X-User-Acr") != "aal2" {
		t.Fatalf("aal2 with the cookie: %d %s", f.status, f.body)
	}
}

func TestSignInReturnsOnlyToAllowedHosts(t *testing.T) {
	t.Parallel()
	var cfg config
	withPortal(&cfg)
	for _, tt := range []struct {
		rd   string
		good bool
	}{
		{"https://app.example.test/x?y=1#z", true},
		{"https://example.test/", true},
		{"https://auth.example.test/", true},
		{"https://deep.app.example.test:8443/p", true},
		{"https://other.test/", true},
		{"", false},
		{"/relative", false},
		{"//evil.test/", false},
		{"///evil.test/", false},
		{"http://app.example.test/", false}, // the portal is https
		{"https://evil.test/", false},
		{"https://evilexample.test/", false},
		{"https://app.example.test.evil.test/", false},
		{"https://sub.other.test/", false},
		{"javascript:alert(1)", false},
		{"JavaScript://app.example.test/%0aalert(1)", false},
		{"data:text/html,<script>alert(1)</script>", false},
		{`https://evil.test\@app.example.test/`, false},
		{`https:\\evil.test`, false},
		{`https:/\evil.test`, false},
		{"https://app.example.test@evil.test/", false},
		{"https://user:pass@app.example.test/", false},
		{"https:%2F%2Fevil.test", false},
		{"https://evil.test%2F.example.test/", false},
		{"https://evil.test%23.example.test/", false},
		{"%68ttps://evil.test", false},
		{"https://APP.example.test/", false},
		{"https://app.example.test\t.evil.test/", false},
		{" https://app.example.test/", false},
		{"https://evil.test/\n.example.test", false},
		{"https://xn--80ak6aa92e.test/", false},
		{"https://[::1]/", false},
		{"https://app。example.test/", false},
		{"ftp://app.example.test/", false},
	} {
		got, ok := safeReturn(cfg.portalCfg, tt.rd)
		if ok != tt.good {
			t.Errorf("safeReturn(%q) = %q, %v; want %v", tt.rd, got, ok, tt.good)
		}
	}
	// Over HTTP: a bad rd lands on the portal's own page.
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	for _, rd := range []string{"//evil.test/", "https://evil.test/", "javascript:alert(1)"} {
		p := newBrowser(e).signIn(t, email, rd)
		if p.status != 303 || p.header.Get("Location") != testPortalURL+"/account" {
			t.Fatalf("rd %q: %d to %q, want the portal's page", rd, p.status, p.header.Get("Location"))
		}
	}
	// Nor does the login page carry a bad rd into its form.
	if p := newBrowser(e).send(t, "GET", "/login?rd="+url.QueryEscape("https://evil.test/"), nil); strings.Contains(p.body, "evil.test") {
		t.Fatalf("the form carries the bad rd: %s", p.body)
	}
}

func FuzzSafeReturn(f *testing.F) {
	for _, s := range []string{"https://app.example.test/", "//evil.test", `https:\\evil.test`, "https://a@b.example.test", "https://evil.test%2f.example.test"} {
		f.Add(s)
	}
	var cfg config
	withPortal(&cfg)
	f.Fuzz(func(t *testing.T, rd string) {
		got, ok := safeReturn(cfg.portalCfg, rd)
		if !ok {
			return
		}
		// What a browser would make of it: the WHATWG parser treats backslashes as slashes.
		u, err := url.Parse(got)
		if err != nil || u.Scheme != "https" || u.User != nil || strings.ContainsAny(got, "\\\t\r\n ") {
			t.Fatalf("safeReturn(%q) = %q", rd, got)
		}
		host := u.Hostname()
		if host != "auth.example.test" && host != "other.test" && !underDomain(host, "example.test") {
			t.Fatalf("safeReturn(%q) = %q, to host %q", rd, got, host)
		}
	})
}
