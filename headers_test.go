package main

import (
	"strings"
	"testing"
)

// wantRepeated fails the test unless r is the refusal of a header sent more than once: a 401,
// which a forward-auth proxy passes on, with its challenge.
func wantRepeated(tb testing.TB, r response) {
	tb.Helper()
	r.want(tb, 401, "invalid_request")
	if h := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(h, `Bearer error="invalid_request"`) {
		tb.Fatalf("WWW-Authenticate %q", h)
	}
}

func TestARepeatedXAuthRequireHeaderFailsClosed(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t) // an aal1 session
	e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access, "X-Auth-Require", "aal1").want(t, 200, "")
	for _, tc := range []struct {
		name     string
		required []string
	}{
		{"as two lines, the weaker first", []string{"aal1", "aal2"}},
		{"as two lines, the stronger first", []string{"aal2", "aal1"}},
		{"as a list in one line", []string{"aal1, aal2"}},
		{"as the same value twice", []string{"aal1", "aal1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			headers := []string{"Authorization", "Bearer " + access}
			for _, v := range tc.required {
				headers = append(headers, "X-Auth-Require", v)
			}
			wantRepeated(t, e.do(t, "GET", "/auth/page", nil, headers...))
		})
	}
}

func TestRepeatedTokenHeadersAreRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, refresh := e.user(t)
	_, other, otherRefresh := e.user(t)

	for _, tc := range []struct {
		name, method, path string
		body               any
		headers            []string
	}{
		{"Authorization twice at the forward-auth check", "GET", "/auth/page", nil,
			[]string{"Authorization", "Bearer " + access, "Authorization", "Bearer " + other}},
		{"Authorization twice with one token", "GET", "/auth/page", nil,
			[]string{"Authorization", "Bearer " + access, "Authorization", "Bearer " + access}},
		{"authorization_access twice", "GET", "/auth/page", nil,
			[]string{"authorization_access", access, "authorization_access", other}},
		{"authorization_access and Authorization with different tokens", "GET", "/auth/page", nil,
			[]string{"authorization_access", access, "Authorization", "Bearer " + other}},
		{"Authorization twice at verify", "POST", "/auth/verify", nil,
			[]string{"Authorization", "Bearer " + access, "Authorization", "Bearer " + other}},
		{"authorization_refresh twice at verify", "POST", "/auth/verify", nil,
			[]string{"authorization_refresh", refresh, "authorization_refresh", otherRefresh}},
		{"authorization_refresh twice at refresh", "POST", "/auth/refresh", nil,
			[]string{"authorization_refresh", refresh, "authorization_refresh", otherRefresh}},
		{"authorization_access twice at logout", "POST", "/auth/logout?scope=global", nil,
			[]string{"authorization_access", access, "authorization_access", other}},
		{"authorization_refresh twice at logout", "POST", "/auth/logout?scope=global", nil,
			[]string{"authorization_refresh", refresh, "authorization_refresh", otherRefresh}},
		{"Authorization twice at step-up", "POST", "/auth/mfa/verify", map[string]string{"code": "000000"},
			[]string{"Authorization", "Bearer " + access, "Authorization", "Bearer " + other}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			wantRepeated(t, e.do(t, tc.method, tc.path, tc.body, tc.headers...))
		})
	}
	t.Run("the admin API's Authorization twice", func(t *testing.T) {
		wantRepeated(t, send(t, e.admin.Client(), "GET", e.admin.URL+"/admin/users?email=x@example.com", nil,
			"Authorization", "Bearer "+testAdminToken, "Authorization", "Bearer nobody"))
	})
	t.Run("nothing was refreshed or ended by the refused requests", func(t *testing.T) {
		e.page(t, access).want(t, 200, "")
		e.page(t, other).want(t, 200, "")
		e.refresh(t, refresh).want(t, 200, "")
		e.refresh(t, otherRefresh).want(t, 200, "")
	})
	t.Run("one token in both headers passes", func(t *testing.T) {
		e.do(t, "GET", "/auth/page", nil, "authorization_access", access, "Authorization", "Bearer "+access).want(t, 200, "")
	})
	t.Run("Authorization in another scheme is left to the proxy", func(t *testing.T) {
		r := e.do(t, "GET", "/auth/page", nil, "authorization_access", access, "Authorization", "Basic dXNlcjpwYXNz").want(t, 200, "")
		if r.header.Get("X-User-Id") != e.claimsOf(t, access)["sub"] {
			t.Fatalf("X-User-Id %q", r.header.Get("X-User-Id"))
		}
	})
}
