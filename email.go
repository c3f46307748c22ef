package main

// email.go is the mail flows: the limits on mail, mailed tokens, and what sign-up and an address
// change mail. A request only queues a mail (see outbox.go); the mail, and the token in its link,
// are made when it is delivered (see mailcontent.go).

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

// invite queues the invitation of u, an account an operator made without a password: its link
// sets one, and is made under the account's stamp as it is now.
func (f *mailFlows) invite(ctx context.Context, u *User) error {
	stamp, err := f.store.Stamp(ctx, u.ID)
	if err != nil {
		return err
	}
	return f.outbox.queue(ctx, &MailMessage{Kind: mailInvite, To: u.Email, UserID: u.ID, Stamp: stamp})
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

// addressChange queues the mails of u's change of address to email, under the account's stamp
// stamp: a link to the new address, and a notice to the old one, never one without the other. The
// notice's limits are its kind's, which no other mail to that address spends: past them the
// change is refused and says when to try again, which tells the account's holder nothing new.
// Past the new address's limits nothing is queued, and the answer is the usual one: whether the
// new address has an account is not told here; confirming the change is.
func (f *mailFlows) addressChange(ctx context.Context, client netip.Addr, u *User, email string, stamp int64) error {
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
		return f.outbox.queue(ctx, &MailMessage{Kind: mailChange, To: email, UserID: u.ID, Stamp: stamp})
	}
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
	return nil
}
