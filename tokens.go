package main

import (
	"crypto/rand"
	"encoding/base64"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

const (
	useAccess  = "access"
	useRefresh = "refresh"

	// clockSkew is how far the clocks of the issuing and the checking machine may disagree.
	clockSkew = 5 * time.Second
)

// claims is the whole content of a token, parsed once into a typed struct.
type claims struct {
	Issuer   string `json:"iss"`
	Subject  string `json:"sub"`
	Email    string `json:"email"`
	ID       string `json:"jti"`
	Session  string `json:"sid"`
	Use      string `json:"token_use"`
	IssuedAt int64  `json:"iat"`
	Expiry   int64  `json:"exp"`
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
func (c *claims) GetAudience() (jwt.ClaimStrings, error)  { return nil, nil }

func (c *claims) expiresAt() time.Time { return time.Unix(c.Expiry, 0) }

// expired reports whether the token is past its expiry at now, clock skew allowed for.
func (c *claims) expired(now time.Time) bool { return !now.Before(c.expiresAt().Add(clockSkew)) }

// tokens issues and checks the service's HS256 JWTs.
type tokens struct {
	secret     []byte
	issuer     string
	accessTTL  time.Duration
	refreshTTL time.Duration
	now        func() time.Time
	parser     *jwt.Parser
	verified   *verifiedCache
}

func newTokens(secret []byte, issuer string, accessTTL, refreshTTL time.Duration, now func() time.Time) *tokens {
	return &tokens{
		secret:     secret,
		issuer:     issuer,
		accessTTL:  accessTTL,
		refreshTTL: refreshTTL,
		now:        now,
		// Claims are validated by parse itself, in a fixed order, so that "expired" is only ever
		// said of a token that is otherwise entirely valid (logout accepts those).
		parser:   jwt.NewParser(jwt.WithValidMethods([]string{"HS256"}), jwt.WithoutClaimsValidation()),
		verified: newVerifiedCache(10000),
	}
}

// maxTTL is the longest any token of a session lives: a session revocation must last that long.
func (t *tokens) maxTTL() time.Duration { return max(t.accessTTL, t.refreshTTL) + clockSkew }

// tokenPair is the body of a login or refresh answer.
type tokenPair struct {
	AccessToken      string `json:"access_token"`
	RefreshToken     string `json:"refresh_token"`
	TokenType        string `json:"token_type"`
	ExpiresIn        int64  `json:"expires_in"`
	RefreshExpiresIn int64  `json:"refresh_expires_in"`
}

// issue signs an access and a refresh token for user in login session sid.
func (t *tokens) issue(userID, email, sid string) (tokenPair, error) {
	now := t.now()
	access, err := t.sign(claims{Subject: userID, Email: email, Session: sid, Use: useAccess}, now, t.accessTTL)
	if err != nil {
		return tokenPair{}, err
	}
	refresh, err := t.sign(claims{Subject: userID, Email: email, Session: sid, Use: useRefresh}, now, t.refreshTTL)
	if err != nil {
		return tokenPair{}, err
	}
	return tokenPair{
		AccessToken:      access,
		RefreshToken:     refresh,
		TokenType:        "Bearer",
		ExpiresIn:        int64(t.accessTTL / time.Second),
		RefreshExpiresIn: int64(t.refreshTTL / time.Second),
	}, nil
}

func (t *tokens) sign(c claims, now time.Time, ttl time.Duration) (string, error) {
	c.Issuer = t.issuer
	c.ID = newID()
	c.IssuedAt = now.Unix()
	c.Expiry = now.Add(ttl).Unix()
	return jwt.NewWithClaims(jwt.SigningMethodHS256, &c).SignedString(t.secret)
}

// parse checks raw and returns its claims. The error is errTokenInvalid for anything not signed
// by us or not of the wanted use ("" accepts either), and errTokenExpired for a token that is
// authentic and complete but past its expiry; the claims come back with that error too.
// Revocation is not parse's business.
func (t *tokens) parse(raw, use string) (*claims, error) {
	now := t.now()
	c, ok := t.verified.get(raw)
	if !ok {
		c = new(claims)
		if _, err := t.parser.ParseWithClaims(raw, c, t.key); err != nil {
			return nil, errTokenInvalid
		}
		if c.Issuer != t.issuer || c.Subject == "" || c.ID == "" || c.Session == "" ||
			(c.Use != useAccess && c.Use != useRefresh) ||
			c.IssuedAt == 0 || c.Expiry == 0 || time.Unix(c.IssuedAt, 0).After(now.Add(clockSkew)) {
			return nil, errTokenInvalid
		}
		if !c.expired(now) {
			t.verified.put(raw, c, now)
		}
	}
	if use != "" && c.Use != use {
		return nil, errTokenInvalid
	}
	if c.expired(now) {
		return c, errTokenExpired
	}
	return c, nil
}

func (t *tokens) key(*jwt.Token) (any, error) { return t.secret, nil }

// newID returns 128 random bits, URL-safe: token ids, session ids and user ids.
func newID() string {
	var b [16]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// verifiedCache remembers tokens whose signature and claims were checked, so that a repeat check
// of the same token (a proxy asks once per request) is a map lookup. Only the exact bytes of a
// verified token hit; expiry and revocation are still checked on every use. It holds at most max
// entries: when full, expired entries go first and then an arbitrary half.
type verifiedCache struct {
	mu  sync.RWMutex
	m   map[string]*claims
	max int
}

func newVerifiedCache(max int) *verifiedCache {
	return &verifiedCache{m: make(map[string]*claims), max: max}
}

func (v *verifiedCache) get(raw string) (*claims, bool) {
	v.mu.RLock()
	c, ok := v.m[raw]
	v.mu.RUnlock()
	return c, ok
}

func (v *verifiedCache) put(raw string, c *claims, now time.Time) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if len(v.m) >= v.max {
		for k, old := range v.m {
			if old.expired(now) {
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
	v.m[raw] = c
}
