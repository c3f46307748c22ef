package main

// api_passkeys.go is the passkeys' endpoints: registration, the list, renaming and removal, and
// the sign-in ceremony for a sign-in without a password, a second factor or step-up.

import (
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
)

// maxCredentialBody bounds the body that carries an authenticator's answer: an attestation with
// its certificate chain is larger than anything else a client sends.
const maxCredentialBody = 64 << 10

// passkeysOn answers 501 for every passkey endpoint while passkeys are off (no RP ID), before
// anything else is looked at.
func passkeysOn(log *slog.Logger, k *passkeys) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := k.on(); err != nil {
				writeError(w, r, log, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// handleRegisterPasskeyBegin answers the creation options of a new passkey, after the password
// (see passkeys.registerBegin).
func handleRegisterPasskeyBegin(log *slog.Logger, clients clientIPs, k *passkeys) http.Handler {
	type request struct {
		Password string `json:"password"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "password is required to add a passkey"}
		}
		opts, err := k.registerBegin(r.Context(), claimsFrom(r.Context()), clients.of(r), req.Password)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, opts)
		return nil
	})
}

// handleRegisterPasskeyFinish adds the passkey the browser created; the account's first second
// factor answers its recovery codes too, this once (see passkeys.registerFinish).
func handleRegisterPasskeyFinish(log *slog.Logger, k *passkeys) http.Handler {
	type request struct {
		Credential json.RawMessage `json:"credential"`
		Name       string          `json:"name"`
	}
	type response struct {
		Passkey       passkeyView `json:"passkey"`
		RecoveryCodes []string    `json:"recovery_codes,omitempty"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeUpTo[request](w, r, maxCredentialBody)
		if err != nil {
			return err
		}
		if len(req.Credential) == 0 {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request",
				message: "credential is required: the PublicKeyCredential of navigator.credentials.create, as JSON"}
		}
		view, codes, err := k.registerFinish(r.Context(), claimsFrom(r.Context()), req.Credential, req.Name)
		if err != nil {
			return err
		}
		encode(w, http.StatusCreated, response{view, codes})
		return nil
	})
}

// handlePasskeys lists the signed-in user's passkeys.
func handlePasskeys(log *slog.Logger, k *passkeys) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		views, err := k.list(r.Context(), claimsFrom(r.Context()))
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string][]passkeyView{"passkeys": views})
		return nil
	})
}

// handleRenamePasskey names one of the signed-in user's passkeys.
func handleRenamePasskey(log *slog.Logger, k *passkeys) http.Handler {
	type request struct {
		Name string `json:"name"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if err := k.rename(r.Context(), claimsFrom(r.Context()), r.PathValue("id"), req.Name); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// handleRemovePasskey removes one of the signed-in user's passkeys, after the password or a second
// factor (see passkeys.remove).
func handleRemovePasskey(log *slog.Logger, clients clientIPs, k *passkeys) http.Handler {
	type request struct {
		Password     string `json:"password"`
		Code         string `json:"code"`
		RecoveryCode string `json:"recovery_code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if err := k.remove(r.Context(), claimsFrom(r.Context()), clients.of(r), r.PathValue("id"),
			req.Password, req.Code, req.RecoveryCode); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// loginRequestOf is what a sign-in ceremony's request asks for: with mfa_token, a password
// login's second factor; with an access token, step-up of its session; else a sign-in, with the
// email or none.
func loginRequestOf(r *http.Request, email, mfaToken string) (loginRequest, error) {
	if mfaToken != "" {
		return loginRequest{mfaToken: mfaToken}, nil
	}
	raw, err := accessToken(r)
	if err != nil {
		return loginRequest{}, err
	}
	return loginRequest{email: email, raw: raw}, nil
}

// handlePasskeyLoginBegin answers the request options of a sign-in ceremony (see
// passkeys.loginBegin). The body is optional: without one, a discoverable sign-in.
func handlePasskeyLoginBegin(log *slog.Logger, clients clientIPs, k *passkeys) http.Handler {
	type request struct {
		Email    string `json:"email"`
		MFAToken string `json:"mfa_token"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		var req request
		if err := decodeOptional(w, r, &req); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		lr, err := loginRequestOf(r, req.Email, req.MFAToken)
		if err != nil {
			return err
		}
		opts, err := k.loginBegin(r.Context(), lr, clients.of(r))
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, opts)
		return nil
	})
}

// handlePasskeyLoginFinish checks the passkey's answer and answers the tokens: of a new session,
// or of the stepped-up one (see passkeys.loginFinish).
func handlePasskeyLoginFinish(log *slog.Logger, clients clientIPs, k *passkeys) http.Handler {
	type request struct {
		Credential json.RawMessage `json:"credential"`
		MFAToken   string          `json:"mfa_token"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeUpTo[request](w, r, maxCredentialBody)
		if err != nil {
			return err
		}
		if len(req.Credential) == 0 {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request",
				message: "credential is required: the PublicKeyCredential of navigator.credentials.get, as JSON"}
		}
		lr, err := loginRequestOf(r, "", req.MFAToken)
		if err != nil {
			return err
		}
		pair, err := k.loginFinish(r.Context(), lr, clients.of(r), r.UserAgent(), req.Credential)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, pair)
		return nil
	})
}
