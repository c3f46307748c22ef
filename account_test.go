package main

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"
)

// sessionsOf lists the sessions the holder of access sees.
func (e *testEnv) sessionsOf(tb testing.TB, access string) []map[string]any {
	tb.Helper()
	r := e.do(tb, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(tb, 200, "")
	list, _ := r.body["sessions"].([]any)
	out := make([]map[string]any, len(list))
	for i, s := range list {
		out[i], _ = s.(map[string]any)
	}
	return out
}

// loginAs logs in with a User-Agent of its own, and returns the tokens.
func (e *testEnv) loginAs(tb testing.TB, email, agent string) (access, refresh string) {
	tb.Helper()
	r := e.do(tb, "POST", "/auth/login", credentials{email, "correct horse battery"}, "User-Agent", agent).want(tb, 200, "")
	return r.str("access_token"), r.str("refresh_token")
}

func TestSessionsAPI(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, _, _ := e.user(t)
	laptop, _ := e.loginAs(t, email, "Laptop/1.0")
	e.clock.Advance(time.Second)
	phone, phoneRefresh := e.loginAs(t, email, "Phone/2.0 "+strings.Repeat("x", 1000))
	_, stranger, _ := e.user(t)

	t.Run("lists the user's live sessions newest first and marks the current one", func(t *testing.T) {
		list := e.sessionsOf(t, laptop)
		if len(list) != 3 { // the sign-up helper's own login, the laptop and the phone
			t.Fatalf("%d sessions, want 3: %v", len(list), list)
		}
		phoneS, laptopS := list[0], map[string]any{}
		for _, s := range list {
			if s["user_agent"] == "Laptop/1.0" {
				laptopS = s
			}
		}
		if !strings.HasPrefix(phoneS["user_agent"].(string), "Phone/2.0") || len(phoneS["user_agent"].(string)) > 256 {
			t.Errorf("newest session's user_agent %q, want the phone's, cut to 256 bytes", phoneS["user_agent"])
		}
		if laptopS["user_agent"] != "Laptop/1.0" || laptopS["current"] != true || phoneS["current"] != false {
			t.Errorf("sessions %v: want the laptop's marked current", list)
		}
		for _, key := range []string{"id", "created_at", "last_used_at", "ip", "user_agent", "current"} {
			if _, ok := laptopS[key]; !ok {
				t.Errorf("no %s in %v", key, laptopS)
			}
		}
		if laptopS["ip"] != "127.0.0.1" {
			t.Errorf("ip %v", laptopS["ip"])
		}
	})
	t.Run("ends one session, which is refused at once, by the page and by refresh", func(t *testing.T) {
		id := e.sessionsOf(t, laptop)[0]["id"].(string) // the phone's
		e.do(t, "DELETE", "/auth/sessions/"+id, nil, "Authorization", "Bearer "+laptop).want(t, 204, "")
		e.page(t, phone).want(t, 401, "token_revoked")
		e.refresh(t, phoneRefresh).want(t, 401, "token_revoked")
		if list := e.sessionsOf(t, laptop); len(list) != 2 {
			t.Fatalf("%d sessions after ending one, want 2", len(list))
		}
	})
	t.Run("answers 404 for an unknown id and for another user's session alike", func(t *testing.T) {
		theirs := e.sessionsOf(t, stranger)[0]["id"].(string)
		a := e.do(t, "DELETE", "/auth/sessions/"+theirs, nil, "Authorization", "Bearer "+laptop).want(t, 404, "not_found")
		b := e.do(t, "DELETE", "/auth/sessions/no-such-id", nil, "Authorization", "Bearer "+laptop).want(t, 404, "not_found")
		if a.raw != b.raw {
			t.Fatalf("the answers differ: %s and %s", a.raw, b.raw)
		}
		e.page(t, stranger).want(t, 200, "")
	})
	t.Run("needs an access token", func(t *testing.T) {
		e.do(t, "GET", "/auth/sessions", nil).want(t, 401, "token_missing")
		e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+phoneRefresh).want(t, 401, "token_invalid")
		e.do(t, "GET", "/auth/sessions", nil, "authorization_access", laptop).want(t, 200, "")
	})
}

func TestSessionsEndedOnOneInstanceAreRefusedOnTheOther(t *testing.T) {
	t.Parallel()
	a, b := newTestPair(t)
	email, _, _ := a.user(t)
	keep, _ := a.login(t, email, "correct horse battery")
	lost, lostRefresh := b.login(t, email, "correct horse battery")
	b.page(t, lost).want(t, 200, "") // b has it in its verified cache
	id, _ := b.claimsOf(t, lost)["sid"].(string)
	a.do(t, "DELETE", "/auth/sessions/"+id, nil, "Authorization", "Bearer "+keep).want(t, 204, "")
	b.refresh(t, lostRefresh).want(t, 401, "token_revoked")      // refresh asks the database: at once
	if err := b.deps.revocations.sync(t.Context()); err != nil { // one poll, as the background does
		t.Fatal(err)
	}
	b.page(t, lost).want(t, 401, "token_revoked")
	b.page(t, keep).want(t, 200, "")
}

func TestLogoutScopes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	logins := func(t *testing.T) (email string, here, hereRefresh, there, thereRefresh string) {
		email, here, hereRefresh = e.user(t)
		there, thereRefresh = e.login(t, email, "correct horse battery")
		return
	}
	t.Run("local ends only the session of the tokens sent", func(t *testing.T) {
		_, here, _, there, _ := logins(t)
		e.do(t, "POST", "/auth/logout?scope=local", nil, "Authorization", "Bearer "+here).want(t, 200, "")
		e.page(t, here).want(t, 401, "token_revoked")
		e.page(t, there).want(t, 200, "")
	})
	t.Run("others ends every other session and keeps this one", func(t *testing.T) {
		_, here, hereRefresh, there, thereRefresh := logins(t)
		e.do(t, "POST", "/auth/logout?scope=others", nil, "Authorization", "Bearer "+here).want(t, 200, "")
		e.page(t, here).want(t, 200, "")
		e.refresh(t, hereRefresh).want(t, 200, "")
		e.page(t, there).want(t, 401, "token_revoked")
		e.refresh(t, thereRefresh).want(t, 401, "token_revoked")
	})
	t.Run("global ends every session", func(t *testing.T) {
		_, here, _, there, thereRefresh := logins(t)
		e.do(t, "POST", "/auth/logout?scope=global", nil, "Authorization", "Bearer "+here).want(t, 200, "")
		e.page(t, here).want(t, 401, "token_revoked")
		e.page(t, there).want(t, 401, "token_revoked")
		e.refresh(t, thereRefresh).want(t, 401, "token_revoked")
	})
	t.Run("global works with the refresh token alone", func(t *testing.T) {
		_, here, hereRefresh, there, _ := logins(t)
		e.do(t, "POST", "/auth/logout?scope=global", map[string]string{"refresh_token": hereRefresh}).want(t, 200, "")
		e.page(t, here).want(t, 401, "token_revoked")
		e.page(t, there).want(t, 401, "token_revoked")
	})
	t.Run("refuses an unknown scope", func(t *testing.T) {
		_, here, _, _, _ := logins(t)
		e.do(t, "POST", "/auth/logout?scope=everything", nil, "Authorization", "Bearer "+here).want(t, 400, "invalid_request")
		e.page(t, here).want(t, 200, "")
	})
}

func TestLogoutOthersWithARevokedTokenIsRefused(t *testing.T) {
	t.Parallel()
	for _, scope := range []string{"others", "global"} {
		t.Run(scope+", on an instance that has not heard of the logout yet", func(t *testing.T) {
			t.Parallel()
			a, b := newTestPair(t)
			email, ended, endedRefresh := a.user(t)
			there, thereRefresh := a.login(t, email, "correct horse battery")
			a.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+ended).want(t, 200, "")
			// b's copy of the blacklist is a poll behind: only the database knows.
			b.do(t, "POST", "/auth/logout?scope="+scope, nil, "Authorization", "Bearer "+ended).want(t, 401, "token_revoked")
			b.do(t, "POST", "/auth/logout?scope="+scope, map[string]string{"refresh_token": endedRefresh}).want(t, 401, "token_revoked")
			a.page(t, there).want(t, 200, "")
			a.refresh(t, thereRefresh).want(t, 200, "")
		})
	}
	t.Run("a session ended as reused answers token_reused", func(t *testing.T) {
		t.Parallel()
		e := newTestEnv(t)
		email, access, refresh := e.user(t)
		there, _ := e.login(t, email, "correct horse battery")
		e.refresh(t, refresh).want(t, 200, "")
		e.clock.Advance(e.reuseWindow() + time.Second)
		e.refresh(t, refresh).want(t, 401, "token_reused")
		e.do(t, "POST", "/auth/logout?scope=others", nil, "Authorization", "Bearer "+access).want(t, 401, "token_reused")
		e.page(t, there).want(t, 200, "")
	})
}

// A leaked copy of a refresh token that its holder has exchanged since is no live session: it
// may not end the user's other sessions, though its own session is alive.
func TestARetiredRefreshTokenCannotEndOtherSessions(t *testing.T) {
	t.Parallel()
	for _, scope := range []string{"others", "global"} {
		t.Run(scope, func(t *testing.T) {
			t.Parallel()
			e := newTestEnv(t)
			email, _, retired := e.user(t)
			there, _ := e.login(t, email, "correct horse battery")
			next := e.refresh(t, retired).want(t, 200, "")
			e.clock.Advance(e.reuseWindow() + time.Second)
			e.do(t, "POST", "/auth/logout?scope="+scope, nil, "authorization_refresh", retired).want(t, 401, "token_invalid")
			e.page(t, there).want(t, 200, "")
			// The newest refresh token of the same session may.
			e.do(t, "POST", "/auth/logout?scope="+scope, nil, "authorization_refresh", next.str("refresh_token")).want(t, 200, "")
			e.page(t, there).want(t, 401, "token_revoked")
		})
	}
}

func TestLogoutGlobalWithAnExpiredTokenIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, refresh := e.user(t)
	_, thereRefresh := e.login(t, email, "correct horse battery")
	e.clock.Advance(e.cfg.accessTTL + e.cfg.leeway + time.Second) // the refresh tokens still live
	for _, scope := range []string{"global", "others"} {
		e.do(t, "POST", "/auth/logout?scope="+scope, nil, "Authorization", "Bearer "+access).want(t, 401, "token_expired")
	}
	e.refresh(t, thereRefresh).want(t, 200, "")
	t.Run("the expired token still ends its own session", func(t *testing.T) {
		e.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+access).want(t, 200, "")
		e.refresh(t, refresh).want(t, 401, "token_revoked")
	})
}

func TestPasswordChange(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback)
	email, access, refresh := e.user(t)
	other, otherRefresh := e.login(t, email, "correct horse battery")
	change := func(t *testing.T, access, current, next string) response {
		t.Helper()
		return e.do(t, "POST", "/auth/password", map[string]string{"current_password": current, "new_password": next},
			"Authorization", "Bearer "+access)
	}

	t.Run("refuses a weak new password", func(t *testing.T) {
		change(t, access, "correct horse battery", "short").want(t, 400, "weak_password")
	})
	t.Run("refuses a wrong current password as a failed login", func(t *testing.T) {
		change(t, access, "wrong guess", "a brand new password").want(t, 401, "invalid_credentials")
	})
	t.Run("needs an access token", func(t *testing.T) {
		e.do(t, "POST", "/auth/password", map[string]string{"current_password": "correct horse battery",
			"new_password": "a brand new password"}).want(t, 401, "token_missing")
	})
	t.Run("replaces the password, answers a new pair and ends every earlier session", func(t *testing.T) {
		r := change(t, access, "correct horse battery", "a brand new password").want(t, 200, "")
		e.page(t, r.str("access_token")).want(t, 200, "")
		e.refresh(t, r.str("refresh_token")).want(t, 200, "")
		for _, old := range []string{access, other} {
			e.page(t, old).want(t, 401, "token_revoked")
		}
		for _, old := range []string{refresh, otherRefresh} {
			e.refresh(t, old).want(t, 401, "token_revoked")
		}
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 401, "invalid_credentials")
		e.login(t, email, "a brand new password")
	})

	t.Run("wrong current passwords count toward the login throttle", func(t *testing.T) {
		e := newTestEnv(t, trustLoopback)
		email, access, _ := e.user(t)
		for range e.cfg.maxFailures {
			e.do(t, "POST", "/auth/password", map[string]string{"current_password": "wrong guess", "new_password": "a brand new password"},
				"Authorization", "Bearer "+access, "X-Forwarded-For", "203.0.113.5").want(t, 401, "invalid_credentials")
		}
		e.loginFrom(t, "203.0.113.5", email, "correct horse battery").want(t, 429, "too_many_attempts")
	})
}

func TestDeleteAccount(t *testing.T) {
	t.Parallel()
	a, b := newTestPair(t)
	email, access, refresh := a.user(t)
	elsewhere, elsewhereRefresh := b.login(t, email, "correct horse battery")
	b.page(t, elsewhere).want(t, 200, "")

	a.do(t, "DELETE", "/auth/account", map[string]string{"password": "wrong guess"}, "Authorization", "Bearer "+access).
		want(t, 401, "invalid_credentials")
	a.do(t, "DELETE", "/auth/account", nil, "Authorization", "Bearer "+access).want(t, 400, "invalid_request")
	a.do(t, "DELETE", "/auth/account", map[string]string{"password": "correct horse battery"}, "Authorization", "Bearer "+access).
		want(t, 204, "")

	a.page(t, access).want(t, 401, "token_revoked")
	for _, e := range []*testEnv{a, b} {
		e.refresh(t, refresh).want(t, 401, "token_revoked")
		e.refresh(t, elsewhereRefresh).want(t, 401, "token_revoked")
	}
	if err := b.deps.revocations.sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.page(t, elsewhere).want(t, 401, "token_revoked")
	a.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 401, "invalid_credentials")
	a.signup(t, email, "another good password")
	a.login(t, email, "another good password")
}

// A login that checked the password before an operator disabled the account, the account was
// deleted or its password changed must not leave a session behind: the account is read again
// after the session is written, and the session ended when it changed.
func TestALoginOvertakenByAChangeToItsAccountLeavesNoSession(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name   string
		change func(e *testEnv, u *User) error
		want   error
	}{
		{"disabled", func(e *testEnv, u *User) error { return e.store.SetDisabled(t.Context(), u.ID, true) }, errAccountDisabled},
		{"deleted", func(e *testEnv, u *User) error { return e.store.DeleteUser(t.Context(), u.ID) }, errInvalidCredentials},
		{"password changed", func(e *testEnv, u *User) error {
			return e.store.SetPasswordHash(t.Context(), u.ID, hashPassword("something else entirely"))
		}, errInvalidCredentials},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newTestEnv(t)
			email, _, _ := e.user(t)
			u, err := e.store.UserByEmail(t.Context(), email)
			if err != nil {
				t.Fatal(err)
			}
			if err := tt.change(e, u); err != nil {
				t.Fatal(err)
			}
			before := len(e.mustLive(t, u.ID))
			if _, err := e.deps.sessions.start(t.Context(), u, netip.MustParseAddr("127.0.0.1"), "test", levelPassword); err != tt.want {
				t.Fatalf("start: %v, want %v", err, tt.want)
			}
			if after := len(e.mustLive(t, u.ID)); after != before {
				t.Fatalf("%d live sessions after the refused login, want %d", after, before)
			}
		})
	}
}

func (e *testEnv) mustLive(tb testing.TB, user string) []Session {
	tb.Helper()
	live, err := e.deps.sessions.live(context.Background(), user)
	if err != nil {
		tb.Fatal(err)
	}
	return live
}

// A login opens its session while the password hashes (see opening): a wrong password, or an
// attempt beyond the throttle's limit, must leave no record of it behind.
func TestARefusedLoginLeavesNoSessionRecord(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.maxFailures = 2 })
	email, access, _ := e.user(t)
	u, err := e.store.UserByEmail(t.Context(), email)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		e.do(t, "POST", "/auth/login", credentials{email, "wrong guess"}).want(t, 401, "invalid_credentials")
	}
	e.do(t, "POST", "/auth/login", credentials{email, "wrong guess"}).want(t, 429, "too_many_attempts")
	waitFor(t, "the refused logins' session records to go", func() bool {
		all, err := e.store.SessionsOfUser(t.Context(), u.ID, e.clock.Now())
		if err != nil {
			t.Fatal(err)
		}
		return len(all) == 1
	})
	r := e.do(t, "GET", "/auth/sessions", nil, "Authorization", "Bearer "+access).want(t, 200, "")
	if n := len(r.body["sessions"].([]any)); n != 1 {
		t.Fatalf("%d sessions listed, want the one login's", n)
	}
}
