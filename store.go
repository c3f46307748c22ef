package main

// store.go holds what the service keeps: small interfaces, one per concern, combined into Store,
// with the records they keep; and the plumbing of their MongoDB implementation, whose code by
// concern is in store_*.go.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Errors a Store returns; handlers map them to HTTP answers and never see the driver's own.
var (
	ErrNotFound          = errors.New("not found")
	ErrDuplicate         = errors.New("duplicate")
	ErrUnavailable error = unavailableError{}
)

// unavailableError is ErrUnavailable, which the error writer, below the store, tells by its method
// (wrapped or not) rather than by name.
type unavailableError struct{}

func (unavailableError) Error() string { return "database unavailable" }
func (unavailableError) unavailable()  {}

// Store is everything the service keeps. Every method takes the request's context and answers
// ErrUnavailable when the database cannot be reached in time; the errors each may answer besides
// are in its comment. Each part of the service takes only the interfaces it uses.
type Store interface {
	userStore
	sessionStore
	revocationStore
	attemptStore
	factorStore
	keyStore
	mailStore
	clientStore
	codeStore
	grantStore
	passkeyStore
	// Purge deletes everything that expired before now.
	Purge(ctx context.Context, now time.Time) error
	// Ping checks that the database answers.
	Ping(ctx context.Context) error
}

// userStore keeps the accounts, whether they are disabled, and their security events.
type userStore interface {
	// CreateUser inserts u; ErrDuplicate when its email is taken.
	CreateUser(ctx context.Context, u *User) error
	// UserByEmail finds the account with a normalised email; ErrNotFound when there is none.
	UserByEmail(ctx context.Context, email string) (*User, error)
	// UserByID finds an account; ErrNotFound when there is none.
	UserByID(ctx context.Context, id string) (*User, error)
	// EmailOf is the address of account id and whether it is verified, without the rest of the
	// account; ErrNotFound when there is none.
	EmailOf(ctx context.Context, id string) (email string, verified bool, err error)
	// SetDisabled disables or enables account id; ErrNotFound when there is none.
	SetDisabled(ctx context.Context, id string, disabled bool) error
	// DeleteUser deletes account id, so that its email is free again, with its security events
	// and the consents it gave OpenID clients; ErrNotFound when there is none.
	DeleteUser(ctx context.Context, id string) error
	// BcryptHash returns the bcrypt hash of some account that still has one (accounts imported
	// from another service keep theirs until they log in); ErrNotFound when none does.
	BcryptHash(ctx context.Context) (string, error)
	// SetPasswordHash replaces the hash of user id; ErrNotFound when there is no such user.
	SetPasswordHash(ctx context.Context, id, hash string) error
	// UpgradePasswordHash replaces the hash of user id with fresh only while it is still old (a
	// login's rehash must not undo a password change that came while it checked the password),
	// and records old's digest in UpgradedFrom; ErrNotFound when the account is gone or its hash
	// is another now.
	UpgradePasswordHash(ctx context.Context, id, old, fresh string) error
	// Stamp is the security stamp of account user: how many security events it has had (0 for
	// none, and for an account that does not exist).
	Stamp(ctx context.Context, user string) (int64, error)
	// MoveStamp records the security event e, which moves its account's stamp.
	MoveStamp(ctx context.Context, e SecurityEvent) error
	// SetEmailVerified marks the address of user id verified, if it is still email; ErrNotFound
	// when there is no such user with that address.
	SetEmailVerified(ctx context.Context, id, email string) error
	// SetEmail gives user id the verified address email; ErrDuplicate when another account has
	// it, ErrNotFound when there is no such user.
	SetEmail(ctx context.Context, id, email string) error
	// UsersWithUnicodeEmail lists the id and email of every account whose email has a character
	// beyond ASCII.
	UsersWithUnicodeEmail(ctx context.Context) ([]User, error)
	// RewriteEmail replaces the email of user id with to while it is still from, and keeps
	// whether it is verified; ErrDuplicate when another account has to, ErrNotFound when the
	// account is gone or has another address now.
	RewriteEmail(ctx context.Context, id, from, to string) error
}

// User is an account. PasswordHash is a PHC string (argon2id) or, for accounts moved over from
// another service, a bcrypt hash.
type User struct {
	ID           string    `bson:"_id"`
	Email        string    `bson:"email"`
	PasswordHash string    `bson:"password_hash"`
	CreatedAt    time.Time `bson:"created_at"`
	// Disabled by an operator: no login, no session. It is kept apart, in disabled_accounts (see
	// SetDisabled); the field here is read only for accounts disabled before that.
	Disabled bool `bson:"disabled,omitempty"`

	// EmailVerified: the owner followed a link mailed to Email. Accounts made before verification
	// existed have no such field and read as unverified.
	EmailVerified bool `bson:"email_verified,omitempty"`

	// UpgradedFrom is the SHA-256 digest of the hash that a login's rehash replaced, so that a
	// login that checked the password against that hash knows the change for no change of
	// password (see UpgradePasswordHash). A password change clears it.
	UpgradedFrom string `bson:"upgraded_from,omitempty"`

	// The active second factors, as passwordCheck found them; not stored here.
	hasTOTP, hasPasskey bool
}

// secondFactors are the methods the second step of u's login may take ("totp", "passkey",
// "recovery_code"); none when it has no second factor.
func (u *User) secondFactors() []string {
	var m []string
	if u.hasTOTP {
		m = append(m, "totp")
	}
	if u.hasPasskey {
		m = append(m, "passkey")
	}
	if len(m) > 0 {
		m = append(m, "recovery_code")
	}
	return m
}

// SecurityEvent is one change of an account's credentials or means of recovery (see
// docs/security-model.md). The account's security stamp is how many it has had: everything issued
// on its behalf records the stamp and is refused once the stamp has moved. Events are inserted,
// never updated, so that no concurrent write to the account can lose one.
type SecurityEvent struct {
	ID     string    `bson:"_id"`
	UserID string    `bson:"user_id"`
	Reason string    `bson:"reason"`
	At     time.Time `bson:"at"`
}

// sessionStore keeps the sessions and the first use of each refresh token.
type sessionStore interface {
	// CreateSession records a new session.
	CreateSession(ctx context.Context, s *Session) error
	// DeleteSession removes the record of a session none of whose tokens was handed out.
	DeleteSession(ctx context.Context, id string) error
	// SessionByID finds a session; ErrNotFound when there is none.
	SessionByID(ctx context.Context, id string) (*Session, error)
	// SessionsOfUser lists the sessions of user whose tokens have not all expired at now, ended
	// ones included (see Session), newest first.
	SessionsOfUser(ctx context.Context, user string, now time.Time) ([]Session, error)
	// TouchSession notes a use of session id at usedAt that issued tokens accepted up to
	// tokensExpire (the record's TokensExpireAt never goes back) and made head its newest refresh
	// token. ErrNotFound when there is none. Callers never touch one session twice at once.
	TouchSession(ctx context.Context, id string, usedAt, tokensExpire time.Time, head string) error
	// ClaimRefresh records the first use of a refresh token. won is true for exactly one caller
	// per token, even under concurrency; the others get the record that caller wrote.
	ClaimRefresh(ctx context.Context, use RefreshUse) (first RefreshUse, won bool, err error)
}

// Session is one login and every token refreshed from it, all of which carry its ID as sid. It
// ends when a blacklist entry "sid:<ID>" is written, at ExpiresAt (SESSION_MAX_AGE after login;
// zero for no limit), or when its last refresh token expires unused. TokensExpireAt is the latest
// expiry of any token issued in it: its blacklist entry must last that long, and after it the
// record can match no token and is purged.
type Session struct {
	ID             string    `bson:"_id"`
	UserID         string    `bson:"user_id"`
	CreatedAt      time.Time `bson:"created_at"`
	LastUsedAt     time.Time `bson:"last_used_at"`
	IP             string    `bson:"ip"`
	UserAgent      string    `bson:"user_agent"`
	ExpiresAt      time.Time `bson:"expires_at"`
	TokensExpireAt time.Time `bson:"tokens_expire_at"`
	// Head is the id of the session's newest refresh token, the one not yet used: written by the
	// login and by each refresh that uses the one before (only one can: see ClaimRefresh).
	Head string `bson:"head"`
	// Kind is sessionCookie for a portal sign-in, whose one credential is its cookie; "" for a
	// session of access and refresh tokens.
	Kind string `bson:"kind,omitempty"`
	// Client and Scope, for a session of kind sessionOAuth: the OpenID client its tokens are
	// issued to, and the scopes granted.
	Client string `bson:"client_id,omitempty"`
	Scope  string `bson:"scope,omitempty"`
}

// RefreshUse is the first use of a refresh token, and the successor it was exchanged for, so that
// the same token presented again within the reuse interval gets that very successor. It means
// nothing after ExpiresAt, when the token it records has expired.
type RefreshUse struct {
	JTI       string    `bson:"_id"`
	UsedAt    time.Time `bson:"used_at"`
	ExpiresAt time.Time `bson:"expires_at"`
	Next      Successor `bson:"next"`
	Bound     time.Time `bson:"bound"` // the last moment a token this use issued is accepted
}

// Successor is what a refresh token is signed from, besides what its session says.
type Successor struct {
	ID       string `bson:"jti"`
	IssuedAt int64  `bson:"iat"`
	Expiry   int64  `bson:"exp"`
	Level    level  `bson:",inline"`
}

// level is how a session's user authenticated: the methods (amr) and the assurance level (acr)
// that its tokens carry, and that refresh keeps.
type level struct {
	ACR string   `bson:"acr,omitempty"`
	AMR []string `bson:"amr,omitempty"`
}

// revocationStore keeps the blacklist.
type revocationStore interface {
	// Revoke records revocations; recording one that exists already is not an error.
	Revoke(ctx context.Context, revs ...Revocation) error
	// ExtendRevocation makes revocation id last until at least expires, and marks it changed at
	// now so that the other instances read it again.
	ExtendRevocation(ctx context.Context, id string, expires, now time.Time) error
	// Revoked reports whether any of ids is revoked and not yet expired at now, and the reason
	// recorded with it.
	Revoked(ctx context.Context, now time.Time, ids ...string) (revoked bool, reason string, err error)
	// RevokedAmong returns which of ids are revoked and not yet expired at now.
	RevokedAmong(ctx context.Context, now time.Time, ids ...string) (map[string]bool, error)
	// RevocationsSince lists revocations created at or after since that are still in force at now.
	RevocationsSince(ctx context.Context, since, now time.Time) ([]Revocation, error)
}

// What moves an account's security stamp (docs/security-model.md): every change of its
// credentials or of its means of recovery. Each is recorded as a SecurityEvent with this reason; a
// password change or reset with the reason its sessions end for (endPasswordChange,
// endPasswordReset).
const (
	stampFactorAdded    = "factor_added"
	stampFactorRemoved  = "factor_removed"
	stampRecoveryUsedUp = "recovery_codes_used_up"
	stampEmailChanged   = "email_changed"
	stampDisabled       = "account_disabled"
)

// The algorithms JWT_ALG, and so a SigningKey, may name.
const (
	algHS256 = "HS256"
	algEdDSA = "EdDSA" // Ed25519
	algES256 = "ES256" // ECDSA on P-256
	// algRS256 signs only ID tokens (RSA, PKCS #1 v1.5, SHA-256), which OpenID Connect requires a
	// provider to offer; never the API's tokens.
	algRS256 = "RS256"
)

// A blacklist entry's ID is jtiPrefix and a token's id, or sidPrefix and a session's.
const (
	jtiPrefix = "jti:"
	sidPrefix = "sid:"
)

// Revocation is one blacklist entry: a token id ("jti:...") or a whole login session ("sid:...").
// It means nothing after ExpiresAt, because every token it could match has expired by then.
//
// CreatedAt is when the entry was written or last extended: instances poll for entries by it.
// Reason says why a session ended ("logout", "reused", ...), for the people who read the database.
type Revocation struct {
	ID        string    `bson:"_id"`
	ExpiresAt time.Time `bson:"expires_at"`
	CreatedAt time.Time `bson:"created_at"`
	Reason    string    `bson:"reason,omitempty"`
}

// attemptStore keeps the attempts that the throttles count.
type attemptStore interface {
	// AddAttempts records attempts, whose ids the caller makes unique.
	AddAttempts(ctx context.Context, as ...Attempt) error
	// Attempts lists, newest first and at most most of them, the times of the attempts of key
	// after since, but for the one whose id is except.
	Attempts(ctx context.Context, key string, since time.Time, except string, most int) ([]time.Time, error)
	// ForgetAttempts deletes the attempts attemptIDs and every attempt of these keys.
	ForgetAttempts(ctx context.Context, attemptIDs []string, keys ...string) error
}

// Attempt is one try of something throttled, recorded under one key before its outcome is known.
type Attempt struct {
	ID        string    `bson:"_id"`
	Key       string    `bson:"key"`
	At        time.Time `bson:"at"`
	ExpiresAt time.Time `bson:"expires_at"`
}

// factorStore keeps the second factors: TOTP secrets, the steps used, recovery codes, and the
// logins waiting for their second factor.
type factorStore interface {
	// SavePendingTOTP records a factor being enrolled, replacing an earlier one being enrolled.
	SavePendingTOTP(ctx context.Context, f TOTPFactor) error
	// TOTP finds a factor by its id; ErrNotFound when there is none.
	TOTP(ctx context.Context, id string) (*TOTPFactor, error)
	// ActivateTOTP inserts f as its user's active factor and forgets the pending one; ErrDuplicate
	// when the user has an active factor already.
	ActivateTOTP(ctx context.Context, f TOTPFactor) error
	// RemoveTOTP deletes user's active factor; ErrNotFound when there is no active factor (also
	// for all but one of simultaneous removals).
	RemoveTOTP(ctx context.Context, user string) error
	// ClearRecoveryCodes deletes user's recovery codes.
	ClearRecoveryCodes(ctx context.Context, user string) error
	// ClaimStep records that key reached step, kept until expires; ErrDuplicate when that step or
	// a later one was claimed, by a claim racing this one too. Keys are a user's id for the time
	// steps of their TOTP codes (used once, RFC 6238 section 5.2), and "passkey:" and a passkey's
	// id for its sign counter (always rising; a clone of the authenticator repeats one).
	ClaimStep(ctx context.Context, key string, step int64, expires time.Time) error
	// SetRecoveryCodes replaces user's recovery codes with these digests.
	SetRecoveryCodes(ctx context.Context, user string, digests []string) error
	// RecoveryCodesLeft counts user's unused recovery codes.
	RecoveryCodesLeft(ctx context.Context, user string) (int64, error)
	// UseRecoveryCode deletes user's recovery code with the digest sum; ErrNotFound when there is
	// none (also for all but one of simultaneous uses).
	UseRecoveryCode(ctx context.Context, user, sum string) error
	// CreateMFAChallenge records a login waiting for its second factor.
	CreateMFAChallenge(ctx context.Context, ch MFAChallenge) error
	// MFAChallenge finds a challenge by its id; ErrNotFound when there is none.
	MFAChallenge(ctx context.Context, id string) (*MFAChallenge, error)
	// ConsumeMFAChallenge deletes a challenge; ErrNotFound when there is none (also for all but
	// one of simultaneous consumptions).
	ConsumeMFAChallenge(ctx context.Context, id string) error
}

// TOTPFactor is a user's time-based one-time password secret (RFC 6238), sealed. A factor being
// enrolled has the id "pending:<user id>"; once its first code is confirmed, an active copy is
// inserted under the user's id, which is unique: one active factor per user.
type TOTPFactor struct {
	ID        string    `bson:"_id"`
	UserID    string    `bson:"user_id"`
	Secret    []byte    `bson:"secret"`
	CreatedAt time.Time `bson:"created_at"`
}

// MFAChallenge is a login with the right password that waits for its second factor, found by the
// SHA-256 digest of its mfa_token. Stamp is the account's security stamp when it was issued.
type MFAChallenge struct {
	ID        string    `bson:"_id"`
	UserID    string    `bson:"user_id"`
	Stamp     int64     `bson:"stamp"`
	IP        string    `bson:"ip"`
	UserAgent string    `bson:"user_agent"`
	ExpiresAt time.Time `bson:"expires_at"`
	Kind      string    `bson:"kind,omitempty"` // the kind of session it opens (Session.Kind)
}

// keyStore keeps the signing keys that every instance shares.
type keyStore interface {
	// SigningKeys lists every signing key record, oldest generation first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey inserts k; ErrDuplicate when a key of its generation exists already, which
	// means that another instance made that key first.
	AddSigningKey(ctx context.Context, k *SigningKey) error
	// AdvanceSigningKey moves the activation of the key of generation gen to at, unless it is
	// earlier already; ErrNotFound when there is no such key.
	AdvanceSigningKey(ctx context.Context, gen int64, at time.Time) error
	// RevokeSigningKey marks the key kid revoked at at, unless it was revoked earlier; ErrNotFound
	// when there is no such key.
	RevokeSigningKey(ctx context.Context, kid string, at time.Time) error
	// DeleteSigningKey removes the key of generation gen; deleting one that is gone is not an
	// error.
	DeleteSigningKey(ctx context.Context, gen int64) error
}

// SigningKey is one key pair of JWT_ALG EdDSA or ES256, shared by every instance. Gen numbers the
// keys in the order they take over; a new key is claimed by inserting the next number as _id, so
// that among instances racing to make it exactly one succeeds. The schedule is in the record
// itself (ActivateAt, RevokedAt), so every instance reads the same one; see keys.go.
//
// Private is the PKCS #8 private key sealed with AES-256-GCM under a key derived from JWT_SECRET;
// the clear private key never reaches the database.
type SigningKey struct {
	Gen        int64     `bson:"_id"`
	KID        string    `bson:"kid"`
	Alg        string    `bson:"alg"`
	Public     []byte    `bson:"public"`  // PKIX, DER
	Private    []byte    `bson:"private"` // sealed: nonce, then ciphertext and tag
	CreatedAt  time.Time `bson:"created_at"`
	ActivateAt time.Time `bson:"activate_at"`
	RevokedAt  time.Time `bson:"revoked_at,omitempty"` // zero: not revoked
}

// mailStore keeps the outbox, its leases and the tokens mailed in links.
type mailStore interface {
	// QueueMail adds m to the outbox.
	QueueMail(ctx context.Context, m *MailMessage) error
	// DueMail lists at most most messages due at now, the longest due first.
	DueMail(ctx context.Context, now time.Time, most int) ([]MailMessage, error)
	// OldestMail is when the oldest message in the outbox was queued; ErrNotFound when none is.
	OldestMail(ctx context.Context) (time.Time, error)
	// LeaseMail records a lease; ErrDuplicate when one with its id exists: another holds it.
	LeaseMail(ctx context.Context, l *MailLease) error
	// MailLeaseByID finds a lease; ErrNotFound when there is none.
	MailLeaseByID(ctx context.Context, id string) (*MailLease, error)
	// RescheduleMail records that attempts have started on message id and that the next may
	// start at next; lastErr is why the last one failed, if it did.
	RescheduleMail(ctx context.Context, id string, attempts int, next time.Time, lastErr string) error
	// MailByID finds a message in the outbox; ErrNotFound when there is none.
	MailByID(ctx context.Context, id string) (*MailMessage, error)
	// DeleteMail removes message id from the outbox, and its leases.
	DeleteMail(ctx context.Context, id string) error
	// ReleaseMailLease deletes the lease id, which its holder did not use after all.
	ReleaseMailLease(ctx context.Context, id string) error
	// PurgeMail deletes the mailed tokens and the leases that expired before now.
	PurgeMail(ctx context.Context, now time.Time) error
	// CreateMailToken records a mailed token's digest.
	CreateMailToken(ctx context.Context, t *MailToken) error
	// MailTokenByDigest finds a token; ErrNotFound when there is none.
	MailTokenByDigest(ctx context.Context, sum string) (*MailToken, error)
	// DeleteMailToken deletes a token: nil for exactly one caller, however many try at once, and
	// ErrNotFound for the others.
	DeleteMailToken(ctx context.Context, sum string) error
}

// MailMessage is a mail waiting in the outbox: what to send and to whom, never its text. The
// sender renders it, and makes the token in its link, when it delivers: no token in clear is ever
// stored. Attempts and NextAt are written only by the holder of the attempt's lease (MailLease).
type MailMessage struct {
	ID       string `bson:"_id"`
	Kind     string `bson:"kind"` // one of the mail* kinds
	To       string `bson:"to"`
	UserID   string `bson:"user_id,omitempty"`
	NewEmail string `bson:"new_email,omitempty"` // an address change's new address, in the old one's notice
	// Stamp is the account's security stamp when a mail for UserID was queued: its link is made
	// only while the stamp is still that.
	Stamp     int64     `bson:"stamp,omitempty"`
	CreatedAt time.Time `bson:"created_at"`
	NextAt    time.Time `bson:"next_at"`  // not before then
	Attempts  int       `bson:"attempts"` // attempts started
	LastError string    `bson:"last_error,omitempty"`
	// A locked second factor's notice: the failures that locked it, for how long, and whether
	// they came from a session rather than from logins.
	Failures  int           `bson:"failures,omitempty"`
	LockedFor time.Duration `bson:"locked_for,omitempty"`
	SignedIn  bool          `bson:"signed_in,omitempty"`
}

// MailLease is the claim on one delivery attempt of a message: its ID is the message's and the
// attempt's number, so that of the instances that try to claim it one insert succeeds.
type MailLease struct {
	ID        string    `bson:"_id"`
	MessageID string    `bson:"message_id"`
	TakenAt   time.Time `bson:"taken_at"`
	ExpiresAt time.Time `bson:"expires_at"`
}

// MailToken is a token mailed in a link, kept only as the SHA-256 digest of the token. Email is
// the address it was sent to: the account's for a reset or a verification, the new one for an
// address change.
type MailToken struct {
	Digest    string    `bson:"_id"`
	Purpose   string    `bson:"purpose"`
	UserID    string    `bson:"user_id"`
	Email     string    `bson:"email"`
	Stamp     int64     `bson:"stamp"` // the account's security stamp when the link was made
	CreatedAt time.Time `bson:"created_at"`
	ExpiresAt time.Time `bson:"expires_at"`
}

// clientStore keeps the provider's registered clients (relying parties).
type clientStore interface {
	// CreateClient inserts c; ErrDuplicate when its id is taken.
	CreateClient(ctx context.Context, c *OAuthClient) error
	// ClientByID finds a client; ErrNotFound when there is none.
	ClientByID(ctx context.Context, id string) (*OAuthClient, error)
	// Clients lists every client, oldest first.
	Clients(ctx context.Context) ([]OAuthClient, error)
	// ReplaceClient writes c over the client of its id, never its secret; ErrNotFound when there
	// is none.
	ReplaceClient(ctx context.Context, c *OAuthClient) error
	// DeleteClient removes client id, and its secret; ErrNotFound when there is none.
	DeleteClient(ctx context.Context, id string) error
	// SetClientSecret keeps sum as the digest of client id's secret, in place of any other.
	SetClientSecret(ctx context.Context, id, sum string) error
	// ClientSecret is the digest of client id's secret; ErrNotFound when it has none.
	ClientSecret(ctx context.Context, id string) (string, error)
}

// codeStore keeps authorization codes and their single use.
type codeStore interface {
	// CreateAuthCode records an authorization code by its digest.
	CreateAuthCode(ctx context.Context, c *AuthCode) error
	// AuthCodeByDigest finds a code, used or not; ErrNotFound when there is none.
	AuthCodeByDigest(ctx context.Context, sum string) (*AuthCode, error)
	// RedeemAuthCode records the one use of a code. won is true for exactly one caller per code,
	// even under concurrency; the others get the record that caller wrote, which names the
	// session it started, so that a replay can end it.
	RedeemAuthCode(ctx context.Context, r CodeRedemption) (first CodeRedemption, won bool, err error)
	// CodeRedemptionOf finds the record of a code's use, which outlives the code; ErrNotFound
	// when there is none.
	CodeRedemptionOf(ctx context.Context, sum string) (*CodeRedemption, error)
}

// grantStore keeps the consents users gave to third-party clients.
type grantStore interface {
	// SaveGrant records g, in place of the user's earlier grant to the same client.
	SaveGrant(ctx context.Context, g ConsentGrant) error
	// GrantOf finds user's grant to client; ErrNotFound when there is none.
	GrantOf(ctx context.Context, user, client string) (*ConsentGrant, error)
	// GrantsOfUser lists user's grants, oldest first.
	GrantsOfUser(ctx context.Context, user string) ([]ConsentGrant, error)
	// DeleteGrant removes user's grant to client; ErrNotFound when there is none.
	DeleteGrant(ctx context.Context, user, client string) error
}

// OAuthClient is a relying party. A confidential client authenticates at the token endpoint with
// its secret, kept as its SHA-256 digest (32 random bytes are not guessable: no slow hash); a
// public one (a single-page or mobile app) has none and must use PKCE.
type OAuthClient struct {
	ID   string `bson:"_id" json:"client_id"`
	Name string `bson:"name" json:"name"`
	Type string `bson:"type" json:"type"` // clientPublic or clientConfidential
	// SecretDigest is set for OIDC_CLIENTS_FILE's clients only: the store keeps a secret in a
	// document of its own (SetClientSecret), so that a change of the client never writes an old
	// secret back over a rotation made meanwhile (updates lose writes on FerretDB).
	SecretDigest           string    `bson:"-" json:"-"`
	RedirectURIs           []string  `bson:"redirect_uris" json:"redirect_uris"`
	PostLogoutRedirectURIs []string  `bson:"post_logout_redirect_uris,omitempty" json:"post_logout_redirect_uris"`
	Scopes                 []string  `bson:"scopes" json:"scopes"` // what it may ask for
	FirstParty             bool      `bson:"first_party" json:"first_party"`
	IDTokenAlg             string    `bson:"id_token_alg,omitempty" json:"id_token_signed_response_alg"`
	CreatedAt              time.Time `bson:"created_at" json:"created_at"`
}

// AuthCode is an authorization code, found by the SHA-256 digest of the code, bound to the client,
// the redirect URI, the PKCE challenge and the account's security stamp. It is not deleted when
// used: its CodeRedemption says it was, and what it issued.
type AuthCode struct {
	Digest      string `bson:"_id"`
	ClientID    string `bson:"client_id"`
	RedirectURI string `bson:"redirect_uri"`
	Challenge   string `bson:"challenge,omitempty"` // S256 of the verifier; "" for none
	UserID      string `bson:"user_id"`
	Stamp       int64  `bson:"stamp"`
	Scope       string `bson:"scope"`
	Nonce       string `bson:"nonce,omitempty"`
	// The portal session the user signed in with: auth_time, its level, and sid.
	AuthTime      time.Time `bson:"auth_time"`
	Level         level     `bson:",inline"`
	PortalSession string    `bson:"portal_session"`
	ExpiresAt     time.Time `bson:"expires_at"`
}

// CodeRedemption is the one use of an authorization code, inserted under the code's digest, and
// the session its tokens belong to.
type CodeRedemption struct {
	Digest  string `bson:"_id"`
	Session string `bson:"session"`
	Client  string `bson:"client_id"`
	// As long as the session it started may live: a replay after the code expired still ends it.
	ExpiresAt time.Time `bson:"expires_at"`
}

// ConsentGrant is a user's consent to a third-party client for scopes. It is no credential: it
// survives a password reset, and revoking it ends the client's sessions.
type ConsentGrant struct {
	ID        string    `bson:"_id"` // user id, "|", client id
	UserID    string    `bson:"user_id"`
	ClientID  string    `bson:"client_id"`
	Scopes    []string  `bson:"scopes"`
	CreatedAt time.Time `bson:"created_at"`
}

// passkeyStore keeps the passkeys (WebAuthn credentials) and the ceremonies begun and not yet
// finished.
type passkeyStore interface {
	// AddPasskey inserts p; ErrDuplicate when its credential is registered already, to any
	// account.
	AddPasskey(ctx context.Context, p *Passkey) error
	// PasskeysOf lists user's passkeys, oldest first.
	PasskeysOf(ctx context.Context, user string) ([]Passkey, error)
	// PasskeyByID finds a passkey by its credential id; ErrNotFound when there is none.
	PasskeyByID(ctx context.Context, id string) (*Passkey, error)
	// RenamePasskey names user's passkey id; ErrNotFound when user has no such passkey.
	RenamePasskey(ctx context.Context, user, id, name string) error
	// UsePasskey records a use of passkey id at at, and its credential record after it.
	UsePasskey(ctx context.Context, id string, credential []byte, at time.Time) error
	// RemovePasskey deletes user's passkey id; ErrNotFound when user has no such passkey (also for
	// all but one of simultaneous removals).
	RemovePasskey(ctx context.Context, user, id string) error
	// CreateCeremony records a ceremony begun.
	CreateCeremony(ctx context.Context, c *Ceremony) error
	// TakeCeremony deletes ceremony id and answers it: exactly one caller gets it, however many
	// try at once; ErrNotFound for the others, and when there is none.
	TakeCeremony(ctx context.Context, id string) (*Ceremony, error)
}

// Passkey is one WebAuthn credential of an account. Its ID, the credential id in base64url, is
// unique: a credential registered to one account cannot be added to another.
type Passkey struct {
	ID         string    `bson:"_id"`
	UserID     string    `bson:"user_id"`
	Name       string    `bson:"name"`
	Credential []byte    `bson:"credential"` // the library's credential record, as JSON
	CreatedAt  time.Time `bson:"created_at"`
	LastUsedAt time.Time `bson:"last_used_at,omitempty"`
}

// Ceremony is a WebAuthn registration or assertion begun, found by the digest of its challenge.
// It is single-use (TakeCeremony), lives until ExpiresAt, and is bound to what it was begun for:
// its kind, its account and that account's security stamp, the session of the access token that
// began it, or the login challenge it answers.
type Ceremony struct {
	ID     string `bson:"_id"`
	Kind   string `bson:"kind"`
	UserID string `bson:"user_id,omitempty"` // "" for a discoverable login, which names no account
	// ForEmail: a login begun with an email address, which only UserID's passkeys may finish
	// (none, when the address has no account).
	ForEmail  bool      `bson:"for_email,omitempty"`
	Stamp     int64     `bson:"stamp"`
	Session   string    `bson:"session,omitempty"`   // the sid that began a registration or step-up
	Challenge string    `bson:"challenge,omitempty"` // the MFAChallenge a second factor answers
	Attempt   string    `bson:"attempt,omitempty"`   // the throttle's record of a sign-in's begin
	Data      []byte    `bson:"data"`                // the library's session data, as JSON
	ExpiresAt time.Time `bson:"expires_at"`
}

// mongoStore is the Store on MongoDB (or anything that speaks its wire protocol, such as the
// embedded FerretDB). Atomicity comes only from unique-key inserts and single-document deletes:
// FerretDB, unlike MongoDB, lets two guarded findOneAndUpdate calls both win and loses concurrent
// $inc updates, so nothing here relies on either; it also keeps only one of two simultaneous
// updates of one document, even of different fields, so a write that must not be undone by the
// document's other writers gets a document of its own (see SetDisabled).
type mongoStore struct {
	users, disabled, sessions, blacklist, refreshUses, attempts *mongo.Collection
	signingKeys, totp, totpSteps, recoveryCodes, mfaChallenges  *mongo.Collection
	securityEvents, passkeyDocs, ceremonies                     *mongo.Collection
	failures                                                    *atomic.Uint64 // counts the database's failures; may be nil
}

// connectMongo makes a client for uri. The driver waits 30s for a server by default, far too long
// for a user waiting on a login, so shorter defaults come first and the URI's own
// serverSelectionTimeoutMS, connectTimeoutMS or timeoutMS, when it has them, win.
func connectMongo(uri string) (*mongo.Client, error) {
	client, err := mongo.Connect(mongoOptions(uri))
	if err != nil {
		return nil, fmt.Errorf("mongodb: %w", err)
	}
	return client, nil
}

func mongoOptions(uri string) *options.ClientOptions {
	return options.Client().
		SetServerSelectionTimeout(2 * time.Second).
		SetConnectTimeout(2 * time.Second).
		SetTimeout(5 * time.Second).
		ApplyURI(uri)
}

// mongoCollections is the store on db's collections, as they are; failures, when not nil, counts
// the database's failures.
func mongoCollections(db *mongo.Database, failures *atomic.Uint64) *mongoStore {
	return &mongoStore{
		users:          db.Collection("users"),
		disabled:       db.Collection("disabled_accounts"),
		sessions:       db.Collection("sessions"),
		blacklist:      db.Collection("blacklist"),
		refreshUses:    db.Collection("refresh_tokens"),
		attempts:       db.Collection("attempts"),
		totp:           db.Collection("totp_factors"),
		totpSteps:      db.Collection("totp_steps"),
		recoveryCodes:  db.Collection("recovery_codes"),
		mfaChallenges:  db.Collection("mfa_challenges"),
		signingKeys:    db.Collection("signing_keys"),
		securityEvents: db.Collection("security_events"),
		passkeyDocs:    db.Collection("passkeys"),
		ceremonies:     db.Collection("passkey_ceremonies"),
		failures:       failures,
	}
}

// newMongoStore opens the collections of db and makes sure their indexes exist.
func newMongoStore(ctx context.Context, db *mongo.Database, failures *atomic.Uint64) (*mongoStore, error) {
	s := mongoCollections(db, failures)
	indexes := []struct {
		coll   *mongo.Collection
		keys   bson.D
		unique bool
		ttl    bool
	}{
		{s.users, bson.D{{Key: "email", Value: 1}}, true, false},
		{s.blacklist, bson.D{{Key: "created_at", Value: 1}}, false, false},
		{s.blacklist, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.refreshUses, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.sessions, bson.D{{Key: "user_id", Value: 1}}, false, false},
		{s.recoveryCodes, bson.D{{Key: "user_id", Value: 1}}, false, false},
		{s.securityEvents, bson.D{{Key: "user_id", Value: 1}}, false, false},
		{s.totpSteps, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.totpSteps, bson.D{{Key: "user_id", Value: 1}, {Key: "step", Value: -1}}, false, false},
		{s.mfaChallenges, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.sessions, bson.D{{Key: "tokens_expire_at", Value: 1}}, false, true},
		{s.attempts, bson.D{{Key: "key", Value: 1}, {Key: "at", Value: -1}}, false, false},
		{s.attempts, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.signingKeys, bson.D{{Key: "kid", Value: 1}}, true, false},
	}
	for _, ix := range indexes {
		opts := options.Index().SetUnique(ix.unique)
		if ix.ttl {
			opts.SetExpireAfterSeconds(0)
		}
		_, err := ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys, Options: opts})
		if ix.ttl && isNotImplemented(err) {
			// FerretDB refuses TTL indexes; Purge deletes expired documents on every server anyway.
			_, err = ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys})
		}
		if err != nil {
			return nil, fmt.Errorf("create index on %s: %w", ix.coll.Name(), s.err(err))
		}
	}
	if err := s.mailIndexes(ctx); err != nil {
		return nil, err
	}
	if err := s.oauthIndexes(ctx); err != nil {
		return nil, err
	}
	if err := s.passkeyIndexes(ctx); err != nil {
		return nil, fmt.Errorf("create index on passkeys: %w", err)
	}
	return s, nil
}

func isNotImplemented(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(238)
}

// storeErr turns a driver error into one of the Store's sentinels. Anything that is not an
// answer from the server (a timeout, a refused connection, no server selectable), and an answer
// that says the server cannot serve now (see transient), means the database is unavailable; any
// other error the server answered with is a bug and stays internal.
func storeErr(err error) error {
	var se mongo.ServerError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mongo.ErrNoDocuments):
		return ErrNotFound
	case mongo.IsDuplicateKeyError(err):
		return ErrDuplicate
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &se) && !mongo.IsTimeout(err) && !mongo.IsNetworkError(err) && !transient(se):
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// transient reports whether a server's error says it cannot serve now rather than that the
// request was wrong: it is shutting down, or a replica set is changing its primary (MongoDB's
// codes, which FerretDB uses too), or the driver labels the operation worth retrying.
func transient(se mongo.ServerError) bool {
	// FerretDB answers a failure of its own backend's connection (PostgreSQL's, say) as an
	// InternalError whose text names it.
	if se.HasErrorCode(1) {
		for _, s := range []string{"timeout", "connection refused", "connection reset", "broken pipe", "EOF"} {
			if strings.Contains(se.Error(), s) {
				return true
			}
		}
	}
	for _, label := range []string{"RetryableWriteError", "RetryableReadError", "TransientTransactionError"} {
		if se.HasErrorLabel(label) {
			return true
		}
	}
	for _, code := range []int{
		6, 7, 89, 9001, // HostUnreachable, HostNotFound, NetworkTimeout, SocketException
		91, 11600, 11602, // ShutdownInProgress, InterruptedAtShutdown, InterruptedDueToReplStateChange
		189, 10107, 13435, 13436, // PrimarySteppedDown, NotWritablePrimary, NotPrimaryNoSecondaryOk, NotPrimaryOrSecondary
	} {
		if se.HasErrorCode(code) {
			return true
		}
	}
	return false
}

// err is storeErr that also counts the failures that are the database's: anything but a missing
// or duplicate record, or a caller that gave up.
func (s *mongoStore) err(err error) error {
	err = storeErr(err)
	if err != nil && s.failures != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDuplicate) &&
		!errors.Is(err, context.Canceled) {
		s.failures.Add(1)
	}
	return err
}

// deleteOne deletes the one document filter names; ErrNotFound when there was none, which is
// also what all but one of simultaneous deletions get: a single-document delete has exactly one
// winner on MongoDB and FerretDB alike.
func (s *mongoStore) deleteOne(ctx context.Context, c *mongo.Collection, filter bson.D) error {
	res, err := c.DeleteOne(ctx, filter)
	if err != nil {
		return s.err(err)
	}
	if res.DeletedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) Purge(ctx context.Context, now time.Time) error {
	expired := func(field string) bson.D { return bson.D{{Key: field, Value: bson.D{{Key: "$lte", Value: now}}}} }
	for _, p := range []struct {
		c     *mongo.Collection
		field string
	}{{s.blacklist, "expires_at"}, {s.refreshUses, "expires_at"}, {s.attempts, "expires_at"}, {s.sessions, "tokens_expire_at"},
		{s.totpSteps, "expires_at"}, {s.mfaChallenges, "expires_at"}, {s.ceremonies, "expires_at"}} {
		if _, err := p.c.DeleteMany(ctx, expired(p.field)); err != nil {
			return s.err(err)
		}
	}
	return s.purgeOAuth(ctx, now)
}

func (s *mongoStore) Ping(ctx context.Context) error {
	return s.err(s.users.Database().Client().Ping(ctx, nil))
}

// newID returns 128 random bits, URL-safe: token ids, session ids and user ids.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// cut shortens s to at most n bytes, on a character boundary.
func cut(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return strings.ToValidUTF8(s[:n], "")
}

// sessionCookie is the Session.Kind of a portal sign-in; sessionOAuth of an OpenID client's tokens.
const (
	sessionCookie = "cookie"
	sessionOAuth  = "oauth"
)
