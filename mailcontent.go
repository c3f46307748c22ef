package main

// mailcontent.go writes a mail: the link it carries, its text from its kind's templates, its MIME message.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"strconv"
	"strings"
	"time"
)

// What a mailed token is for.
const (
	purposeReset       = "reset"
	purposeVerify      = "verify"
	purposeEmailChange = "email_change"
)

// newMailToken makes a token of at least 128 random bits (256 here) for purpose, stores its
// digest, and returns it in clear for the mail: the only place it ever is.
func newMailToken(ctx context.Context, store mailStore, now time.Time, purpose, user, email string, stamp int64, ttl time.Duration) (string, error) {
	var b [32]byte
	rand.Read(b[:])
	raw := base64.RawURLEncoding.EncodeToString(b[:])
	now = now.UTC().Truncate(time.Millisecond)
	err := store.CreateMailToken(ctx, &MailToken{Digest: digest(raw), Purpose: purpose, UserID: user,
		Email: email, Stamp: stamp, CreatedAt: now, ExpiresAt: now.Add(ttl)})
	return raw, err
}

// renderMail makes the mail for m, reading the account it concerns as it is now, with the
// settings of cfg; now is the clock.
func renderMail(ctx context.Context, cfg mailConfig, store interface {
	mailStore
	userStore
}, now func() time.Time, m MailMessage) (*outgoingMail, error) {
	d := mailData{AppName: cfg.appName, AppURL: cfg.appURL, Email: m.To}
	user := m.UserID
	// A link is made under the account's security stamp as it is now; a mail queued for an account
	// under an earlier stamp has no link to make (a reset or a change of factor came since).
	link := func(path, purpose, user, email string, ttl time.Duration) error {
		stamp, err := store.Stamp(ctx, user)
		if err != nil {
			return err
		}
		if m.UserID != "" && stamp != m.Stamp {
			return errNoMail
		}
		raw, err := newMailToken(ctx, store, now(), purpose, user, email, stamp, ttl)
		if err != nil {
			return err
		}
		d.Link, d.Code, d.Expires = cfg.appURL+path+"?token="+raw, raw, inWords(ttl)
		return nil
	}
	account := func() (*User, error) {
		var (
			u   *User
			err error
		)
		if m.UserID != "" {
			u, err = store.UserByID(ctx, m.UserID)
		} else {
			u, err = store.UserByEmail(ctx, m.To)
		}
		if errors.Is(err, ErrNotFound) {
			return nil, errNoMail
		}
		if err == nil {
			user = u.ID
		}
		return u, err
	}
	switch m.Kind {
	case mailReset:
		u, err := account()
		if err != nil {
			return nil, err
		}
		if err := link("/reset-password", purposeReset, u.ID, u.Email, cfg.resetTTL); err != nil {
			return nil, err
		}
	case mailVerify:
		u, err := account()
		if err != nil {
			return nil, err
		}
		if u.EmailVerified || u.Email != m.To {
			return nil, errNoMail
		}
		if err := link("/verify-email", purposeVerify, u.ID, u.Email, cfg.verifyTTL); err != nil {
			return nil, err
		}
	case mailChange:
		u, err := account()
		if err != nil {
			return nil, err
		}
		d.Email, d.NewEmail = u.Email, m.To
		if err := link("/verify-email", purposeEmailChange, u.ID, m.To, cfg.verifyTTL); err != nil {
			return nil, err
		}
	case mailInvite:
		// A reset link that lasts as long as a verification link: an invitation waits for its reader.
		u, err := account()
		if err != nil {
			return nil, err
		}
		if err := link("/reset-password", purposeReset, u.ID, u.Email, cfg.verifyTTL); err != nil {
			return nil, err
		}
	case mailChangeNotice:
		d.NewEmail = m.NewEmail
	case mailSignupExists, mailFactorAdded, mailFactorGone, mailPasskeyAdded, mailPasskeyGone:
	case mailMFAFailures:
		d.Failures, d.LockedFor, d.SignedIn = m.Failures, inWords(m.LockedFor), m.SignedIn
	default:
		return nil, permanentError{fmt.Errorf("unknown kind of mail %q", m.Kind)}
	}
	subject, text, html, err := cfg.templates.render(m.Kind, d)
	if err != nil {
		return nil, permanentError{err}
	}
	data, err := composeMail(cfg.from, m.To, subject, text, html, m.ID+"@"+hostOf(cfg.fromAddr), now())
	if err != nil {
		return nil, permanentError{err}
	}
	return &outgoingMail{id: m.ID, kind: m.Kind, to: m.To, user: user, data: data, link: d.Link}, nil
}

// inWords says a token's lifetime as a mail would: "15 minutes", "24 hours".
func inWords(d time.Duration) string {
	unit := func(n int64, one string) string {
		if n == 1 {
			return "1 " + one
		}
		return strconv.FormatInt(n, 10) + " " + one + "s"
	}
	switch {
	case d >= time.Hour && d%time.Hour == 0:
		return unit(int64(d/time.Hour), "hour")
	case d >= time.Minute:
		return unit(int64(d/time.Minute), "minute")
	}
	return unit(int64(max(d/time.Second, 1)), "second")
}

// hostOf is the part of an address after the @, for Message-IDs.
func hostOf(address string) string {
	if at := strings.LastIndexByte(address, '@'); at >= 0 {
		return address[at+1:]
	}
	return "localhost"
}

// composeMail writes a MIME message with a text and an HTML body, both quoted-printable UTF-8.
// Addresses have passed validEmail (no line breaks); the subject's are removed.
func composeMail(from, to, subject, text, html, msgID string, now time.Time) ([]byte, error) {
	var body bytes.Buffer
	mw := multipart.NewWriter(&body)
	for _, part := range []struct{ typ, content string }{{"text/plain", text}, {"text/html", html}} {
		w, err := mw.CreatePart(textproto.MIMEHeader{
			"Content-Type":              {part.typ + "; charset=utf-8"},
			"Content-Transfer-Encoding": {"quoted-printable"},
		})
		if err != nil {
			return nil, err
		}
		qp := quotedprintable.NewWriter(w)
		qp.Write([]byte(strings.ReplaceAll(strings.ReplaceAll(part.content, "\r\n", "\n"), "\n", "\r\n")))
		if err := qp.Close(); err != nil {
			return nil, err
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	subject = strings.Join(strings.Fields(subject), " ")
	var msg bytes.Buffer
	for _, h := range [][2]string{
		{"From", from},
		{"To", to},
		{"Subject", mime.QEncoding.Encode("utf-8", subject)},
		{"Date", now.Format(time.RFC1123Z)},
		{"Message-ID", "<" + msgID + ">"},
		{"Auto-Submitted", "auto-generated"},
		{"MIME-Version", "1.0"},
		{"Content-Type", "multipart/alternative; boundary=" + mw.Boundary()},
	} {
		msg.WriteString(h[0] + ": " + h[1] + "\r\n")
	}
	msg.WriteString("\r\n")
	msg.Write(body.Bytes())
	return msg.Bytes(), nil
}
