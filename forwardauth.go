package main

// forwardauth.go checks access tokens, for the routes that need one and for forward-auth proxies.

import (
	"context"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// requireAccess lets a request through only with a valid, unexpired, unrevoked access token, and
// tells the client why not otherwise: token_expired means "call /auth/refresh and retry". It never
// touches the database: tokens are checked by signature and the in-memory revocation list.
// Identity headers a client sends itself are never read.
func requireAccess(log *slog.Logger, t *tokens, revs *revocations) func(http.Handler) http.Handler {
	return requireWith(log, func(r *http.Request) (*claims, error) {
		raw, err := accessToken(r)
		if err != nil {
			return nil, err
		}
		return accept(t, revs, raw, useAccess)
	})
}

// requireWith is requireAccess with the credential that credential finds in the request: the
// forward-auth check also takes the portal's cookie (bearerOrCookie).
func requireWith(log *slog.Logger, credential func(*http.Request) (*claims, error)) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			c, err := admitBy(r, credential)
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			next.ServeHTTP(w, withClaims(r, c))
		})
	}
}

// admitBy returns the claims of the credential of r when they meet the level a proxy asks for.
func admitBy(r *http.Request, credential func(*http.Request) (*claims, error)) (*claims, error) {
	c, err := credential(r)
	if err != nil {
		return nil, err
	}
	// A proxy asks for a stronger login on the routes it chooses (RFC 9470's step-up). A list
	// in one line is two requirements as much as two lines are.
	required, err := header(r, "X-Auth-Require")
	if err == nil && strings.IndexByte(required, ',') >= 0 {
		err = errRepeated("X-Auth-Require")
	}
	if err != nil {
		return nil, err
	}
	if required != "" && !satisfies(c.level(), required) {
		if required == "phr" {
			return c, errPHRRequired
		}
		return c, errMFARequired
	}
	return c, nil
}

// withClaims is r with c as its verified identity.
func withClaims(r *http.Request, c *claims) *http.Request {
	if info, ok := r.Context().Value(infoKey).(*reqInfo); ok {
		info.claims, info.userID = c, c.Subject
		return r
	}
	return r.WithContext(context.WithValue(r.Context(), infoKey, &reqInfo{claims: c, userID: c.Subject}))
}

// handleForwardAuth answers a request that passed requireAccess: who the user is, in the body and
// in the headers a forward-auth proxy copies onto the request it lets through.
func handleForwardAuth(now func() time.Time) http.Handler {
	type user struct {
		ID    string `json:"id"`
		Email string `json:"email"`
	}
	type response struct {
		User      user  `json:"user"`
		ExpiresIn int64 `json:"expires_in"`
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := claimsFrom(r.Context())
		h := w.Header()
		h["X-User-Id"] = []string{c.Subject}
		h["X-User-Email"] = []string{c.Email}
		h["X-User-Acr"] = []string{c.level().ACR}
		h["X-User-Amr"] = []string{strings.Join(c.level().AMR, ",")}
		h["X-User-Email-Verified"] = []string{strconv.FormatBool(c.EmailVerified)}
		left := max(int64(c.expiresAt().Sub(now())/time.Second), 0)
		encode(w, http.StatusOK, response{user{c.Subject, c.Email}, left})
	})
}

// satisfies reports whether a token of level lvl meets the assurance a proxy asks for with
// X-Auth-Require. An unknown requirement is not met: a mistyped proxy setting fails closed.
func satisfies(lvl level, required string) bool {
	switch required {
	case "", "aal1":
		return true
	case "aal2":
		return lvl.ACR == "aal2"
	case "phr":
		// Phishing-resistant (OpenID EAP): a passkey signed the session in or stepped it up. Read
		// from the token alone, as every level is.
		return lvl.ACR == "aal2" && (slices.Contains(lvl.AMR, amrHardwareKey) || slices.Contains(lvl.AMR, amrSoftwareKey))
	}
	return false
}
