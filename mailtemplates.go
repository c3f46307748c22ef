package main

// mailtemplates.go holds the kinds of mail and their templates: what each kind says, in text and
// HTML, built in or replaced from MAIL_TEMPLATES_DIR.

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	htmltemplate "html/template"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"text/template"
)

// The kinds of mail in the outbox; each is a template pair under mail/.
const (
	mailReset        = "reset"           // to an account's address: a reset link
	mailVerify       = "verify"          // to an unverified address: a verification link
	mailChange       = "change"          // to a new address: the link that makes it the account's
	mailChangeNotice = "change_notice"   // to the old address: a change was asked for
	mailSignupExists = "signup_exists"   // to an address with an account: someone tried to sign up
	mailFactorAdded  = "factor_added"    // to an account's address: a second factor was added
	mailFactorGone   = "factor_removed"  // to an account's address: its second factor was removed
	mailMFAFailures  = "mfa_failures"    // to an account's address: its second factor is locked for a while
	mailInvite       = "invite"          // to an account an operator made: the link that sets its password
	mailPasskeyAdded = "passkey_added"   // to an account's address: a passkey was added
	mailPasskeyGone  = "passkey_removed" // to an account's address: a passkey was removed
)

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
	mailMFAFailures, mailInvite, mailPasskeyAdded, mailPasskeyGone}

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
	example := mailData{AppName: "app", AppURL: "https://app.example.com", Email: "old@example.com",
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
		if _, _, _, err := t.render(kind, example); err != nil {
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
