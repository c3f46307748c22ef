package main

// outbox.go queues mail in the database and delivers it from every instance, with retries.

import (
	"context"
	"errors"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"time"
)

// outbox: a request stores what to mail and returns; a sender on every instance delivers. Each
// attempt is claimed by inserting a lease whose _id is the message's id and the attempt's number,
// so that one instance sends; should it die, another takes the next attempt a lease period later.
// A success deletes the message, a failure retries with a doubling delay, and a permanent refusal
// or MAIL_GIVE_UP_AFTER gives it up. No mail text or token is stored: a link's token is made, its
// digest stored, when the mail is rendered, so a link's lifetime counts from its delivery.
type outbox struct {
	store interface {
		mailStore
		userStore
	}
	cfg       mailConfig
	transport mailTransport
	render    func(ctx context.Context, m MailMessage) (*outgoingMail, error)
	metrics   *metrics
	now       func() time.Time
	log       *slog.Logger
	wake      chan struct{}
}

// errNoMail: the message needs no mail after all (no account has the address, it is verified
// already, ...), which the request could not tell without telling the client.
var errNoMail = errors.New("no mail needed")

// newOutbox sends through transport what render makes of a message (see send).
func newOutbox(store Store, cfg mailConfig, transport mailTransport, render func(context.Context, MailMessage) (*outgoingMail, error),
	m *metrics, now func() time.Time, log *slog.Logger) *outbox {
	return &outbox{store: store, cfg: cfg, transport: transport, render: render, metrics: m, now: now, log: log,
		wake: make(chan struct{}, 1)}
}

// queue adds m to the outbox, due now, and wakes this instance's sender.
func (o *outbox) queue(ctx context.Context, m *MailMessage) error {
	now := o.now().UTC().Truncate(time.Millisecond)
	m.ID, m.CreatedAt, m.NextAt = newID(), now, now
	if err := o.store.QueueMail(ctx, m); err != nil {
		return err
	}
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

// run delivers due mail until ctx ends: every poll interval, and at once when this instance
// queues a message. An attempt under way when ctx ends is finished (within the SMTP timeouts)
// before run returns, so that a clean stop leaves no attempt to be taken for dead.
func (o *outbox) loop(ctx context.Context) {
	poll := time.NewTicker(o.cfg.poll)
	defer poll.Stop()
	purge := time.NewTicker(time.Minute)
	defer purge.Stop()
	for {
		o.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-poll.C:
		case <-o.wake:
		case <-purge.C:
			if err := o.store.PurgeMail(ctx, o.now()); err != nil && ctx.Err() == nil {
				o.log.Warn("purge of expired mail links failed", "err", err)
			}
		}
	}
}

// senders is how many mails an instance delivers at once.
const senders = 4

// round delivers the messages due now, and notes the outbox's age.
func (o *outbox) round(ctx context.Context) {
	if ctx.Err() != nil {
		return
	}
	now := o.now()
	due, err := o.store.DueMail(ctx, now, 32)
	if err != nil {
		if ctx.Err() == nil {
			o.log.Warn("reading the mail outbox failed", "err", err)
		}
		return
	}
	oldest, err := o.store.OldestMail(ctx)
	switch {
	case errors.Is(err, ErrNotFound):
		o.metrics.mailOutboxAge.Store(0)
	case err == nil:
		o.metrics.mailOutboxAge.Store(int64(max(now.Sub(oldest), 0)))
	}
	// An attempt, once claimed, is seen through as the service stops, for a few seconds: an
	// attempt cut off leaves its message to be retried after the lease, by any instance.
	attemptCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	defer cancel()
	stop := context.AfterFunc(ctx, func() { time.AfterFunc(stopGrace, cancel) })
	defer stop()
	var wg sync.WaitGroup
	slots := make(chan struct{}, senders)
	for _, m := range due {
		if ctx.Err() != nil {
			break
		}
		slots <- struct{}{}
		wg.Go(func() {
			defer func() { <-slots }()
			o.sendOnce(attemptCtx, m)
		})
	}
	wg.Wait()
}

// stopGrace is how long a stopping service lets a mail delivery under way finish.
const stopGrace = 5 * time.Second

// claim takes the next attempt of m, seen at now: the number of the attempt and its lease, or
// ok false when another instance holds it or m is no longer due.
func (o *outbox) claim(ctx context.Context, m MailMessage, now time.Time) (n int, cur *MailMessage, ok bool) {
	for n = m.Attempts; n < m.Attempts+3; n++ {
		lease := &MailLease{ID: m.ID + "#" + strconv.Itoa(n), MessageID: m.ID, TakenAt: now,
			ExpiresAt: now.Add(max(o.cfg.giveUpAfter, 2*o.cfg.lease))}
		err := o.store.LeaseMail(ctx, lease)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrDuplicate) {
			o.log.Warn("claiming a mail delivery failed", "mail_id", m.ID, "err", err)
			return 0, nil, false
		}
		held, err := o.store.MailLeaseByID(ctx, lease.ID)
		if err != nil || now.Before(held.TakenAt.Add(o.cfg.lease)) {
			return 0, nil, false // another instance is at it
		}
		// That attempt's holder said nothing for a whole lease: taken for dead, try the next.
	}
	if n == m.Attempts+3 {
		return 0, nil, false
	}
	// The list this came from may be old: the message may have been sent and deleted, or be
	// waiting for a retry, since. Only the message as it is now decides.
	cur, err := o.store.MailByID(ctx, m.ID)
	if err == nil && cur.Attempts <= n && !cur.NextAt.After(now) {
		return n, cur, true
	}
	o.store.ReleaseMailLease(ctx, m.ID+"#"+strconv.Itoa(n))
	return 0, nil, false
}

// sendOnce makes one delivery attempt of m, if this instance wins its lease.
func (o *outbox) sendOnce(ctx context.Context, m MailMessage) {
	now := o.now()
	n, cur, ok := o.claim(ctx, m, now)
	if !ok {
		return
	}
	m = *cur
	// Until this attempt ends, the message waits a lease period: should this instance die now,
	// another takes the next attempt then.
	if err := o.store.RescheduleMail(ctx, m.ID, n+1, now.Add(o.cfg.lease), m.LastError); err != nil {
		o.log.Warn("claiming a mail delivery failed", "mail_id", m.ID, "err", err)
		return
	}
	if now.Sub(m.CreatedAt) >= o.cfg.giveUpAfter {
		o.giveUp(ctx, m, n+1, errors.New("MAIL_GIVE_UP_AFTER passed: "+m.LastError))
		return
	}
	sendCtx, cancel := context.WithTimeout(ctx, o.cfg.sendTimeout)
	user, err := o.send(sendCtx, m)
	cancel()
	var perm permanentError
	switch {
	case errors.Is(err, errNoMail):
		o.log.LogAttrs(ctx, slog.LevelInfo, "mail dropped: no longer needed",
			slog.String("mail_id", m.ID), slog.String("kind", m.Kind))
		o.done(ctx, m)
	case err == nil:
		o.metrics.mailed(mailSent)
		attrs := []slog.Attr{slog.String("mail_id", m.ID), slog.String("kind", m.Kind), slog.Int("attempt", n+1)}
		if user != "" {
			attrs = append(attrs, slog.String("user_id", user))
		}
		o.log.LogAttrs(ctx, slog.LevelInfo, "mail sent", attrs...)
		o.done(ctx, m)
	case errors.As(err, &perm):
		o.giveUp(ctx, m, n+1, err)
	default:
		next := o.backoff(n)
		if now.Add(next).Sub(m.CreatedAt) >= o.cfg.giveUpAfter {
			o.giveUp(ctx, m, n+1, err)
			return
		}
		o.metrics.mailed(mailRetried)
		o.log.Warn("mail delivery failed; it will be retried", "mail_id", m.ID, "kind", m.Kind,
			"attempt", n+1, "retry_in", next.String(), "err", err)
		if err := o.store.RescheduleMail(ctx, m.ID, n+1, now.Add(next), cut(err.Error(), 500)); err != nil {
			o.log.Warn("recording a failed mail delivery failed; it is retried after the lease", "mail_id", m.ID, "err", err)
		}
	}
}

// backoff is the wait after the failure of attempt n (from 0): doubling from retryBase up to
// retryCap, with up to a quarter more at random so that instances do not retry in step.
func (o *outbox) backoff(n int) time.Duration {
	d := o.cfg.retryCap
	if n < 30 {
		d = min(o.cfg.retryBase<<n, o.cfg.retryCap)
	}
	return d + rand.N(d/4+1)
}

func (o *outbox) done(ctx context.Context, m MailMessage) {
	if err := o.store.DeleteMail(ctx, m.ID); err != nil {
		// The message comes back after the lease: its mail may go out twice.
		o.log.Warn("removing a delivered mail from the outbox failed", "mail_id", m.ID, "err", err)
	}
}

func (o *outbox) giveUp(ctx context.Context, m MailMessage, attempts int, err error) {
	o.metrics.mailed(mailFailed)
	o.log.Error("mail given up", "mail_id", m.ID, "kind", m.Kind, "user_id", m.UserID,
		"attempts", attempts, "queued_at", m.CreatedAt, "err", err)
	o.done(ctx, m)
}

// send renders m, with a fresh token where it has a link, and delivers it; user is the account it
// concerns, when one does.
func (o *outbox) send(ctx context.Context, m MailMessage) (user string, err error) {
	out, err := o.render(ctx, m)
	if err != nil {
		return "", err
	}
	return out.user, o.transport.deliver(ctx, out)
}

// permanentError is a refusal that retrying cannot change.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// mailTransport delivers one rendered mail.
type mailTransport interface {
	deliver(ctx context.Context, m *outgoingMail) error
}

// outgoingMail is a mail rendered for one attempt.
type outgoingMail struct {
	id   string // the outbox message's
	kind string
	to   string
	user string // the account it concerns, if any
	data []byte // the whole message, headers and bodies, CRLF line ends
	link string // the link in it, if any: the development mailbox logs it
}
