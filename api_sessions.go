package main

// api_sessions.go is the session endpoints: refresh, logout, the session list, introspection.

import (
	"errors"
	"io"
	"log/slog"
	"net/http"
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

// handleRefresh exchanges a refresh token for the next pair of its session (see
// sessionKeeper.refresh).
func handleRefresh(log *slog.Logger, sessions *sessionKeeper) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		raw, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		pair, err := sessions.rotate(r.Context(), raw)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// handleLogout ends the session of the tokens sent (scope=local, the default), or every other
// session of their user too (scope=global), or every session but theirs (scope=others); see
// sessionKeeper.logout.
func handleLogout(log *slog.Logger, sessions *sessionKeeper) http.Handler {
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
		if err := sessions.logout(r.Context(), scope, access, refresh); err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string]string{"message": "logged out"})
		return nil
	})
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

// handleEndSession ends one of the signed-in user's sessions: a lost laptop's, say (see
// sessionKeeper.endOwn).
func handleEndSession(log *slog.Logger, sessions *sessionKeeper) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if err := sessions.endOwn(r.Context(), claimsFrom(r.Context()), r.PathValue("id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
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
