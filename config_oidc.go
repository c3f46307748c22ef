package main

// config_oidc.go is the OpenID provider's part of the settings: on with the portal, its issuer,
// the clients file, and the lifetimes of what it issues.

import (
	"crypto/rsa"
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
