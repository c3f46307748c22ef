package main

// api_account.go is the account's endpoints: sign-up, login, password change and reset, account
// deletion, and the address's verification and change.

import (
	"errors"
	"log/slog"
	"net/http"
	"sync"
	"time"
)

type credentials struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// handleSignup creates accounts. Every sign-up that gets as far as hashing counts toward its
// client's limit, whatever its outcome: an answer of email_taken tells whether an address has an
// account, and each sign-up costs a hash. With email verification on, a taken address is
// answered as a new one, and mailed (see signupMail).
func handleSignup(log *slog.Logger, clients clientIPs, store Store, h *hasher, signups *throttle, perClient int, now func() time.Time,
	mail *mailFlows) http.Handler {
	type response struct {
		ID        string    `json:"id"`
		Email     string    `json:"email"`
		CreatedAt time.Time `json:"created_at"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
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
		client := clients.of(r)
		att, err := signups.begin(r.Context(), limit{key: "signup|" + clientPrefix(client), max: perClient})
		if err != nil {
			return err
		}
		if err := att.check(r.Context()); err != nil {
			return err
		}
		hash, err := h.hashSignup(r.Context(), req.Password)
		if err != nil {
			return err
		}
		u := &User{ID: newID(), Email: email, PasswordHash: hash, CreatedAt: now().UTC().Truncate(time.Millisecond)}
		taken, err := createAccount(r.Context(), store, u, mail.cfg.verification != verificationOff)
		if err != nil {
			return err
		}
		if u, err = mail.signupMail(r.Context(), client, u, taken); err != nil {
			return err
		}
		encode(w, http.StatusCreated, response{u.ID, u.Email, u.CreatedAt})
		return nil
	})
}

// handleLogin checks email and password. With requireVerified (EMAIL_VERIFICATION=required), the
// right password for an address not verified yet gets 403 email_not_verified and no session; a
// wrong one gets 401 as ever, so that the 403 tells nothing to someone without the password. A
// user with an active second factor gets {"mfa_required":true,"mfa_token":...} and no session yet
// (see handleVerifyMFA). Every other user gets the token pair, as the original service answered.
func handleLogin(log *slog.Logger, clients clientIPs, passwords *passwordCheck, sessions *sessionKeeper, second *mfa, m *metrics,
	requireVerified bool) http.Handler {
	type challenge struct {
		MFARequired bool   `json:"mfa_required"`
		MFAToken    string `json:"mfa_token"`
		ExpiresIn   int64  `json:"expires_in"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		if req.Email == "" || req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "email and password are required"}
		}
		client := clients.of(r)
		var opened *opening
		u, err := passwords.check(r.Context(), client, req.Email, req.Password, func(u *User) {
			if !u.hasTOTP && !u.Disabled && (!requireVerified || u.EmailVerified) {
				opened = sessions.open(r.Context(), u, client, r.UserAgent(), levelPassword)
			}
		})
		if err != nil {
			sessions.drop(opened)
		}
		switch {
		case errors.Is(err, errInvalidCredentials):
			m.login(loginInvalidCredentials)
			return err
		case errors.Is(err, errTooManyAttempts):
			m.login(loginThrottled)
			return err
		case errors.Is(err, errAccountDisabled):
			m.login(loginDisabled)
			return err
		case err != nil:
			return err
		}
		if requireVerified && !u.EmailVerified {
			m.login(loginUnverified)
			return errEmailNotVerified
		}
		if u.hasTOTP {
			token, err := second.challenge(r.Context(), u, client, r.UserAgent())
			if err != nil {
				return err
			}
			noteUser(r.Context(), u.ID)
			encode(w, http.StatusOK, challenge{true, token, int64(mfaTokenTTL / time.Second)})
			return nil
		}
		pair, err := opened.keep() // opened while the password hashed: check calls meanwhile for every success
		if errors.Is(err, errAccountDisabled) {
			m.login(loginDisabled)
		}
		if err != nil {
			return err
		}
		m.login(loginSuccess)
		noteUser(r.Context(), u.ID)
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// handlePasswordChange replaces the signed-in user's password. The answer's tokens belong to a
// new session, at the level the user proved in the session that asked; every earlier session of
// the user ends, the one whose token was sent included, so that no copy of an old token outlives
// the old password.
func handlePasswordChange(log *slog.Logger, clients clientIPs, passwords *passwordCheck, h *hasher,
	users *accounts, sessions *sessionKeeper) http.Handler {
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
		ctx, c, client := r.Context(), claimsFrom(r.Context()), clients.of(r)
		u, err := passwords.checkUser(ctx, client, c.Subject, req.CurrentPassword)
		if err != nil {
			return err
		}
		if err := sessions.alive(ctx, c); err != nil {
			return err
		}
		hash, err := h.hash(ctx, req.NewPassword)
		if err != nil {
			return err
		}
		if err := users.setPassword(ctx, u.ID, hash, endPasswordChange); err != nil {
			return err
		}
		u.PasswordHash = hash
		pair, err := sessions.start(ctx, u, client, r.UserAgent(), c.level())
		if err != nil {
			return err
		}
		log.LogAttrs(ctx, slog.LevelInfo, "password changed", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID))
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// handleDeleteAccount deletes the signed-in user's account, after the password. Its sessions end
// first, so that a failure half way leaves an account that cannot be used rather than tokens that
// can; its email is then free to sign up again.
func handleDeleteAccount(log *slog.Logger, clients clientIPs, passwords *passwordCheck, users *accounts) http.Handler {
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
		ctx, c := r.Context(), claimsFrom(r.Context())
		if _, err := passwords.checkUser(ctx, clients.of(r), c.Subject, req.Password); err != nil {
			return err
		}
		if err := users.remove(ctx, c.Subject, endAccountDeleted); err != nil {
			return err
		}
		log.LogAttrs(ctx, slog.LevelInfo, "account deleted", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", c.Subject))
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
// every session of it: whoever knew the old password is out.
func handleResetPassword(log *slog.Logger, f *mailFlows, h *hasher, users *accounts) http.Handler {
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
		ctx := r.Context()
		t, err := f.take(ctx, req.Token, purposeReset)
		if err != nil {
			return err
		}
		u, err := f.store.UserByID(ctx, t.UserID)
		if errors.Is(err, ErrNotFound) || (err == nil && u.Email != t.Email) {
			return errMailTokenInvalid // the account is gone, or has another address now
		} else if err != nil {
			return err
		}
		hash, err := h.hash(ctx, req.Password)
		if err != nil {
			return err
		}
		// The account's other links die with the stamp; the link proved the mailbox.
		if err := users.setPassword(ctx, u.ID, hash, endPasswordReset); err != nil {
			return err
		}
		if err := f.store.SetEmailVerified(ctx, u.ID, u.Email); err != nil && !errors.Is(err, ErrNotFound) {
			return err
		}
		noteUser(ctx, u.ID)
		log.LogAttrs(ctx, slog.LevelInfo, "password reset", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID))
		encode(w, http.StatusOK, accepted{"the password is replaced and every session has ended; log in with the new password"})
		return nil
	})
}

// handleVerifyEmail follows a verification link, or an address change's confirmation link, which
// then makes the new address the account's: still unique at that moment, or 409.
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
		ctx := r.Context()
		t, err := f.take(ctx, req.Token, purposeVerify, purposeEmailChange)
		if err != nil {
			return err
		}
		if t.Purpose == purposeVerify {
			err = f.store.SetEmailVerified(ctx, t.UserID, t.Email)
		} else {
			err = f.store.SetEmail(ctx, t.UserID, t.Email)
		}
		switch {
		case errors.Is(err, ErrNotFound):
			return errMailTokenInvalid // the account is gone, or its address changed since
		case errors.Is(err, ErrDuplicate):
			return errEmailTaken
		case err != nil:
			return err
		}
		noteUser(ctx, t.UserID)
		if t.Purpose == purposeEmailChange {
			// The means of recovery changed: links and challenges issued before are void.
			if err := users.moveStamp(ctx, t.UserID, stampEmailChanged); err != nil {
				return err
			}
			log.LogAttrs(ctx, slog.LevelInfo, "email changed", slog.String("request_id", requestID(ctx)),
				slog.String("user_id", t.UserID))
		}
		encode(w, http.StatusOK, response{t.Email, true})
		return nil
	})
}

// handleEmailChange starts an address change for the signed-in user, after the password: a link
// to the new address, which changes it when followed, and a notice to the old one, never one
// without the other. No session ends; tokens carry the new address from their next refresh.
func handleEmailChange(log *slog.Logger, clients clientIPs, f *mailFlows, passwords *passwordCheck, sessions *sessionKeeper) http.Handler {
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
		ctx, c, client := r.Context(), claimsFrom(r.Context()), clients.of(r)
		u, err := passwords.checkUser(ctx, client, c.Subject, req.Password)
		if err != nil {
			return err
		}
		if err := sessions.alive(ctx, c); err != nil {
			return err
		}
		if email == u.Email {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "new_email is the account's address already"}
		}
		// A link goes out only with its notice to the old address. The notice's limits are its
		// kind's, which no other mail to that address spends: past them the request is refused
		// and says when to try again, which tells the account's holder nothing new. Past the new
		// address's limits nothing is queued, and the answer is the usual one: whether the new
		// address has an account is not told here; confirming the change is.
		// The link holds under the stamp of now: a password reset before it is followed voids it.
		stamp, err := f.store.Stamp(ctx, u.ID)
		if err != nil {
			return err
		}
		var (
			notice, link       *mailBudget
			noticeErr, linkErr error
			wg                 sync.WaitGroup
		)
		wg.Go(func() { notice, noticeErr = f.reserve(ctx, client, mailChangeNotice, u.Email, false) })
		wg.Go(func() { link, linkErr = f.reserve(ctx, client, mailChange, email, true) })
		wg.Wait()
		if noticeErr == nil && linkErr == nil {
			// The notice first: should the link then fail to queue, no link goes out unannounced.
			if err := f.outbox.queue(ctx, &MailMessage{Kind: mailChangeNotice, To: u.Email, UserID: u.ID, NewEmail: email}); err != nil {
				return err
			}
			if err := f.outbox.queue(ctx, &MailMessage{Kind: mailChange, To: email, UserID: u.ID, Stamp: stamp}); err != nil {
				return err
			}
		} else {
			if notice != nil {
				notice.giveBack(ctx)
			}
			if link != nil {
				link.giveBack(ctx)
			}
			var refused *apiError
			switch {
			case errors.As(noticeErr, &refused) && errors.Is(noticeErr, errTooManyAttempts):
				return errTooManyChanges.after(refused.retryAfter)
			case noticeErr != nil:
				return noticeErr
			case !errors.Is(linkErr, errTooManyAttempts):
				return linkErr
			}
		}
		encode(w, http.StatusAccepted, accepted{"a link is on its way to the new address; the address changes when it is followed"})
		return nil
	})
}
