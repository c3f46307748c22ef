package main

// api_sessions.go is the session endpoints: refresh, logout, the session list, introspection.

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
	sent, err := header(r, hdrRefresh)
	if err != nil {
		return "", err
	}
	if t := bearer(sent); t != "" {
		return t, nil
	}
	var body refreshBody
	if err := decodeOptional(w, r, &body); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return bearer(body.RefreshToken), nil
}

func handleRefresh(log *slog.Logger, t *tokens, revs *revocations, sessions *sessionKeeper, m *metrics) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		raw, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		c, err := accept(t, revs, raw, useRefresh)
		if err != nil {
			return err
		}
		noteUser(r.Context(), c.Subject)
		pair, outcome, err := sessions.refresh(r.Context(), c)
		if err == nil || errors.Is(err, errTokenReused) {
			m.refresh(outcome)
		}
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// handleLogout ends the session of the tokens sent (scope=local, the default), or every other
// session of their user too (scope=global), or every session but theirs (scope=others). An
// expired or ended session's token still ends its own session, but only a live one ends others:
// a token that outlived its session (an old copy, a thief's) must not log the user out
// everywhere. That liveness is asked of the database, as refresh does.
func handleLogout(log *slog.Logger, t *tokens, revs *revocations, sessions *sessionKeeper, m *metrics) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		scope := r.URL.Query().Get("scope")
		if scope != "" && scope != "local" && scope != "others" && scope != "global" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "scope must be local, others or global"}
		}
		access, err := accessToken(r)
		if err != nil {
			return err
		}
		refresh, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		if access == "" && refresh == "" {
			return errTokenMissing
		}
		now := t.now()
		var (
			tokensEnded []Revocation
			user        string
		)
		sids := map[string]bool{}
		for _, tok := range []struct{ raw, use string }{{access, useAccess}, {refresh, useRefresh}} {
			if tok.raw == "" {
				continue
			}
			// An expired token is still proof of its session, and logging it out must work.
			c, err := t.parse(tok.raw, tok.use)
			if err != nil && (!errors.Is(err, errTokenExpired) || scope == "others" || scope == "global") {
				return err
			}
			if user != "" && c.Subject != user {
				return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the two tokens are of different users"}
			}
			user = c.Subject
			noteUser(r.Context(), c.Subject)
			tokensEnded = append(tokensEnded, Revocation{ID: jtiPrefix + c.ID, ExpiresAt: t.until(c.expiresAt()), CreatedAt: now})
			sids[c.Session] = true
			if scope == "others" || scope == "global" {
				if err := sessions.current(r.Context(), c); err != nil {
					return err
				}
			}
		}
		if scope != "others" {
			if err := revs.revoke(r.Context(), tokensEnded...); err != nil {
				return err
			}
			m.revoked(tokensEnded...)
			for sid := range sids {
				if err := sessions.end(r.Context(), sid, endLogout); err != nil {
					return err
				}
			}
		}
		if scope == "others" || scope == "global" {
			reason := endLogoutGlobal
			if scope == "others" {
				reason = endLogoutOthers
			}
			live, err := sessions.live(r.Context(), user)
			if err != nil {
				return err
			}
			for _, sess := range live {
				if !sids[sess.ID] {
					if err := sessions.end(r.Context(), sess.ID, reason); err != nil {
						return err
					}
				}
			}
		}
		encode(w, http.StatusOK, map[string]string{"message": "logged out"})
		return nil
	})
}

// sessionView is what a session looks like from outside.
type sessionView struct {
	ID         string    `json:"id"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
	IP         string    `json:"ip"`
	UserAgent  string    `json:"user_agent"`
}

func viewOf(s Session) sessionView {
	return sessionView{s.ID, s.CreatedAt.UTC(), s.LastUsedAt.UTC(), s.IP, s.UserAgent}
}

// handleSessions lists the signed-in user's live sessions, newest first, marking the one the
// token belongs to.
func handleSessions(log *slog.Logger, sessions *sessionKeeper) http.Handler {
	type view struct {
		sessionView
		Current bool `json:"current"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		live, err := sessions.live(r.Context(), c.Subject)
		if err != nil {
			return err
		}
		out := make([]view, len(live))
		for i, s := range live {
			out[i] = view{viewOf(s), s.ID == c.Session}
		}
		encode(w, http.StatusOK, map[string]any{"sessions": out})
		return nil
	})
}

// handleEndSession ends one of the signed-in user's sessions: a lost laptop's, say. Another
// user's session id is answered as if it did not exist.
func handleEndSession(log *slog.Logger, sessions *sessionKeeper) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		if err := sessions.alive(r.Context(), c); err != nil {
			return err
		}
		live, err := sessions.live(r.Context(), c.Subject)
		if err != nil {
			return err
		}
		id := r.PathValue("id")
		for _, s := range live {
			if s.ID == id {
				if err := sessions.end(r.Context(), id, endByUser); err != nil {
					return err
				}
				w.WriteHeader(http.StatusNoContent)
				return nil
			}
		}
		return errNoSuchSession
	})
}

// handleIntrospect answers /auth/verify: whether a token is valid, of which use, and its claims.
func handleIntrospect(log *slog.Logger, t *tokens, revs *revocations) http.Handler {
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
		var err error
		if raw == "" {
			raw, err = accessToken(r)
		}
		if raw == "" && err == nil {
			raw, err = header(r, hdrRefresh)
			raw = bearer(raw)
		}
		if err != nil {
			return err
		}
		c, err := accept(t, revs, raw, "")
		if err != nil {
			return err
		}
		noteUser(r.Context(), c.Subject)
		encode(w, http.StatusOK, response{true, c.Use, c})
		return nil
	})
}
