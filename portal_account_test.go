package main

import (
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
)

// signInAs signs the browser in with its own User-Agent, so that the account page can tell it.
func (b *browser) signInAs(tb testing.TB, email, agent string) {
	tb.Helper()
	b.send(tb, "GET", "/login", nil)
	if p := b.post(tb, "/login", url.Values{"email": {email}, "password": {"correct horse battery"}}, "User-Agent", agent); p.status != http.StatusSeeOther {
		tb.Fatalf("sign-in: %d %s", p.status, p.body)
	}
}

// sessionIDOf is the id in the end form of the account page's row of the device agent.
func sessionIDOf(tb testing.TB, page, agent string) string {
	tb.Helper()
	m := regexp.MustCompile(`(?s)<td>` + regexp.QuoteMeta(agent) + `</td>.*?name="id" value="([^"]+)"`).FindStringSubmatch(page)
	if m == nil {
		tb.Fatalf("no session of %s to end on the page: %s", agent, page)
	}
	return m[1]
}

func wantPasses(tb testing.TB, b *browser, passes bool) {
	tb.Helper()
	f := b.forward(tb, "/auth/page")
	if passes && f.status != 200 || !passes && (f.status != 401 || !strings.Contains(f.body, "token_revoked")) {
		tb.Fatalf("forward auth with the browser's cookie: %d %s, want passing %v", f.status, f.body, passes)
	}
}

func TestTheAccountPageSendsASignedOutBrowserToSignIn(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	p := newBrowser(e).send(t, "GET", "/account", nil)
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/login?rd="+url.QueryEscape(testPortalURL+"/account") {
		t.Fatalf("got %d to %q", p.status, p.header.Get("Location"))
	}
}

func TestTheAccountPageListsTheSessionsAndEndsOneOrAllOthers(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	laptop, phone := newBrowser(e), newBrowser(e)
	laptop.signInAs(t, email, "Laptop/1.0")
	phone.signInAs(t, email, "Phone/2.0")

	p := laptop.send(t, "GET", "/account", nil)
	wantPage(t, p, 200, email)
	for _, want := range []string{"Laptop/1.0 <strong>(this browser)</strong>", "Phone/2.0", "Browser (this portal)", "<td>API</td>", "End every other session"} {
		if !strings.Contains(p.body, want) {
			t.Fatalf("the account page lacks %q: %s", want, p.body)
		}
	}
	if n := strings.Count(p.body, `name="id"`); n != 2 {
		t.Fatalf("%d sessions with an end button, want the phone's and the API's: %s", n, p.body)
	}

	p = laptop.post(t, "/account/sessions/end", url.Values{"id": {sessionIDOf(t, p.body, "Phone/2.0")}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/account?done=ended" {
		t.Fatalf("ending the phone's session: %d %q %s", p.status, p.header.Get("Location"), p.body)
	}
	wantPasses(t, phone, false)
	wantPasses(t, laptop, true)
	e.page(t, access).want(t, 200, "")
	p = laptop.send(t, "GET", "/account?done=ended", nil)
	wantPage(t, p, 200, "The session has ended.")
	if strings.Contains(p.body, "Phone/2.0") {
		t.Fatalf("the ended session is still listed: %s", p.body)
	}

	p = laptop.post(t, "/account/sessions/end-others", url.Values{})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/account?done=others" {
		t.Fatalf("ending the other sessions: %d %s", p.status, p.body)
	}
	e.page(t, access).want(t, 401, "token_revoked")
	wantPasses(t, laptop, true)
	p = laptop.send(t, "GET", "/account?done=others", nil)
	wantPage(t, p, 200, "Every other session has ended.")
	if strings.Contains(p.body, `name="id"`) {
		t.Fatalf("other sessions are still listed: %s", p.body)
	}
}

func TestAnotherUsersSessionCannotBeEndedFromTheAccountPage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, _, _ := e.user(t)
	_, otherAccess, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	b.send(t, "GET", "/account", nil)
	id := e.sessionsOf(t, otherAccess)[0]["id"].(string)
	wantPage(t, b.post(t, "/account/sessions/end", url.Values{"id": {id}}), 404, "No such session.")
	e.page(t, otherAccess).want(t, 200, "")
}

func TestAPasswordChangeFromTheAccountPageKeepsThisBrowserSignedInAndEndsTheOthers(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	laptop, phone := newBrowser(e), newBrowser(e)
	laptop.signIn(t, email, "")
	phone.signIn(t, email, "")
	old := laptop.cookies[cookieName]

	laptop.send(t, "GET", "/account", nil)
	p := laptop.post(t, "/account/password", url.Values{"current_password": {"correct horse battery"}, "new_password": {"another good password"}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/account?done=password" {
		t.Fatalf("the password change: %d %s", p.status, p.body)
	}
	if laptop.cookies[cookieName] == "" || laptop.cookies[cookieName] == old {
		t.Fatal("the password change gave the browser no new cookie")
	}
	wantPasses(t, laptop, true)
	wantPage(t, laptop.send(t, "GET", "/account?done=password", nil), 200, "Your password is changed.")
	wantPasses(t, phone, false)
	e.page(t, access).want(t, 401, "token_revoked")
	e.do(t, "GET", "/auth/page", nil, "Cookie", cookieName+"="+old).want(t, 401, "token_revoked")
	e.login(t, email, "another good password")
}

func TestAWrongCurrentPasswordOnTheAccountPageIsAClearErrorAndChangesNothing(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	for _, tt := range []struct {
		name          string
		current, next string
		status        int
		message       string
	}{
		{"a wrong current password", "not my password", "another good password", 401, "Your current password is not the one you entered"},
		{"a short new password", "correct horse battery", "short", 400, "The new password must be between 8 and 1024 bytes long."},
		{"no current password", "", "another good password", 400, "Enter your current password and a new one."},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b.send(t, "GET", "/account", nil)
			p := b.post(t, "/account/password", url.Values{"current_password": {tt.current}, "new_password": {tt.next}})
			wantPage(t, p, tt.status, tt.message)
			if !strings.Contains(p.body, `role="alert"`) || strings.Contains(p.body, "good password") || strings.Contains(p.body, "horse") {
				t.Fatalf("the error page shows no alert, or the password typed: %s", p.body)
			}
			wantPasses(t, b, true)
			e.page(t, access).want(t, 200, "")
		})
	}
	e.login(t, email, "correct horse battery")
}

func TestAnAuthenticatorAppIsAddedAndRemovedFromTheAccountPage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")

	b.send(t, "GET", "/account", nil)
	wantPage(t, b.post(t, "/account/authenticator", url.Values{"password": {"not my password"}}), 401, "The password is not right")

	p := b.post(t, "/account/authenticator", url.Values{"password": {"correct horse battery"}})
	wantPage(t, p, 200, "<svg")
	if !strings.Contains(p.body, `<path fill="#000" d="M`) || strings.Contains(p.header.Get("Content-Security-Policy"), "data:") {
		t.Fatalf("no QR code inline, or the policy was loosened: %s %s", p.header.Get("Content-Security-Policy"), p.body)
	}
	m := regexp.MustCompile(`<code id="secret">([A-Z2-7 ]+)</code>`).FindStringSubmatch(p.body)
	if m == nil {
		t.Fatalf("no secret in text: %s", p.body)
	}
	secret := strings.ReplaceAll(m[1], " ", "")

	wantPage(t, b.post(t, "/account/authenticator/confirm", url.Values{"code": {"000000"}}), 401, "That code is not right")
	p = b.post(t, "/account/authenticator/confirm", url.Values{"code": {oathtool(t, secret, e.clock.Now())}})
	wantPage(t, p, 200, "Your recovery codes")
	codes := regexp.MustCompile(`<li><code>([^<]+)</code></li>`).FindAllStringSubmatch(p.body, -1)
	if len(codes) != 10 {
		t.Fatalf("%d recovery codes shown, want 10: %s", len(codes), p.body)
	}
	e.clock.Advance(totpStep)
	wantPasses(t, b, true)
	e.page(t, access).want(t, 401, "token_revoked") // a factor added ends the other sessions
	e.loginMFA(t, email)

	b.send(t, "GET", "/account", nil)
	wantPage(t, b.post(t, "/account/authenticator/remove", url.Values{"code": {"000000"}}), 401, "That code is not right")
	p = b.post(t, "/account/authenticator/remove", url.Values{"recovery_code": {codes[0][1]}})
	if p.status != http.StatusSeeOther || p.header.Get("Location") != "/account?done=authenticator" {
		t.Fatalf("removing the app: %d %s", p.status, p.body)
	}
	wantPage(t, b.send(t, "GET", "/account?done=authenticator", nil), 200, "Add an authenticator app")
	e.login(t, email, "correct horse battery")
}

func TestTheAccountPagesFormsAreRefusedWithoutTheirCSRFTokenOrFromAnotherSite(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	id := e.sessionsOf(t, access)[0]["id"].(string)
	forms := map[string]url.Values{
		"/account/sessions/end":          {"id": {id}},
		"/account/sessions/end-others":   {},
		"/account/password":              {"current_password": {"correct horse battery"}, "new_password": {"another good password"}},
		"/account/authenticator":         {"password": {"correct horse battery"}},
		"/account/authenticator/confirm": {"code": {"123456"}},
		"/account/authenticator/remove":  {"code": {"123456"}},
	}
	for path, form := range forms {
		for _, tt := range []struct {
			name    string
			csrf    string
			headers []string
		}{
			{"without the token", "", nil},
			{"with another token", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA", nil},
			{"from another site", "-", []string{"Sec-Fetch-Site", "cross-site"}},
		} {
			t.Run(path+" "+tt.name, func(t *testing.T) {
				b.send(t, "GET", "/account", nil)
				f := url.Values{}
				for k, v := range form {
					f[k] = v
				}
				if tt.csrf != "-" {
					f.Set("csrf", tt.csrf)
				}
				wantPage(t, b.post(t, path, f, tt.headers...), 403, "Form expired")
			})
		}
	}
	e.page(t, access).want(t, 200, "")
	wantPasses(t, b, true)
	e.login(t, email, "correct horse battery")
	wantPage(t, b.send(t, "GET", "/account", nil), 200, "Add an authenticator app")
}

func TestSessionListsSayEachSessionsKind(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	email, access, _ := e.user(t)
	newBrowser(e).signIn(t, email, "")
	id := e.page(t, access).want(t, 200, "").header.Get("X-User-Id")
	admin := e.adminDo(t, "GET", "/admin/users/"+id+"/sessions", nil).want(t, 200, "")
	for name, list := range map[string][]any{
		"GET /auth/sessions":   e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(t, 200, "").body["sessions"].([]any),
		"the admin API's list": admin.body["sessions"].([]any),
	} {
		kinds := map[any]int{}
		for _, s := range list {
			kinds[s.(map[string]any)["kind"]]++
		}
		if len(list) != 2 || kinds["api"] != 1 || kinds["cookie"] != 1 {
			t.Errorf("%s: kinds %v, want one api and one cookie session", name, kinds)
		}
	}
}
