package main

import (
	"strings"
	"testing"
	"time"
)

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, refresh := e.user(t)
	id := userID(t, e, access)

	t.Run("refuses a call without the token or with another one", func(t *testing.T) {
		for _, auth := range []string{"", "Bearer ", "Bearer " + testAdminToken + "x", "Basic " + testAdminToken, testAdminToken[:31]} {
			r := send(t, e.admin.Client(), "GET", e.admin.URL+"/admin/users?email="+email, nil, "Authorization", auth)
			r.want(t, 401, "token_invalid")
			if !strings.HasPrefix(r.header.Get("WWW-Authenticate"), "Bearer") {
				t.Fatalf("WWW-Authenticate %q", r.header.Get("WWW-Authenticate"))
			}
		}
	})
	t.Run("is not served on the public port", func(t *testing.T) {
		e.do(t, "GET", "/admin/users?email="+email, nil, "Authorization", "Bearer "+testAdminToken).want(t, 404, "not_found")
	})
	t.Run("finds a user by email", func(t *testing.T) {
		r := e.adminDo(t, "GET", "/admin/users?email="+strings.ToUpper(email), nil).want(t, 200, "")
		if r.str("id") != id || r.str("email") != email || r.str("created_at") == "" || r.body["disabled"] != false {
			t.Fatalf("body %s", r.raw)
		}
		e.adminDo(t, "GET", "/admin/users?email=nobody@example.com", nil).want(t, 404, "not_found")
		e.adminDo(t, "GET", "/admin/users", nil).want(t, 400, "invalid_request")
	})
	t.Run("lists a user's live sessions", func(t *testing.T) {
		e.login(t, email, "correct horse battery")
		r := e.adminDo(t, "GET", "/admin/users/"+id+"/sessions", nil).want(t, 200, "")
		if list, _ := r.body["sessions"].([]any); len(list) != 2 {
			t.Fatalf("sessions %s, want 2", r.raw)
		}
		e.adminDo(t, "GET", "/admin/users/nobody/sessions", nil).want(t, 404, "not_found")
	})
	t.Run("ends every session of a user", func(t *testing.T) {
		r := e.adminDo(t, "POST", "/admin/users/"+id+"/logout", nil).want(t, 200, "")
		if r.body["sessions_ended"] != 2.0 {
			t.Fatalf("body %s, want 2 sessions ended", r.raw)
		}
		e.page(t, access).want(t, 401, "token_revoked")
		e.refresh(t, refresh).want(t, 401, "token_revoked")
		e.login(t, email, "correct horse battery")
	})
	t.Run("disables a user, who cannot log in whatever the password, and ends their sessions", func(t *testing.T) {
		live, _ := e.login(t, email, "correct horse battery")
		e.adminDo(t, "POST", "/admin/users/"+id+"/disable", nil).want(t, 200, "")
		e.page(t, live).want(t, 401, "token_revoked")
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 403, "account_disabled")
		e.do(t, "POST", "/auth/login", credentials{email, "wrong guess"}).want(t, 401, "invalid_credentials")
		if r := e.adminDo(t, "GET", "/admin/users?email="+email, nil).want(t, 200, ""); r.body["disabled"] != true {
			t.Fatalf("body %s, want disabled", r.raw)
		}
		e.adminDo(t, "POST", "/admin/users/"+id+"/enable", nil).want(t, 200, "")
		e.login(t, email, "correct horse battery")
		e.adminDo(t, "POST", "/admin/users/nobody/disable", nil).want(t, 404, "not_found")
	})
	t.Run("keeps an account disabled in its own document, as before disabled_accounts, until enabled", func(t *testing.T) {
		old := &User{ID: newID(), Email: "disabled-before@example.com", PasswordHash: hashPassword("correct horse battery"),
			CreatedAt: time.Now(), Disabled: true}
		if err := e.store.CreateUser(t.Context(), old); err != nil {
			t.Fatal(err)
		}
		e.do(t, "POST", "/auth/login", credentials{old.Email, "correct horse battery"}).want(t, 403, "account_disabled")
		e.adminDo(t, "POST", "/admin/users/"+old.ID+"/enable", nil).want(t, 200, "")
		e.login(t, old.Email, "correct horse battery")
		e.adminDo(t, "POST", "/admin/users/"+old.ID+"/disable", nil).want(t, 200, "")
		e.do(t, "POST", "/auth/login", credentials{old.Email, "correct horse battery"}).want(t, 403, "account_disabled")
		e.adminDo(t, "POST", "/admin/users/"+old.ID+"/enable", nil).want(t, 200, "")
		e.login(t, old.Email, "correct horse battery")
	})
	t.Run("deletes a user as account deletion does", func(t *testing.T) {
		live, liveRefresh := e.login(t, email, "correct horse battery")
		e.adminDo(t, "DELETE", "/admin/users/"+id, nil).want(t, 204, "")
		e.page(t, live).want(t, 401, "token_revoked")
		e.refresh(t, liveRefresh).want(t, 401, "token_revoked")
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 401, "invalid_credentials")
		e.adminDo(t, "DELETE", "/admin/users/"+id, nil).want(t, 404, "not_found")
		e.signup(t, email, "correct horse battery")
	})
	t.Run("logs every action with the user it was done to", func(t *testing.T) {
		logs := e.logs.String()
		for _, action := range []string{"logout", "disable", "enable", "delete"} {
			if !strings.Contains(logs, `"msg":"admin action","action":"`+action+`","user_id":"`+id+`"`) {
				t.Errorf("no admin action line for %s of %s in the log", action, id)
			}
		}
	})
}

func TestAdminSettings(t *testing.T) {
	t.Parallel()
	t.Run("refuses an ADMIN_TOKEN under 32 bytes", func(t *testing.T) {
		_, err := loadConfig(func(k string) string { return map[string]string{"ADMIN_TOKEN": "short"}[k] })
		if err == nil || !strings.Contains(err.Error(), "ADMIN_TOKEN") {
			t.Fatalf("got %v, want an error naming ADMIN_TOKEN", err)
		}
	})
	t.Run("serves no admin API without ADMIN_TOKEN, and one on ADMIN_ADDR with it", func(t *testing.T) {
		_, logs, stop := startRun(t, t.TempDir()+"/data")
		if strings.Contains(logs.String(), `"serves":"admin"`) {
			t.Fatal("an admin listener without ADMIN_TOKEN")
		}
		stop()
		_, logs, _ = startRun(t, t.TempDir()+"/data", "ADMIN_TOKEN", testAdminToken, "ADMIN_ADDR", "127.0.0.1:0")
		admin := service{"http://" + listenAddr(t, logs, "admin", nil)}
		admin.do(t, "GET", "/admin/users?email=a@example.com", nil).want(t, 401, "token_invalid")
		admin.do(t, "GET", "/admin/users?email=a@example.com", nil, "Authorization", "Bearer "+testAdminToken).want(t, 404, "not_found")
	})
}

func TestAWrongPasswordOnADisabledAccountAnswersInvalidCredentials(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, _, _ := e.user(t)
	id := e.adminDo(t, "GET", "/admin/users?email="+email, nil).want(t, 200, "").str("id")
	e.adminDo(t, "POST", "/admin/users/"+id+"/disable", nil).want(t, 200, "")

	wrong := e.do(t, "POST", "/auth/login", credentials{email, "wrong guess"}).want(t, 401, "invalid_credentials")
	unknown := e.do(t, "POST", "/auth/login", credentials{"nobody-" + email, "wrong guess"}).want(t, 401, "invalid_credentials")
	if wrong.raw != unknown.raw {
		t.Fatalf("a disabled account's answer %s differs from an unknown address's %s", wrong.raw, unknown.raw)
	}
	e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 403, "account_disabled")
	t.Run("every attempt counts as a failed login, right password or wrong", func(t *testing.T) {
		for range e.cfg.maxFailures - 2 {
			e.do(t, "POST", "/auth/login", credentials{email, "wrong guess"}).want(t, 401, "invalid_credentials")
		}
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 429, "too_many_attempts")
	})
}
