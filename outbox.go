package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"
)

// The outbox: a request stores what to mail and returns; a sender on every instance delivers.
//
// Each delivery attempt of a message is claimed by inserting a lease whose _id is the message's id
// and the attempt's number: of the instances that try, one insert succeeds, and only its instance
// sends (no guarded update decides anything; FerretDB lets two of those win). The holder then
// writes the attempt count and, until the attempt ends, a next-attempt time one lease period
// away: should the holder die, another instance takes the next attempt after that. A success
// deletes the message; a failure records when to try again, with a doubling delay up to a cap.
// A message is given up, counted and logged, on a permanent refusal (a 5xx to the sender or the
// recipient) or after MAIL_GIVE_UP_AFTER.
//
// A mail can go out twice only outside normal operation: when an instance dies between the SMTP
// server's acceptance and the deletion of the message, or an attempt outlives its lease.
//
// No mail text and no token is stored: the message names its kind and addressee, and the token in
// its link is made, and only its digest stored, when the mail is rendered for an attempt. A token
// mailed by an attempt whose failure was only apparent (the server took the mail but the answer
// was lost) stays valid, next to the one the retry mails; both went to the same address. A link's
// lifetime counts from its delivery, not from the request, so mail held up by an outage still
// arrives with a working link.
type outbox struct {
	store     Store
	cfg       mailConfig
	transport mailTransport
	metrics   *metrics
	now       func() time.Time
	log       *slog.Logger
	wake      chan struct{}
}

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

// errNoMail: the message needs no mail after all (no account has the address, it is verified
// already, ...), which the request could not tell without telling the client.
var errNoMail = errors.New("no mail needed")

// permanentError is a refusal that retrying cannot change.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

func newOutbox(store Store, cfg mailConfig, m *metrics, now func() time.Time, log *slog.Logger) *outbox {
	o := &outbox{store: store, cfg: cfg, metrics: m, now: now, log: log, wake: make(chan struct{}, 1)}
	switch cfg.mode {
	case mailSMTP:
		o.transport = &smtpTransport{cfg: cfg.smtp, from: cfg.fromAddr, dialTimeout: cfg.dialTimeout}
	case mailDir:
		o.transport = &mailDirTransport{dir: cfg.dir, log: log}
	}
	return o
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
func (o *outbox) run(ctx context.Context) {
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
				o.log.Warn("purge of expired mail tokens failed", "err", err)
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
			o.attempt(attemptCtx, m)
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

// attempt makes one delivery attempt of m, if this instance wins its lease.
func (o *outbox) attempt(ctx context.Context, m MailMessage) {
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

// smtpTransport delivers over SMTP with net/smtp: smtps:// speaks TLS from the first byte;
// smtp:// upgrades with STARTTLS whenever the server offers it, and refuses to go on without it
// unless the server is this machine. Credentials never travel in clear.
type smtpTransport struct {
	cfg         smtpConfig
	from        string
	dialTimeout time.Duration
}

func (t *smtpTransport) deliver(ctx context.Context, m *outgoingMail) error {
	d := net.Dialer{Timeout: t.dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(t.cfg.host, t.cfg.port))
	if err != nil {
		return err
	}
	defer conn.Close()
	// The whole exchange ends with ctx: a server that stops answering cannot hold an attempt.
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	tlsConfig := &tls.Config{ServerName: t.cfg.host, RootCAs: t.cfg.roots, MinVersion: tls.VersionTLS12}
	if t.cfg.implicitTLS {
		tc := tls.Client(conn, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, t.cfg.host)
	if err != nil {
		return err
	}
	defer c.Close()
	if !t.cfg.implicitTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(tlsConfig); err != nil {
				return fmt.Errorf("STARTTLS: %w", err)
			}
		} else if !loopbackHost(t.cfg.host) {
			return fmt.Errorf("the SMTP server %s offers no STARTTLS: no mail, and no password, goes to it in clear", t.cfg.host)
		}
	}
	if t.cfg.user != "" {
		// PlainAuth itself also refuses a connection without TLS to anything but localhost.
		if err := c.Auth(smtp.PlainAuth("", t.cfg.user, t.cfg.pass, t.cfg.host)); err != nil {
			return fmt.Errorf("SMTP authentication: %w", err)
		}
	}
	if err := c.Mail(t.from); err != nil {
		return refusal(err)
	}
	if err := c.Rcpt(m.to); err != nil {
		return refusal(err)
	}
	w, err := c.Data()
	if err != nil {
		return refusal(err)
	}
	if _, err := w.Write(m.data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return refusal(err)
	}
	c.Quit() // the mail is accepted; a failed goodbye changes nothing
	return nil
}

// refusal marks a 5xx answer to the sender, recipient or data as permanent: the server will
// not take this mail however often it is asked.
func refusal(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 {
		return permanentError{err}
	}
	return err
}

// mailDirTransport is the development mailbox: each mail is a .eml file under DATA_DIR/mail,
// which any mail program opens, and its link is logged at INFO, so that `go run .` has working
// mail with nothing installed. The directory is 0700 and the files 0600: they hold live links.
// Only the development default, never production, logs a link.
type mailDirTransport struct {
	dir string
	log *slog.Logger
}

func (t *mailDirTransport) deliver(ctx context.Context, m *outgoingMail) error {
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return err
	}
	name := filepath.Join(t.dir, time.Now().UTC().Format("20060102T150405.000Z")+"-"+m.kind+"-"+m.id+".eml")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil // written by an earlier attempt that failed after
	}
	if err != nil {
		return err
	}
	_, err = f.Write(m.data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return err
	}
	attrs := []slog.Attr{slog.String("to", m.to), slog.String("kind", m.kind), slog.String("file", name)}
	if m.link != "" {
		attrs = append(attrs, slog.String("link", m.link))
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "mail written to the development mailbox", attrs...)
	return nil
}
