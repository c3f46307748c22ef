package main

// tokens.go issues and parses the service's JWTs, and remembers which tokens it has verified.

import (
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	useAccess  = "access"
	useRefresh = "refresh"
	useCookie  = "cookie" // the portal's session cookie; see cookies.go
	// The OpenID provider's tokens for its clients, of a use of their own so that no client's
	// token is ever taken for the API's own (or the forward-auth check's).
	useOAuthAccess  = "oauth_access"
	useOAuthRefresh = "oauth_refresh"
)

// claims is the whole content of a token, parsed once into a typed struct.
type claims struct {
	Issuer string `json:"iss"`
	// Audience is JWT_AUDIENCE, when set; the service writes it as one string.
	Audience string   `json:"aud,omitempty"`
	Subject  string   `json:"sub"`
	Email    string   `json:"email"`
	ID       string   `json:"jti"`
	Session  string   `json:"sid"`
	Use      string   `json:"token_use"`
	IssuedAt int64    `json:"iat"`
	Expiry   int64    `json:"exp"`
	AMR      []string `json:"amr,omitempty"` // how the user authenticated (RFC 8176)
	ACR      string   `json:"acr,omitempty"` // the assurance level: aal1, aal2
	// SessionEnd, in refresh tokens only, is when their session ends (SESSION_MAX_AGE after the
	// login), in Unix seconds, 0 for never: refresh needs it before it may read anything.
	SessionEnd *int64 `json:"sxp,omitempty"`

	// Client and Scope, in the OpenID provider's tokens only: the client they were issued to and
	// the scopes granted, space-separated.
	Client string `json:"client_id,omitempty"`
	Scope  string `json:"scope,omitempty"`

	// EmailVerified says whether the user had followed a verification link to Email when the
	// token was signed; tokens signed before verification existed read as false.
	EmailVerified bool `json:"email_verified"`
}

// The authentication methods a token's amr names (RFC 8176).
const (
	amrPassword    = "pwd"
	amrOTP         = "otp"
	amrHardwareKey = "hwk" // a passkey bound to its device
	amrSoftwareKey = "swk" // a passkey that may be synced
	amrMultiFactor = "mfa"
)

var (
	levelPassword  = level{ACR: "aal1", AMR: []string{amrPassword}}
	levelTwoFactor = level{ACR: "aal2", AMR: []string{amrPassword, amrOTP}}
)

// level of the token; tokens issued before levels were written are a password's.
func (c *claims) level() level {
	if c.ACR == "" {
		return levelPassword
	}
	return level{c.ACR, c.AMR}
}

// The jwt.Claims interface; validation is ours (see tokens.parse), so these only report.
func (c *claims) GetExpirationTime() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(c.Expiry, 0)), nil
}
func (c *claims) GetIssuedAt() (*jwt.NumericDate, error) {
	return jwt.NewNumericDate(time.Unix(c.IssuedAt, 0)), nil
}
func (c *claims) GetNotBefore() (*jwt.NumericDate, error) { return nil, nil }
func (c *claims) GetIssuer() (string, error)              { return c.Issuer, nil }
func (c *claims) GetSubject() (string, error)             { return c.Subject, nil }
func (c *claims) GetAudience() (jwt.ClaimStrings, error) {
	if c.Audience == "" {
		return nil, nil
	}
	return jwt.ClaimStrings{c.Audience}, nil
}

func (c *claims) expiresAt() time.Time { return time.Unix(c.Expiry, 0) }

// isOAuth reports whether c is a token of the OpenID provider's clients.
func (c *claims) isOAuth() bool { return c.Use == useOAuthAccess || c.Use == useOAuthRefresh }

// audienceOf is the aud a token of c's use carries: JWT_AUDIENCE for the API's, a fixed one for
// cookies, the client's id for a client's.
func (t *tokens) audienceOf(c *claims) string {
	switch {
	case c.Use == useCookie:
		return cookieAudience
	case c.isOAuth():
		return clientTokenAudience
	}
	return t.audience
}

// tokenClient is the client a session's tokens are issued to, and the scopes it was granted; nil
// for the API's own sessions.
type tokenClient struct{ id, scope string }

// client is the client s's tokens are issued to; nil for the API's own sessions.
func (s *Session) client() *tokenClient {
	if s.Kind != sessionOAuth {
		return nil
	}
	return &tokenClient{s.Client, s.Scope}
}

// sessionEnd is when the session of refresh token c ends (zero for never); known is false for a
// token that does not say, as those signed before refresh tokens carried it.
func (c *claims) sessionEnd() (end time.Time, known bool) {
	switch {
	case c.SessionEnd == nil:
		return time.Time{}, false
	case *c.SessionEnd == 0:
		return time.Time{}, true
	}
	return time.Unix(*c.SessionEnd, 0), true
}

// tokens issues and checks the service's JWTs, signed with the keys of keys.
type tokens struct {
	keys       *keyring
	issuer     string
	audience   string // JWT_AUDIENCE; "" for none
	accessTTL  time.Duration
	refreshTTL time.Duration
	// leeway is how far the clocks of the issuing and the checking machine may disagree: a token
	// is accepted until its exp plus leeway (TOKEN_LEEWAY).
	leeway   time.Duration
	now      func() time.Time
	parser   *jwt.Parser
	verified *verifiedCache
}

func newTokensWith(keys *keyring, issuer, audience string, accessTTL, refreshTTL, leeway time.Duration, now func() time.Time) *tokens {
	t := &tokens{
		keys:       keys,
		issuer:     issuer,
		audience:   audience,
		accessTTL:  accessTTL,
		refreshTTL: refreshTTL,
		leeway:     leeway,
		now:        now,
		// Only the configured algorithm: the key a token names must also be of that algorithm
		// (see keySet.lookup). Claims are validated by parse itself, in a fixed order, so that
		// "expired" is only ever said of a token that is otherwise entirely valid (logout accepts
		// those); that includes the audience, which jwt.WithAudience would check only in the
		// validation that WithoutClaimsValidation turns off.
		parser:   jwt.NewParser(jwt.WithValidMethods(keys.methods()), jwt.WithoutClaimsValidation()),
		verified: newVerifiedCache(10000),
	}
	keys.onDrop = func(k *verifyKey) { t.verified.drop(k) }
	return t
}

// expired reports whether c is past its expiry at now, the leeway allowed for.
func (t *tokens) expired(c *claims, now time.Time) bool { return !now.Before(t.until(c.expiresAt())) }

// until is the last moment a token expiring at exp is accepted.
func (t *tokens) until(exp time.Time) time.Time { return exp.Add(t.leeway) }

// maxTTL is the longest a token this instance issues is accepted.
func (t *tokens) maxTTL() time.Duration { return max(t.accessTTL, t.refreshTTL) + t.leeway }

// tokenPair is the body of a login or refresh answer.
type tokenPair struct {
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int64  `json:"expires_in"`
	RefreshExpiresIn int64  `json:"refresh_expires_in"`

	cookie *cookieCredential // a cookie session's one credential, instead of the tokens
}

// successor is a new refresh token of level lvl: its id and times. It lives refreshTTL, but not
// past the end of its session (end; zero for none).
func (t *tokens) successor(end time.Time, lvl level) Successor {
	now := t.now()
	exp := now.Add(t.refreshTTL)
	if !end.IsZero() && end.Before(exp) {
		exp = end
	}
	return Successor{ID: newID(), IssuedAt: now.Unix(), Expiry: exp.Unix(), Level: lvl}
}

// accessExpiry is when an access token signed at now expires: accessTTL later, or at end (the
// session's, or an earlier bound; zero for none).
func (t *tokens) accessExpiry(now, end time.Time) time.Time {
	exp := now.Add(t.accessTTL)
	if !end.IsZero() && end.Before(exp) {
		exp = end
	}
	return exp
}

// bound is the last moment that a pair signed now with the refresh token next, ending by end, is
// accepted: what pair's tokens would say, computed without signing them.
func (t *tokens) bound(next Successor, end time.Time) time.Time {
	return t.until(time.Unix(max(t.accessExpiry(t.now(), end).Unix(), next.Expiry), 0))
}

// pair signs a fresh access token and the refresh token next for user in session sid, with the
// user's email and whether it is verified, both of next's level; no token outlives end (the
// session's end, or an earlier bound; zero for none), and the refresh token carries sessionEnd.
//
// For a client's session (client not nil) the tokens are of its uses, aud and scope.
func (t *tokens) pair(userID, email string, verified bool, sid string, next Successor, end, sessionEnd time.Time, client *tokenClient) (tokenPair, error) {
	now := t.now()
	exp := t.accessExpiry(now, end)
	accessUse, refreshUse, cid, scope := useAccess, useRefresh, "", ""
	if client != nil {
		accessUse, refreshUse, cid, scope = useOAuthAccess, useOAuthRefresh, client.id, client.scope
		if !slices.Contains(strings.Fields(scope), "email") {
			email, verified = "", false // a client reads its tokens: no address it was not granted
		}
	}
	access, err := t.sign(claims{Subject: userID, Email: email, EmailVerified: verified, Session: sid, Use: accessUse,
		ID: newID(), IssuedAt: now.Unix(), Expiry: exp.Unix(), AMR: next.Level.AMR, ACR: next.Level.ACR,
		Client: cid, Scope: scope})
	if err != nil {
		return tokenPair{}, err
	}
	var sxp int64
	if !sessionEnd.IsZero() {
		sxp = sessionEnd.Unix()
	}
	refresh, err := t.sign(claims{Subject: userID, Email: email, EmailVerified: verified, Session: sid, Use: refreshUse,
		ID: next.ID, IssuedAt: next.IssuedAt, Expiry: next.Expiry, AMR: next.Level.AMR, ACR: next.Level.ACR,
		SessionEnd: &sxp, Client: cid, Scope: scope})
	if err != nil {
		return tokenPair{}, err
	}
	return tokenPair{
		AccessToken:      access,
		RefreshToken:     refresh,
		TokenType:        "Bearer",
		ExpiresIn:        exp.Unix() - now.Unix(),
		RefreshExpiresIn: max(next.Expiry-now.Unix(), 0),
	}, nil
}

// sign signs c as it is, issuer and audience added, with the key in force now, which it names in
// the kid header. Signing the same claims again with the same key gives the same token with HS256
// and EdDSA, whose signatures are deterministic; ES256 signatures are randomised, so there the
// bytes differ but the claims, jti included, do not, and so neither does what the token means.
func (t *tokens) sign(c claims) (string, error) {
	c.Issuer = t.issuer
	c.Audience = t.audienceOf(&c)
	k := t.keys.current().signer(t.now())
	if k == nil || k.private == nil {
		return "", errNoSigningKey
	}
	tok := jwt.NewWithClaims(k.method, &c)
	tok.Header["kid"] = k.rec.KID
	return tok.SignedString(k.private)
}

// parse checks raw and returns its claims. The error is errTokenInvalid for anything not signed
// by us or not of the wanted use ("" accepts access or refresh, never a cookie nor a client's), and errTokenExpired for a token that is
// authentic and complete but past its expiry; the claims come back with that error too.
// Revocation is not parse's business.
func (t *tokens) parse(raw, use string) (*claims, error) {
	now := t.now()
	c, ok := t.verified.get(raw)
	if !ok {
		c = new(claims)
		keys := t.keys.current()
		var used *verifyKey
		if _, err := t.parser.ParseWithClaims(raw, c, func(tok *jwt.Token) (any, error) {
			k, err := keys.lookup(tok)
			if err != nil {
				return nil, err
			}
			used = k
			return k.key, nil
		}); err != nil {
			return nil, errTokenInvalid
		}
		aud := t.audienceOf(c)
		if c.Issuer != t.issuer || (aud != "" && c.Audience != aud) || (c.isOAuth() && c.Client == "") ||
			c.Subject == "" || c.ID == "" || c.Session == "" ||
			(c.Use != useAccess && c.Use != useRefresh && c.Use != useCookie && !c.isOAuth()) ||
			c.IssuedAt == 0 || c.Expiry == 0 || time.Unix(c.IssuedAt, 0).After(now.Add(t.leeway)) {
			return nil, errTokenInvalid
		}
		if !t.expired(c, now) {
			t.verified.put(raw, c, used, now)
		}
	}
	if use != "" && c.Use != use || use == "" && (c.Use == useCookie || c.isOAuth()) {
		return nil, errTokenInvalid
	}
	if t.expired(c, now) {
		return c, errTokenExpired
	}
	return c, nil
}

// verifiedCache remembers tokens whose signature and claims were checked, so that a repeat check
// of the same token (a proxy asks once per request) is a map lookup. Only the exact bytes of a
// verified token hit; expiry and revocation are still checked on every use, and so is the key
// that signed it: a token of a revoked key misses, and is refused by the full check. It holds at
// most max entries: when full, expired entries go first and then an arbitrary half.
type verifiedCache struct {
	mu  sync.RWMutex
	m   map[string]verifiedToken
	max int
}

// verifiedToken is a checked token's claims and the key its signature was checked with.
type verifiedToken struct {
	c   *claims
	key *verifyKey
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{m: make(map[string]verifiedToken), max: max}
}

func (v *verifiedCache) get(raw string) (*claims, bool) {
	v.mu.RLock()
	e, ok := v.m[raw]
	v.mu.RUnlock()
	if !ok || e.key.dropped.Load() {
		return nil, false
	}
	return e.c, true
}

func (v *verifiedCache) put(raw string, c *claims, key *verifyKey, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= v.max {
		for k, old := range v.m {
			if !now.Before(old.c.expiresAt()) || old.key.dropped.Load() {
				delete(v.m, k)
			}
		}
		for k := range v.m {
			if len(v.m) < v.max/2 {
				break
			}
			delete(v.m, k)
		}
	}
	v.m[raw] = verifiedToken{c, key}
}

// drop forgets every token checked with key, which has left the key set.
func (v *verifiedCache) drop(key *verifyKey) {
	v.mu.Lock()
	defer v.mu.Unlock()
	for raw, e := range v.m {
		if e.key == key {
			delete(v.m, raw)
		}
	}
}

// cookieCredential is the value of a cookie session's cookie and when it expires.
type cookieCredential struct {
	value   string
	expires time.Time
}

// clientTokenAudience is the aud of the OpenID provider's access and refresh tokens: the
// provider's userinfo endpoint, their one resource. Never the client's id, which is an ID token's
// aud: a relying party checking an ID token (signature, iss, aud) must not take a client's access
// token for one, though with JWT_ALG's algorithm both may be signed by the same key.
const clientTokenAudience = "auth-oauth2-userinfo"

// cookieAudience is the aud of every cookie credential, whatever JWT_AUDIENCE is, so that a
// service checking tokens itself against JWT_AUDIENCE refuses a cookie as a bearer token; the
// service itself tells them apart by token_use.
const cookieAudience = "auth-portal-cookie"
