package main

// mailcontent.go writes what a mail says: its kind's templates, its link, its MIME message.

import (
	"bytes"
	"context"
	"crypto/rand"
	"embed"
	"encoding/base64"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/textproto"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/template"
	"time"
)

// The kinds of mail in the outbox; each is a template pair under mail/.
const (
	mailReset        = "reset"          // to an account's address: a reset link
	mailVerify       = "verify"         // to an unverified address: a verification link
	mailChange       = "change"         // to a new address: the link that makes it the account's
	mailChangeNotice = "change_notice"  // to the old address: a change was asked for
	mailSignupExists = "signup_exists"  // to an address with an account: someone tried to sign up
	mailFactorAdded  = "factor_added"   // to an account's address: a second factor was added
	mailFactorGone   = "factor_removed" // to an account's address: its second factor was removed
	mailMFAFailures  = "mfa_failures"   // to an account's address: its second factor is locked for a while
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

// mailData is what the templates see.
type mailData struct {
	AppName  string
	AppURL   string
	Email    string // the address the mail goes to
	NewEmail string // an address change's new address
	Link     string // the link to follow, when there is one
	Code     string // the token alone, for clients without a browser
	Expires  string // how long the link works, in words
	// A locked second factor's: how many wrong tries locked it, for how long, and whether they
	// came from a session (true) or from logins with the password.
	Failures  int
	LockedFor string
	SignedIn  bool
}

// render makes the mail for m, reading the account it concerns as it is now.
func (o *outbox) render(ctx context.Context, m MailMessage) (*outgoingMail, error) {
	d := mailData{AppName: o.cfg.appName, AppURL: o.cfg.appURL, Email: m.To}
	user := m.UserID
	// A link is made under the account's security stamp as it is now; a mail queued for an account
	// under an earlier stamp has no link to make (a reset or a change of factor came since).
	link := func(path, purpose, user, email string, ttl time.Duration) error {
		stamp, err := o.store.Stamp(ctx, user)
		if err != nil {
			return err
		}
		if m.UserID != "" && stamp != m.Stamp {
			return errNoMail
		}
		raw, err := newMailToken(ctx, o.store, o.now(), purpose, user, email, stamp, ttl)
		if err != nil {
			return err
		}
		d.Link, d.Code, d.Expires = o.cfg.appURL+path+"?token="+raw, raw, inWords(ttl)
		return nil
	}
	account := func() (*User, error) {
		var (
			u   *User
			err error
		)
		if m.UserID != "" {
			u, err = o.store.UserByID(ctx, m.UserID)
		} else {
			u, err = o.store.UserByEmail(ctx, m.To)
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
		if err := link("/reset-password", purposeReset, u.ID, u.Email, o.cfg.resetTTL); err != nil {
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
		if err := link("/verify-email", purposeVerify, u.ID, u.Email, o.cfg.verifyTTL); err != nil {
			return nil, err
		}
	case mailChange:
		u, err := account()
		if err != nil {
			return nil, err
		}
		d.Email, d.NewEmail = u.Email, m.To
		if err := link("/verify-email", purposeEmailChange, u.ID, m.To, o.cfg.verifyTTL); err != nil {
			return nil, err
		}
	case mailChangeNotice:
		d.NewEmail = m.NewEmail
	case mailSignupExists, mailFactorAdded, mailFactorGone:
	case mailMFAFailures:
		d.Failures, d.LockedFor, d.SignedIn = m.Failures, inWords(m.LockedFor), m.SignedIn
	default:
		return nil, permanentError{fmt.Errorf("unknown kind of mail %q", m.Kind)}
	}
	subject, text, html, err := o.cfg.templates.render(m.Kind, d)
	if err != nil {
		return nil, permanentError{err}
	}
	data, err := composeMail(o.cfg.from, m.To, subject, text, html, m.ID+"@"+hostOf(o.cfg.fromAddr), o.now())
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

// mailTemplates are the subject, text and HTML of each kind of mail. The text and the subject are
// text/template, the HTML html/template: html/template escapes for HTML, which in a text body
// would turn an "&" in an application's name into "&amp;".
type mailTemplates struct {
	text map[string]*template.Template
	html map[string]*htmltemplate.Template
}

//go:embed mail
var builtinMail embed.FS

var mailKinds = []string{mailReset, mailVerify, mailChange, mailChangeNotice, mailSignupExists, mailFactorAdded, mailFactorGone,
	mailMFAFailures}

// loadMailTemplates parses the built-in templates, each replaced by the file of the same name in
// dir (MAIL_TEMPLATES_DIR) when dir is set and has one: reset.txt, reset.html, verify.txt, ... A
// text template defines "subject" too. A template that does not parse, or does not render with
// sample data, stops the service at start.
func loadMailTemplates(dir string) (*mailTemplates, error) {
	t := &mailTemplates{text: map[string]*template.Template{}, html: map[string]*htmltemplate.Template{}}
	read := func(name string) ([]byte, error) {
		if dir != "" {
			b, err := os.ReadFile(filepath.Join(dir, name))
			if err == nil || !errors.Is(err, fs.ErrNotExist) {
				return b, err
			}
		}
		return builtinMail.ReadFile("mail/" + name)
	}
	sample := mailData{AppName: "app", AppURL: "https://app.example.com", Email: "old@example.com",
		NewEmail: "new@example.com", Link: "https://app.example.com/x?token=t", Code: "t", Expires: "1 hour",
		Failures: 5, LockedFor: "5 minutes"}
	for _, kind := range mailKinds {
		src, err := read(kind + ".txt")
		if err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR: %w", err)
		}
		if t.text[kind], err = template.New(kind + ".txt").Option("missingkey=error").Parse(string(src)); err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR: %w", err)
		}
		if src, err = read(kind + ".html"); err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR: %w", err)
		}
		if t.html[kind], err = htmltemplate.New(kind + ".html").Parse(string(src)); err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR: %w", err)
		}
		if _, _, _, err := t.render(kind, sample); err != nil {
			return nil, fmt.Errorf("MAIL_TEMPLATES_DIR: %w", err)
		}
	}
	return t, nil
}

func (t *mailTemplates) render(kind string, d mailData) (subject, text, html string, err error) {
	tt, ht := t.text[kind], t.html[kind]
	if tt == nil || ht == nil {
		return "", "", "", fmt.Errorf("no template for mail of kind %q", kind)
	}
	var s, b, h bytes.Buffer
	if tt.Lookup("subject") == nil {
		return "", "", "", fmt.Errorf("%s.txt defines no subject", kind)
	}
	if err := tt.ExecuteTemplate(&s, "subject", d); err != nil {
		return "", "", "", err
	}
	if err := tt.Execute(&b, d); err != nil {
		return "", "", "", err
	}
	if err := ht.Execute(&h, d); err != nil {
		return "", "", "", err
	}
	return strings.TrimSpace(s.String()), strings.TrimSpace(b.String()) + "\n", h.String(), nil
}
