package main

// config_oidc.go is the OpenID provider's settings, which config.go reads: on with the portal, its
// issuer, the clients file, and the lifetimes of what it issues.

import (
	"crypto/rsa"
	"fmt"
	"net/url"
	"strings"
	"time"
)

// oidcConfig is the OpenID provider's part of the configuration. It is on whenever the portal is
// (PUBLIC_URL set), and its issuer is PUBLIC_URL.
type oidcConfig struct {
	issuer      string // PUBLIC_URL; "" when the provider is off
	clientsFile string // OIDC_CLIENTS_FILE: clients declared for development
	// codeTTL is how long an authorization code lives; idTokenTTL an ID token. Fixed, fields so
	// that tests can read them.
	codeTTL, idTokenTTL time.Duration
	// rsaKey makes the RS256 key pairs of ID tokens: rsaKeyPair; tests share one key.
	rsaKey func() (*rsa.PrivateKey, error)
}

func (o oidcConfig) on() bool { return o.issuer != "" }

// oauthCodeTTL is an authorization code's life: long enough for a redirect and a back-channel
// call, short enough that a leaked one is stale (RFC 6749 section 4.1.2 says at most ten minutes).
const oauthCodeTTL = 60 * time.Second

// loadOIDCConfig reads the provider's settings once the portal's are known. JWT_ISSUER that is a
// URL names an issuer too: two different ones would give a relying party that checks the API's
// tokens and the ID tokens two answers to "who issued this", so the start is refused.
func loadOIDCConfig(s *settings, p portalConfig, jwtIssuer string) oidcConfig {
	o := oidcConfig{clientsFile: s.str("OIDC_CLIENTS_FILE", ""), codeTTL: oauthCodeTTL, idTokenTTL: 10 * time.Minute,
		rsaKey: rsaKeyPair}
	if !p.on() {
		if o.clientsFile != "" {
			s.errs = append(s.errs, fmt.Errorf("OIDC_CLIENTS_FILE: the OpenID provider is on only with PUBLIC_URL, its issuer"))
		}
		return o
	}
	o.issuer = p.publicURL
	if u, err := url.Parse(jwtIssuer); err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" &&
		strings.TrimSuffix(jwtIssuer, "/") != p.publicURL {
		s.errs = append(s.errs, fmt.Errorf("JWT_ISSUER: %q is a URL other than PUBLIC_URL (%s), the OpenID provider's issuer; "+
			"set JWT_ISSUER to %s or to a name that is no URL", jwtIssuer, p.publicURL, p.publicURL))
	}
	return o
}
