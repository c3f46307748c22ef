package main

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
	"time"
)

type refreshBody struct {
	RefreshToken string `json:"refresh_token"`
}

// refreshToken takes the refresh token from the original service's header or, failing that, the
// body.
func refreshToken(w http.ResponseWriter, r *http.Request) (string, error) {
	if t := bearer(header(r, hdrRefresh)); t != "" {
		return t, nil
	}
	var body refreshBody
	if err := decodeOptional(w, r, &body); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return bearer(body.RefreshToken), nil
}

func handleRefresh(log *slog.Logger, store Store, t *tokens, revs *revocations, m *metrics, reuseInterval time.Duration) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		raw, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		if raw == "" {
			return errTokenMissing
		}
		c, err := t.parse(raw, useRefresh)
		if err != nil {
			return err
		}
		ctx, now := r.Context(), t.now()
		// Refresh is not the hot path, so it asks the database too rather than trust a cache
		// that may be up to one sync interval behind another instance's logout.
		if revs.revoked(c) {
			return errTokenRevoked
		}
		if revoked, err := store.Revoked(ctx, now, jtiPrefix+c.ID, sidPrefix+c.Session); err != nil {
			return err
		} else if revoked {
			return errTokenRevoked
		}
		won, firstUse, err := store.ClaimRefresh(ctx, c.ID, now, c.expiresAt().Add(clockSkew))
		if err != nil {
			return err
		}
		if !won && now.Sub(firstUse) >= reuseInterval {
			// A retired token came back after the grace period: whoever holds it, the session may
			// be stolen, so all of it ends.
			rev := Revocation{ID: sidPrefix + c.Session, ExpiresAt: now.Add(t.maxTTL()), CreatedAt: now}
			if err := revs.revoke(ctx, rev); err != nil {
				return err
			}
			m.revoked(rev)
			m.refresh(refreshReused)
			log.LogAttrs(ctx, slog.LevelWarn, "refresh token reused; session revoked",
				slog.String("request_id", requestID(ctx)), slog.String("user_id", c.Subject))
			return errTokenReused
		}
		// The first use, or another tab presenting the same token within the reuse interval:
		// both continue the same session.
		pair, err := t.issue(c.Subject, c.Email, c.Session)
		if err != nil {
			return err
		}
		if won {
			m.refresh(refreshRotated)
		} else {
			m.refresh(refreshReuseGrace)
		}
		noteUser(ctx, c.Subject)
		encode(w, http.StatusOK, pair)
		return nil
	})
}

func handleLogout(log *slog.Logger, t *tokens, revs *revocations, m *metrics) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		access := accessToken(r)
		refresh, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		if access == "" && refresh == "" {
			return errTokenMissing
		}
		now := t.now()
		var ended []Revocation
		for _, tok := range []struct{ raw, use string }{{access, useAccess}, {refresh, useRefresh}} {
			if tok.raw == "" {
				continue
			}
			// An expired token is still proof of its session, and logging it out must work.
			c, err := t.parse(tok.raw, tok.use)
			if err != nil && !errors.Is(err, errTokenExpired) {
				return err
			}
			noteUser(r.Context(), c.Subject)
			ended = append(ended,
				Revocation{ID: jtiPrefix + c.ID, ExpiresAt: c.expiresAt().Add(clockSkew), CreatedAt: now},
				Revocation{ID: sidPrefix + c.Session, ExpiresAt: now.Add(t.maxTTL()), CreatedAt: now})
		}
		if err := revs.revoke(r.Context(), ended...); err != nil {
			return err
		}
		m.revoked(ended...)
		encode(w, http.StatusOK, map[string]string{"message": "logged out"})
		return nil
	})
}

func handleVerify(log *slog.Logger, t *tokens, revs *revocations) http.Handler {
	type request struct {
		Token string `json:"token"`
	}
	type response struct {
		Valid    bool    `json:"valid"`
		TokenUse string  `json:"token_use"`
		Claims   *claims `json:"claims"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		var req request
		if err := decodeOptional(w, r, &req); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		raw := bearer(req.Token)
		if raw == "" {
			raw = accessToken(r)
		}
		if raw == "" {
			raw = bearer(header(r, hdrRefresh))
		}
		if raw == "" {
			return errTokenMissing
		}
		c, err := t.parse(raw, "")
		if err != nil {
			return err
		}
		if revs.revoked(c) {
			return errTokenRevoked
		}
		noteUser(r.Context(), c.Subject)
		encode(w, http.StatusOK, response{true, c.Use, c})
		return nil
	})
}
