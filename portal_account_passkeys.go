package main

// portal_account_passkeys.go is the account page's passkeys: adding one (its ceremony's options
// to the page's script, then the form with the new credential), renaming and removing one, each
// calling the operation its API endpoint calls.

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"
)

// addPasskeyBegin answers the creation options of a new passkey, as JSON, to the account page's
// script, after the password (the API's POST /auth/passkeys/register/begin).
func (p *portal) addPasskeyBegin() http.Handler {
	return handle(p.log, func(w http.ResponseWriter, r *http.Request) error {
		r.Body = http.MaxBytesReader(w, r.Body, 8<<10)
		if err := r.ParseForm(); err != nil || !p.sameOrigin(r) || !p.csrfValid(r) {
			return errCSRFInvalid
		}
		c := p.signedIn(r)
		if c == nil {
			return errTokenRevoked
		}
		password := r.PostForm.Get("password")
		if password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "enter your password to add a passkey"}
		}
		opts, err := p.passkeys.registerBegin(r.Context(), c, p.clients.of(r), password)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, opts)
		return nil
	})
}

// addPasskey adds the passkey the browser created (the API's POST
// /auth/passkeys/register/finish); the account's first second factor shows its recovery codes,
// this once.
func (p *portal) addPasskey(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	credential := r.PostForm.Get("credential")
	if credential == "" || !json.Valid([]byte(credential)) {
		return p.accountFailed(w, r, c, d, errIncomplete, "Your browser sent no passkey; no passkey was added.")
	}
	_, codes, err := p.passkeys.registerFinish(r.Context(), c, json.RawMessage(credential), r.PostForm.Get("name"))
	if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	if len(codes) == 0 {
		return accountDone(w, r, "passkey-added")
	}
	d.Title, d.Email, d.template = "Your recovery codes", c.Email, "recovery"
	d.Notice = "The passkey is added. Every other session has ended."
	p.render(w, &accountView{pageData: d, RecoveryCodes: codes})
	return nil
}

// renamePasskey names one of the user's passkeys (the API's PATCH /auth/passkeys/{id}).
func (p *portal) renamePasskey(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	if err := p.passkeys.rename(r.Context(), c, r.PostForm.Get("id"), r.PostForm.Get("name")); err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "passkey-named")
}

// removePasskey removes one of the user's passkeys after the password (the API's DELETE
// /auth/passkeys/{id}).
func (p *portal) removePasskey(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	c := p.account(w, r)
	if c == nil {
		return nil
	}
	password := r.PostForm.Get("password")
	if strings.TrimSpace(password) == "" {
		return p.accountFailed(w, r, c, d, errIncomplete, "Enter your password to remove a passkey.")
	}
	err := p.passkeys.remove(r.Context(), c, p.clients.of(r), r.PostForm.Get("id"), password, "", "")
	if errors.Is(err, errInvalidCredentials) {
		return p.accountFailed(w, r, c, d, err, "The password is not right; the passkey is still there.")
	} else if err != nil {
		return p.accountFailed(w, r, c, d, err, "")
	}
	return accountDone(w, r, "passkey-gone")
}
