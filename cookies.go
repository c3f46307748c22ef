package main

// cookies.go is the portal's session cookie: its check on the hot path, and how it is set and
// cleared (sessions.go signs its credential).

import (
	"net/http"
	"strings"
	"time"
)

// cookieName is the one name of the portal's cookie, host-only or on COOKIE_DOMAIN.
const cookieName = "auth_session"

// cookieClaims returns the claims of the portal cookie r carries, checked as accept checks a
// token: signature (cached), expiry and this instance's copy of the blacklist, never the
// database. Two cookies of the name (a host-only one and one on COOKIE_DOMAIN, or one planted
// from a sibling host) fail closed: a new sign-in clears both.
func cookieClaims(t *tokens, revs *revocations, r *http.Request) (*claims, error) {
	value, n := sessionCookieValue(r)
	switch n {
	case 0:
		return nil, errTokenMissing
	case 1:
		return accept(t, revs, value, useCookie)
	}
	return nil, errRepeated("Cookie " + cookieName)
}

// sessionCookieValue finds the cookies named cookieName in r's Cookie headers, and how many there
// are, without building every cookie the browser sends along (the apps' own ones too): this is
// the forward-auth check's hot path. The value is the credential, which accept checks whole.
func sessionCookieValue(r *http.Request) (value string, n int) {
	for _, line := range r.Header["Cookie"] {
		for line != "" {
			var part string
			part, line, _ = strings.Cut(line, ";")
			name, v, ok := strings.Cut(strings.TrimSpace(part), "=")
			if ok && name == cookieName {
				value, n = strings.Trim(v, `"`), n+1
			}
		}
	}
	return value, n
}

// bearerOrCookie is the forward-auth check's credential: the access token when the request
// carries one, else the portal's cookie (when the portal is on).
func bearerOrCookie(t *tokens, revs *revocations, portalOn bool) func(*http.Request) (*claims, error) {
	return func(r *http.Request) (*claims, error) {
		raw, err := accessToken(r)
		if err != nil {
			return nil, err
		}
		if raw == "" && portalOn {
			return cookieClaims(t, revs, r)
		}
		return accept(t, revs, raw, useAccess)
	}
}

// setSessionCookie hands the browser cred, after clearing any cookie of the name it may hold on
// the other scope, so that a leftover never shadows it.
func setSessionCookie(w http.ResponseWriter, p portalConfig, cred *cookieCredential, now time.Time) {
	if p.cookieDomain != "" {
		http.SetCookie(w, sessionCookieOf(p, "", "", time.Time{}))
	}
	c := sessionCookieOf(p, p.cookieDomain, cred.value, cred.expires)
	c.MaxAge = max(int(cred.expires.Sub(now)/time.Second), 1)
	http.SetCookie(w, c)
}

// clearSessionCookies removes the cookie host-only and on COOKIE_DOMAIN.
func clearSessionCookies(w http.ResponseWriter, p portalConfig) {
	http.SetCookie(w, sessionCookieOf(p, "", "", time.Time{}))
	if p.cookieDomain != "" {
		http.SetCookie(w, sessionCookieOf(p, p.cookieDomain, "", time.Time{}))
	}
}

// sessionCookieOf is the cookie of the name on domain ("" for host-only); no value clears it.
func sessionCookieOf(p portalConfig, domain, value string, expires time.Time) *http.Cookie {
	c := &http.Cookie{Name: cookieName, Value: value, Path: "/", Domain: domain, HttpOnly: true,
		Secure: p.secure, SameSite: http.SameSiteLaxMode}
	if value == "" {
		c.MaxAge = -1
	} else {
		c.Expires = expires
	}
	return c
}
