package main

// portal_passkeys.go is the portal's sign-in with a passkey: the ceremony's options, and the form
// that signs the browser in with the passkey's answer.

import (
	"encoding/json"
	"errors"
	"net/http"
)

// passkeyBegin answers the request options of a sign-in with a passkey, as JSON, to the login
// page's script: a form post with the page's CSRF token, from the portal's own origin.
func (p *portal) passkeyBegin() http.Handler {
	return handle(p.log, func(w http.ResponseWriter, r *http.Request) error {
		r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
		if err := r.ParseForm(); err != nil || !p.sameOrigin(r) || !p.csrfValid(r) {
			return errCSRFInvalid
		}
		req, err := p.passkeyRequest(r)
		if err != nil {
			return err
		}
		opts, err := p.passkeys.loginBegin(r.Context(), req, p.clients.of(r))
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, opts)
		return nil
	})
}

// passkeyRequest is what a passkey form of the portal asks: a sign-in, a password sign-in's
// second factor (mfa_token), or the step-up of the browser's session (step_up, with its cookie).
func (p *portal) passkeyRequest(r *http.Request) (loginRequest, error) {
	req := loginRequest{kind: sessionCookie, mfaToken: r.PostForm.Get("mfa_token")}
	if r.PostForm.Get("step_up") != "" {
		raw, n := sessionCookieValue(r)
		if n != 1 {
			return req, errTokenMissing
		}
		req.raw = raw
	}
	return req, nil
}

// passkeySignIn is the passkey form's POST: the passkey's answer signs the browser in to a cookie
// session at aal2 (amr hwk or swk, and mfa), or, with the mfa_token of a password sign-in,
// finishes that (pwd, and hwk or swk).
func (p *portal) passkeySignIn(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template, d.RD = "Sign in", "login", r.PostForm.Get("rd")
	req, err := p.passkeyRequest(r)
	if err != nil {
		return toSignIn(w, r, d.RD)
	}
	switch {
	case req.mfaToken != "":
		// The second step of a password sign-in: its page again, on failure.
		d.Title, d.MFAToken, d.Action, d.template = "Second factor", req.mfaToken, "/login/code", "code"
	case req.raw != "":
		d.Title, d.Action, d.template, d.StepUp = "Confirm with your second factor", "/step-up", "code", true
		d.PHR = r.PostForm.Get("level") == "phr"
	}
	p.offerPasskeys(w, d)
	credential := r.PostForm.Get("credential")
	if credential == "" || !json.Valid([]byte(credential)) {
		d.Error, d.status = "Your browser sent no passkey. Try again, or sign in with your password.", http.StatusBadRequest
		return d
	}
	pair, err := p.passkeys.loginFinish(r.Context(), req, p.clients.of(r), r.UserAgent(), json.RawMessage(credential))
	if req.raw != "" && apiErrorOf(err) != nil && apiErrorOf(err).status == http.StatusUnauthorized &&
		!errors.Is(err, errPasskeyInvalid) {
		return toSignIn(w, r, d.RD) // the browser's session ended meanwhile
	}
	if errors.Is(err, errTokenInvalid) {
		d.Title, d.MFAToken, d.template = "Sign in", "", "login"
		d.Error, d.status = "This sign-in has expired; sign in again.", http.StatusUnauthorized
		return d
	}
	if err != nil {
		return p.failed(w, r, d, err)
	}
	return p.signedInTo(w, r, pair, d.RD)
}
