package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// newPortalMailEnv is a portal whose mail goes to srv.
func newPortalMailEnv(tb testing.TB, srv *mailServer, opts ...func(*config)) *testEnv {
	tb.Helper()
	return newMailEnv(tb, srv, append([]func(*config){withPortal}, opts...)...)
}

// verified tells whether the tokens of a fresh login of email say its address is verified.
func (e *testEnv) verified(tb testing.TB, email, password string) bool {
	tb.Helper()
	access, _ := e.login(tb, email, password)
	return e.page(tb, access).want(tb, 200, "").header.Get("X-User-Email-Verified") == "true"
}

func TestPortalResetLinkFromAMailSetsThePasswordOnlyOnItsPOST(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "ada@example.com"
	e.signupMailed(t, srv, email)
	b := newBrowser(e)
	b.signIn(t, email, "")
	signedIn := b.cookies[cookieName]

	wantPage(t, b.send(t, "GET", "/login", nil), 200, `href="/forgot-password"`)
	wantPage(t, b.send(t, "GET", "/forgot-password", nil), 200, `autocomplete="username"`)
	wantPage(t, b.post(t, "/forgot-password", url.Values{"email": {" ADA@example.com "}}), 200, "a link to choose a new password is on its way")
	path, token := srv.next(t, email, nil).link(t)
	if path != "/reset-password" {
		t.Fatalf("the reset mail links to %s", path)
	}
	// A scanner's GETs, and the reader's, leave the link as it was.
	for range 2 {
		p := b.send(t, "GET", path+"?token="+token, nil)
		wantPage(t, p, 200, `autocomplete="new-password"`)
		if !strings.Contains(p.body, `<label for="password">`) || !strings.Contains(p.body, `name="token" value="`+token+`"`) {
			t.Fatalf("the reset page: %s", p.body)
		}
	}
	set := func(csrf, password string) portalPage {
		f := url.Values{"token": {token}, "password": {password}}
		if csrf != "" {
			f.Set("csrf", csrf)
		}
		return b.post(t, "/reset-password", f)
	}
	wantPage(t, set("-", "a new good password"), 403, "This form has expired")
	b.send(t, "GET", path+"?token="+token, nil)
	p := set("", "short")
	wantPage(t, p, 400, "Password must be between 8 and 1024 bytes long")
	if !strings.Contains(p.body, `name="token" value="`+token+`"`) {
		t.Fatalf("a weak password's page lost the token: %s", p.body)
	}
	p = set("", "a new good password")
	wantPage(t, p, 200, "Your new password is set")
	if !strings.Contains(p.body, `href="/login"`) {
		t.Fatalf("no way on to sign in: %s", p.body)
	}
	e.login(t, email, "a new good password")
	e.do(t, "GET", "/auth/page", nil, "Cookie", cookieName+"="+signedIn).want(t, 401, "token_revoked")
	b.send(t, "GET", path+"?token="+token, nil)
	p = set("", "yet another password")
	wantPage(t, p, 400, "The link is used, unknown or expired")
	if !strings.Contains(p.body, `href="/forgot-password"`) {
		t.Fatalf("a used link's page does not offer a new one: %s", p.body)
	}
	b.send(t, "GET", path, nil)
	wantPage(t, b.post(t, "/reset-password", url.Values{"token": {"not-a-token"}, "password": {"a new good password"}}), 400, "This link does not work")
}

func TestPortalResetPageSetsTheFirstPasswordOfAnInvitation(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "invited@example.com"
	e.adminDo(t, "POST", "/admin/users", map[string]string{"email": email}).want(t, 201, "")
	path, token := srv.next(t, email, nil).link(t)
	b := newBrowser(e)
	wantPage(t, b.send(t, "GET", path+"?token="+token, nil), 200, `autocomplete="new-password"`)
	wantPage(t, b.post(t, path, url.Values{"token": {token}, "password": {"correct horse battery"}}), 200, "Your new password is set")
	if !e.verified(t, email, "correct horse battery") {
		t.Fatal("the invitation's link did not prove the address")
	}
}

func TestPortalForgotPasswordPageDoesNotTellWhoHasAnAccount(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	email, _, _ := e.user(t)
	answer := func(address string) portalPage {
		b := newBrowser(e)
		b.send(t, "GET", "/forgot-password", nil)
		p := b.post(t, "/forgot-password", url.Values{"email": {address}})
		p.body = strings.ReplaceAll(p.body, address, "ADDRESS")
		return p
	}
	known, unknown := answer(email), answer(strings.ToLower("nobody-"+newID()[:8]+"@example.com"))
	if known.status != 200 || known.status != unknown.status || known.body != unknown.body {
		t.Fatalf("known: %d %s\nunknown: %d %s", known.status, known.body, unknown.status, unknown.body)
	}
	if _, token := srv.next(t, email, nil).link(t); token == "" {
		t.Fatal("the known address got no link")
	}
	wantPage(t, answer("not an address"), 400, "Email must be a mailbox address")
}

func TestPortalMailPagesAreNotFoundWithoutMail(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal, func(c *config) { c.mail.mode = mailOff })
	b := newBrowser(e)
	if p := b.send(t, "GET", "/login", nil); strings.Contains(p.body, "/forgot-password") {
		t.Fatalf("the login page offers a reset the service cannot mail: %s", p.body)
	}
	for _, path := range []string{"/forgot-password", "/reset-password?token=x", "/verify-email?token=x"} {
		wantPage(t, b.send(t, "GET", path, nil), 404, "sends no mail")
	}
}

func TestPortalVerifyLinkConfirmsTheAddressOnlyOnItsPOST(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "ada@example.com"
	path, token := e.signupMailed(t, srv, email).link(t)
	b := newBrowser(e)
	for range 2 {
		p := b.send(t, "GET", path+"?token="+token, nil)
		wantPage(t, p, 200, `<button type="submit">Confirm the address</button>`)
	}
	if e.verified(t, email, "correct horse battery") {
		t.Fatal("a GET of the link verified the address")
	}
	wantPage(t, b.post(t, "/verify-email", url.Values{"token": {token}, "csrf": {""}}), 403, "This form has expired")
	b.send(t, "GET", path+"?token="+token, nil)
	wantPage(t, b.post(t, "/verify-email", url.Values{"token": {token}}), 200, "The address "+email+" is confirmed")
	if !e.verified(t, email, "correct horse battery") {
		t.Fatal("the page's POST did not verify the address")
	}
	b.send(t, "GET", path+"?token="+token, nil)
	wantPage(t, b.post(t, "/verify-email", url.Values{"token": {token}}), 400, "This link does not work")

	t.Run("and an address change's link changes the address", func(t *testing.T) {
		access, _ := e.login(t, email, "correct horse battery")
		e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": "ada@example.org", "password": "correct horse battery"},
			"Authorization", "Bearer "+access).want(t, 202, "")
		path, token := srv.next(t, "ada@example.org", nil).link(t)
		if path != "/verify-email" {
			t.Fatalf("the change mail links to %s", path)
		}
		wantPage(t, b.send(t, "GET", path+"?token="+token, nil), 200, "Confirm the address")
		wantPage(t, b.post(t, path, url.Values{"token": {token}}), 200, "The address ada@example.org is confirmed")
		e.login(t, "ada@example.org", "correct horse battery")
	})
}

func TestCompletingAnAddressChangeEndsTheBrowsersSessionsSoAppsSeeTheNewAddress(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email, moved = "ada@example.com", "ada@example.org"
	_, token := e.signupMailed(t, srv, email).link(t)
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 200, "")
	b := newBrowser(e)
	b.signIn(t, email, "")
	access, refresh := e.login(t, email, "correct horse battery")
	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": moved, "password": "correct horse battery"},
		"Authorization", "Bearer "+access).want(t, 202, "")
	_, token = srv.next(t, moved, nil).link(t)
	b.send(t, "GET", "/verify-email?token="+token, nil)
	wantPage(t, b.post(t, "/verify-email", url.Values{"token": {token}}), 200, "Sign in again")
	// The browser's cookie said the old address: its session has ended, and a new sign-in says the new one.
	wantPasses(t, b, false)
	b.signIn(t, moved, "")
	if f := b.forward(t, "/auth/page"); f.status != 200 || f.header.Get("X-User-Email") != moved {
		t.Fatalf("signed in again: %d %v", f.status, f.header)
	}
	// The API session goes on, and carries the new address from its next refresh.
	e.page(t, access).want(t, 200, "")
	next := e.refresh(t, refresh).want(t, 200, "").str("access_token")
	if got := e.page(t, next).want(t, 200, "").header.Get("X-User-Email"); got != moved {
		t.Fatalf("after a refresh the API session says %q", got)
	}
}

func TestTheVerifyPageSaysToSignInAgainForAppsToSeeTheConfirmedAddress(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "ada@example.com"
	_, token := e.signupMailed(t, srv, email).link(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	b.send(t, "GET", "/verify-email?token="+token, nil)
	p := b.post(t, "/verify-email", url.Values{"token": {token}})
	wantPage(t, p, 200, "Sign in again")
	// The cookie of before still says unconfirmed, as the page warns; a new sign-in says confirmed.
	if f := b.forward(t, "/auth/page"); f.status != 200 || f.header.Get("X-User-Email-Verified") == "true" {
		t.Fatalf("the cookie of before: %d %v", f.status, f.header)
	}
	b.signIn(t, email, "")
	if f := b.forward(t, "/auth/page"); f.status != 200 || f.header.Get("X-User-Email-Verified") != "true" {
		t.Fatalf("signed in again: %d %v", f.status, f.header)
	}
}

func TestPortalSignupPageFollowsSignupEnabled(t *testing.T) {
	t.Parallel()
	const rd = "https://app.example.test/home"
	t.Run("closed, the page is not found and the login page does not link to it", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, withPortal, signupClosed)
		b := newBrowser(e)
		if p := b.send(t, "GET", "/login", nil); strings.Contains(p.body, "/signup") {
			t.Fatalf("the login page links to a closed sign-up: %s", p.body)
		}
		wantPage(t, b.send(t, "GET", "/signup", nil), 404, "Sign-up is closed")
		b.send(t, "GET", "/login", nil) // a form's CSRF token
		p := b.post(t, "/signup", url.Values{"email": {"ada@example.com"}, "password": {"correct horse battery"}})
		wantPage(t, p, 404, "Sign-up is closed")
		e.do(t, "POST", "/auth/login", credentials{"ada@example.com", "correct horse battery"}).want(t, 401, "invalid_credentials")
	})
	t.Run("open without verification, a sign-up signs in and returns to rd", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, withPortal)
		b := newBrowser(e)
		wantPage(t, b.send(t, "GET", "/login?rd="+url.QueryEscape(rd), nil), 200, `href="/signup?rd=https%3a%2f%2fapp.example.test%2fhome"`)
		p := b.send(t, "GET", "/signup?rd="+url.QueryEscape(rd), nil)
		wantPage(t, p, 200, `autocomplete="new-password"`)
		if !strings.Contains(p.body, `<label for="email">`) || !strings.Contains(p.body, `name="rd" value="`+rd+`"`) {
			t.Fatalf("the sign-up page: %s", p.body)
		}
		p = b.post(t, "/signup", url.Values{"email": {"Ada@Example.com"}, "password": {"correct horse battery"}, "rd": {rd}})
		if p.status != 303 || p.header.Get("Location") != rd || b.cookies[cookieName] == "" {
			t.Fatalf("sign-up: %d to %q: %s", p.status, p.header.Get("Location"), p.body)
		}
		if f := b.forward(t, "/auth/page"); f.status != 200 || f.header.Get("X-User-Email") != "ada@example.com" {
			t.Fatalf("the new cookie: %d %s", f.status, f.body)
		}
		// Refusals are pages that keep the address, never the password.
		b2 := newBrowser(e)
		b2.send(t, "GET", "/signup", nil)
		p = b2.post(t, "/signup", url.Values{"email": {"ada@example.com"}, "password": {"another good password"}, "rd": {"https://evil.test/"}})
		wantPage(t, p, 409, "An account with this email already exists")
		if strings.Contains(p.body, "another good password") || strings.Contains(p.body, "evil.test") || !strings.Contains(p.body, `value="ada@example.com"`) {
			t.Fatalf("the refusal page: %s", p.body)
		}
		wantPage(t, b2.post(t, "/signup", url.Values{"email": {"bob@example.com"}, "password": {"short"}}), 400, "Password must be between 8")
		wantPage(t, b2.post(t, "/signup", url.Values{"email": {"bob"}, "password": {"correct horse battery"}}), 400, "Email must be a mailbox address")
	})
	t.Run("open with verification, every sign-up says to check the mail", func(t *testing.T) {
		t.Parallel()
		srv := newMailServer(t, false)
		e := newPortalMailEnv(t, srv)
		e.signupMailed(t, srv, "ada@example.com")
		answer := func(email string) portalPage {
			b := newBrowser(e)
			b.send(t, "GET", "/signup", nil)
			p := b.post(t, "/signup", url.Values{"email": {email}, "password": {"another good password"}})
			if b.cookies[cookieName] != "" {
				t.Fatalf("signing up %s set a cookie", email)
			}
			p.body = strings.ReplaceAll(p.body, email, "ADDRESS")
			return p
		}
		taken, fresh := answer("ada@example.com"), answer("bob@example.com")
		wantPage(t, fresh, 200, "Follow its link to confirm your address")
		if taken.status != fresh.status || taken.body != fresh.body {
			t.Fatalf("taken: %d %s\nnew: %d %s", taken.status, taken.body, fresh.status, fresh.body)
		}
		if path, _ := srv.next(t, "bob@example.com", nil).link(t); path != "/verify-email" {
			t.Fatalf("the new account's mail links to %s", path)
		}
	})
	t.Run("the sign-up throttle holds on the page", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, withPortal, func(c *config) { c.signupMax = 1 })
		b := newBrowser(e)
		b.send(t, "GET", "/signup", nil)
		b.post(t, "/signup", url.Values{"email": {"ada@example.com"}, "password": {"correct horse battery"}})
		b.send(t, "GET", "/signup", nil)
		p := b.post(t, "/signup", url.Values{"email": {"bob@example.com"}, "password": {"correct horse battery"}})
		if p.status != http.StatusTooManyRequests || p.header.Get("Retry-After") == "" {
			t.Fatalf("the second sign-up: %d %v %s", p.status, p.header, p.body)
		}
	})
}

func TestForwardShowsASignedInNavigationThatTheAllowListsRefuseAPage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal, allowing(t, "@example.com"))
	e.staff(t, "ada@example.com") // verified: the operator vouches
	carol, _, _ := e.user(t)      // signed up, not verified
	orig := []string{"X-Forwarded-Proto", "https", "X-Forwarded-Host", "app.example.test", "X-Forwarded-Uri", "/admin"}
	nav := append([]string{"Sec-Fetch-Mode", "navigate"}, orig...)
	ada := newBrowser(e)
	ada.signIn(t, "ada@example.com", "")
	if p := ada.forward(t, "/auth/forward", nav...); p.status != 200 {
		t.Fatalf("ada on the list: %d %s", p.status, p.body)
	}
	p := ada.forward(t, "/auth/forward", append(nav, "X-Auth-Allow", "bob@example.com")...)
	wantPage(t, p, 403, "You are signed in as ada@example.com, but this application does not admit this account")
	if !strings.HasPrefix(p.header.Get("Content-Type"), "text/html") || p.header.Get("X-Frame-Options") != "DENY" ||
		!strings.Contains(p.body, `href="`+testPortalURL+`/logout"`) ||
		!strings.Contains(p.body, `href="`+testPortalURL+`/login?rd=https%3a%2f%2fapp.example.test%2fadmin"`) {
		t.Fatalf("the refusal page: %v %s", p.header, p.body)
	}
	// A request that is no navigation gets the JSON refusal, as from /auth/page.
	p = ada.forward(t, "/auth/forward", append(orig, "X-Auth-Allow", "bob@example.com", "Accept", "application/json")...)
	if p.status != 403 || !strings.Contains(p.body, `"not_allowed"`) {
		t.Fatalf("not a navigation: %d %s", p.status, p.body)
	}
	c := newBrowser(e)
	c.signIn(t, carol, "")
	wantPage(t, c.forward(t, "/auth/forward", nav...), 403, "admits only confirmed addresses")
	wantPage(t, ada.forward(t, "/auth/forward", append(nav, "X-Auth-Allow", "not a list")...), 500, "misconfigured")
}

func TestStepUpForAnAccountWithoutASecondFactorLinksToTheAccountPage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	p := b.send(t, "GET", "/step-up?rd="+url.QueryEscape("https://app.example.test/"), nil)
	wantPage(t, p, 403, "your account has none")
	if !strings.Contains(p.body, `href="/account"`) {
		t.Fatalf("the step-up page does not link to the account: %s", p.body)
	}
}
