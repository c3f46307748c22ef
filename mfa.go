package main

// mfa.go is the second factor: TOTP, its check within the guessing limits, recovery codes, and a
// login's challenge.

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base32"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"time"
)

// TOTP as every authenticator app reads it: RFC 6238 with HMAC-SHA1, 6 digits, 30-second steps,
// and a 160-bit secret. A code is accepted for its own step and the one before and after (a
// phone's clock a little off), never twice, and never after a later step's.
const (
	totpStep    = 30 * time.Second
	totpDigits  = 6
	totpSkew    = 1 // steps either way
	totpSecret  = 20
	pendingTTL  = 15 * time.Minute // how long an enrolment waits for its first code
	mfaTokenTTL = 5 * time.Minute  // how long a login waits for its second factor
	// Wrong answers to one login's challenge before it dies, whatever MFA_MAX_FAILURES.
	mfaChallengeMaxWrong = 3
)

var b32 = base32.StdEncoding.WithPadding(base32.NoPadding)

// totpCode is the code of secret for time step, with digits digits (RFC 4226's truncation).
func totpCode(secret []byte, step int64, digits int) string {
	mac := hmac.New(sha1.New, secret)
	binary.Write(mac, binary.BigEndian, step)
	sum := mac.Sum(nil)
	off := sum[len(sum)-1] & 0xf
	v := binary.BigEndian.Uint32(sum[off:off+4]) & 0x7fffffff
	mod := uint32(1)
	for range digits {
		mod *= 10
	}
	return fmt.Sprintf("%0*d", digits, v%mod)
}

// totpMatch returns the step whose code code is, among the steps around now.
func totpMatch(secret []byte, code string, now time.Time) (int64, bool) {
	code = strings.ReplaceAll(code, " ", "")
	if len(code) != totpDigits {
		return 0, false
	}
	step := now.Unix() / int64(totpStep/time.Second)
	for d := int64(-totpSkew); d <= totpSkew; d++ {
		if hmac.Equal([]byte(totpCode(secret, step+d, totpDigits)), []byte(code)) {
			return step + d, true
		}
	}
	return 0, false
}

// mfa is the second factor: enrolment, the second step of a login, step-up in a session, and
// removal. Secrets are sealed under a key derived from JWT_SECRET; recovery codes are kept as
// SHA-256 digests (they are random and long, so a fast digest hides them as well as a slow one).
// Every "exactly one wins" here (a code's step, a recovery code, a login's challenge, the one
// active factor) is a unique-key insert or a single-document delete.
type mfa struct {
	store interface {
		factorStore
		userStore
		passkeyStore
	}
	tokens   *tokens
	seal     *sealer
	revs     *revocations
	sessions interface { // see sessionKeeper
		alive(ctx context.Context, c *claims) error
		start(ctx context.Context, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error)
		startAs(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error)
		raise(ctx context.Context, c *claims, lvl level) (tokenPair, error)
		endAll(ctx context.Context, user, except, reason string) (int, error)
		end(ctx context.Context, sid, reason string) error
	}
	stamps interface { // a factor added, removed or used up moves the account's stamp
		moveStamp(ctx context.Context, user, event string) error
	}
	mail      *mailFlows     // and its owner is told; and when wrong codes lock the factor
	passwords *passwordCheck // adding a factor asks for the password
	limits    *loginLimits
	metrics   *metrics
	appName   string
	log       *slog.Logger
}

var (
	errCodeInvalid       = &apiError{status: http.StatusUnauthorized, code: "invalid_code", message: "the code is not valid"}
	errMFAAlreadyEnabled = &apiError{status: http.StatusConflict, code: "mfa_already_enabled", message: "a second factor is active already; remove it first"}
	errMFANotEnrolled    = &apiError{status: http.StatusConflict, code: "mfa_not_enrolled", message: "no second factor is being enrolled or active; POST /auth/mfa/totp first"}
)

// check verifies code (a TOTP code) or recovery (a recovery code) for user against secret, a
// factor being enrolled: see verify.
func (m *mfa) check(ctx context.Context, client netip.Addr, u *User, secret []byte, code, recovery string) error {
	return m.verify(ctx, client, u, secret, code, recovery, nil, false)
}

// verify checks code or recovery within the limits on guessing u's second factor (see
// loginLimits.factor): the limits first, so that beyond them a right code is refused too. ch is
// the login challenge answered, nil in a session; active is whether secret is u's active factor,
// whose owner is mailed when it locks.
func (m *mfa) verify(ctx context.Context, client netip.Addr, u *User, secret []byte, code, recovery string,
	ch *MFAChallenge, active bool) error {
	if (recovery == "") == (code == "") {
		return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "send code or recovery_code, one of them"}
	}
	att, err := m.attempt(ctx, client, u, ch)
	if err != nil {
		return err
	}
	ok := false
	if recovery != "" {
		err = m.store.UseRecoveryCode(ctx, u.ID, recoveryDigest(recovery))
		ok = err == nil
		if ok {
			m.metrics.factor(mfaRecoveryCode)
			err = m.recoveryUsed(ctx, u)
		}
	} else if step, match := totpMatch(secret, code, m.tokens.now()); match {
		// A step is claimed, and with it every earlier one: its code again, or the code before
		// it, fails. The claim lasts while they could still be accepted.
		err = m.store.ClaimStep(ctx, u.ID, step, time.Unix((step+totpSkew+1)*int64(totpStep/time.Second), 0))
		ok = err == nil
		if errors.Is(err, ErrDuplicate) {
			m.metrics.factor(mfaReplayed)
		} else if ok {
			m.metrics.factor(mfaVerified)
		}
	}
	if err != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDuplicate) {
		att.forget(ctx)
		return err
	}
	if !ok {
		m.metrics.factor(mfaInvalid)
		m.missed(ctx, att, u, ch, active)
		return errCodeInvalid // the attempt stays recorded, as a failure
	}
	return att.succeeded(ctx)
}

// recoveryUsed moves the stamp of u's account when its last recovery code is used: the means of
// recovery are gone.
func (m *mfa) recoveryUsed(ctx context.Context, u *User) error {
	left, err := m.store.RecoveryCodesLeft(ctx, u.ID)
	if err != nil || left > 0 {
		return err
	}
	return m.stamps.moveStamp(ctx, u.ID, stampRecoveryUsedUp)
}

// attempt begins a try at u's second factor, of any kind, from client, answering ch if not
// nil: errTooManyAttempts when the account or the client is over its limit, errTokenInvalid when
// ch is dead. The try then ends in succeeded, or in missed.
func (m *mfa) attempt(ctx context.Context, client netip.Addr, u *User, ch *MFAChallenge) (*attempt, error) {
	challenge := ""
	if ch != nil {
		challenge = ch.ID
	}
	att, err := m.limits.factor(ctx, client, u.ID, challenge)
	if err == nil {
		err = att.check(ctx)
	}
	if errors.Is(err, errTooManyAttempts) {
		m.metrics.factor(mfaThrottled)
	}
	if err != nil {
		return nil, err
	}
	return att, nil
}

// missed ends a wrong try att: ch is deleted with its last allowed wrong answer (should that
// fail, the wrong answers recorded refuse it all the same), and the try that locks the account's
// factor mails its owner, when the factor is active: one being enrolled locks nothing worth it.
func (m *mfa) missed(ctx context.Context, att *attempt, u *User, ch *MFAChallenge, active bool) {
	if ch != nil && m.limits.maxChallenge > 0 && att.failures(challengeKey(ch.ID)) >= m.limits.maxChallenge {
		if err := m.store.ConsumeMFAChallenge(context.WithoutCancel(ctx), ch.ID); err != nil && !errors.Is(err, ErrNotFound) {
			m.log.Warn("deleting a challenge after its last wrong answer failed", "err", err)
		}
	}
	if n := att.failures(factorKey(u.ID)); !active || m.limits.maxFactor == 0 || n < m.limits.maxFactor ||
		!m.mail.cfg.enabled() {
		return
	}
	if err := m.mail.outbox.queue(context.WithoutCancel(ctx), &MailMessage{Kind: mailMFAFailures, To: u.Email, UserID: u.ID,
		Failures: m.limits.maxFactor, LockedFor: m.limits.throttle.window, SignedIn: ch == nil}); err != nil {
		m.log.Warn("mailing the owner of a locked second factor failed", "user_id", u.ID, "err", err)
	}
}

// prove checks a code or a recovery code against u's active factor, in a session (see verify).
func (m *mfa) prove(ctx context.Context, client netip.Addr, u *User, code, recovery string) error {
	return m.answer(ctx, client, u, nil, code, recovery)
}

// answer checks a code or a recovery code against u's active factor, for the login challenge ch,
// or in a session when ch is nil (see verify).
func (m *mfa) answer(ctx context.Context, client netip.Addr, u *User, ch *MFAChallenge, code, recovery string) error {
	f, err := m.store.TOTP(ctx, u.ID)
	if errors.Is(err, ErrNotFound) && recovery != "" {
		// An account whose second factors are passkeys has recovery codes too.
		if ps, err := m.store.PasskeysOf(ctx, u.ID); err != nil {
			return err
		} else if len(ps) > 0 {
			return m.verify(ctx, client, u, nil, "", recovery, ch, true)
		}
	}
	if errors.Is(err, ErrNotFound) {
		return errMFANotEnrolled
	} else if err != nil {
		return err
	}
	secret, err := m.seal.open(f.Secret, []byte(u.ID))
	if err != nil {
		return err
	}
	return m.verify(ctx, client, u, secret, code, recovery, ch, true)
}

// enrolled reports whether user has an active authenticator app.
func (m *mfa) enrolled(ctx context.Context, user string) (bool, error) {
	_, err := m.store.TOTP(ctx, user)
	if errors.Is(err, ErrNotFound) {
		return false, nil
	}
	return err == nil, err
}

// signedIn is the account of the access token c, whose session the database says is alive.
func (m *mfa) signedIn(ctx context.Context, c *claims) (*User, error) {
	if err := m.sessions.alive(ctx, c); err != nil {
		return nil, err
	}
	u, err := m.store.UserByID(ctx, c.Subject)
	if errors.Is(err, ErrNotFound) {
		return nil, errTokenRevoked // the account is gone, and its sessions with it
	}
	return u, err
}

// challenge starts the second step of a login from client with userAgent: the mfa_token the
// client sends with its code. It holds under the account's security stamp as it is now.
func (m *mfa) challenge(ctx context.Context, u *User, client netip.Addr, userAgent string) (string, error) {
	return m.challengeAs(ctx, "", u, client, userAgent)
}

// challengeAs is challenge for a login that opens a session of kind (Session.Kind).
func (m *mfa) challengeAs(ctx context.Context, kind string, u *User, client netip.Addr, userAgent string) (string, error) {
	stamp, err := m.store.Stamp(ctx, u.ID)
	if err != nil {
		return "", err
	}
	token := newID() + newID() // 256 random bits
	err = m.store.CreateMFAChallenge(ctx, MFAChallenge{ID: digest(token), UserID: u.ID, Stamp: stamp,
		IP: client.String(), UserAgent: cut(userAgent, 256),
		ExpiresAt: m.tokens.now().Add(mfaTokenTTL), Kind: kind})
	return token, err
}

// recoveryDigest is how a recovery code is kept: the digest of its letters, without the spaces,
// hyphens and case a person may type it with.
func recoveryDigest(code string) string {
	code = strings.Map(func(r rune) rune {
		if r == '-' || r == ' ' {
			return -1
		}
		return r
	}, strings.ToLower(code))
	return digest("recovery:" + code)
}

// newRecoveryCode is 50 random bits as ten base32 letters, "abcde-fghij".
func newRecoveryCode() string {
	b := make([]byte, 7)
	rand.Read(b)
	s := strings.ToLower(b32.EncodeToString(b))[:10]
	return s[:5] + "-" + s[5:]
}

// enrol gives the user of the access token c a new secret to put in an authenticator app, after
// their password, sent from client: a stolen access token alone cannot add a factor and lock the
// owner out. The factor is not active until a code from it is confirmed. It answers the secret in
// base32 and the otpauth URL that carries it.
func (m *mfa) enrol(ctx context.Context, c *claims, client netip.Addr, password string) (secret, otpauthURL string, err error) {
	if _, err := m.passwords.checkUser(ctx, client, c.Subject, password); err != nil {
		return "", "", err
	}
	u, err := m.signedIn(ctx, c)
	if err != nil {
		return "", "", err
	}
	if has, err := m.enrolled(ctx, u.ID); err != nil {
		return "", "", err
	} else if has {
		return "", "", errMFAAlreadyEnabled
	}
	raw := make([]byte, totpSecret)
	rand.Read(raw)
	if err := m.store.SavePendingTOTP(ctx, TOTPFactor{ID: "pending:" + u.ID, UserID: u.ID,
		Secret: m.seal.seal(raw, []byte(u.ID)), CreatedAt: m.tokens.now()}); err != nil {
		return "", "", err
	}
	s := b32.EncodeToString(raw)
	q := url.Values{"secret": {s}, "issuer": {m.appName}, "algorithm": {"SHA1"}, "digits": {"6"}, "period": {"30"}}
	label := url.PathEscape(m.appName) + ":" + url.PathEscape(u.Email)
	return s, "otpauth://totp/" + label + "?" + q.Encode(), nil
}

// confirm activates the factor the user of the access token c is enrolling with a code from it,
// sent from client, and answers the ten recovery codes, this once. The account's stamp moves, its
// owner is mailed, and its other sessions end: opened without the factor, they would stay at aal1
// for good.
func (m *mfa) confirm(ctx context.Context, c *claims, client netip.Addr, code string) ([]string, error) {
	u, err := m.signedIn(ctx, c)
	if err != nil {
		return nil, err
	}
	pending, err := m.store.TOTP(ctx, "pending:"+u.ID)
	if errors.Is(err, ErrNotFound) || err == nil && m.tokens.now().Sub(pending.CreatedAt) > pendingTTL {
		return nil, errMFANotEnrolled
	} else if err != nil {
		return nil, err
	}
	secret, err := m.seal.open(pending.Secret, []byte(u.ID))
	if err != nil {
		return nil, err
	}
	if code == "" {
		return nil, &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "send the code the authenticator app shows"}
	}
	if err := m.check(ctx, client, u, secret, code, ""); err != nil {
		return nil, err
	}
	if err := m.store.ActivateTOTP(ctx, TOTPFactor{ID: u.ID, UserID: u.ID, Secret: pending.Secret,
		CreatedAt: m.tokens.now()}); errors.Is(err, ErrDuplicate) {
		return nil, errMFAAlreadyEnabled
	} else if err != nil {
		return nil, err
	}
	codes, err := m.newRecoveryCodes(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	if err := m.stamps.moveStamp(ctx, u.ID, stampFactorAdded); err != nil {
		return nil, err
	}
	if _, err := m.sessions.endAll(ctx, u.ID, c.Session, endMFAAdded); err != nil {
		return nil, err
	}
	m.mail.notify(ctx, mailFactorAdded, u)
	m.metrics.factor(mfaEnrolled)
	m.log.LogAttrs(ctx, slog.LevelInfo, "second factor enabled", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID))
	return codes, nil
}

// newRecoveryCodes gives user ten new recovery codes, in place of any before, and answers them.
func (m *mfa) newRecoveryCodes(ctx context.Context, user string) ([]string, error) {
	codes := make([]string, 10)
	digests := make([]string, len(codes))
	for i := range codes {
		codes[i] = newRecoveryCode()
		digests[i] = recoveryDigest(codes[i])
	}
	if err := m.store.SetRecoveryCodes(ctx, user, digests); err != nil {
		return nil, err
	}
	return codes, nil
}

// dropRecoveryIfLast deletes user's recovery codes when the account has no second factor left:
// they stand in for one, and with none they would be a way in of their own.
func (m *mfa) dropRecoveryIfLast(ctx context.Context, user string) error {
	if has, err := m.enrolled(ctx, user); err != nil || has {
		return err
	}
	if ps, err := m.store.PasskeysOf(ctx, user); err != nil || len(ps) > 0 {
		return err
	}
	return m.store.ClearRecoveryCodes(ctx, user)
}

// remove removes the active factor of the user of the access token c, after a current code or a
// recovery code sent from client; the stamp moves, the owner is mailed and the user's other
// sessions end.
func (m *mfa) remove(ctx context.Context, c *claims, client netip.Addr, code, recovery string) error {
	u, err := m.signedIn(ctx, c)
	if err != nil {
		return err
	}
	// Checked first: a recovery code of an account whose factors are passkeys would be spent on
	// nothing.
	if has, err := m.enrolled(ctx, u.ID); err != nil {
		return err
	} else if !has {
		return errMFANotEnrolled
	}
	if err := m.prove(ctx, client, u, code, recovery); err != nil {
		return err
	}
	if err := m.store.RemoveTOTP(ctx, u.ID); errors.Is(err, ErrNotFound) {
		return errMFANotEnrolled
	} else if err != nil {
		return err
	}
	if err := m.dropRecoveryIfLast(ctx, u.ID); err != nil {
		return err
	}
	if err := m.stamps.moveStamp(ctx, u.ID, stampFactorRemoved); err != nil {
		return err
	}
	if _, err := m.sessions.endAll(ctx, u.ID, c.Session, endMFARemoved); err != nil {
		return err
	}
	m.mail.notify(ctx, mailFactorGone, u)
	m.metrics.factor(mfaRemoved)
	m.log.LogAttrs(ctx, slog.LevelInfo, "second factor removed", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID))
	return nil
}

// verifyChallenge is the second step of a login: the code or recovery code sent from client with
// userAgent answers the challenge whose mfa_token is token, and starts a session at aal2.
func (m *mfa) verifyChallenge(ctx context.Context, token string, client netip.Addr, userAgent, code, recovery string) (tokenPair, error) {
	return m.verifyChallengeAs(ctx, "", token, client, userAgent, code, recovery)
}

// verifyChallengeAs is verifyChallenge for a challenge of a login of kind (Session.Kind): the
// portal's challenge gives no tokens to the API, nor the API's a cookie.
func (m *mfa) verifyChallengeAs(ctx context.Context, kind, token string, client netip.Addr, userAgent, code, recovery string) (tokenPair, error) {
	ch, err := m.liveChallenge(ctx, token, kind)
	if err != nil {
		return tokenPair{}, err
	}
	u, err := m.store.UserByID(ctx, ch.UserID)
	if errors.Is(err, ErrNotFound) {
		return tokenPair{}, errTokenInvalid
	} else if err != nil {
		return tokenPair{}, err
	}
	if err := m.answer(ctx, client, u, ch, code, recovery); err != nil {
		return tokenPair{}, err
	}
	// One challenge, one session: of simultaneous right codes, one consumes it.
	if err := m.store.ConsumeMFAChallenge(ctx, ch.ID); errors.Is(err, ErrNotFound) {
		return tokenPair{}, errTokenInvalid
	} else if err != nil {
		return tokenPair{}, err
	}
	pair, err := m.sessions.startAs(ctx, kind, u, client, userAgent, levelTwoFactor)
	if err != nil {
		return tokenPair{}, err
	}
	noteUser(ctx, u.ID)
	m.metrics.login(loginSuccess)
	return pair, nil
}

// liveChallenge is the login challenge whose mfa_token is token, of a login of kind, while it
// lasts and its account's stamp has not moved; errTokenInvalid otherwise.
func (m *mfa) liveChallenge(ctx context.Context, token, kind string) (*MFAChallenge, error) {
	ch, err := m.store.MFAChallenge(ctx, digest(token))
	if errors.Is(err, ErrNotFound) || err == nil && (!m.tokens.now().Before(ch.ExpiresAt) || ch.Kind != kind) {
		return nil, errTokenInvalid
	} else if err != nil {
		return nil, err
	}
	// A challenge issued before the password or a factor changed is void.
	if stamp, err := m.store.Stamp(ctx, ch.UserID); err != nil {
		return nil, err
	} else if stamp != ch.Stamp {
		return nil, errTokenInvalid
	}
	return ch, nil
}

// stepUp verifies the factor of the user of the access token raw, with a code or recovery code
// sent from client, and moves the token's session to aal2.
func (m *mfa) stepUp(ctx context.Context, raw string, client netip.Addr, code, recovery string) (tokenPair, error) {
	c, err := accept(m.tokens, m.revs, raw, useAccess)
	if err != nil {
		return tokenPair{}, err
	}
	u, err := m.signedIn(ctx, c)
	if err != nil {
		return tokenPair{}, err
	}
	if err := m.prove(ctx, client, u, code, recovery); err != nil {
		return tokenPair{}, err
	}
	pair, err := m.sessions.raise(ctx, c, levelTwoFactor)
	if err != nil {
		return tokenPair{}, err
	}
	noteUser(ctx, u.ID)
	return pair, nil
}
