package main

// email.go is the mail flows: password reset, address verification and address change. A request
// only queues a mail (see outbox.go); the mail, and the token in its link, are made when it is
// delivered (see mailcontent.go).

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"time"
)

var (
	errEmailDisabled    = &apiError{status: http.StatusNotImplemented, code: "email_disabled", message: "this service sends no mail: its operator has not configured SMTP_URL"}
	errMailTokenInvalid = &apiError{status: http.StatusBadRequest, code: "token_invalid", message: "the link is used, unknown or expired; ask for a new one"}
	errTooManyChanges   = &apiError{status: http.StatusTooManyRequests, code: "too_many_attempts", message: "too many address changes asked for; wait before asking again"}
	errEmailNotVerified = &apiError{status: http.StatusForbidden, code: "email_not_verified", message: "confirm your email address first: follow the link mailed to you, or ask for another at /auth/email/resend"}
)

// mailFlows are the parts the email endpoints share.
type mailFlows struct {
	cfg   mailConfig
	store interface {
		mailStore
		userStore
	}
	outbox *outbox
	// Mails per kind and address per addressInterval, and per kind and address and per kind and
	// client per mailWindow.
	perInterval, perWindow *throttle
	now                    func() time.Time
	log                    *slog.Logger
}

// mailBudget is a mail's place within its kind's limits: counted until given back.
type mailBudget struct{ interval, window *attempt }

// giveBack uncounts a mail that was not queued after all.
func (b *mailBudget) giveBack(ctx context.Context) {
	b.interval.forget(ctx)
	b.window.forget(ctx)
}

// reserve counts a mail of kind to address, asked for by client, against that kind's limits, or
// answers errTooManyAttempts with the wait and counts nothing. Each kind has limits of its own, so
// that mail of one kind, which anyone may ask for (a sign-up, an address change naming the
// address), never holds back mail of another, a password reset above all. perClient is false for
// mails of sign-up, which has a per-client limit of its own, and for the notice that goes with an
// address change's link, which the link counts.
func (f *mailFlows) reserve(ctx context.Context, client netip.Addr, kind, address string, perClient bool) (*mailBudget, error) {
	interval := limit{key: "mail-interval|" + kind + "|" + address}
	if f.cfg.addressInterval > 0 {
		interval.max = 1
	}
	window := []limit{{key: "mail|" + kind + "|" + address, max: f.cfg.maxPerAddress}}
	if perClient {
		window = append(window, limit{key: "mail-client|" + kind + "|" + clientPrefix(client), max: f.cfg.maxPerClient})
	}
	// The two throttles' round trips run side by side.
	var (
		b          mailBudget
		errA, errB error
		wg         sync.WaitGroup
	)
	wg.Go(func() { b.interval, errA = f.perInterval.begin(ctx, interval) })
	wg.Go(func() { b.window, errB = f.perWindow.begin(ctx, window...) })
	wg.Wait()
	if errA == nil && errB == nil {
		wg.Go(func() { errA = b.interval.check(ctx) })
		wg.Go(func() { errB = b.window.check(ctx) })
		wg.Wait()
	}
	if errA == nil && errB == nil {
		return &b, nil
	}
	// What went ahead of a refused mail is forgotten: it sent nothing.
	if b.interval != nil && errA == nil {
		b.interval.forget(ctx)
	}
	if b.window != nil && errB == nil {
		b.window.forget(ctx)
	}
	return nil, longerWait(errA, errB)
}

// longerWait is the error of a and b that is not errTooManyAttempts, if any, or else the refusal
// with the longer wait.
func longerWait(a, b error) error {
	var refused *apiError
	for _, err := range []error{a, b} {
		var e *apiError
		switch {
		case err == nil:
		case !errors.Is(err, errTooManyAttempts) || !errors.As(err, &e):
			return err
		case refused == nil || e.retryAfter > refused.retryAfter:
			refused = e
		}
	}
	if refused == nil {
		return nil
	}
	return refused
}

// send queues m when the limits of its kind allow a mail to its address. A mail over a limit is
// dropped, and the request answered as if it went, so that the limits tell nothing about the
// address.
func (f *mailFlows) send(ctx context.Context, client netip.Addr, m *MailMessage, perClient bool) error {
	_, err := f.reserve(ctx, client, m.Kind, m.To, perClient)
	if errors.Is(err, errTooManyAttempts) {
		return nil
	}
	if err != nil {
		return err
	}
	return f.outbox.queue(ctx, m)
}

// notify queues a notice of kind to u's address, when the service sends mail. The change it tells
// of is made already: a failure to queue it is logged, not answered.
func (f *mailFlows) notify(ctx context.Context, kind string, u *User) {
	if !f.cfg.enabled() {
		return
	}
	if err := f.outbox.queue(ctx, &MailMessage{Kind: kind, To: u.Email, UserID: u.ID}); err != nil {
		f.log.LogAttrs(ctx, slog.LevelWarn, "queueing a notice failed", slog.String("kind", kind),
			slog.String("user_id", u.ID), slog.String("err", err.Error()))
	}
}

// take consumes a token of one of purposes: it is read by its digest, checked, then deleted, and
// only the caller whose delete removed it may act on it. Of any number of simultaneous uses, one
// succeeds; the others, like a used, unknown or expired token, or one made before the account's
// security stamp last moved, get errMailTokenInvalid. A token of another purpose is left as it is.
func (f *mailFlows) take(ctx context.Context, raw string, purposes ...string) (*MailToken, error) {
	if raw == "" || len(raw) > 256 {
		return nil, errMailTokenInvalid
	}
	digest := digest(raw)
	t, err := f.store.MailTokenByDigest(ctx, digest)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, errMailTokenInvalid
	case err != nil:
		return nil, err
	case !slices.Contains(purposes, t.Purpose):
		return nil, errMailTokenInvalid
	case !f.now().Before(t.ExpiresAt):
		f.store.DeleteMailToken(ctx, digest) // a failure leaves it to the purge
		return nil, errMailTokenInvalid
	}
	if stamp, err := f.store.Stamp(ctx, t.UserID); err != nil {
		return nil, err
	} else if stamp != t.Stamp {
		f.store.DeleteMailToken(ctx, digest)
		return nil, errMailTokenInvalid
	}
	if err := f.store.DeleteMailToken(ctx, digest); errors.Is(err, ErrNotFound) {
		return nil, errMailTokenInvalid // someone else used it first
	} else if err != nil {
		return nil, err
	}
	return t, nil
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

// signupMail is what sign-up does with mail once the account is written (or found to exist
// already, taken): with verification off, nothing, and a taken address is refused as the
// original service did. With it on, both get the same answer, and the same work, and a mail:
// a verification link for a new account, a notice for an existing one. u is what is answered.
func (f *mailFlows) signupMail(ctx context.Context, client netip.Addr, u *User, taken bool) (*User, error) {
	if f.cfg.verification == verificationOff {
		if taken {
			return nil, errEmailTaken
		}
		return u, nil
	}
	m := &MailMessage{Kind: mailVerify, To: u.Email, UserID: u.ID}
	if taken {
		// The answer looks like a new account's: a fresh id, and now.
		u = &User{ID: newID(), Email: u.Email, CreatedAt: u.CreatedAt}
		m = &MailMessage{Kind: mailSignupExists, To: u.Email}
	}
	return u, f.send(ctx, client, m, false)
}

// logMailSettings says at start how mail leaves the service, and what follows for the endpoints.
func logMailSettings(log *slog.Logger, c mailConfig) {
	switch c.mode {
	case mailOff:
		log.Info("email is off: no SMTP_URL; the email endpoints answer 501 email_disabled")
	case mailDir:
		log.Warn("development default: mail is written as .eml files under DATA_DIR/mail and its links logged; set SMTP_URL in production",
			"mail_dir", c.dir, "email_verification", c.verification)
	case mailSMTP:
		log.Info("mail goes over SMTP", "host", c.smtp.host, "port", c.smtp.port, "implicit_tls", c.smtp.implicitTLS,
			"email_verification", c.verification)
	}
}
