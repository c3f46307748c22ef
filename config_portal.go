package main

// config_portal.go reads the login portal's settings: its public URL, the cookie's domain and life,
// and the hosts a login may return to.

import (
	"fmt"
	"net"
	"net/url"
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

// loadPortalConfig reads PUBLIC_URL and what goes with it. In development (no MONGODB_URI) the
// portal is on at http://localhost:PORT, so that it works out of the box.
func loadPortalConfig(s *settings, mongoURI, port string, sessionMaxAge time.Duration) portalConfig {
	var p portalConfig
	raw := s.str("PUBLIC_URL", "")
	if raw == "" && mongoURI == "" {
		raw = "http://localhost:" + port
	}
	p.ttl = s.dur("PORTAL_SESSION_TTL", "12h", false)
	if sessionMaxAge > 0 && p.ttl > sessionMaxAge {
		if strings.TrimSpace(s.getenv("PORTAL_SESSION_TTL")) != "" {
			s.errs = append(s.errs, fmt.Errorf("PORTAL_SESSION_TTL: %v is longer than SESSION_MAX_AGE (%v)", p.ttl, sessionMaxAge))
		}
		p.ttl = sessionMaxAge
	}
	for _, h := range strings.FieldsFunc(s.getenv("REDIRECT_ALLOWED_HOSTS"), func(r rune) bool { return r == ',' || r == ' ' }) {
		h = strings.ToLower(h)
		if !isHostName(h) {
			s.errs = append(s.errs, fmt.Errorf("REDIRECT_ALLOWED_HOSTS: want host names such as app.example.com, comma-separated, got %q", h))
			continue
		}
		p.redirectHosts = append(p.redirectHosts, h)
	}
	if d := strings.ToLower(strings.TrimPrefix(s.str("COOKIE_DOMAIN", ""), ".")); d != "" {
		if !isHostName(d) || net.ParseIP(d) != nil || !strings.Contains(d, ".") {
			s.errs = append(s.errs, fmt.Errorf("COOKIE_DOMAIN: want a domain such as example.com, got %q", s.getenv("COOKIE_DOMAIN")))
		}
		p.cookieDomain = d
	}
	if raw == "" {
		if p.cookieDomain != "" || len(p.redirectHosts) > 0 {
			s.errs = append(s.errs, fmt.Errorf("PUBLIC_URL: required with COOKIE_DOMAIN or REDIRECT_ALLOWED_HOSTS: the portal's address, such as https://auth.example.com"))
		}
		return p
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || !isHostName(strings.ToLower(u.Hostname())) {
		s.errs = append(s.errs, fmt.Errorf("PUBLIC_URL: want the portal's http(s) address without a path, such as https://auth.example.com, got %q", raw))
		return p
	}
	host := strings.ToLower(u.Hostname())
	if u.Scheme == "http" && mongoURI != "" && host != "localhost" && !isLoopback(host) {
		// Without https the cookie would travel in clear; only a machine's own address is exempt.
		s.errs = append(s.errs, fmt.Errorf("PUBLIC_URL: want https outside localhost, got %q", raw))
	}
	if p.cookieDomain != "" && !underDomain(host, p.cookieDomain) {
		s.errs = append(s.errs, fmt.Errorf("COOKIE_DOMAIN: %q does not contain PUBLIC_URL's host %q, so browsers would refuse the cookie", p.cookieDomain, host))
	}
	p.publicURL = u.Scheme + "://" + strings.ToLower(u.Host)
	p.secure = u.Scheme == "https"
	return p
}

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
