package main

import (
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// A browser signed in with the password alone, whose account then gains an authenticator app,
// meets a route that asks for aal2: the step-up page asks for the code, and the right one sends it
// back to the app with a session at aal2 in place of the old one.
func TestAStepUpWithTheCodeRaisesTheCookieSessionAndReturnsToTheApp(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")

	// The authenticator app, added from this browser, which stays signed in at aal1.
	b.send(t, "GET", "/account", nil)
	p := b.post(t, "/account/authenticator", url.Values{"password": {"correct horse battery"}})
	m := regexp.MustCompile(`<code id="secret">([A-Z2-7 ]+)</code>`).FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no secret in text: %s", p.body)
	}
	secret := strings.ReplaceAll(m[1], " ", "")
	wantPage(t, b.post(t, "/account/authenticator/confirm", url.Values{"code": {oathtool(t, secret, e.clock.Now())}}), 200, "Your recovery codes")
	e.clock.Advance(totpStep) // the confirmation used this step's code
	aal1 := b.cookies[cookieName]

	rd := "https://app.example.test/admin?tab=keys"
	orig := []string{"Sec-Fetch-Mode", "navigate", "X-Auth-Require", "aal2",
		"X-Forwarded-Proto", "https", "X-Forwarded-Host", "app.example.test", "X-Forwarded-Uri", "/admin?tab=keys"}
	if f := b.forward(t, "/auth/forward", orig...); f.status != 302 || f.header.Get("Location") != testPortalURL+"/step-up?rd="+url.QueryEscape(rd) {
		t.Fatalf("aal2 asked of an aal1 cookie: %d to %q", f.status, f.header.Get("Location"))
	}
	wantPage(t, b.send(t, "GET", "/step-up?rd="+url.QueryEscape(rd), nil), 200, `autocomplete="one-time-code"`)
	wantPage(t, b.post(t, "/step-up", url.Values{"code": {"000000"}, "rd": {rd}}), 401, "")
	if b.cookies[cookieName] != aal1 {
		t.Fatal("a wrong code changed the cookie")
	}
	p = b.post(t, "/step-up", url.Values{"code": {oathtool(t, secret, e.clock.Now())}, "rd": {rd}})
	if p.status != 303 || p.header.Get("Location") != rd {
		t.Fatalf("the code: %d to %q: %s", p.status, p.header.Get("Location"), p.body)
	}
	if f := b.forward(t, "/auth/forward", orig...); f.status != 200 || f.header.Get("X-User-Acr") != "aal2" {
		t.Fatalf("back at the app: %d %s", f.status, f.body)
	}
	// The aal1 session the step-up replaced is over.
	old := newBrowser(e)
	old.cookies[cookieName] = aal1
	if f := old.forward(t, "/auth/page"); f.status != 401 {
		t.Fatalf("the replaced aal1 cookie: %d %s, want 401", f.status, f.body)
	}
}
