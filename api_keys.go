package main

// api_keys.go serves the signing keys: the public key set, the discovery document, and the
// operators' rotation and revocation.

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// handleJWKS serves the public keys that may sign or have signed a live token (RFC 7517). Clients
// may cache it for jwksMaxAge: a key is published at least publish-ahead, which is longer,
// before it signs.
//
// With the OpenID provider on, the ID tokens' ring is published beside the API's.
func handleJWKS(rings ...*keyring) http.Handler {
	cache := fmt.Sprintf("public, max-age=%d", int(jwksMaxAge/time.Second))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "application/json")
		h.Set("Cache-Control", cache)
		if len(rings) == 1 {
			w.Write(rings[0].current().jwks)
			return
		}
		keys := []json.RawMessage{}
		for _, ring := range rings {
			var set struct{ Keys []json.RawMessage }
			json.Unmarshal(ring.current().jwks, &set)
			keys = append(keys, set.Keys...)
		}
		json.NewEncoder(w).Encode(map[string]any{"keys": keys})
	})
}

// handleOpenIDConfiguration serves a discovery document, so that libraries configured with an
// issuer URL find the JWKS. It exists only when JWT_ISSUER is an http(s) URL, the issuer's own
// address by the convention those libraries follow.
func handleOpenIDConfiguration(log *slog.Logger, issuer string) http.Handler {
	u, err := url.Parse(issuer)
	ok := err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != ""
	body := map[string]string{"issuer": issuer, "jwks_uri": strings.TrimSuffix(issuer, "/") + "/.well-known/jwks.json"}
	cache := fmt.Sprintf("public, max-age=%d", int(jwksMaxAge/time.Second))
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if !ok {
			return &apiError{status: http.StatusNotFound, code: "not_found",
				message: "JWT_ISSUER is not an http(s) URL, so there is no discovery document; the keys are at /.well-known/jwks.json"}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", cache)
		w.WriteHeader(http.StatusOK)
		json.NewEncoder(w).Encode(body)
		return nil
	})
}

// handleKeyRotate starts a rotation now (the admin API's POST /admin/keys/rotate).
func handleKeyRotate(log *slog.Logger, keys *keyring) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		info, err := keys.rotate(r.Context())
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, info)
		return nil
	})
}

// handleKeyRevoke revokes the key {kid}: every token it signed is refused (the admin API's
// DELETE /admin/keys/{kid}).
func handleKeyRevoke(log *slog.Logger, keys *keyring) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		info, err := keys.revoke(r.Context(), r.PathValue("kid"))
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, info)
		return nil
	})
}

// jwksMaxAge is how long clients may cache /.well-known/jwks.json. JWT_KEY_PUBLISH_AHEAD must be
// longer, so that a key is in every cached copy before any token is signed with it.
const jwksMaxAge = 5 * time.Minute
