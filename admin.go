package main

// admin.go is the operators' API: find accounts, end their sessions, disable or delete them.

import (
	"crypto/sha256"
	"crypto/subtle"
	"log/slog"
	"net/http"
	"time"
)

var errAdminToken = &apiError{status: http.StatusUnauthorized, code: "token_invalid", message: "this call needs Authorization: Bearer <ADMIN_TOKEN>"}

// requireAdmin lets a call through only with Authorization: Bearer <token>. The two are compared
// as SHA-256 digests in constant time, so that neither their contents nor the token's length show
// in the time taken.
func requireAdmin(log *slog.Logger, token string) func(http.Handler) http.Handler {
	want := sha256.Sum256([]byte(token))
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			sent, err := header(r, "Authorization")
			if err != nil {
				writeError(w, r, log, err)
				return
			}
			got := sha256.Sum256([]byte(bearer(sent)))
			if subtle.ConstantTimeCompare(got[:], want[:]) != 1 {
				writeError(w, r, log, errAdminToken)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// logAdmin writes the line every admin action leaves behind.
func logAdmin(log *slog.Logger, r *http.Request, action, user string) {
	log.LogAttrs(r.Context(), slog.LevelInfo, "admin action", slog.String("action", action),
		slog.String("user_id", user), slog.String("request_id", requestID(r.Context())))
}

type adminUser struct {
	ID            string    `json:"id"`
	Email         string    `json:"email"`
	EmailVerified bool      `json:"email_verified"`
	CreatedAt     time.Time `json:"created_at"`
	Disabled      bool      `json:"disabled"`
}

func handleAdminFindUser(log *slog.Logger, users *accounts) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		email := normalizeEmail(r.URL.Query().Get("email"))
		if email == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "give the user's address as ?email="}
		}
		u, err := users.byEmail(r.Context(), email)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, adminUser{u.ID, u.Email, u.EmailVerified, u.CreatedAt.UTC(), u.Disabled})
		return nil
	})
}

// handleAdminCreateUser makes an account, whether sign-up is open or not (see accounts.create):
// {"email","password"} one that logs in at once, {"email"} alone one invited by mail.
func handleAdminCreateUser(log *slog.Logger, users *accounts) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		email := normalizeEmail(req.Email)
		if !validEmail(email) {
			return errInvalidEmail
		}
		if req.Password != "" && !validPassword(req.Password) {
			return errWeakPassword
		}
		u, err := users.create(r.Context(), email, req.Password)
		if err != nil {
			return err
		}
		action := "create"
		if req.Password == "" {
			action = "invite"
		}
		logAdmin(log, r, action, u.ID)
		encode(w, http.StatusCreated, adminUser{u.ID, u.Email, u.EmailVerified, u.CreatedAt.UTC(), u.Disabled})
		return nil
	})
}

func handleAdminSessions(log *slog.Logger, users *accounts) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		live, err := users.sessionsOf(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		out := make([]sessionView, len(live))
		for i, s := range live {
			out[i] = viewOf(s)
		}
		encode(w, http.StatusOK, map[string]any{"sessions": out})
		return nil
	})
}

func handleAdminLogout(log *slog.Logger, users *accounts) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		n, err := users.logOut(r.Context(), id, endAdminLogout)
		if err != nil {
			return err
		}
		logAdmin(log, r, "logout", id)
		encode(w, http.StatusOK, map[string]any{"message": "logged out", "sessions_ended": n})
		return nil
	})
}

func handleAdminSetDisabled(log *slog.Logger, users *accounts, disabled bool) http.Handler {
	action, message := "enable", "enabled"
	if disabled {
		action, message = "disable", "disabled; every session ended"
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		if err := users.setDisabled(r.Context(), id, disabled); err != nil {
			return err
		}
		noteUser(r.Context(), id)
		logAdmin(log, r, action, id)
		encode(w, http.StatusOK, map[string]string{"message": message})
		return nil
	})
}

func handleAdminDeleteUser(log *slog.Logger, users *accounts) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		if err := users.remove(r.Context(), id, endAccountDeleted); err != nil {
			return err
		}
		noteUser(r.Context(), id)
		logAdmin(log, r, "delete", id)
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}
