package main

// portal_mail.go is the portal's pages for what a mail starts or finishes: sign-up, a forgotten
// password, the links of reset, invitation, verification and address-change mails.

import (
	"errors"
	"net/http"
	"net/url"
	"strings"
)

// offered is f where on; else the page of what this service does not offer, which says msg:
// sign-up when it is closed, the mail pages when it sends no mail.
func offered(on bool, msg string, f pageFunc) pageFunc {
	if on {
		return f
	}
	return func(_ http.ResponseWriter, _ *http.Request, d *pageData) *pageData {
		d.Title, d.Error, d.status, d.template = "Not found", msg, http.StatusNotFound, "message"
		d.Link, d.LinkText = "/login", "Sign in"
		return d
	}
}

// signupPage is f, while sign-up is open.
func (p *portal) signupPage(f pageFunc) pageFunc {
	return offered(!p.accounts.signupsClosed, "Sign-up is closed here; ask the operator for an account.", f)
}

// mailPage is f, when the service sends mail.
func (p *portal) mailPage(f pageFunc) pageFunc {
	return offered(p.mail.cfg.enabled(), "This service sends no mail, so it has no such page; ask its operator.", f)
}

func (p *portal) signupForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Create an account", "signup"
	if rd, ok := safeReturn(p.cfg, r.URL.Query().Get("rd")); ok {
		d.RD = rd
	}
	return d
}

// signUp is the sign-up form's POST: the API's sign-up, with its throttle. With verification
// on, a taken address is answered as a new one; so every sign-up then ends on a page that says
// to check the mail, since signing in only the new accounts would tell the two apart. With it
// off, the new account is signed in, as /login would.
func (p *portal) signUp(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Create an account", "signup"
	d.Email = strings.TrimSpace(r.PostForm.Get("email"))
	if rd, ok := safeReturn(p.cfg, r.PostForm.Get("rd")); ok {
		d.RD = rd
	}
	password := r.PostForm.Get("password")
	email := normalizeEmail(d.Email)
	switch {
	case !validEmail(email):
		return p.refused(w, r, d, errInvalidEmail)
	case !validPassword(password):
		return p.refused(w, r, d, errWeakPassword)
	}
	ctx, client := r.Context(), p.clients.of(r)
	u, err := p.accounts.signup(ctx, client, email, password)
	if err != nil {
		return p.refused(w, r, d, err)
	}
	if p.mail.cfg.verification != verificationOff {
		d.Title, d.template = "Check your mail", "message"
		d.Notice = "A mail is on its way to " + email + ". Follow its link to confirm your address, then sign in."
		d.Email, d.Link, d.LinkText = "", "/login", "Sign in"
		if d.RD != "" {
			d.Link += "?rd=" + url.QueryEscape(d.RD)
		}
		return d
	}
	pair, err := p.sessions.startAs(ctx, sessionCookie, u, client, r.UserAgent(), levelPassword)
	if err != nil {
		return p.refused(w, r, d, err)
	}
	return p.signedInTo(w, r, pair, d.RD)
}

func (p *portal) forgotForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Forgot your password?", "forgot"
	return d
}

// forgot is POST /auth/password/forgot as a page: the same answer whether the address has an
// account or not, and after the same work.
func (p *portal) forgot(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Forgot your password?", "forgot"
	d.Email = strings.TrimSpace(r.PostForm.Get("email"))
	email := normalizeEmail(d.Email)
	if !validEmail(email) {
		return p.refused(w, r, d, errInvalidEmail)
	}
	if err := p.mail.send(r.Context(), p.clients.of(r), &MailMessage{Kind: mailReset, To: email}, true); err != nil {
		return p.refused(w, r, d, err)
	}
	d.Title, d.Email, d.template = "Check your mail", "", "message"
	d.Notice = "If an account has the address " + email + ", a link to choose a new password is on its way to it."
	d.Link, d.LinkText = "/login", "Sign in"
	return d
}

// resetForm is the page of a reset or invitation link: a form for the new password, which
// carries the token to the POST. Without a token it asks for the code the mail shows.
func (p *portal) resetForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Token, d.template = "Choose a new password", r.URL.Query().Get("token"), "reset"
	return d
}

// reset is the reset form's POST: the API's reset. A weak password is refused before the token
// is used, so that it does not cost the link.
func (p *portal) reset(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Token, d.template = "Choose a new password", strings.TrimSpace(r.PostForm.Get("token")), "reset"
	password := r.PostForm.Get("password")
	if !validPassword(password) {
		return p.refused(w, r, d, errWeakPassword)
	}
	if err := p.accounts.resetPassword(r.Context(), d.Token, password); err != nil {
		return p.mailLinkFailed(w, r, d, err)
	}
	// Every session of the account has ended, this browser's too.
	clearSessionCookies(w, p.cfg)
	d.Title, d.Token, d.template = "Password set", "", "message"
	d.Notice = "Your new password is set, and every session of your account has ended."
	d.Link, d.LinkText = "/login", "Sign in with the new password"
	return d
}

// verifyForm is the page of a verification or address-change link: a button, whose POST
// confirms. Without a token it asks for the code the mail shows.
func (p *portal) verifyForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Token, d.template = "Confirm your email address", r.URL.Query().Get("token"), "verify"
	return d
}

// verify is the verify form's POST: the API's verification, which also confirms an address
// change.
func (p *portal) verify(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Token, d.template = "Confirm your email address", strings.TrimSpace(r.PostForm.Get("token")), "verify"
	email, err := p.accounts.verifyEmail(r.Context(), d.Token)
	if err != nil {
		return p.mailLinkFailed(w, r, d, err)
	}
	// A cookie says what the address was at its sign-in, and is never renewed; an address change
	// has ended the browsers' sessions.
	d.Title, d.Token, d.template = "Address confirmed", "", "message"
	d.Notice = "The address " + email + " is confirmed. Sign in again: apps see it only from your next sign-in."
	d.Link, d.LinkText = "/login", "Sign in again"
	return d
}

// refused is failed, for pages that do more than sign in.
func (p *portal) refused(w http.ResponseWriter, r *http.Request, d *pageData, err error) *pageData {
	if d = p.failed(w, r, d, err); d.status >= 500 {
		d.Error = "The service cannot do this right now; try again shortly."
	}
	return d
}

// mailLinkFailed is the page of a link that did not work: a spent or unknown link points to
// where a new one is asked for; anything else reads as the API words it.
func (p *portal) mailLinkFailed(w http.ResponseWriter, r *http.Request, d *pageData, err error) *pageData {
	d = p.refused(w, r, d, err)
	if errors.Is(err, errMailTokenInvalid) {
		d.Title, d.Token, d.template = "This link does not work", "", "message"
		d.Link, d.LinkText = "/forgot-password", "Ask for a new password link"
		if r.URL.Path == "/verify-email" {
			d.Link, d.LinkText = "/login", "Sign in"
		}
	}
	return d
}
