package main

import (
	"strings"
	"testing"
	"time"
)

func TestPortalSettings(t *testing.T) {
	t.Parallel()
	prod := map[string]string{"MONGODB_URI": "mongodb://db.example.com", "JWT_SECRET": testSecret}
	with := func(base map[string]string, kv ...string) map[string]string {
		env := map[string]string{}
		for k, v := range base {
			env[k] = v
		}
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return env
	}
	for _, tt := range []struct {
		name    string
		env     map[string]string
		refused string
		check   func(t *testing.T, c config)
	}{
		{name: "without PUBLIC_URL in production the portal is off and nothing changes", env: prod,
			check: func(t *testing.T, c config) {
				if c.portalCfg.on() || c.mail.appURL != "" {
					t.Fatalf("portal %+v, APP_URL %q", c.portalCfg, c.mail.appURL)
				}
			}},
		{name: "in development the portal is on at localhost and PORT, and mails link to it", env: with(nil, "PORT", "9000"),
			check: func(t *testing.T, c config) {
				if c.portalCfg.publicURL != "http://localhost:9000" || c.mail.appURL != "http://localhost:9000" || c.portalCfg.secure {
					t.Fatalf("portal %+v, APP_URL %q", c.portalCfg, c.mail.appURL)
				}
			}},
		{name: "APP_URL defaults to PUBLIC_URL with SMTP_URL",
			env: with(prod, "PUBLIC_URL", "https://Auth.Example.com/", "SMTP_URL", "smtp://mail.example.com", "MAIL_FROM", "a@example.com"),
			check: func(t *testing.T, c config) {
				if c.portalCfg.publicURL != "https://auth.example.com" || !c.portalCfg.secure || c.mail.appURL != "https://auth.example.com" {
					t.Fatalf("portal %+v, APP_URL %q", c.portalCfg, c.mail.appURL)
				}
			}},
		{name: "an APP_URL of its own wins", env: with(nil, "APP_URL", "http://localhost:3000"),
			check: func(t *testing.T, c config) {
				if c.mail.appURL != "http://localhost:3000" {
					t.Fatalf("APP_URL %q", c.mail.appURL)
				}
			}},
		{name: "the portal session lives 12 hours by default", env: prod,
			check: func(t *testing.T, c config) {
				if c.portalCfg.ttl != 12*time.Hour {
					t.Fatalf("ttl %v", c.portalCfg.ttl)
				}
			}},
		{name: "the default portal session never outlives SESSION_MAX_AGE", env: with(prod, "SESSION_MAX_AGE", "1h"),
			check: func(t *testing.T, c config) {
				if c.portalCfg.ttl != time.Hour {
					t.Fatalf("ttl %v", c.portalCfg.ttl)
				}
			}},
		{name: "COOKIE_DOMAIN and REDIRECT_ALLOWED_HOSTS are read in lower case",
			env: with(prod, "PUBLIC_URL", "https://auth.example.com", "COOKIE_DOMAIN", ".Example.com", "REDIRECT_ALLOWED_HOSTS", "Docs.Other.org, x.org"),
			check: func(t *testing.T, c config) {
				if c.portalCfg.cookieDomain != "example.com" || strings.Join(c.portalCfg.redirectHosts, ",") != "docs.other.org,x.org" {
					t.Fatalf("portal %+v", c.portalCfg)
				}
			}},
		{name: "a PORTAL_SESSION_TTL beyond SESSION_MAX_AGE is refused", env: with(prod, "SESSION_MAX_AGE", "1h", "PORTAL_SESSION_TTL", "2h"), refused: "PORTAL_SESSION_TTL"},
		{name: "a PORTAL_SESSION_TTL that is no duration is refused", env: with(prod, "PORTAL_SESSION_TTL", "12"), refused: "PORTAL_SESSION_TTL"},
		{name: "a PUBLIC_URL with a path is refused", env: with(prod, "PUBLIC_URL", "https://example.com/auth"), refused: "PUBLIC_URL"},
		{name: "a PUBLIC_URL of another scheme is refused", env: with(prod, "PUBLIC_URL", "javascript:alert(1)"), refused: "PUBLIC_URL"},
		{name: "a PUBLIC_URL with user info is refused", env: with(prod, "PUBLIC_URL", "https://u@auth.example.com"), refused: "PUBLIC_URL"},
		{name: "an http PUBLIC_URL in production is refused", env: with(prod, "PUBLIC_URL", "http://auth.example.com"), refused: "PUBLIC_URL: want https"},
		{name: "a COOKIE_DOMAIN that does not hold PUBLIC_URL's host is refused",
			env: with(prod, "PUBLIC_URL", "https://auth.example.com", "COOKIE_DOMAIN", "example.org"), refused: "COOKIE_DOMAIN"},
		{name: "a COOKIE_DOMAIN of one label is refused", env: with(nil, "COOKIE_DOMAIN", "localhost"), refused: "COOKIE_DOMAIN"},
		{name: "a COOKIE_DOMAIN without the portal is refused", env: with(prod, "COOKIE_DOMAIN", "example.com"), refused: "PUBLIC_URL: required"},
		{name: "a REDIRECT_ALLOWED_HOSTS entry with a scheme is refused", env: with(nil, "REDIRECT_ALLOWED_HOSTS", "https://app.example.com"), refused: "REDIRECT_ALLOWED_HOSTS"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := loadConfig(func(k string) string { return tt.env[k] })
			if tt.refused != "" {
				if err == nil || !strings.Contains(err.Error(), tt.refused) {
					t.Fatalf("got %v, want an error naming %q", err, tt.refused)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			tt.check(t, c)
		})
	}
}
