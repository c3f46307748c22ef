package main

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"
)

// The account's security stamp, as docs/security-model.md tells it: each subtest is a row of the
// table there. Every event that moves the stamp voids the links and second-factor challenges
// issued before it, and ends the sessions the table says.
func TestSecurityModel(t *testing.T) {
	t.Parallel()
	for _, row := range []struct {
		name string
		// factor: the account has a second factor before the event; usedRecovery: recovery codes
		// used before the credentials in flight are issued.
		factor       bool
		passkey      bool // the account has a passkey before the event
		usedRecovery int
		event        func(t *testing.T, a *stampedAccount)
		othersEnd    bool // the account's other sessions end
		cookiesEnd   bool // its cookie sessions end (othersEnd ends them too)
	}{
		{name: "a password change voids links and challenges and ends the other sessions", factor: true,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.do(t, "POST", "/auth/password", map[string]string{"current_password": a.password, "new_password": "another good password"},
					a.auth()...).want(t, 200, "")
			}, othersEnd: true},
		{name: "a password reset voids links and challenges and ends every session", factor: true,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": a.email}).want(t, 202, "")
				_, token := a.srv.next(t, a.email, nil).link(t)
				a.e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "another good password"}).want(t, 200, "")
			}, othersEnd: true},
		{name: "adding a second factor voids links and ends the other sessions",
			event:     func(t *testing.T, a *stampedAccount) { a.secret, a.recovery = a.e.enrolTOTP(t, a.access) },
			othersEnd: true},
		{name: "removing the second factor voids links and challenges and ends the other sessions", factor: true,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"code": a.code(t)}, a.auth()...).want(t, 204, "")
			}, othersEnd: true},
		{name: "adding a passkey voids links and challenges and ends the other sessions", factor: true,
			event:     func(t *testing.T, a *stampedAccount) { a.e.addPasskey(t, a.access, newSoftKey(t)) },
			othersEnd: true},
		{name: "removing a passkey voids links and challenges and ends the other sessions", factor: true, passkey: true,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.do(t, "DELETE", "/auth/passkeys/"+b64u(a.passkey.id), map[string]string{"password": a.password},
					a.auth()...).want(t, 204, "")
			}, othersEnd: true},
		{name: "using the last recovery code voids links and challenges", factor: true, usedRecovery: 9,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.verifyMFA(t, map[string]string{"recovery_code": a.recovery[9]}, a.auth()...).want(t, 200, "")
			}},
		{name: "completing an address change voids links and challenges and ends the cookie sessions", factor: true,
			event: func(t *testing.T, a *stampedAccount) {
				fresh := "moved-" + a.email
				a.e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": fresh, "password": a.password},
					a.auth()...).want(t, 202, "")
				a.srv.next(t, a.email, nil) // the notice
				_, token := a.srv.next(t, fresh, nil).link(t)
				a.e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 200, "")
			}, cookiesEnd: true},
		{name: "disabling the account voids links and challenges and ends every session", factor: true,
			event: func(t *testing.T, a *stampedAccount) {
				a.e.adminDo(t, "POST", "/admin/users/"+a.id+"/disable", nil).want(t, 200, "")
			}, othersEnd: true},
	} {
		t.Run(row.name, func(t *testing.T) {
			t.Parallel()
			a := newStampedAccount(t, row.factor)
			if row.passkey {
				a.passkey = newSoftKey(t)
				a.e.addPasskey(t, a.access, a.passkey)
				a.srv.next(t, a.email, nil) // the notice of the new passkey
			}
			for i := range row.usedRecovery {
				a.e.verifyMFA(t, map[string]string{"recovery_code": a.recovery[i]}, a.auth()...).want(t, 200, "")
			}
			resetLink, changeLink, challenge := a.inFlight(t)
			other := a.otherSession(t)
			browser := a.browserSession(t)
			client := registerClient(t, a.e, map[string]any{"type": "confidential", "first_party": true})
			code := codeFlow(t, a.e, browser, client, a.email, "") // an OpenID client's code, not redeemed yet

			row.event(t, a)

			exchange(t, a.e, client, url.Values{"code": {code}}).want(t, 400, "invalid_grant")
			a.e.do(t, "POST", "/auth/password/reset", map[string]string{"token": resetLink, "password": "an attacker's password"}).
				want(t, 400, "token_invalid")
			a.e.do(t, "POST", "/auth/email/verify", map[string]string{"token": changeLink}).want(t, 400, "token_invalid")
			if challenge != "" {
				a.e.verifyMFA(t, map[string]string{"mfa_token": challenge, "code": a.code(t)}).want(t, 401, "token_invalid")
			}
			if row.othersEnd {
				a.e.page(t, other).want(t, 401, "token_revoked")
			} else {
				a.e.page(t, other).want(t, 200, "")
			}
			wantPasses(t, browser, !row.othersEnd && !row.cookiesEnd)
		})
	}
}

// stampedAccount is an account of a service of its own, with mail, and what a test of its stamp
// needs of it.
type stampedAccount struct {
	e                   *testEnv
	srv                 *mailServer
	id, email, password string
	access, secret      string
	recovery            []string
	changes             int
	passkey             *softKey
}

func newStampedAccount(t *testing.T, factor bool) *stampedAccount {
	t.Helper()
	srv := newMailServer(t, false)
	a := &stampedAccount{e: newMailEnv(t, srv, withPortal), srv: srv, email: "owner@example.com", password: "correct horse battery"}
	a.id = a.e.do(t, "POST", "/auth/signup", credentials{a.email, a.password}).want(t, 201, "").str("id")
	srv.next(t, a.email, nil) // the verification mail
	a.access, _ = a.e.login(t, a.email, a.password)
	if factor {
		a.secret, a.recovery = a.e.enrolTOTP(t, a.access)
		srv.next(t, a.email, nil) // the notice of the new factor
	}
	return a
}

func (a *stampedAccount) auth() []string { return []string{"Authorization", "Bearer " + a.access} }

// code is a code of the account's authenticator app, of a step no code was used for yet.
func (a *stampedAccount) code(t *testing.T) string {
	t.Helper()
	a.e.clock.Advance(totpStep)
	return oathtool(t, a.secret, a.e.clock.Now())
}

// inFlight issues a reset link, an address-change link and, with a second factor, a login's
// challenge, none of them used.
func (a *stampedAccount) inFlight(t *testing.T) (resetLink, changeLink, challenge string) {
	t.Helper()
	a.e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": a.email}).want(t, 202, "")
	_, resetLink = a.srv.next(t, a.email, nil).link(t)
	a.changes++
	attacker := strings.Repeat("x", a.changes) + "@attacker.example"
	a.e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": attacker, "password": a.password},
		a.auth()...).want(t, 202, "")
	a.srv.next(t, a.email, nil) // the notice
	_, changeLink = a.srv.next(t, attacker, nil).link(t)
	if a.secret != "" {
		challenge = a.e.loginMFA(t, a.email)
	}
	return resetLink, changeLink, challenge
}

// otherSession is the access token of a second session of the account.
func (a *stampedAccount) otherSession(t *testing.T) string {
	t.Helper()
	if a.secret == "" {
		access, _ := a.e.login(t, a.email, a.password)
		return access
	}
	r := a.e.verifyMFA(t, map[string]string{"mfa_token": a.e.loginMFA(t, a.email), "code": a.code(t)}).want(t, 200, "")
	return r.str("access_token")
}

// browserSession is a browser signed in to the account on the portal.
func (a *stampedAccount) browserSession(t *testing.T) *browser {
	t.Helper()
	b := newBrowser(a.e)
	p := b.signIn(t, a.email, "")
	if a.secret != "" {
		b.post(t, "/login/code", url.Values{"mfa_token": {mfaTokenField.FindStringSubmatch(p.body)[1]}, "code": {a.code(t)}})
	}
	wantPasses(t, b, true)
	return b
}

// Finding 1 of the attack review: an attacker who knows the password asks for an address change
// to their own address; the owner, warned by the notice, resets the password; the attacker's link
// must not move the account afterwards.
func TestAnAddressChangeLinkDiesWithAPasswordReset(t *testing.T) {
	t.Parallel()
	a := newStampedAccount(t, false)
	const attacker = "attacker@evil.example"
	a.e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": attacker, "password": a.password},
		a.auth()...).want(t, 202, "")
	if notice := a.srv.next(t, a.email, nil); !strings.Contains(notice.text, attacker) {
		t.Fatalf("the owner's notice does not name the new address:\n%s", notice.text)
	}
	_, link := a.srv.next(t, attacker, nil).link(t)

	a.e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": a.email}).want(t, 202, "")
	_, reset := a.srv.next(t, a.email, nil).link(t)
	a.e.do(t, "POST", "/auth/password/reset", map[string]string{"token": reset, "password": "the owner's new password"}).want(t, 200, "")

	a.e.do(t, "POST", "/auth/email/verify", map[string]string{"token": link}).want(t, 400, "token_invalid")
	a.e.login(t, a.email, "the owner's new password")
	a.e.do(t, "POST", "/auth/login", credentials{attacker, "the owner's new password"}).want(t, 401, "invalid_credentials")
}

// An address-change mail still in the outbox when the password is reset goes out with no link:
// the link would be made after the reset, but for a request made before it.
func TestAnAddressChangeQueuedBeforeAResetMailsNoLink(t *testing.T) {
	t.Parallel()
	a := newStampedAccount(t, false)
	u, err := a.e.store.UserByID(t.Context(), a.id)
	if err != nil {
		t.Fatal(err)
	}
	// The request as handleEmailChange queues it, under the stamp of then.
	if err := a.e.store.QueueMail(t.Context(), &MailMessage{ID: newID(), Kind: mailChange, To: "late@evil.example",
		UserID: u.ID, Stamp: 0, CreatedAt: a.e.clock.Now(), NextAt: a.e.clock.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	if err := a.e.deps.accounts.moveStamp(t.Context(), u.ID, endPasswordReset); err != nil {
		t.Fatal(err)
	}
	a.e.clock.Advance(2 * time.Hour)
	a.e.outboxEmpty(t)
	if got := a.srv.mailsTo("late@evil.example"); len(got) != 0 {
		t.Fatalf("%d mails with a change link went out after the stamp moved", len(got))
	}
}

// Finding 9: a challenge taken with the old password and a reset link issued before a password
// change both die with the change.
func TestCredentialsInFlightDieWithAPasswordChange(t *testing.T) {
	t.Parallel()
	a := newStampedAccount(t, true)
	challenge := a.e.loginMFA(t, a.email)
	a.e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": a.email}).want(t, 202, "")
	_, reset := a.srv.next(t, a.email, nil).link(t)

	a.e.do(t, "POST", "/auth/password", map[string]string{"current_password": a.password, "new_password": "another good password"},
		a.auth()...).want(t, 200, "")

	a.e.verifyMFA(t, map[string]string{"mfa_token": challenge, "code": a.code(t)}).want(t, 401, "token_invalid")
	a.e.do(t, "POST", "/auth/password/reset", map[string]string{"token": reset, "password": "an attacker's password"}).
		want(t, 400, "token_invalid")
}

// Finding 3: a stolen access token alone cannot add a factor and lock the owner out; the owner is
// mailed when a factor is added and when it is removed.
func TestAddingAFactorNeedsThePasswordAndTellsTheOwner(t *testing.T) {
	t.Parallel()
	a := newStampedAccount(t, false)
	a.e.do(t, "POST", "/auth/mfa/totp", nil, a.auth()...).want(t, 400, "invalid_request")
	a.e.do(t, "POST", "/auth/mfa/totp", map[string]string{}, a.auth()...).want(t, 400, "invalid_request")
	a.e.do(t, "POST", "/auth/mfa/totp", map[string]string{"password": "a guess"}, a.auth()...).want(t, 401, "invalid_credentials")

	a.secret, a.recovery = a.e.enrolTOTP(t, a.access)
	if m := a.srv.next(t, a.email, nil); !strings.Contains(m.subject, "second factor was added") {
		t.Fatalf("after the factor was added the owner got %q", m.subject)
	}
	a.e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"code": a.code(t)}, a.auth()...).want(t, 204, "")
	if m := a.srv.next(t, a.email, nil); !strings.Contains(m.subject, "second factor of your") {
		t.Fatalf("after the factor was removed the owner got %q", m.subject)
	}
}

// Finding 12: the session a password change answers with keeps the assurance level the user proved
// in the session that changed it.
func TestAPasswordChangeFromAnAAL2SessionStaysAtAAL2(t *testing.T) {
	t.Parallel()
	a := newStampedAccount(t, true)
	access := a.otherSession(t)
	r := a.e.do(t, "POST", "/auth/password", map[string]string{"current_password": a.password, "new_password": "another good password"},
		"Authorization", "Bearer "+access).want(t, 200, "")
	if acr := a.e.page(t, r.str("access_token")).want(t, 200, "").header.Get("X-User-Acr"); acr != "aal2" {
		t.Fatalf("after a password change from an aal2 session: X-User-Acr %q, want aal2", acr)
	}
	a.e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+r.str("access_token"), "X-Auth-Require", "aal2").
		want(t, http.StatusOK, "")
}
