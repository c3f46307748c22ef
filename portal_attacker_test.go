package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// The portal's credentials and guesses, from an attacker's side: what a stolen cookie, a stolen
// password or a stolen access token opens, and which counts a guess at the portal adds to.

// nextLinked is the next mail to email that carries a link to path, passing over notices.
func nextLinked(tb testing.TB, srv *mailServer, email, path string) (token string) {
	tb.Helper()
	for range 10 {
		m := srv.next(tb, email, nil)
		if mailLink.MatchString(m.text) {
			if p, token := m.link(tb); p == path {
				return token
			}
		}
	}
	tb.Fatalf("no mail to %s linking to %s", email, path)
	return ""
}

// totpUser is a signed-up account with an active authenticator app: its address, an access
// token of a session at aal1 and the app's secret.
func totpUser(tb testing.TB, e *testEnv) (email, access, secret string) {
	tb.Helper()
	email, access, _ = e.user(tb)
	secret, _ = e.enrolTOTP(tb, access)
	return email, access, secret
}

// codePage signs the browser in with the password and answers the challenge of the code page.
func (b *browser) codePage(tb testing.TB, email string) string {
	tb.Helper()
	p := b.signIn(tb, email, "")
	m := mfaTokenField.FindStringSubmatch(p.body)
	if p.status != 200 || m == nil {
		tb.Fatalf("the password of an account with an authenticator: %d %s", p.status, p.body)
	}
	return m[1]
}

func TestAPortalSecondFactorChallengeDiesWhenThePasswordIsReset(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "ada@example.com"
	e.adminDo(t, "POST", "/admin/users", credentials{email, "correct horse battery"}).want(t, 201, "")
	access, _ := e.login(t, email, "correct horse battery")
	secret, _ := e.enrolTOTP(t, access)
	b := newBrowser(e)
	challenge := b.codePage(t, email)

	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": email}).want(t, 202, "")
	token := nextLinked(t, srv, email, "/reset-password")
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "a new good password"}).want(t, 200, "")

	wantChallengeRefused(t, b, challenge, oathtool(t, secret, e.clock.Now()))
}

func TestAPortalSecondFactorChallengeOpensOneSessionOnly(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, secret := totpUser(t, e)
	b := newBrowser(e)
	challenge := b.codePage(t, email)
	code := oathtool(t, secret, e.clock.Now())
	if p := b.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {code}}); p.status != 303 {
		t.Fatalf("the right code: %d %s", p.status, p.body)
	}
	e.clock.Advance(totpStep)
	again := newBrowser(e)
	again.send(t, "GET", "/login", nil)
	wantChallengeRefused(t, again, challenge, oathtool(t, secret, e.clock.Now()))
}

// wantChallengeRefused posts the portal's code page with challenge and a right code, and fails
// unless the page says the sign-in has expired and b got no session.
func wantChallengeRefused(t *testing.T, b *browser, challenge, code string) {
	t.Helper()
	p := b.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {code}})
	wantPage(t, p, 401, "This sign-in has expired")
	if b.cookies[cookieName] != "" {
		t.Fatal("a challenge that should be dead opened a session")
	}
}

func TestAddingAFactorFromTheAPIEndsTheBrowsersCookieSessions(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	wantPasses(t, b, true)
	e.enrolTOTP(t, access)
	wantPasses(t, b, false)
}

func TestAnInvitationLinkIsDeadOnceTheInviteesPasswordIsSetAnotherWay(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newPortalMailEnv(t, srv)
	const email = "invited@example.com"
	e.adminDo(t, "POST", "/admin/users", map[string]string{"email": email}).want(t, 201, "")
	invitation := nextLinked(t, srv, email, "/reset-password")
	b := newBrowser(e)
	b.send(t, "GET", "/forgot-password", nil)
	b.post(t, "/forgot-password", url.Values{"email": {email}})
	reset := nextLinked(t, srv, email, "/reset-password")
	b.send(t, "GET", "/reset-password?token="+reset, nil)
	wantPage(t, b.post(t, "/reset-password", url.Values{"token": {reset}, "password": {"correct horse battery"}}), 200, "Your new password is set")

	b.send(t, "GET", "/reset-password?token="+invitation, nil)
	wantPage(t, b.post(t, "/reset-password", url.Values{"token": {invitation}, "password": {"the attackers password"}}), 400, "This link does not work")
	e.login(t, email, "correct horse battery")
}

// A stolen cookie lets its holder end sessions, and no more: the account's secrets are asked for
// again, and the cookie is no token of the API's anywhere.
func TestAStolenCookieAloneCannotChangeThePasswordOrTheFactorNorBecomeAPITokens(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, secret := totpUser(t, e)
	victim := newBrowser(e)
	challenge := victim.codePage(t, email)
	victim.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {oathtool(t, secret, e.clock.Now())}}).want(t, 303)
	e.clock.Advance(totpStep)
	cookie := victim.cookies[cookieName]
	thief := newBrowser(e)
	thief.cookies[cookieName] = cookie

	wantPage(t, thief.send(t, "GET", "/account", nil), 200, email)
	wantPage(t, thief.post(t, "/account/password", url.Values{"current_password": {"a guess at it"}, "new_password": {"the thiefs password"}}),
		401, "your password is unchanged")
	thief.send(t, "GET", "/account", nil)
	wantPage(t, thief.post(t, "/account/password", url.Values{"new_password": {"the thiefs password"}}), 400, "Enter your current password")
	thief.send(t, "GET", "/account", nil)
	p := thief.post(t, "/account/authenticator", url.Values{"password": {"a guess at it"}})
	wantPage(t, p, 401, "no authenticator app was added")
	thief.send(t, "GET", "/account", nil)
	wantPage(t, thief.post(t, "/account/authenticator/remove", url.Values{"code": {"000000"}}), 401, "the authenticator app is still set up")
	thief.send(t, "GET", "/account", nil)
	wantPage(t, thief.post(t, "/account/authenticator/remove", url.Values{"recovery_code": {"aaaaa-bbbbb"}}), 401, "the authenticator app is still set up")
	e.loginMFA(t, email) // the password and the factor are as they were

	for _, try := range []struct {
		method, path string
		body         any
		headers      []string
	}{
		{"GET", "/auth/sessions", nil, []string{"Authorization", "Bearer " + cookie}},
		{"POST", "/auth/mfa/totp", map[string]string{"password": "correct horse battery"}, []string{"Authorization", "Bearer " + cookie}},
		{"POST", "/auth/email/change", map[string]string{"email": "thief@example.com", "password": "x"}, []string{"Authorization", "Bearer " + cookie}},
		{"POST", "/auth/refresh", nil, []string{"authorization_refresh", cookie}},
		{"POST", "/auth/refresh", map[string]string{"refresh_token": cookie}, nil},
		{"POST", "/auth/mfa/verify", map[string]string{"mfa_token": cookie, "code": "000000"}, nil},
		{"POST", "/auth/mfa/verify", map[string]string{"code": oathtool(t, secret, e.clock.Now())}, []string{"Authorization", "Bearer " + cookie}},
		{"GET", "/auth/sessions", nil, []string{"Cookie", cookieName + "=" + cookie}},
	} {
		r := e.do(t, try.method, try.path, try.body, try.headers...)
		if r.status != http.StatusUnauthorized && r.status != http.StatusBadRequest || r.str("access_token") != "" {
			t.Errorf("%s %s with the cookie: %d %s", try.method, try.path, r.status, r.raw)
		}
	}
}

// The password of an account with an authenticator app opens no portal session, adds no second
// app, and its guesses at the code count against the account whatever the challenge.
func TestThePasswordAloneOfAnAccountWithAnAuthenticatorOpensNothingOnThePortal(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := totpUser(t, e)
	b := newBrowser(e)
	b.codePage(t, email)
	if b.cookies[cookieName] != "" {
		t.Fatal("the password alone set a session cookie")
	}
	for _, path := range []string{"/account", "/step-up"} {
		if p := b.send(t, "GET", path, nil); p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/login") {
			t.Fatalf("GET %s with the password alone: %d %q", path, p.status, p.header.Get("Location"))
		}
	}
	b.send(t, "GET", "/login", nil)
	if p := b.post(t, "/account/authenticator", url.Values{"password": {"correct horse battery"}}); p.status != 303 || strings.Contains(p.body, "secret") {
		t.Fatalf("adding an app with the password alone: %d %s", p.status, p.body)
	}
	// Fresh challenges do not reset the count: MFA_MAX_FAILURES wrong codes, then none is heard.
	for i := range e.cfg.mfaMaxFailures {
		challenge := b.codePage(t, email)
		if p := b.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {"000000"}}); p.status != 401 {
			t.Fatalf("wrong code %d: %d %s", i+1, p.status, p.body)
		}
	}
	challenge := b.codePage(t, email)
	wantPage(t, b.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {"000000"}}), 429, "Too many attempts")
	e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": "000000"}).want(t, 429, "too_many_attempts")
}

// A stolen access token is no cookie, and no page of the portal turns it into one.
func TestAStolenAccessTokenGetsNoCookieSession(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	_, access, _ := e.user(t)
	b := newBrowser(e)
	bearer := []string{"Authorization", "Bearer " + access}
	for _, path := range []string{"/account", "/step-up", "/login"} {
		if p := b.send(t, "GET", path, nil, bearer...); path != "/login" && p.status != 303 {
			t.Fatalf("GET %s with an access token: %d", path, p.status)
		}
	}
	for _, path := range []string{"/step-up", "/account/sessions/end-others", "/account/password", "/account/authenticator"} {
		b.send(t, "GET", "/login", nil)
		p := b.post(t, path, url.Values{"code": {"000000"}, "password": {"x"}, "current_password": {"x"}, "new_password": {"another password"}}, bearer...)
		if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/login") {
			t.Fatalf("POST %s with an access token: %d %q", path, p.status, p.header.Get("Location"))
		}
	}
	b.cookies[cookieName] = access
	if p := b.send(t, "GET", "/account", nil); p.status != 303 {
		t.Fatalf("an access token as the cookie opened the account page: %d", p.status)
	}
	if b.cookies[cookieName] != access {
		t.Fatal("a page set a session cookie for an access token")
	}
}

// The portal is no side door around the API's limits: its guesses and the API's add up.
func TestPortalGuessesCountTowardTheAPIsLimits(t *testing.T) {
	t.Parallel()
	t.Run("sign-in and the account page's password forms share the login throttle", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, withPortal)
		email, _, _ := e.user(t)
		owner := newBrowser(e)
		owner.signIn(t, email, "")
		b := newBrowser(e)
		n := e.cfg.maxFailures
		for range n - 2 {
			b.send(t, "GET", "/login", nil)
			wantPage(t, b.post(t, "/login", url.Values{"email": {email}, "password": {"wrong guess"}}), 401, "incorrect")
		}
		owner.send(t, "GET", "/account", nil)
		wantPage(t, owner.post(t, "/account/password", url.Values{"current_password": {"wrong guess"}, "new_password": {"a new good password"}}), 401, "")
		owner.send(t, "GET", "/account", nil)
		wantPage(t, owner.post(t, "/account/authenticator", url.Values{"password": {"wrong guess"}}), 401, "")
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 429, "too_many_attempts")
		b.send(t, "GET", "/login", nil)
		wantPage(t, b.post(t, "/login", url.Values{"email": {email}, "password": {"correct horse battery"}}), 429, "Too many attempts")
	})
	t.Run("the code page, the step-up page, the account page and the API share the account's factor limit", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t, withPortal)
		email, _, secret := totpUser(t, e)
		b := newBrowser(e)
		challenge := b.codePage(t, email)
		b.post(t, "/login/code", url.Values{"mfa_token": {challenge}, "code": {oathtool(t, secret, e.clock.Now())}}).want(t, 303)
		e.clock.Advance(totpStep)
		wrong := e.cfg.mfaMaxFailures
		b.send(t, "GET", "/step-up", nil)
		wantPage(t, b.post(t, "/step-up", url.Values{"code": {"000000"}}), 401, "")
		b.send(t, "GET", "/account", nil)
		wantPage(t, b.post(t, "/account/authenticator/remove", url.Values{"code": {"000000"}}), 401, "")
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": "000000"}).want(t, 401, "")
		for range wrong - 3 {
			other := newBrowser(e)
			ch := other.codePage(t, email)
			other.post(t, "/login/code", url.Values{"mfa_token": {ch}, "code": {"000000"}}).want(t, 401)
		}
		b.send(t, "GET", "/step-up", nil)
		wantPage(t, b.post(t, "/step-up", url.Values{"code": {oathtool(t, secret, e.clock.Now())}}), 429, "Too many attempts")
		b.send(t, "GET", "/account", nil)
		wantPage(t, b.post(t, "/account/authenticator/remove", url.Values{"code": {oathtool(t, secret, e.clock.Now())}}), 429, "Too many attempts")
	})
}

func (p portalPage) want(tb testing.TB, status int) portalPage {
	tb.Helper()
	if p.status != status {
		tb.Fatalf("got %d %s, want %d", p.status, p.body, status)
	}
	return p
}
