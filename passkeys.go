package main

// passkeys.go is the passkeys (WebAuthn): their registration and management, and sign-in with one,
// without a password, as the second factor of a password login, or to step up a session.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"time"
	"unicode"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
	"github.com/google/uuid"
)

// The kinds of ceremony, and how long one waits for its answer.
const (
	ceremonyRegister = "register"
	ceremonyLogin    = "login"   // sign-in without a password
	ceremonySecond   = "second"  // the second factor of a password login
	ceremonyStepUp   = "step_up" // step-up of a session
	ceremonyClaimed  = "claimed" // the record of an unkept challenge's one use
	ceremonyTTL      = 5 * time.Minute
	maxPasskeys      = 20 // per account: each is listed in every assertion's allowCredentials
	maxPasskeyName   = 64
)

var (
	errPasskeysOff = &apiError{status: http.StatusNotImplemented, code: "passkeys_off",
		message: "passkeys are off on this service: set WEBAUTHN_RP_ID to the domain they belong to"}
	errCeremonyInvalid = &apiError{status: http.StatusUnauthorized, code: "ceremony_invalid",
		message: "this passkey ceremony is unknown, used, expired, or begun for another request, or the account changed since; begin again"}
	errRegistrationInvalid = &apiError{status: http.StatusBadRequest, code: "registration_invalid",
		message: "the authenticator's answer did not verify (origin, RP ID, challenge, user presence and verification are checked)"}
	errPasskeyInvalid = &apiError{status: http.StatusUnauthorized, code: "passkey_invalid",
		message: "the passkey's answer did not verify"}
	errPasskeyTaken = &apiError{status: http.StatusConflict, code: "passkey_taken",
		message: "this passkey is registered already"}
	errTooManyPasskeys = &apiError{status: http.StatusConflict, code: "too_many_passkeys",
		message: fmt.Sprintf("an account holds at most %d passkeys; remove one first", maxPasskeys)}
	errNoPasskey = &apiError{status: http.StatusConflict, code: "no_passkey",
		message: "the account has no passkey; register one at /auth/passkeys/register/begin"}
	errNoSuchPasskey = &apiError{status: http.StatusNotFound, code: "not_found", message: "no such passkey"}
)

// passkeys is the WebAuthn relying party: the library checks the ceremonies (CBOR, COSE keys,
// signatures, origin, RP ID, flags); this keeps their state, single-use and bound to the account's
// security stamp, and turns a verified one into a passkey, a session or a step-up.
type passkeys struct {
	store interface {
		passkeyStore
		factorStore
		userStore
	}
	rp     *webauthn.WebAuthn // nil when passkeys are off
	tokens *tokens
	revs   *revocations
	// second is the account's second factor (an *mfa): who a session is, its other factors,
	// recovery codes, and the limits on guessing it, which a passkey's answer counts toward.
	second interface {
		signedIn(ctx context.Context, c *claims) (*User, error)
		enrolled(ctx context.Context, user string) (bool, error)
		prove(ctx context.Context, client netip.Addr, u *User, code, recovery string) error
		newRecoveryCodes(ctx context.Context, user string) ([]string, error)
		dropRecoveryIfLast(ctx context.Context, user string) error
		liveChallenge(ctx context.Context, token, kind string) (*MFAChallenge, error)
		attempt(ctx context.Context, client netip.Addr, u *User, ch *MFAChallenge) (*attempt, error)
		missed(ctx context.Context, att *attempt, u *User, ch *MFAChallenge, active bool)
	}
	sessions interface { // see sessionKeeper
		startAs(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error)
		raise(ctx context.Context, c *claims, lvl level) (tokenPair, error)
		endAll(ctx context.Context, user, except, reason string) (int, error)
		end(ctx context.Context, sid, reason string) error
	}
	stamps interface { // a passkey added or removed moves the account's stamp
		moveStamp(ctx context.Context, user, event string) error
	}
	passwords *passwordCheck
	limits    *loginLimits
	mail      *mailFlows
	metrics   *metrics
	// decoyKey makes the credential ids that a login begun with an unknown address lists, the
	// same for one address every time, so that the answer does not tell which addresses are known.
	decoyKey        []byte
	requireVerified bool // EMAIL_VERIFICATION=required
	log             *slog.Logger
}

// newRelyingParty is the library's relying party for cfg, nil when passkeys are off.
func newRelyingParty(cfg passkeyConfig) (*webauthn.WebAuthn, error) {
	if !cfg.on() {
		return nil, nil
	}
	return webauthn.New(&webauthn.Config{
		RPID:          cfg.rpID,
		RPDisplayName: cfg.rpName,
		RPOrigins:     cfg.origins,
		// Attestation is not asked for: which make of authenticator holds a key decides nothing
		// here, and "none" keeps the answers small.
		AttestationPreference: protocol.PreferNoAttestation,
		AuthenticatorSelection: protocol.AuthenticatorSelection{
			ResidentKey:      protocol.ResidentKeyRequirementPreferred,
			UserVerification: protocol.VerificationRequired,
		},
	})
}

// rpUser is an account as the library sees it: its user handle is the account's random id, never
// its address.
type rpUser struct {
	u     *User
	creds []webauthn.Credential
}

func (r rpUser) WebAuthnID() []byte                         { return []byte(r.u.ID) }
func (r rpUser) WebAuthnName() string                       { return r.u.Email }
func (r rpUser) WebAuthnDisplayName() string                { return r.u.Email }
func (r rpUser) WebAuthnCredentials() []webauthn.Credential { return r.creds }

// credentialOf is the library's record of p.
func credentialOf(p Passkey) (webauthn.Credential, error) {
	var c webauthn.Credential
	err := json.Unmarshal(p.Credential, &c)
	return c, err
}

// userOf is u with the credential records of ps.
func userOf(u *User, ps []Passkey) (rpUser, error) {
	r := rpUser{u: u}
	for _, p := range ps {
		c, err := credentialOf(p)
		if err != nil {
			return rpUser{}, fmt.Errorf("passkey %s: %w", p.ID, err)
		}
		r.creds = append(r.creds, c)
	}
	return r, nil
}

func (k *passkeys) on() error {
	if k.rp == nil {
		return errPasskeysOff
	}
	return nil
}

// begin records the ceremony of the library's session sd, of kind, bound to cer's other fields.
func (k *passkeys) begin(ctx context.Context, cer Ceremony, sd *webauthn.SessionData) error {
	data, err := json.Marshal(sd)
	if err != nil {
		return err
	}
	cer.ID, cer.Data, cer.ExpiresAt = ceremonyID(sd.Challenge), data, k.tokens.now().Add(ceremonyTTL)
	return k.store.CreateCeremony(ctx, &cer)
}

func ceremonyID(challenge string) string { return digest("webauthn:" + challenge) }

// take consumes the ceremony of challenge, which must be of kind, alive, and begun under the
// account's stamp as it is now (when it names an account): errCeremonyInvalid otherwise. It
// answers the library's session data, without an expiry of its own: the ceremony's is checked here,
// on the service's clock.
func (k *passkeys) take(ctx context.Context, challenge, kind string) (*Ceremony, webauthn.SessionData, error) {
	var sd webauthn.SessionData
	if expires, ok := k.unkeptExpiry(challenge); ok {
		return k.claim(ctx, challenge, kind, expires)
	}
	cer, err := k.store.TakeCeremony(ctx, ceremonyID(challenge))
	if errors.Is(err, ErrNotFound) {
		return nil, sd, errCeremonyInvalid
	} else if err != nil {
		return nil, sd, err
	}
	if cer.Kind != kind || !k.tokens.now().Before(cer.ExpiresAt) {
		return nil, sd, errCeremonyInvalid
	}
	if cer.UserID != "" {
		if stamp, err := k.store.Stamp(ctx, cer.UserID); err != nil {
			return nil, sd, err
		} else if stamp != cer.Stamp {
			return nil, sd, errCeremonyInvalid
		}
	}
	if err := json.Unmarshal(cer.Data, &sd); err != nil {
		return nil, sd, err
	}
	sd.Expires = time.Time{}
	return cer, sd, nil
}

// unkeptChallenge is the challenge of a discoverable sign-in, which the service keeps nowhere
// until its answer comes: its expiry, 16 random bytes, and a MAC over both. The portal's sign-in
// page asks for one at every view, for the browser's autofill: a kept ceremony would be a write
// per page view, for anyone who asks. Its answer claims it, once (claim).
func (k *passkeys) unkeptChallenge(expires time.Time) []byte {
	b := make([]byte, 24, 40)
	binary.BigEndian.PutUint64(b, uint64(expires.Unix()))
	rand.Read(b[8:])
	return append(b, k.challengeMAC(b)...)
}

func (k *passkeys) challengeMAC(b []byte) []byte {
	m := hmac.New(sha256.New, k.decoyKey)
	m.Write([]byte("unkept challenge\x00"))
	m.Write(b)
	return m.Sum(nil)[:16]
}

// unkeptExpiry is the expiry of challenge (base64url), when it is one of unkeptChallenge's.
func (k *passkeys) unkeptExpiry(challenge string) (time.Time, bool) {
	b, err := base64.RawURLEncoding.DecodeString(challenge)
	if err != nil || len(b) != 40 || !hmac.Equal(b[24:], k.challengeMAC(b[:24])) {
		return time.Time{}, false
	}
	return time.Unix(int64(binary.BigEndian.Uint64(b)), 0), true
}

// claim takes an unkept challenge for a discoverable sign-in: alive, and used once, which a
// unique insert of its record decides. It answers the library's session data as begin made it.
func (k *passkeys) claim(ctx context.Context, challenge, kind string, expires time.Time) (*Ceremony, webauthn.SessionData, error) {
	var sd webauthn.SessionData
	if kind != ceremonyLogin || !k.tokens.now().Before(expires) {
		return nil, sd, errCeremonyInvalid
	}
	raw, _ := base64.RawURLEncoding.DecodeString(challenge)
	_, made, err := k.rp.BeginDiscoverableLogin(webauthn.WithUserVerification(protocol.VerificationRequired), webauthn.WithChallenge(raw))
	if err != nil {
		return nil, sd, err
	}
	cer := &Ceremony{ID: ceremonyID(challenge), Kind: ceremonyClaimed, ExpiresAt: expires}
	if err := k.store.CreateCeremony(ctx, cer); errors.Is(err, ErrDuplicate) {
		return nil, sd, errCeremonyInvalid
	} else if err != nil {
		return nil, sd, err
	}
	cer.Kind = ceremonyLogin
	sd = *made
	sd.Expires = time.Time{}
	return cer, sd, nil
}

// registerBegin starts adding a passkey to the account of the access token c, after its password
// sent from client, as for any new factor: a stolen access token alone adds none. It answers the
// creation options, the object that a browser's PublicKeyCredential.parseCreationOptionsFromJSON
// takes.
func (k *passkeys) registerBegin(ctx context.Context, c *claims, client netip.Addr, password string) (*protocol.PublicKeyCredentialCreationOptions, error) {
	if err := k.on(); err != nil {
		return nil, err
	}
	if _, err := k.passwords.checkUser(ctx, client, c.Subject, password); err != nil {
		return nil, err
	}
	u, err := k.second.signedIn(ctx, c)
	if err != nil {
		return nil, err
	}
	ps, err := k.store.PasskeysOf(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	if len(ps) >= maxPasskeys {
		return nil, errTooManyPasskeys
	}
	ru, err := userOf(u, ps)
	if err != nil {
		return nil, err
	}
	stamp, err := k.store.Stamp(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	exclude := make([]protocol.CredentialDescriptor, len(ru.creds))
	for i, cr := range ru.creds {
		exclude[i] = cr.Descriptor()
	}
	creation, sd, err := k.rp.BeginRegistration(ru, webauthn.WithExclusions(exclude))
	if err != nil {
		return nil, err
	}
	if err := k.begin(ctx, Ceremony{Kind: ceremonyRegister, UserID: u.ID, Stamp: stamp, Session: c.Session}, sd); err != nil {
		return nil, err
	}
	return &creation.Response, nil
}

// passkeyView is a passkey as its owner sees it.
type passkeyView struct {
	ID             string     `json:"id"`
	Name           string     `json:"name"`
	CreatedAt      time.Time  `json:"created_at"`
	LastUsedAt     *time.Time `json:"last_used_at"`
	BackupEligible bool       `json:"backup_eligible"` // BE: a synced passkey
	BackedUp       bool       `json:"backed_up"`       // BS
	AAGUID         string     `json:"aaguid"`
}

func viewOfPasskey(p Passkey) passkeyView {
	v := passkeyView{ID: p.ID, Name: p.Name, CreatedAt: p.CreatedAt, AAGUID: uuid.Nil.String()}
	if !p.LastUsedAt.IsZero() {
		v.LastUsedAt = &p.LastUsedAt
	}
	if c, err := credentialOf(p); err == nil {
		v.BackupEligible, v.BackedUp = c.Flags.BackupEligible, c.Flags.BackupState
		if id, err := uuid.FromBytes(c.Authenticator.AAGUID); err == nil {
			v.AAGUID = id.String()
		}
	}
	return v
}

// registerFinish adds the passkey that credential (the browser's PublicKeyCredential as JSON)
// registers, answering the ceremony that the session of c began. The account's first second
// factor comes with recovery codes, answered this once; the stamp moves, the owner is mailed and
// the account's other sessions end, as when an authenticator app is added.
func (k *passkeys) registerFinish(ctx context.Context, c *claims, credential json.RawMessage, name string) (passkeyView, []string, error) {
	if err := k.on(); err != nil {
		return passkeyView{}, nil, err
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(credential)
	if err != nil {
		return passkeyView{}, nil, errRegistrationInvalid
	}
	cer, sd, err := k.take(ctx, parsed.Response.CollectedClientData.Challenge, ceremonyRegister)
	if err != nil {
		return passkeyView{}, nil, err
	}
	if cer.UserID != c.Subject || cer.Session != c.Session {
		return passkeyView{}, nil, errCeremonyInvalid
	}
	u, err := k.second.signedIn(ctx, c)
	if err != nil {
		return passkeyView{}, nil, err
	}
	ps, err := k.store.PasskeysOf(ctx, u.ID)
	if err != nil {
		return passkeyView{}, nil, err
	}
	ru, err := userOf(u, ps)
	if err != nil {
		return passkeyView{}, nil, err
	}
	cred, err := k.rp.CreateCredential(ru, sd, parsed)
	if err != nil {
		k.log.LogAttrs(ctx, slog.LevelInfo, "passkey registration refused", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID), slog.String("why", libraryError(err)))
		return passkeyView{}, nil, errRegistrationInvalid
	}
	record, err := json.Marshal(cred)
	if err != nil {
		return passkeyView{}, nil, err
	}
	hadTOTP, err := k.second.enrolled(ctx, u.ID)
	if err != nil {
		return passkeyView{}, nil, err
	}
	if name = passkeyName(name); name == "" {
		name = "Passkey " + k.tokens.now().UTC().Format("2006-01-02")
	}
	p := Passkey{ID: base64.RawURLEncoding.EncodeToString(cred.ID), UserID: u.ID, Name: name,
		Credential: record, CreatedAt: k.tokens.now().UTC().Truncate(time.Millisecond)}
	if err := k.store.AddPasskey(ctx, &p); errors.Is(err, ErrDuplicate) {
		return passkeyView{}, nil, errPasskeyTaken
	} else if err != nil {
		return passkeyView{}, nil, err
	}
	var codes []string
	if !hadTOTP && len(ps) == 0 {
		if codes, err = k.second.newRecoveryCodes(ctx, u.ID); err != nil {
			return passkeyView{}, nil, err
		}
	}
	if err := k.stamps.moveStamp(ctx, u.ID, stampFactorAdded); err != nil {
		return passkeyView{}, nil, err
	}
	if _, err := k.sessions.endAll(ctx, u.ID, c.Session, endMFAAdded); err != nil {
		return passkeyView{}, nil, err
	}
	k.mail.notify(ctx, mailPasskeyAdded, u)
	k.metrics.factor(mfaEnrolled)
	k.log.LogAttrs(ctx, slog.LevelInfo, "passkey added", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID), slog.String("passkey_id", p.ID))
	return viewOfPasskey(p), codes, nil
}

// list is the passkeys of the user of c.
func (k *passkeys) list(ctx context.Context, c *claims) ([]passkeyView, error) {
	if err := k.on(); err != nil {
		return nil, err
	}
	ps, err := k.store.PasskeysOf(ctx, c.Subject)
	if err != nil {
		return nil, err
	}
	views := make([]passkeyView, len(ps))
	for i, p := range ps {
		views[i] = viewOfPasskey(p)
	}
	return views, nil
}

// passkeyName is name as a passkey keeps it: without control or format characters (a
// right-to-left override would make a list read otherwise than it is), trimmed, and bounded.
func passkeyName(name string) string {
	name = strings.Map(func(r rune) rune {
		if unicode.IsControl(r) || unicode.Is(unicode.Cf, r) {
			return -1
		}
		return r
	}, name)
	return cut(strings.TrimSpace(name), maxPasskeyName)
}

// rename names the passkey id of the user of c.
func (k *passkeys) rename(ctx context.Context, c *claims, id, name string) error {
	if err := k.on(); err != nil {
		return err
	}
	if name = passkeyName(name); name == "" {
		return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "name is required"}
	}
	if err := k.store.RenamePasskey(ctx, c.Subject, id, name); errors.Is(err, ErrNotFound) {
		return errNoSuchPasskey
	} else if err != nil {
		return err
	}
	return nil
}

// remove deletes the passkey id of the user of c, after the password or a second factor (a code
// or a recovery code) sent from client. The stamp moves, the owner is mailed and the user's other
// sessions end; the recovery codes go with the account's last second factor.
func (k *passkeys) remove(ctx context.Context, c *claims, client netip.Addr, id, password, code, recovery string) error {
	if err := k.on(); err != nil {
		return err
	}
	u, err := k.second.signedIn(ctx, c)
	if err != nil {
		return err
	}
	if p, err := k.store.PasskeyByID(ctx, id); errors.Is(err, ErrNotFound) || err == nil && p.UserID != u.ID {
		return errNoSuchPasskey
	} else if err != nil {
		return err
	}
	switch {
	case password != "":
		_, err = k.passwords.checkUser(ctx, client, u.ID, password)
	case code != "" || recovery != "":
		err = k.second.prove(ctx, client, u, code, recovery)
	default:
		err = &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: "send the password, or a code or recovery_code of the second factor, to remove a passkey"}
	}
	if err != nil {
		return err
	}
	if err := k.store.RemovePasskey(ctx, u.ID, id); errors.Is(err, ErrNotFound) {
		return errNoSuchPasskey
	} else if err != nil {
		return err
	}
	if err := k.second.dropRecoveryIfLast(ctx, u.ID); err != nil {
		return err
	}
	if err := k.stamps.moveStamp(ctx, u.ID, stampFactorRemoved); err != nil {
		return err
	}
	if _, err := k.sessions.endAll(ctx, u.ID, c.Session, endMFARemoved); err != nil {
		return err
	}
	k.mail.notify(ctx, mailPasskeyGone, u)
	k.metrics.factor(mfaRemoved)
	k.log.LogAttrs(ctx, slog.LevelInfo, "passkey removed", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID), slog.String("passkey_id", id))
	return nil
}

// loginRequest is what login/begin and login/finish are asked: a sign-in without a password
// (with an email or none), or, with mfa_token, a password login's second factor. Step-up comes
// with an access token instead, or the portal's cookie, and raw is that.
type loginRequest struct {
	email, mfaToken, raw string
	kind                 string // of the session a sign-in opens (Session.Kind): the portal's is a cookie
}

// stepUpUse is the use of the token a step-up raises: the portal's cookie, or an access token.
func (req loginRequest) stepUpUse() string {
	if req.kind == sessionCookie {
		return useCookie
	}
	return useAccess
}

// loginBegin answers the request options of a ceremony for req, the object that a browser's
// PublicKeyCredential.parseRequestOptionsFromJSON takes.
func (k *passkeys) loginBegin(ctx context.Context, req loginRequest, client netip.Addr) (*protocol.PublicKeyCredentialRequestOptions, error) {
	if err := k.on(); err != nil {
		return nil, err
	}
	uv := webauthn.WithUserVerification(protocol.VerificationRequired)
	if req.mfaToken == "" && req.raw == "" && req.email == "" {
		assertion, _, err := k.rp.BeginDiscoverableLogin(uv, webauthn.WithChallenge(k.unkeptChallenge(k.tokens.now().Add(ceremonyTTL))))
		if err != nil {
			return nil, err
		}
		return &assertion.Response, nil
	}
	// Every other ceremony is kept until its answer: begins count toward the client's limit of
	// unfinished ones, and one that ends well is forgotten.
	att, err := k.limits.ceremony(ctx, client)
	if err != nil {
		return nil, err
	}
	var (
		cer Ceremony
		u   *User
	)
	switch {
	case req.mfaToken != "":
		ch, err := k.second.liveChallenge(ctx, req.mfaToken, req.kind)
		if err != nil {
			return nil, err
		}
		if u, err = k.store.UserByID(ctx, ch.UserID); errors.Is(err, ErrNotFound) {
			return nil, errTokenInvalid
		} else if err != nil {
			return nil, err
		}
		cer = Ceremony{Kind: ceremonySecond, UserID: u.ID, Stamp: ch.Stamp, Challenge: ch.ID}
	case req.raw != "":
		c, err := accept(k.tokens, k.revs, req.raw, req.stepUpUse())
		if err != nil {
			return nil, err
		}
		if u, err = k.second.signedIn(ctx, c); err != nil {
			return nil, err
		}
		cer = Ceremony{Kind: ceremonyStepUp, UserID: u.ID, Session: c.Session}
		if cer.Stamp, err = k.store.Stamp(ctx, u.ID); err != nil {
			return nil, err
		}
	default:
		return k.loginBeginWithEmail(ctx, req.email, firstID(att))
	}
	cer.Attempt = firstID(att)
	ps, err := k.store.PasskeysOf(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	if len(ps) == 0 {
		return nil, errNoPasskey
	}
	ru, err := userOf(u, ps)
	if err != nil {
		return nil, err
	}
	assertion, sd, err := k.rp.BeginLogin(ru, uv)
	if err != nil {
		return nil, err
	}
	if err := k.begin(ctx, cer, sd); err != nil {
		return nil, err
	}
	return &assertion.Response, nil
}

// loginBeginWithEmail begins a sign-in for the account of email, listing its passkeys for
// authenticators that keep none themselves. An address without an account, or without passkeys,
// gets as many decoy ids as an account's usual one, the same every time, after the same reads.
func (k *passkeys) loginBeginWithEmail(ctx context.Context, email, attemptID string) (*protocol.PublicKeyCredentialRequestOptions, error) {
	email = normalizeEmail(email)
	u, err := k.store.UserByEmail(ctx, email)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, err
	}
	owner := ""
	if u != nil {
		owner = u.ID
	}
	ps, err := k.store.PasskeysOf(ctx, owner)
	if err != nil {
		return nil, err
	}
	stamp, err := k.store.Stamp(ctx, owner)
	if err != nil {
		return nil, err
	}
	var allow []protocol.CredentialDescriptor
	if u != nil && len(ps) > 0 {
		ru, err := userOf(u, ps)
		if err != nil {
			return nil, err
		}
		for _, c := range ru.creds {
			d := c.Descriptor()
			d.Transport = nil // which a decoy could not name alike; the browser then tries each way
			allow = append(allow, d)
		}
	} else {
		allow = k.decoys(email)
	}
	assertion, sd, err := k.rp.BeginDiscoverableLogin(webauthn.WithUserVerification(protocol.VerificationRequired),
		webauthn.WithAllowedCredentials(allow))
	if err != nil {
		return nil, err
	}
	if err := k.begin(ctx, Ceremony{Kind: ceremonyLogin, UserID: owner, ForEmail: true, Stamp: stamp, Attempt: attemptID}, sd); err != nil {
		return nil, err
	}
	return &assertion.Response, nil
}

// decoys are the credential ids that a sign-in begun with email lists when the address has no
// passkey: one or two, of 16, 32 or 64 bytes as authenticators make them, the same every time for
// one address, so that their shape does not tell a known address from another.
func (k *passkeys) decoys(email string) []protocol.CredentialDescriptor {
	m := hmac.New(sha512.New, k.decoyKey)
	m.Write([]byte(email))
	sum := m.Sum(nil)
	var out []protocol.CredentialDescriptor
	for i := range 1 + int(sum[0]&1) {
		n := []int{16, 32, 64, 32}[sum[1+i]&3]
		id := hmac.New(sha512.New, k.decoyKey)
		id.Write(append(sum[:], byte(i)))
		out = append(out, protocol.CredentialDescriptor{Type: protocol.PublicKeyCredentialType, CredentialID: id.Sum(nil)[:n]})
	}
	return out
}

// loginFinish checks the assertion credential for the ceremony req began, sent from client with
// userAgent: a sign-in answers a new session's tokens, at aal2 with amr hwk or swk (and mfa, as a
// user-verified passkey is two factors); a password login's second factor its session; step-up
// the raised tokens of the access token's session.
func (k *passkeys) loginFinish(ctx context.Context, req loginRequest, client netip.Addr, userAgent string, credential json.RawMessage) (tokenPair, error) {
	if err := k.on(); err != nil {
		return tokenPair{}, err
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(credential)
	if err != nil {
		return tokenPair{}, &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: "credential must be the PublicKeyCredential of navigator.credentials.get, as JSON"}
	}
	challenge := parsed.Response.CollectedClientData.Challenge
	switch {
	case req.mfaToken != "":
		return k.finishSecond(ctx, req.kind, req.mfaToken, challenge, parsed, client, userAgent)
	case req.raw != "":
		return k.finishStepUp(ctx, req, challenge, parsed, client, userAgent)
	}
	cer, sd, err := k.take(ctx, challenge, ceremonyLogin)
	if err != nil {
		return tokenPair{}, err
	}
	u, p, err := k.assert(ctx, client, cer, sd, parsed, nil)
	if err != nil {
		return tokenPair{}, err
	}
	if u.Disabled {
		k.metrics.login(loginDisabled)
		return tokenPair{}, errAccountDisabled
	}
	if k.requireVerified && !u.EmailVerified {
		k.metrics.login(loginUnverified)
		return tokenPair{}, errEmailNotVerified
	}
	pair, err := k.sessions.startAs(ctx, req.kind, u, client, userAgent, passkeyLevel(p, false))
	if err != nil {
		return tokenPair{}, err
	}
	k.forgetBegin(ctx, cer)
	noteUser(ctx, u.ID)
	k.metrics.login(loginSuccess)
	return pair, nil
}

// finishSecond is the second step of a password login with a passkey: the ceremony begun for the
// challenge of mfaToken, of a login of kind (the portal's opens a cookie session), answers it, once.
func (k *passkeys) finishSecond(ctx context.Context, kind, mfaToken, challenge string, parsed *protocol.ParsedCredentialAssertionData,
	client netip.Addr, userAgent string) (tokenPair, error) {
	ch, err := k.second.liveChallenge(ctx, mfaToken, kind)
	if err != nil {
		return tokenPair{}, err
	}
	cer, sd, err := k.take(ctx, challenge, ceremonySecond)
	if err != nil {
		return tokenPair{}, err
	}
	if cer.Challenge != ch.ID || cer.UserID != ch.UserID || cer.Stamp != ch.Stamp {
		return tokenPair{}, errCeremonyInvalid
	}
	u, p, err := k.assert(ctx, client, cer, sd, parsed, ch)
	if err != nil {
		return tokenPair{}, err
	}
	// One challenge, one session: of simultaneous answers, one consumes it.
	if err := k.store.ConsumeMFAChallenge(ctx, ch.ID); errors.Is(err, ErrNotFound) {
		return tokenPair{}, errTokenInvalid
	} else if err != nil {
		return tokenPair{}, err
	}
	pair, err := k.sessions.startAs(ctx, ch.Kind, u, client, userAgent, passkeyLevel(p, true))
	if err != nil {
		return tokenPair{}, err
	}
	k.forgetBegin(ctx, cer)
	noteUser(ctx, u.ID)
	k.metrics.login(loginSuccess)
	return pair, nil
}

// finishStepUp raises the session of req.raw with a passkey of its user: an access token's
// session is raised in place; a portal cookie's is replaced by a new one at the new level (a fresh
// id, as the portal's step-up with a code does), and ends.
func (k *passkeys) finishStepUp(ctx context.Context, req loginRequest, challenge string, parsed *protocol.ParsedCredentialAssertionData,
	client netip.Addr, userAgent string) (tokenPair, error) {
	c, err := accept(k.tokens, k.revs, req.raw, req.stepUpUse())
	if err != nil {
		return tokenPair{}, err
	}
	cer, sd, err := k.take(ctx, challenge, ceremonyStepUp)
	if err != nil {
		return tokenPair{}, err
	}
	if cer.UserID != c.Subject || cer.Session != c.Session {
		return tokenPair{}, errCeremonyInvalid
	}
	u, err := k.second.signedIn(ctx, c)
	if err != nil {
		return tokenPair{}, err
	}
	_, p, err := k.assert(ctx, client, cer, sd, parsed, nil)
	if err != nil {
		return tokenPair{}, err
	}
	// A session the password opened keeps pwd among its methods; one a passkey opened has none.
	lvl := passkeyLevel(p, slices.Contains(c.level().AMR, amrPassword))
	k.forgetBegin(ctx, cer)
	noteUser(ctx, c.Subject)
	if req.kind != sessionCookie {
		return k.sessions.raise(ctx, c, lvl)
	}
	pair, err := k.sessions.startAs(ctx, sessionCookie, u, client, userAgent, lvl)
	if err != nil {
		return tokenPair{}, err
	}
	if err := k.sessions.end(ctx, c.Session, endSteppedUp); err != nil {
		k.log.Warn("ending the session a step-up replaced failed", "session_id", c.Session, "err", err)
	}
	return pair, nil
}

// anyOf is whether user has a passkey; false when passkeys are off.
func (k *passkeys) anyOf(ctx context.Context, user string) (bool, error) {
	if k.on() != nil {
		return false, nil
	}
	ps, err := k.store.PasskeysOf(ctx, user)
	return len(ps) > 0, err
}

// assert verifies the assertion parsed for the ceremony cer, whose library session is sd, sent
// from client, within the limits on guessing the account's second factor (and the login challenge
// ch's, if not nil). A passkey that is nobody's counts against the client. A sign counter not
// above the stored one (unless both are 0) means a cloned authenticator: the library only flags
// it; here it is refused. It answers the account and the passkey, whose record is updated.
func (k *passkeys) assert(ctx context.Context, client netip.Addr, cer *Ceremony, sd webauthn.SessionData,
	parsed *protocol.ParsedCredentialAssertionData, ch *MFAChallenge) (*User, *Passkey, error) {
	p, err := k.store.PasskeyByID(ctx, base64.RawURLEncoding.EncodeToString(parsed.RawID))
	if err != nil && !errors.Is(err, ErrNotFound) {
		return nil, nil, err
	}
	if p == nil || (cer.UserID != "" || cer.ForEmail) && p.UserID != cer.UserID {
		att, err := k.limits.client(ctx, client)
		if err == nil {
			err = att.check(ctx)
		}
		if err != nil {
			return nil, nil, err
		}
		k.metrics.factor(mfaInvalid)
		return nil, nil, errPasskeyInvalid // the attempt stays recorded, as a failure
	}
	u, err := k.store.UserByID(ctx, p.UserID)
	if errors.Is(err, ErrNotFound) {
		return nil, nil, errPasskeyInvalid
	} else if err != nil {
		return nil, nil, err
	}
	// A sign-in without a password counts against the client alone: its passkey id is no secret
	// (login/begin with an email lists it), and whoever sends wrong answers for it must not lock
	// the owner out of every second factor. After a password, or in a session, the account's
	// limit applies, as to any second factor.
	var att *attempt
	if cer.Kind == ceremonyLogin {
		att, err = k.limits.client(ctx, client)
		if err == nil {
			err = att.check(ctx)
		}
	} else {
		att, err = k.second.attempt(ctx, client, u, ch)
	}
	if err != nil {
		return nil, nil, err
	}
	fail := func(why string) (*User, *Passkey, error) {
		k.log.LogAttrs(ctx, slog.LevelWarn, "passkey assertion refused", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", u.ID), slog.String("passkey_id", p.ID), slog.String("why", why))
		k.metrics.factor(mfaInvalid)
		if cer.Kind != ceremonyLogin {
			k.second.missed(ctx, att, u, ch, true)
		}
		return nil, nil, errPasskeyInvalid
	}
	ps, err := k.store.PasskeysOf(ctx, u.ID)
	if err == nil {
		var ru rpUser
		if ru, err = userOf(u, ps); err == nil {
			var cred *webauthn.Credential
			if len(sd.UserID) > 0 || cer.ForEmail {
				sd.UserID = ru.WebAuthnID()
				cred, err = k.rp.ValidateLogin(ru, sd, parsed)
			} else {
				_, cred, err = k.rp.ValidatePasskeyLogin(func(rawID, userHandle []byte) (webauthn.User, error) {
					if !bytes.Equal(userHandle, ru.WebAuthnID()) {
						return nil, errors.New("the user handle is not the passkey owner's")
					}
					return ru, nil
				}, sd, parsed)
			}
			if err != nil {
				return fail(libraryError(err))
			}
			if cred.Authenticator.CloneWarning {
				return fail(fmt.Sprintf("sign counter %d not above the stored %d: a cloned authenticator?",
					parsed.Response.AuthenticatorData.Counter, cred.Authenticator.SignCount))
			}
			// Two assertions with one counter, at once, both pass the check above against the
			// record as it was: the claim of the counter lets one through (see ClaimStep).
			if n := parsed.Response.AuthenticatorData.Counter; n > 0 {
				err := k.store.ClaimStep(ctx, "passkey:"+p.ID, int64(n), k.tokens.now().Add(counterClaimTTL))
				if errors.Is(err, ErrDuplicate) {
					return fail(fmt.Sprintf("sign counter %d used by another assertion at once: a cloned authenticator?", n))
				} else if err != nil {
					att.forget(ctx)
					return nil, nil, err
				}
			}
			var record []byte
			if record, err = json.Marshal(cred); err == nil {
				err = k.store.UsePasskey(ctx, p.ID, record, k.tokens.now().UTC().Truncate(time.Millisecond))
				if err == nil {
					p.Credential = record
				}
			}
		}
	}
	if err != nil {
		att.forget(ctx)
		return nil, nil, err
	}
	k.metrics.factor(mfaVerified)
	return u, p, att.succeeded(ctx)
}

// counterClaimTTL is how long the claim of a sign counter is kept: long past the update of the
// passkey's record that follows it, after which the stored counter refuses the same value.
const counterClaimTTL = 10 * time.Minute

// forgetBegin forgets the count of cer's begin: its ceremony ended well.
func (k *passkeys) forgetBegin(ctx context.Context, cer *Ceremony) {
	if err := k.limits.forgetCeremony(ctx, cer.Attempt); err != nil {
		k.log.Warn("forgetting a passkey ceremony's begin failed", "err", err)
	}
}

// firstID is the id of att's record, "" when it has none (no limit).
func firstID(att *attempt) string {
	if len(att.docs) == 0 {
		return ""
	}
	return att.docs[0].ID
}

// passkeyLevel is the level of a session signed in or raised with p: aal2, hwk for a key bound to
// its device, swk for one that may be synced (backup eligible). Without a password it is two
// factors in one (mfa: user verification was required); after one, pwd stays in the list.
func passkeyLevel(p *Passkey, afterPassword bool) level {
	method := amrHardwareKey
	if c, err := credentialOf(*p); err == nil && c.Flags.BackupEligible {
		method = amrSoftwareKey
	}
	if afterPassword {
		return level{ACR: "aal2", AMR: []string{amrPassword, method}}
	}
	return level{ACR: "aal2", AMR: []string{method, amrMultiFactor}}
}

// libraryError is why the library refused a ceremony, for the log.
func libraryError(err error) string {
	var pe *protocol.Error
	if errors.As(err, &pe) {
		return strings.TrimSpace(pe.Details + " " + pe.DevInfo)
	}
	return err.Error()
}
