package main

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"
)

// signupClosed is SIGNUP_ENABLED=false.
func signupClosed(c *config) { c.signupEnabled = false }

// allowing is FORWARD_AUTH_ALLOW=list.
func allowing(tb testing.TB, list string) func(*config) {
	tb.Helper()
	l, err := parseAllowList(list)
	if err != nil {
		tb.Fatal(err)
	}
	return func(c *config) { c.forwardAuthAllow = l }
}

// staff has the admin API create the account of email with a password, and logs it in.
func (e *testEnv) staff(tb testing.TB, email string) (access string) {
	tb.Helper()
	e.adminDo(tb, "POST", "/admin/users", credentials{email, "correct horse battery"}).want(tb, 201, "")
	access, _ = e.login(tb, email, "correct horse battery")
	return access
}

func TestSignUpOffRefusesTheAPISignUpWithoutDatabaseWork(t *testing.T) {
	t.Parallel()
	t.Run("sign-up answers 403 signup_disabled whatever the body", func(t *testing.T) {
		e := newTestEnv(t, signupClosed)
		for _, body := range []any{credentials{"ada@example.com", "correct horse battery"}, credentials{"not an address", "x"}, "{"} {
			e.do(t, "POST", "/auth/signup", body).want(t, 403, "signup_disabled")
		}
		e.adminDo(t, "GET", "/admin/users?email=ada@example.com", nil).want(t, 404, "not_found")
	})
	t.Run("sign-up answers 403 at once from a service whose database never answers", func(t *testing.T) {
		// With sign-up open, this service answers 503: any database work would show.
		client, err := connectMongo("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { client.Disconnect(context.Background()) })
		cfg := testConfig(t)
		cfg.signupEnabled = false
		m := newMetrics()
		e := serveTestEnv(t, cfg, mongoCollections(client.Database("x"), &m.dbErrors), m)
		e.do(t, "POST", "/auth/signup", credentials{"ada@example.com", "correct horse battery"}).want(t, 403, "signup_disabled")
	})
	t.Run("SIGNUP_ENABLED that is not a boolean stops the start", func(t *testing.T) {
		_, err := loadConfig(func(k string) string { return map[string]string{"SIGNUP_ENABLED": "maybe"}[k] })
		if err == nil || !strings.Contains(err.Error(), "SIGNUP_ENABLED") {
			t.Fatalf("got %v, want an error naming SIGNUP_ENABLED", err)
		}
	})
}

func TestAnAdminCreatesAUserWhoCanThenLogIn(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, signupClosed, func(c *config) {
		c.mail.mode = mailOff
		c.mail.verification = verificationRequired // the operator vouches for the address
	})
	r := e.adminDo(t, "POST", "/admin/users", credentials{"  Ada@Example.COM ", "correct horse battery"}).want(t, 201, "")
	if r.str("id") == "" || r.str("email") != "ada@example.com" || r.body["email_verified"] != true ||
		r.str("created_at") == "" || r.body["disabled"] != false {
		t.Fatalf("body %s", r.raw)
	}
	access, _ := e.login(t, "ada@example.com", "correct horse battery")
	e.page(t, access).want(t, 200, "")
	if !strings.Contains(e.logs.String(), `"msg":"admin action","action":"create","user_id":"`+r.str("id")+`"`) {
		t.Error("no admin action line for the creation")
	}

	t.Run("a taken address answers 409 email_taken", func(t *testing.T) {
		e.adminDo(t, "POST", "/admin/users", credentials{"ADA@example.com", "another password"}).want(t, 409, "email_taken")
		e.login(t, "ada@example.com", "correct horse battery")
	})
	t.Run("the address and password rules are sign-up's", func(t *testing.T) {
		e.adminDo(t, "POST", "/admin/users", credentials{"ada@[127.0.0.1]", "correct horse battery"}).want(t, 400, "invalid_email")
		e.adminDo(t, "POST", "/admin/users", credentials{"bob@example.com", "short"}).want(t, 400, "weak_password")
		e.adminDo(t, "POST", "/admin/users", `{"email":"bob@example.com","password":`).want(t, 400, "invalid_request")
	})
	t.Run("without a password and without mail it answers 400 and makes nothing", func(t *testing.T) {
		r := e.adminDo(t, "POST", "/admin/users", map[string]string{"email": "bob@example.com"}).want(t, 400, "invalid_request")
		if !strings.Contains(r.str("message"), "password") {
			t.Errorf("message %q does not say what to send", r.str("message"))
		}
		e.adminDo(t, "GET", "/admin/users?email=bob@example.com", nil).want(t, 404, "not_found")
	})
	t.Run("needs the admin token", func(t *testing.T) {
		send(t, e.admin.Client(), "POST", e.admin.URL+"/admin/users", credentials{"carol@example.com", "correct horse battery"}).
			want(t, 401, "token_invalid")
		e.do(t, "POST", "/admin/users", credentials{"carol@example.com", "correct horse battery"},
			"Authorization", "Bearer "+testAdminToken).want(t, 404, "not_found")
	})
}

func TestAnAdminInvitationMailsALinkThatSetsThePassword(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, signupClosed)
	const email = "grace@example.com"
	r := e.adminDo(t, "POST", "/admin/users", map[string]string{"email": email}).want(t, 201, "")
	if r.str("email") != email || r.body["email_verified"] != false {
		t.Fatalf("body %s, want an unverified account", r.raw)
	}
	m := srv.next(t, email, nil)
	if !strings.Contains(m.subject, "invited") || !strings.Contains(m.text, "24 hours") {
		t.Fatalf("subject %q, text:\n%s", m.subject, m.text)
	}
	path, token := m.link(t)
	if path != "/reset-password" {
		t.Fatalf("the invitation links to %s, want /reset-password", path)
	}
	e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "my own password"}).want(t, 200, "")
	access, _ := e.login(t, email, "my own password")
	if got := e.adminDo(t, "GET", "/admin/users?email="+email, nil).want(t, 200, ""); got.body["email_verified"] != true {
		t.Fatalf("after the invitation's link: %s, want the address verified", got.raw)
	}
	e.page(t, access).want(t, 200, "")
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "another password"}).want(t, 400, "token_invalid")
	e.adminDo(t, "POST", "/admin/users", map[string]string{"email": email}).want(t, 409, "email_taken")
	if !strings.Contains(e.logs.String(), `"msg":"admin action","action":"invite","user_id":"`+r.str("id")+`"`) {
		t.Error("no admin action line for the invitation")
	}
}

func TestAnInvitationLinkDiesWhenTheSecurityStampMoves(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const email = "hedy@example.com"
	id := e.adminDo(t, "POST", "/admin/users", map[string]string{"email": email}).want(t, 201, "").str("id")
	_, token := srv.next(t, email, nil).link(t)
	// Disabling the account moves its stamp; enabling it again does not bring the link back.
	e.adminDo(t, "POST", "/admin/users/"+id+"/disable", nil).want(t, 200, "")
	e.adminDo(t, "POST", "/admin/users/"+id+"/enable", nil).want(t, 200, "")
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "my own password"}).want(t, 400, "token_invalid")
	e.do(t, "POST", "/auth/login", credentials{email, "my own password"}).want(t, 401, "invalid_credentials")
}

func TestForwardAuthAllowListAdmitsByAddressAndByDomain(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, allowing(t, " Ada@Example.com, @corp.example ,@Müller.example"))
	for _, c := range []struct {
		email string
		code  string // "" passes
	}{
		{"ada@example.com", ""},
		{"bob@example.com", "not_allowed"},
		{"carol@corp.example", ""},
		{"dave@dev.corp.example", "not_allowed"}, // a domain is matched exactly, not its subdomains
		{"eve@corp.example.evil.test", "not_allowed"},
		{"ada@example.com.evil.test", "not_allowed"},
		{"jürgen@xn--mller-kva.example", ""}, // the domain as stored, in A-labels
	} {
		t.Run(c.email, func(t *testing.T) {
			access := e.staff(t, c.email)
			if c.code == "" {
				r := e.page(t, access).want(t, 200, "")
				if r.header.Get("X-User-Email") != normalizeEmail(c.email) {
					t.Fatalf("X-User-Email %q", r.header.Get("X-User-Email"))
				}
				return
			}
			r := e.page(t, access).want(t, 403, c.code)
			if r.header.Get("X-User-Id") != "" {
				t.Fatalf("a refused user's answer names them: %v", r.header)
			}
			// The list governs forward auth only: the account's own endpoints still work.
			e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(t, 200, "")
		})
	}
	t.Run("an address on the list that nobody proved to own is not admitted", func(t *testing.T) {
		// Sign-up is open and verification off: anyone may sign up with a staff address.
		e.signup(t, "mallory@corp.example", "correct horse battery")
		access, _ := e.login(t, "mallory@corp.example", "correct horse battery")
		e.page(t, access).want(t, 403, "email_not_verified")
	})
}

func TestXAuthAllowNarrowsForwardAuthPerRoute(t *testing.T) {
	t.Parallel()
	t.Run("without FORWARD_AUTH_ALLOW the header alone decides", func(t *testing.T) {
		e := newTestEnv(t)
		ada, bob := e.staff(t, "ada@example.com"), e.staff(t, "bob@example.org")
		for _, access := range []string{ada, bob} {
			e.page(t, access).want(t, 200, "")
		}
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ada, "X-Auth-Allow", "ADA@example.com").want(t, 200, "")
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+bob, "X-Auth-Allow", "ADA@example.com").want(t, 403, "not_allowed")
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+bob, "X-Auth-Allow", "@example.org").want(t, 200, "")
	})
	t.Run("with FORWARD_AUTH_ALLOW a user must be on both", func(t *testing.T) {
		e := newTestEnv(t, allowing(t, "@example.com"))
		ada, bob := e.staff(t, "ada@example.com"), e.staff(t, "bob@example.org")
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ada, "X-Auth-Allow", "@example.org").want(t, 403, "not_allowed")
		// The header narrows; it never widens.
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+bob, "X-Auth-Allow", "bob@example.org").want(t, 403, "not_allowed")
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ada, "X-Auth-Allow", "ada@example.com, bob@example.org").want(t, 200, "")
	})
}

func TestABadXAuthAllowHeaderNeverOpensTheGate(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	ada := e.staff(t, "ada@example.com")
	for _, v := range []string{"", " , ", "*", "everyone", "@", "ada@", "@example", "@127.0.0.1", "@exa mple.com",
		"ada@example.com, nonsense", "@example.com;@example.org"} {
		t.Run(v, func(t *testing.T) {
			r := e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ada, "X-Auth-Allow", v).want(t, 500, "bad_allow_header")
			if r.header.Get("X-User-Id") != "" {
				t.Fatalf("a refused request's answer names its user: %v", r.header)
			}
		})
	}
	if !strings.Contains(e.logs.String(), `"level":"ERROR","msg":"the proxy sent a bad X-Auth-Allow header`) ||
		!strings.Contains(e.logs.String(), `nonsense`) {
		t.Errorf("the log does not name the bad header for the operator:\n%s", e.logs)
	}
	t.Run("sent twice it is refused", func(t *testing.T) {
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ada, "X-Auth-Allow", "ada@example.com",
			"X-Auth-Allow", "ada@example.com").want(t, 401, "invalid_request")
	})
}

func TestAStartWithABadForwardAuthAllowIsRefused(t *testing.T) {
	t.Parallel()
	for _, v := range []string{",", "everyone", "@example", "ada@example.com, @", "ada@example.com;bob@example.com"} {
		t.Run(v, func(t *testing.T) {
			env := map[string]string{"FORWARD_AUTH_ALLOW": v, "DATA_DIR": t.TempDir()}
			err := run(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
			if err == nil || !strings.Contains(err.Error(), "FORWARD_AUTH_ALLOW") {
				t.Fatalf("got %v, want the start refused naming FORWARD_AUTH_ALLOW", err)
			}
		})
	}
	_, err := loadConfig(func(k string) string {
		return map[string]string{"FORWARD_AUTH_ALLOW": "ada@example.com, @Example.ORG"}[k]
	})
	if err != nil {
		t.Fatalf("a good list is refused: %v", err)
	}
}

// A user the allow list turns away through nginx gets its 403, never the app; a client's own
// X-Auth-Allow does not widen the route's.
func TestNginxTurnsAwayAUserTheRoutesAllowListDoesNotAdmit(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	// The /admin/ pages of the deployed file, narrowed to some users instead of asking for two
	// factors, as docs/proxies.md shows.
	px := startNginxFront(t, e, func(site string) string {
		return strings.Replace(site, "proxy_set_header X-Auth-Require aal2;",
			`proxy_set_header X-Auth-Allow "ada@example.com, @corp.example";`, 1)
	})
	ada, bob := e.staff(t, "ada@example.com"), e.staff(t, "bob@example.com")
	px.app(t, "GET", "/admin/users", "", "Authorization", "Bearer "+ada).wantIdentity(t, userID(t, e, ada), "ada@example.com")
	px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+bob)
	before := px.appHits.Load()
	for _, extra := range [][]string{nil, {"X-Auth-Allow", "bob@example.com"}} {
		r := px.do(t, "GET", "/admin/users", "", append([]string{"Authorization", "Bearer " + bob}, extra...)...)
		if r.status != http.StatusForbidden {
			t.Fatalf("bob on /admin/ through nginx (%v): %d %s, want 403", extra, r.status, r.raw)
		}
	}
	if px.appHits.Load() != before {
		t.Fatal("the app saw a request the allow list refused")
	}
}
