package main

// api_mfa.go is the second factor's endpoints: enrolment, confirmation, removal, and its step.

import (
	"log/slog"
	"net/http"
)

// handleEnrolTOTP gives the signed-in user a new secret to put in an authenticator app, after the
// password (see mfa.enrol).
func handleEnrolTOTP(log *slog.Logger, clients clientIPs, m *mfa) http.Handler {
	type request struct {
		Password string `json:"password"`
	}
	type response struct {
		Secret     string `json:"secret"`
		OtpauthURL string `json:"otpauth_url"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if req.Password == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "password is required to add a second factor"}
		}
		secret, otpauthURL, err := m.enrol(r.Context(), claimsFrom(r.Context()), clients.of(r), req.Password)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, response{secret, otpauthURL})
		return nil
	})
}

// handleConfirmTOTP activates the factor being enrolled with a code from it, and answers the ten
// recovery codes, this once (see mfa.confirm).
func handleConfirmTOTP(log *slog.Logger, clients clientIPs, m *mfa) http.Handler {
	type request struct {
		Code string `json:"code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		codes, err := m.confirm(r.Context(), claimsFrom(r.Context()), clients.of(r), req.Code)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string][]string{"recovery_codes": codes})
		return nil
	})
}

// handleRemoveTOTP removes the active factor, after a current code or a recovery code (see
// mfa.remove).
func handleRemoveTOTP(log *slog.Logger, clients clientIPs, m *mfa) http.Handler {
	type request struct {
		Code         string `json:"code"`
		RecoveryCode string `json:"recovery_code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		if err := m.remove(r.Context(), claimsFrom(r.Context()), clients.of(r), req.Code, req.RecoveryCode); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// handleVerifyMFA is the second factor's step: with an mfa_token, the second step of a login,
// which starts a session at aal2; with an access token instead, step-up, which moves the token's
// own session to aal2.
func handleVerifyMFA(log *slog.Logger, clients clientIPs, m *mfa) http.Handler {
	type request struct {
		MFAToken     string `json:"mfa_token"`
		Code         string `json:"code"`
		RecoveryCode string `json:"recovery_code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		var pair tokenPair
		if req.MFAToken != "" {
			pair, err = m.verifyChallenge(r.Context(), req.MFAToken, clients.of(r), r.UserAgent(), req.Code, req.RecoveryCode)
		} else {
			pair, err = stepUpFrom(r, clients, m, req.Code, req.RecoveryCode)
		}
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// stepUpFrom is the step with an access token instead of an mfa_token: step-up of its session.
func stepUpFrom(r *http.Request, clients clientIPs, m *mfa, code, recovery string) (tokenPair, error) {
	raw, err := accessToken(r)
	if err != nil {
		return tokenPair{}, err
	}
	if raw == "" {
		return tokenPair{}, &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: "send mfa_token with the code, or an access token to step up its session"}
	}
	return m.stepUp(r.Context(), raw, clients.of(r), code, recovery)
}
