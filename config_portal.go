package main

// config_portal.go is the login portal's settings, which config.go reads: its public URL, the
// cookie's domain and life, and the hosts a login may return to.

import (
	"net"
	"strings"
	"time"
)

// portalConfig is the login portal's part of the configuration; see the README's table. The
// portal is off when publicURL is "".
type portalConfig struct {
	publicURL    string // PUBLIC_URL without a trailing slash: scheme://host[:port]
	secure       bool   // PUBLIC_URL is https: the cookie is Secure, and a login returns only to https
	cookieDomain string // COOKIE_DOMAIN, lower case, without a leading dot; "" for the portal's host only
	ttl          time.Duration
	// redirectHosts are REDIRECT_ALLOWED_HOSTS, lower-case host names (any port).
	redirectHosts []string
}

func (p portalConfig) on() bool { return p.publicURL != "" }

// isHostName reports whether h (lower case) is a DNS name or an IP address: letters, digits,
// hyphens and dots, or an address in brackets' content.
func isHostName(h string) bool {
	if net.ParseIP(h) != nil {
		return true
	}
	if h == "" || len(h) > 253 || strings.HasPrefix(h, ".") || strings.HasSuffix(h, ".") || strings.Contains(h, "..") {
		return false
	}
	for _, r := range h {
		if !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.') {
			return false
		}
	}
	return true
}

func isLoopback(host string) bool {
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// underDomain reports whether host is domain or a name under it (both lower case).
func underDomain(host, domain string) bool {
	return host == domain || strings.HasSuffix(host, "."+domain)
}
