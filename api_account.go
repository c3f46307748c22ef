package main

// api_account.go is the account's endpoints: sign-up, login, password change and reset, account
// deletion, and the address's verification and change.

import (
	"log/slog"
	"net/http"
	"time"
)

// handleSignup creates accounts (see accounts.signup).
func handleSignup(log *slog.Logger, clients clientIPs, users *accounts) http.Handler {
	type response struct {
		ID        string    `json:"id"`
		Email     string    `json:"email"`
		CreatedAt time.Time `json:"created_at"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if users.signupsClosed {
			return errSignupDisabled
		}
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		email := normalizeEmail(req.Email)
		if !validEmail(email) {
			return errInvalidEmail
		}
		if !validPassword(req.Password) {
			return errWeakPassword
		}
		u, err := users.signup(r.Context(), clients.of(r), email, req.Password)
		if err != nil {
			return err
		}
		encode(w, http.StatusCreated, response{u.ID, u.Email, u.CreatedAt})
		return nil
	})
}

// handleLogin checks email and password (see logins). A user with an active second factor gets
// {"mfa_required":true,"mfa_token":...,"methods":[...]} and no session yet (see handleVerifyMFA).
// Every other user gets the token pair.
func handleLogin(log *slog.Logger, clients clientIPs, l *logins) http.Handler {
	type challenge struct {
		MFARequired bool     `json:"mfa_required"`
		MFAToken    string   `json:"mfa_token"`
		ExpiresIn   int64    `json:"expires_in"`
		Methods     []string `json:"methods"` // what /auth/mfa/verify (or a passkey) takes for this challenge
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		if req.Email == "" || req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "email and password are required"}
		}
		a, err := l.login(r.Context(), clients.of(r), r.UserAgent(), req.Email, req.Password)
		if err != nil {
			return err
		}
		if a.mfaToken != "" {
			encode(w, http.StatusOK, challenge{true, a.mfaToken, int64(mfaTokenTTL / time.Second), a.methods})
			return nil
		}
		encode(w, http.StatusOK, a.pair)
		return nil
	})
}

// handlePasswordChange replaces the signed-in user's password, and answers the tokens of a new
// session: every earlier one ends (see accounts.changePassword).
func handlePasswordChange(log *slog.Logger, clients clientIPs, users *accounts) http.Handler {
	type request struct {
		CurrentPassword string `json:"current_password"`
		NewPassword     string `json:"new_password"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if req.CurrentPassword == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "current_password and new_password are required"}
		}
		if !validPassword(req.NewPassword) {
			return errWeakPassword
		}
		pair, err := users.changePassword(r.Context(), claimsFrom(r.Context()), clients.of(r), r.UserAgent(),
			req.CurrentPassword, req.NewPassword)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// handleDeleteAccount deletes the signed-in user's account, after the password. Its sessions end
// first, so that a failure half way leaves an account that cannot be used rather than tokens that
// can; its email is then free to sign up again.
func handleDeleteAccount(log *slog.Logger, clients clientIPs, users *accounts) http.Handler {
	type request struct {
		Password string `json:"password"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "password is required"}
		}
		if err := users.removeOwn(r.Context(), claimsFrom(r.Context()), clients.of(r), req.Password); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// accepted is the answer of the endpoints that queue a mail, whatever happened to it.
type accepted struct {
	Message string `json:"message"`
}

// handleMailRequest queues a mail of kind to the address in the request: a password reset
// (/auth/password/forgot), or a new verification link (/auth/email/resend). Known and unknown
// addresses, and throttled requests, get the same 202 with answer after the same database work:
// the request does not even look the address up; the sender does, and sends nothing for an
// address without an account (or, for a verification, one verified already).
func handleMailRequest(log *slog.Logger, clients clientIPs, f *mailFlows, kind, answer string) http.Handler {
	type request struct {
		Email string `json:"email"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if !f.cfg.enabled() {
			return errEmailDisabled
		}
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		email := normalizeEmail(req.Email)
		if !validEmail(email) {
			return errInvalidEmail
		}
		if err := f.send(r.Context(), clients.of(r), &MailMessage{Kind: kind, To: email}, true); err != nil {
			return err
		}
		encode(w, http.StatusAccepted, accepted{answer})
		return nil
	})
}

// handleResetPassword replaces the password of the account a reset link was mailed for, and ends
// every session of it (see accounts.resetPassword).
func handleResetPassword(log *slog.Logger, f *mailFlows, users *accounts) http.Handler {
	type request struct {
		Token    string `json:"token"`
		Password string `json:"password"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if !f.cfg.enabled() {
			return errEmailDisabled
		}
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		// Checked before the token is used, so that a weak password does not cost the link.
		if !validPassword(req.Password) {
			return errWeakPassword
		}
		if err := users.resetPassword(r.Context(), req.Token, req.Password); err != nil {
			return err
		}
		encode(w, http.StatusOK, accepted{"the password is replaced and every session has ended; log in with the new password"})
		return nil
	})
}

// handleVerifyEmail follows a verification link, or an address change's confirmation link (see
// accounts.verifyEmail).
func handleVerifyEmail(log *slog.Logger, f *mailFlows, users *accounts) http.Handler {
	type request struct {
		Token string `json:"token"`
	}
	type response struct {
		Email         string `json:"email"`
		EmailVerified bool   `json:"email_verified"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if !f.cfg.enabled() {
			return errEmailDisabled
		}
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		email, err := users.verifyEmail(r.Context(), req.Token)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, response{email, true})
		return nil
	})
}

// handleEmailChange starts an address change for the signed-in user, after the password (see
// accounts.changeEmail).
func handleEmailChange(log *slog.Logger, clients clientIPs, f *mailFlows, users *accounts) http.Handler {
	type request struct {
		NewEmail string `json:"new_email"`
		Password string `json:"password"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		if !f.cfg.enabled() {
			return errEmailDisabled
		}
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		email := normalizeEmail(req.NewEmail)
		if !validEmail(email) {
			return errInvalidEmail
		}
		if req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "new_email and password are required"}
		}
		if err := users.changeEmail(r.Context(), claimsFrom(r.Context()), clients.of(r), email, req.Password); err != nil {
			return err
		}
		encode(w, http.StatusAccepted, accepted{"a link is on its way to the new address; the address changes when it is followed"})
		return nil
	})
}
