package main

// config_passkeys.go is the passkeys' settings, which config.go reads: the relying party's ID and
// name, and the origins a ceremony may come from.

import (
	"fmt"
	"net"
	"net/url"
	"strings"
)

// passkeyConfig is WEBAUTHN_RP_ID, WEBAUTHN_RP_NAME and WEBAUTHN_ORIGINS. With no RP ID, passkeys
// are off and their endpoints answer 501.
type passkeyConfig struct {
	rpID    string // "" when passkeys are off
	rpName  string
	origins []string // scheme://host[:port], each the RP ID or under it
	// warnings are said at start: why passkeys are off, or which default origins were left out.
	warnings []string
}

func (p passkeyConfig) on() bool { return p.rpID != "" }

// loadPasskeyConfig reads the passkeys' settings. The RP ID defaults to COOKIE_DOMAIN, else the
// host of PUBLIC_URL, else localhost in development (dev); an IP address is no valid RP ID, so a
// default that is one turns passkeys off. An origin outside the RP ID would make browsers refuse
// every ceremony: WEBAUTHN_ORIGINS set so refuses the start, while CORS_ALLOWED_ORIGINS, which
// defaults into it, keeps serving its other purpose and is only left out of the origins.
func loadPasskeyConfig(s *settings, appName string, portal portalConfig, corsOrigins []string, dev bool) passkeyConfig {
	p := passkeyConfig{rpName: s.str("WEBAUTHN_RP_NAME", appName)}
	publicHost := ""
	if u, err := url.Parse(portal.publicURL); err == nil && portal.publicURL != "" {
		publicHost = strings.ToLower(u.Hostname())
	}
	rpID := strings.ToLower(s.str("WEBAUTHN_RP_ID", ""))
	switch {
	case rpID != "":
		if !isHostName(rpID) || net.ParseIP(rpID) != nil {
			s.errs = append(s.errs, fmt.Errorf("WEBAUTHN_RP_ID: want a domain such as example.com (no scheme, port or IP address), got %q", s.getenv("WEBAUTHN_RP_ID")))
			return p
		}
	case portal.cookieDomain != "":
		rpID = portal.cookieDomain
	case publicHost != "":
		rpID = publicHost
	case dev:
		rpID = "localhost"
	default:
		p.warnings = append(p.warnings, "passkeys are off: set WEBAUTHN_RP_ID (or PUBLIC_URL) to the domain they belong to")
		return p
	}
	if net.ParseIP(rpID) != nil {
		p.warnings = append(p.warnings, fmt.Sprintf("passkeys are off: their default RP ID %q is an IP address, which browsers refuse; set WEBAUTHN_RP_ID to a domain", rpID))
		return p
	}
	if raw := s.str("WEBAUTHN_ORIGINS", ""); raw != "" {
		for _, o := range strings.FieldsFunc(raw, func(r rune) bool { return r == ',' || r == ' ' }) {
			origin, err := passkeyOrigin(o, rpID)
			if err != nil {
				s.errs = append(s.errs, fmt.Errorf("WEBAUTHN_ORIGINS: %w", err))
				continue
			}
			p.origins = append(p.origins, origin)
		}
	} else {
		defaults := corsOrigins
		if portal.publicURL != "" {
			defaults = append([]string{portal.publicURL}, corsOrigins...)
		}
		for _, o := range defaults {
			origin, err := passkeyOrigin(o, rpID)
			if err != nil {
				p.warnings = append(p.warnings, fmt.Sprintf("passkeys: %v; it is left out of the ceremonies' origins (set WEBAUTHN_ORIGINS to choose them)", err))
				continue
			}
			p.origins = append(p.origins, origin)
		}
		if len(p.origins) == 0 {
			p.warnings = append(p.warnings, fmt.Sprintf("passkeys are off: no origin under the RP ID %q; set WEBAUTHN_ORIGINS, or PUBLIC_URL", rpID))
			return p
		}
	}
	p.rpID = rpID
	return p
}

// passkeyOrigin is raw as an origin of a ceremony for rpID: https, or http on localhost, whose
// host is rpID or under it.
func passkeyOrigin(raw, rpID string) (string, error) {
	u, err := url.Parse(strings.TrimSuffix(strings.TrimSpace(raw), "/"))
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("%q is not an origin such as https://app.example.com", raw)
	}
	host := strings.ToLower(u.Hostname())
	local := host == "localhost" || strings.HasSuffix(host, ".localhost")
	if u.Scheme != "https" && !(u.Scheme == "http" && local) {
		return "", fmt.Errorf("%q is not https, which browsers require of a passkey's origin outside localhost", raw)
	}
	if !underDomain(host, rpID) {
		return "", fmt.Errorf("the origin %q is not the RP ID %q or under it, so browsers would refuse its ceremonies", raw, rpID)
	}
	return u.Scheme + "://" + strings.ToLower(u.Host), nil
}
