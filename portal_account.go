package main

// portal_account.go is the portal's account page: the signed-in user's sessions, password change
// and authenticator app, each form calling the operation its API endpoint calls.

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"rsc.io/qr"
)

// accountNotices are the messages a redirect back to the account page may name (?done=), so
// that no text of the page comes from its address.
var accountNotices = map[string]string{
	"ended":         "The session has ended.",
	"others":        "Every other session has ended.",
	"password":      "Your password is changed. Every other session has ended; this browser stays signed in.",
	"authenticator": "The authenticator app is removed. Every other session has ended.",
	"grant":         "The app's access is withdrawn; it is signed out.",
	"passkey-added": "The passkey is added. Every other session has ended.",
	"passkey-named": "The passkey is renamed.",
	"passkey-gone":  "The passkey is removed. Every other session has ended.",
}

// accountView is what the account templates read: the page's common data and the account's.
type accountView struct {
	*pageData
	Sessions      []sessionRow
	Grants        []grantView
	HasTOTP       bool
	Secret        string   // the authenticator's secret being added, in base32
	QR            *qrImage // its otpauth URL as a QR code
	RecoveryCodes []string
	PasskeyRows   []passkeyRow
}

// passkeyRow is one passkey as the account page shows it.
type passkeyRow struct {
	ID, Name, Created, LastUsed string
	Synced                      bool
}

// sessionRow is one session as the page shows it.
type sessionRow struct {
	ID, Device, IP, Kind string
	Created, LastUsed    string
	Current              bool
}

// qrImage is a QR code drawn as an inline SVG path: no image request and no data: URL, so the
// pages' Content-Security-Policy stays as it is.
type qrImage struct {
	Size  int    // modules on a side, the quiet zone included
	Width int    // in CSS pixels
	Path  string // the dark modules
}

// qrOf draws text as a QR code, with the four-module quiet zone scanners need.
func qrOf(text string) (*qrImage, error) {
	c, err := qr.Encode(text, qr.M)
	if err != nil {
		return nil, err
	}
	const quiet = 4
	var b strings.Builder
	for y := range c.Size {
		for x := range c.Size {
			if c.Black(x, y) {
				fmt.Fprintf(&b, "M%d %dh1v1h-1z", x+quiet, y+quiet)
			}
		}
	}
	n := c.Size + 2*quiet
	return &qrImage{Size: n, Width: 6 * n, Path: b.String()}, nil
}

// errIncomplete is a form sent without a field it needs; its page says which.
var errIncomplete = &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "fill in the form"}

// account is the signed-in browser's session, or nil after sending it to the sign-in page.
func (p *portal) account(w http.ResponseWriter, r *http.Request) *claims {
	c := p.signedIn(r)
	if c == nil {
		toSignIn(w, r, p.cfg.publicURL+"/account")
	}
	return c
}

// showAccount renders the account page for c, with d's error or notice.
func (p *portal) showAccount(w http.ResponseWriter, r *http.Request, c *claims, d *pageData) *pageData {
	ctx := r.Context()
	v := &accountView{pageData: d}
	d.Title, d.Email, d.template = "Your account", c.Email, "account"
	live, err := p.sessions.live(ctx, c.Subject)
	if err == nil {
		v.HasTOTP, err = p.mfa.enrolled(ctx, c.Subject)
	}
	if err == nil && p.grants != nil {
		v.Grants, err = p.grants.grantsOf(ctx, c.Subject)
	}
	if err == nil && p.passkeys.on() == nil {
		p.offerPasskeys(w, d)
		var keys []passkeyView
		keys, err = p.passkeys.list(ctx, c)
		for _, k := range keys {
			used := "never"
			if k.LastUsedAt != nil {
				used = k.LastUsedAt.UTC().Format(time.DateTime + " UTC")
			}
			v.PasskeyRows = append(v.PasskeyRows, passkeyRow{ID: k.ID, Name: k.Name, Created: k.CreatedAt.UTC().Format(time.DateTime + " UTC"),
				LastUsed: used, Synced: k.BackupEligible})
		}
	}
	if err != nil {
		d.Notice = ""
		p.failed(w, r, d, err)
		d.Error = "Your account cannot be shown right now; try again shortly."
		d.template = "message"
		p.render(w, v)
		return nil
	}
	for _, s := range live {
		kind := "API"
		switch s.Kind {
		case sessionCookie:
			kind = "Browser (this portal)"
		case sessionOAuth:
			kind = "App " + s.Client
		}
		device := s.UserAgent
		if device == "" {
			device = "Unknown device"
		}
		v.Sessions = append(v.Sessions, sessionRow{ID: s.ID, Device: device, IP: s.IP, Kind: kind,
			Created: s.CreatedAt.UTC().Format(time.DateTime + " UTC"), LastUsed: s.LastUsedAt.UTC().Format(time.DateTime + " UTC"),
			Current: s.ID == c.Session})
	}
	p.render(w, v)
	return nil
}

func (p *portal) accountPage(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	d.Notice = accountNotices[r.URL.Query().Get("done")]
	return p.showAccount(w, r, c, d)
}

// accountDone sends the browser back to the account page, which says what was done.
func accountDone(w http.ResponseWriter, r *http.Request, done string) *pageData {
	http.Redirect(w, r, "/account?done="+done, http.StatusSeeOther)
	return nil
}

// accountFailed shows the account page with err's message, as the API words it, or with msg
// instead; a session that ended meanwhile (elsewhere, or from its own list) signs in again.
func (p *portal) accountFailed(w http.ResponseWriter, r *http.Request, c *claims, d *pageData, err error, msg string) *pageData {
	if errors.Is(err, errTokenRevoked) {
		return toSignIn(w, r, p.cfg.publicURL+"/account")
	}
	p.failed(w, r, d, err)
	if msg != "" {
		d.Error = msg
	}
	return p.showAccount(w, r, c, d)
}

// endSessionForm ends one of the user's sessions (the API's DELETE /auth/sessions/{id}).
func (p *portal) endSessionForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	if err := p.sessions.endOwn(r.Context(), c, r.PostForm.Get("id")); err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "ended")
}

// revokeGrantForm withdraws the consent given to a third-party client, which ends the sessions it
// holds.
func (p *portal) revokeGrantForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	ctx := r.Context()
	var err error = errNoSuchGrant
	if p.grants != nil {
		if err = p.sessions.alive(ctx, c); err == nil {
			err = p.grants.revokeGrant(ctx, c.Subject, r.PostForm.Get("client_id"))
		}
	}
	if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "grant")
}

// endOtherSessions ends every session of the user but this browser's (the API's logout with
// scope others): only a session the database says is alive may.
func (p *portal) endOtherSessions(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	ctx := r.Context()
	err := p.sessions.alive(ctx, c)
	if err == nil {
		_, err = p.sessions.endAll(ctx, c.Subject, c.Session, endLogoutOthers)
	}
	if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "others")
}

// changePassword is POST /auth/password for the browser: every session ends, this one included,
// and the browser gets the cookie of a new session at the level it had.
func (p *portal) changePassword(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	current, next := r.PostForm.Get("current_password"), r.PostForm.Get("new_password")
	switch {
	case current == "" || next == "":
		return p.accountFailed(w, r, c, d, errIncomplete, "Enter your current password and a new one.")
	case !validPassword(next):
		return p.accountFailed(w, r, c, d, errWeakPassword, "The new password must be between 8 and 1024 bytes long.")
	}
	pair, err := p.accounts.changePasswordAs(r.Context(), sessionCookie, c, p.clients.of(r), r.UserAgent(), current, next)
	if errors.Is(err, errInvalidCredentials) {
		return p.accountFailed(w, r, c, d, err, "Your current password is not the one you entered; your password is unchanged.")
	} else if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	setSessionCookie(w, p.cfg, pair.cookie, p.now())
	return accountDone(w, r, "password")
}

// addAuthenticator starts adding an authenticator app, after the password (the API's POST
// /auth/mfa/totp): a page with the otpauth URL as a QR code and the secret as text.
func (p *portal) addAuthenticator(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	password := r.PostForm.Get("password")
	if password == "" {
		return p.accountFailed(w, r, c, d, errIncomplete, "Enter your password to add an authenticator app.")
	}
	secret, otpauthURL, err := p.mfa.enrol(r.Context(), c, p.clients.of(r), password)
	if errors.Is(err, errInvalidCredentials) {
		return p.accountFailed(w, r, c, d, err, "The password is not right; no authenticator app was added.")
	} else if errors.Is(err, errMFAAlreadyEnabled) {
		return p.accountFailed(w, r, c, d, err, "An authenticator app is set up already; remove it first.")
	} else if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	code, err := qrOf(otpauthURL)
	if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	d.Title, d.Email, d.template = "Add an authenticator app", c.Email, "authenticator"
	p.render(w, &accountView{pageData: d, Secret: spaced(secret), QR: code})
	return nil
}

// spaced groups a base32 secret by four, as authenticator apps show it, for typing.
func spaced(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i += 4 {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(s[i:min(i+4, len(s))])
	}
	return b.String()
}

// confirmAuthenticator activates the app being added with a code from it (the API's POST
// /auth/mfa/totp/confirm), and shows the recovery codes, this once.
func (p *portal) confirmAuthenticator(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	d.Title, d.Email, d.template = "Add an authenticator app", c.Email, "authenticator"
	code := strings.ReplaceAll(r.PostForm.Get("code"), " ", "")
	if code == "" {
		d.Error, d.status = "Enter the code your authenticator app shows.", http.StatusBadRequest
		p.render(w, &accountView{pageData: d})
		return nil
	}
	codes, err := p.mfa.confirm(r.Context(), c, p.clients.of(r), code)
	switch {
	case errors.Is(err, errMFANotEnrolled):
		return p.accountFailed(w, r, c, d, err, "This authenticator app was not added in time, or is added already; start again.")
	case errors.Is(err, errTokenRevoked):
		return p.accountFailed(w, r, c, d, err, "")
	case err != nil:
		p.failed(w, r, d, err)
		if errors.Is(err, errCodeInvalid) {
			d.Error = "That code is not right. Check the app's clock, and enter the code it shows now."
		}
		p.render(w, &accountView{pageData: d})
		return nil
	}
	d.Title, d.template = "Your recovery codes", "recovery"
	d.Notice = "The authenticator app is added. Every other session has ended."
	p.render(w, &accountView{pageData: d, RecoveryCodes: codes})
	return nil
}

// removeAuthenticator removes the app after a code from it or a recovery code (the API's DELETE
// /auth/mfa/totp).
func (p *portal) removeAuthenticator(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	code, recovery := formCodes(r)
	if code == "" && recovery == "" {
		return p.accountFailed(w, r, c, d, errIncomplete, "Enter a code from your authenticator app, or a recovery code, to remove it.")
	}
	err := p.mfa.remove(r.Context(), c, p.clients.of(r), code, recovery)
	if errors.Is(err, errCodeInvalid) {
		return p.accountFailed(w, r, c, d, err, "That code is not right; the authenticator app is still set up.")
	} else if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "authenticator")
}
