package main

// api_mfa.go is the second factor's endpoints: enrolment, confirmation, removal, and its step.

import (
	"crypto/rand"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
)

// handleEnrolTOTP gives the signed-in user a new secret to put in an authenticator app, after the
// password: a stolen access token alone cannot add a factor and lock the owner out. The factor is
// not active until a code from it is confirmed.
func handleEnrolTOTP(log *slog.Logger, m *mfa) http.Handler {
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
		ctx, c := r.Context(), claimsFrom(r.Context())
		if _, err := m.passwords.checkUser(ctx, m.clients.of(r), c.Subject, req.Password); err != nil {
			return err
		}
		u, err := m.signedIn(ctx, c)
		if err != nil {
			return err
		}
		if _, err := m.store.TOTP(ctx, u.ID); err == nil {
			return errMFAAlreadyEnabled
		} else if !errors.Is(err, ErrNotFound) {
			return err
		}
		secret := make([]byte, totpSecret)
		rand.Read(secret)
		if err := m.store.SavePendingTOTP(ctx, TOTPFactor{ID: "pending:" + u.ID, UserID: u.ID,
			Secret: m.seal.seal(secret, []byte(u.ID)), CreatedAt: m.tokens.now()}); err != nil {
			return err
		}
		s := b32.EncodeToString(secret)
		q := url.Values{"secret": {s}, "issuer": {m.appName}, "algorithm": {"SHA1"}, "digits": {"6"}, "period": {"30"}}
		label := url.PathEscape(m.appName) + ":" + url.PathEscape(u.Email)
		encode(w, http.StatusOK, response{s, "otpauth://totp/" + label + "?" + q.Encode()})
		return nil
	})
}

// handleConfirmTOTP activates the factor being enrolled with a code from it, and answers the ten
// recovery codes, this once. The account's stamp moves, its owner is mailed, and its other
// sessions end: opened without the factor, they would stay at aal1 for good.
func handleConfirmTOTP(log *slog.Logger, m *mfa) http.Handler {
	type request struct {
		Code string `json:"code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		ctx := r.Context()
		u, err := m.signedIn(ctx, claimsFrom(ctx))
		if err != nil {
			return err
		}
		pending, err := m.store.TOTP(ctx, "pending:"+u.ID)
		if errors.Is(err, ErrNotFound) || err == nil && m.tokens.now().Sub(pending.CreatedAt) > pendingTTL {
			return errMFANotEnrolled
		} else if err != nil {
			return err
		}
		secret, err := m.seal.open(pending.Secret, []byte(u.ID))
		if err != nil {
			return err
		}
		if req.Code == "" {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "send the code the authenticator app shows"}
		}
		if err := m.check(ctx, r, u, secret, req.Code, ""); err != nil {
			return err
		}
		if err := m.store.ActivateTOTP(ctx, TOTPFactor{ID: u.ID, UserID: u.ID, Secret: pending.Secret,
			CreatedAt: m.tokens.now()}); errors.Is(err, ErrDuplicate) {
			return errMFAAlreadyEnabled
		} else if err != nil {
			return err
		}
		codes := make([]string, 10)
		digests := make([]string, len(codes))
		for i := range codes {
			codes[i] = newRecoveryCode()
			digests[i] = recoveryDigest(codes[i])
		}
		if err := m.store.SetRecoveryCodes(ctx, u.ID, digests); err != nil {
			return err
		}
		if err := m.accounts.moveStamp(ctx, u.ID, stampFactorAdded); err != nil {
			return err
		}
		if _, err := m.sessions.endAll(ctx, u.ID, claimsFrom(ctx).Session, endMFAAdded); err != nil {
			return err
		}
		m.mail.notify(ctx, mailFactorAdded, u)
		m.metrics.mfa(mfaEnrolled)
		log.LogAttrs(ctx, slog.LevelInfo, "second factor enabled", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID))
		encode(w, http.StatusOK, map[string][]string{"recovery_codes": codes})
		return nil
	})
}

// handleRemoveTOTP removes the active factor, after a current code or a recovery code; the stamp
// moves, the owner is mailed and the user's other sessions end.
func handleRemoveTOTP(log *slog.Logger, m *mfa) http.Handler {
	type request struct {
		Code         string `json:"code"`
		RecoveryCode string `json:"recovery_code"`
	}
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[request](w, r)
		if err != nil {
			return err
		}
		ctx, c := r.Context(), claimsFrom(r.Context())
		u, err := m.signedIn(ctx, c)
		if err != nil {
			return err
		}
		if err := m.prove(ctx, r, u, req.Code, req.RecoveryCode); err != nil {
			return err
		}
		if err := m.store.RemoveTOTP(ctx, u.ID); errors.Is(err, ErrNotFound) {
			return errMFANotEnrolled
		} else if err != nil {
			return err
		}
		if err := m.accounts.moveStamp(ctx, u.ID, stampFactorRemoved); err != nil {
			return err
		}
		if _, err := m.sessions.endAll(ctx, u.ID, c.Session, endMFARemoved); err != nil {
			return err
		}
		m.mail.notify(ctx, mailFactorGone, u)
		m.metrics.mfa(mfaRemoved)
		log.LogAttrs(ctx, slog.LevelInfo, "second factor removed", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID))
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

// handleVerifyMFA is the second factor's step: with an mfa_token, the second step of a login,
// which starts a session at aal2; with an access token instead, step-up, which moves the token's
// own session to aal2.
func handleVerifyMFA(log *slog.Logger, m *mfa) http.Handler {
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
		if req.MFAToken == "" {
			return m.stepUp(w, r, req.Code, req.RecoveryCode)
		}
		ctx := r.Context()
		ch, err := m.store.MFAChallenge(ctx, digest(req.MFAToken))
		if errors.Is(err, ErrNotFound) || err == nil && !m.tokens.now().Before(ch.ExpiresAt) {
			return errTokenInvalid
		} else if err != nil {
			return err
		}
		u, err := m.store.UserByID(ctx, ch.UserID)
		if errors.Is(err, ErrNotFound) {
			return errTokenInvalid
		} else if err != nil {
			return err
		}
		// A challenge issued before the password or a factor changed is void.
		if stamp, err := m.store.Stamp(ctx, u.ID); err != nil {
			return err
		} else if stamp != ch.Stamp {
			return errTokenInvalid
		}
		if err := m.answer(ctx, r, u, ch, req.Code, req.RecoveryCode); err != nil {
			return err
		}
		// One challenge, one session: of simultaneous right codes, one consumes it.
		if err := m.store.ConsumeMFAChallenge(ctx, ch.ID); errors.Is(err, ErrNotFound) {
			return errTokenInvalid
		} else if err != nil {
			return err
		}
		pair, err := m.sessions.start(ctx, u, m.clients.of(r), r.UserAgent(), levelTwoFactor)
		if err != nil {
			return err
		}
		noteUser(ctx, u.ID)
		m.metrics.login(loginSuccess)
		encode(w, http.StatusOK, pair)
		return nil
	})
}

// stepUp verifies the factor of the user of the access token sent and moves its session to aal2.
func (m *mfa) stepUp(w http.ResponseWriter, r *http.Request, code, recovery string) error {
	raw, err := accessToken(r)
	if err != nil {
		return err
	}
	if raw == "" {
		return &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: "send mfa_token with the code, or an access token to step up its session"}
	}
	c, err := accept(m.tokens, m.sessions.revs, raw, useAccess)
	if err != nil {
		return err
	}
	ctx := r.Context()
	u, err := m.signedIn(ctx, c)
	if err != nil {
		return err
	}
	if err := m.prove(ctx, r, u, code, recovery); err != nil {
		return err
	}
	pair, err := m.sessions.raise(ctx, c, levelTwoFactor)
	if err != nil {
		return err
	}
	noteUser(ctx, u.ID)
	encode(w, http.StatusOK, pair)
	return nil
}
