package main

// config.go reads the service's settings from the environment and checks them before the start.

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/mail"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// config is everything the environment sets; see the README's table.
type config struct {
	host          string
	port          string
	mongoURI      string
	mongoDatabase string
	jwtSecret     string
	issuer        string
	// Signing keys: JWT_ALG, JWT_SECRET_PREVIOUS (checking only; with EdDSA or ES256, unsealing
	// only), JWT_AUDIENCE, JWT_KEY_ROTATION and JWT_KEY_PUBLISH_AHEAD.
	jwtAlg           string
	previousSecrets  [][]byte
	audience         string
	keyRotation      time.Duration
	keyPublishAhead  time.Duration
	accessTTL        time.Duration
	refreshTTL       time.Duration
	reuseInterval    time.Duration
	sessionMaxAge    time.Duration // 0: no limit
	leeway           time.Duration
	syncInterval     time.Duration
	revocationMaxLag time.Duration // 0: off
	dataDir          string
	logLevel         slog.Level
	logFormat        string
	trustedProxies   []netip.Prefix
	corsOrigins      []string
	failureWindow    time.Duration
	maxFailures      int
	maxClientFails   int
	mfaMaxFailures   int // wrong second factors for one account, from every client, within failureWindow
	signupMax        int
	signupWindow     time.Duration
	hashConcurrent   int
	hashQueue        int
	hashWait         time.Duration
	memoryLimit      int64 // bytes; 0 leaves the Go runtime's default (or GOMEMLIMIT)
	metricsOn        bool
	metricsAddr      string // the metrics listener's address, or metricsOnAPIPort
	appName          string // shown in authenticator apps and mails
	adminToken       string // the admin API is served only when set
	adminAddr        string
	mail             mailConfig
	signupEnabled    bool       // SIGNUP_ENABLED: off, only the admin API creates accounts
	forwardAuthAllow *allowList // FORWARD_AUTH_ALLOW; nil lets every signed-in user through
	portalCfg        portalConfig
	oidc             oidcConfig
	passkeys         passkeyConfig

	// HTTP server limits; fixed defaults, fields so that tests can shorten them.
	readHeaderTimeout time.Duration
	readTimeout       time.Duration
	writeTimeout      time.Duration
	idleTimeout       time.Duration
	maxHeaderBytes    int

	// dbWait is the longest one database call may take: the driver's timeout, 5s unless
	// MONGODB_URI sets timeoutMS.
	dbWait time.Duration
}

// metricsOnAPIPort is the METRICS_ADDR that serves /metrics on the API's own port. Not the
// default: the counters tell anyone who can read them which addresses have accounts (a reset
// request mails only a known address).
const metricsOnAPIPort = "public"

func loadConfig(getenv func(string) string) (config, error) {
	s := &settings{getenv: getenv}
	c := config{
		host:             s.str("HOST", ""),
		port:             s.str("PORT", "7878"),
		mongoURI:         s.str("MONGODB_URI", ""),
		mongoDatabase:    s.str("MONGODB_DATABASE", "auth"),
		jwtSecret:        getenv("JWT_SECRET"),
		issuer:           s.str("JWT_ISSUER", "auth"),
		audience:         s.str("JWT_AUDIENCE", ""),
		keyRotation:      s.dur("JWT_KEY_ROTATION", "168h", false),
		keyPublishAhead:  s.dur("JWT_KEY_PUBLISH_AHEAD", "1h", false),
		accessTTL:        s.dur("ACCESS_TOKEN_TTL", "3m", false),
		refreshTTL:       s.dur("REFRESH_TOKEN_TTL", "5m", false),
		reuseInterval:    s.dur("REFRESH_REUSE_INTERVAL", "10s", true),
		sessionMaxAge:    s.dur("SESSION_MAX_AGE", "720h", true),
		leeway:           s.dur("TOKEN_LEEWAY", "5s", true),
		syncInterval:     s.dur("REVOCATION_SYNC_INTERVAL", "1s", false),
		revocationMaxLag: s.dur("REVOCATION_MAX_LAG", "0s", true),
		dataDir:          s.str("DATA_DIR", "./data"),
		logFormat:        s.str("LOG_FORMAT", "json"),
		corsOrigins:      strings.FieldsFunc(getenv("CORS_ALLOWED_ORIGINS"), func(r rune) bool { return r == ',' || r == ' ' }),
		failureWindow:    s.dur("LOGIN_FAILURE_WINDOW", "5m", false),
		maxFailures:      s.num("LOGIN_MAX_FAILURES", 5),
		maxClientFails:   s.num("LOGIN_MAX_CLIENT_FAILURES", 50),
		mfaMaxFailures:   s.num("MFA_MAX_FAILURES", 5),
		signupMax:        s.num("SIGNUP_MAX_PER_CLIENT", 10),
		signupWindow:     s.dur("SIGNUP_WINDOW", "10m", false),
		// Each hash holds 12 MiB (19 MiB one kept from earlier versions): more than four at once
		// would break the login storm's memory budget on a large machine without buying much.
		hashConcurrent: max(s.num("HASH_CONCURRENCY", min(runtime.NumCPU(), 4)), 1),
		hashQueue:      s.num("HASH_QUEUE", 512),
		hashWait:       s.dur("HASH_WAIT", "3s", false),
		memoryLimit:    int64(s.num("MEMORY_LIMIT_MIB", 160)) << 20,
		metricsAddr:    s.str("METRICS_ADDR", "127.0.0.1:7880"),
		appName:        s.str("APP_NAME", "auth"),
		adminToken:     getenv("ADMIN_TOKEN"),
		adminAddr:      s.str("ADMIN_ADDR", "127.0.0.1:7879"),

		readHeaderTimeout: 5 * time.Second,
		readTimeout:       10 * time.Second,
		writeTimeout:      15 * time.Second,
		idleTimeout:       90 * time.Second,
		// Above what nginx forwards by default (4 x 8 KiB), so that a proxied request with big
		// cookies reaches the token check instead of a 431 that nginx would turn into a 500.
		maxHeaderBytes: 64 << 10,
		dbWait:         *mongoOptions("mongodb://localhost").Timeout,
	}
	if err := c.logLevel.UnmarshalText([]byte(s.str("LOG_LEVEL", "info"))); err != nil {
		s.errs = append(s.errs, fmt.Errorf("LOG_LEVEL: want debug, info, warn or error, got %q", getenv("LOG_LEVEL")))
	}
	if c.logFormat != "json" && c.logFormat != "text" {
		s.errs = append(s.errs, fmt.Errorf("LOG_FORMAT: want json or text, got %q", c.logFormat))
	}
	if _, err := strconv.ParseUint(c.port, 10, 16); err != nil {
		s.errs = append(s.errs, fmt.Errorf("PORT: want a port number, got %q", c.port))
	}
	var err error
	if c.metricsOn, err = strconv.ParseBool(s.str("METRICS_ENABLED", "true")); err != nil {
		s.errs = append(s.errs, fmt.Errorf("METRICS_ENABLED: want true or false, got %q", getenv("METRICS_ENABLED")))
	}
	if _, _, err := net.SplitHostPort(c.metricsAddr); err != nil && c.metricsAddr != metricsOnAPIPort {
		s.errs = append(s.errs, fmt.Errorf("METRICS_ADDR: want host:port or %s, got %q", metricsOnAPIPort, c.metricsAddr))
	}
	if c.signupEnabled, err = strconv.ParseBool(s.str("SIGNUP_ENABLED", "true")); err != nil {
		s.errs = append(s.errs, fmt.Errorf("SIGNUP_ENABLED: want true or false, got %q", getenv("SIGNUP_ENABLED")))
	}
	if v := s.str("FORWARD_AUTH_ALLOW", ""); v != "" {
		if c.forwardAuthAllow, err = parseAllowList(v); err != nil {
			s.errs = append(s.errs, fmt.Errorf("FORWARD_AUTH_ALLOW: %w", err))
		}
	}
	if c.trustedProxies, err = parseTrustedProxies(getenv("TRUSTED_PROXIES")); err != nil {
		s.errs = append(s.errs, err)
	}
	if c.jwtSecret != "" && len(c.jwtSecret) < 32 {
		s.errs = append(s.errs, errors.New("JWT_SECRET: must be at least 32 bytes; generate one with: openssl rand -base64 48"))
	}
	switch alg := s.str("JWT_ALG", algHS256); strings.ToUpper(alg) {
	case "HS256":
		c.jwtAlg = algHS256
	case "EDDSA":
		c.jwtAlg = algEdDSA
	case "ES256":
		c.jwtAlg = algES256
	default:
		s.errs = append(s.errs, fmt.Errorf("JWT_ALG: want HS256, EdDSA or ES256, got %q", alg))
	}
	for _, p := range strings.Split(getenv("JWT_SECRET_PREVIOUS"), ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		} else if len(p) < 32 {
			s.errs = append(s.errs, errors.New("JWT_SECRET_PREVIOUS: every secret must be at least 32 bytes, as JWT_SECRET"))
		}
		c.previousSecrets = append(c.previousSecrets, []byte(p))
	}
	// A key must be in every cached copy of the JWKS before it signs, and published before the
	// key it replaces is due to retire.
	if c.keyPublishAhead > 0 && c.keyPublishAhead <= jwksMaxAge {
		s.errs = append(s.errs, fmt.Errorf("JWT_KEY_PUBLISH_AHEAD: must be longer than the %v that clients may cache the JWKS, got %v", jwksMaxAge, c.keyPublishAhead))
	}
	if c.keyRotation > 0 && c.keyRotation <= c.keyPublishAhead {
		s.errs = append(s.errs, fmt.Errorf("JWT_KEY_ROTATION: must be longer than JWT_KEY_PUBLISH_AHEAD (%v), got %v", c.keyPublishAhead, c.keyRotation))
	}
	if c.revocationMaxLag > 0 && c.revocationMaxLag <= c.syncInterval {
		s.errs = append(s.errs, fmt.Errorf("REVOCATION_MAX_LAG: %s is not longer than REVOCATION_SYNC_INTERVAL (%s): every instance would refuse every token between two polls",
			c.revocationMaxLag, c.syncInterval))
	}
	if c.adminToken != "" && len(c.adminToken) < 32 {
		s.errs = append(s.errs, errors.New("ADMIN_TOKEN: must be at least 32 bytes; generate one with: openssl rand -base64 48"))
	}
	c.portalCfg = loadPortalConfig(s, c.mongoURI, c.port, c.sessionMaxAge)
	c.mail = loadMailConfig(s, c.mongoURI, c.dataDir, c.appName, c.portalCfg.publicURL)
	c.oidc = loadOIDCConfig(s, c.portalCfg, c.issuer)
	c.passkeys = loadPasskeyConfig(s, c.appName, c.portalCfg, c.corsOrigins, c.mongoURI == "")
	if c.mongoURI != "" && c.jwtSecret == "" {
		s.errs = append(s.errs, errors.New("JWT_SECRET: required when MONGODB_URI is set (at least 32 bytes; generate one with: openssl rand -base64 48)"))
	}
	return c, errors.Join(s.errs...)
}

// settings reads the environment for loadConfig: a blank variable takes its default, and each
// value that is not understood is kept as an error naming its variable, so that a bad start names
// them all at once.
type settings struct {
	getenv func(string) string
	errs   []error
}

func (s *settings) str(key, def string) string {
	if v := strings.TrimSpace(s.getenv(key)); v != "" {
		return v
	}
	return def
}

// dur is a Go duration; zero is allowed only where it means "none" (zeroOK).
func (s *settings) dur(key, def string, zeroOK bool) time.Duration {
	d, err := time.ParseDuration(s.str(key, def))
	if err != nil || d < 0 || (d == 0 && !zeroOK) {
		s.errs = append(s.errs, fmt.Errorf("%s: want a positive Go duration such as %s, got %q", key, def, s.getenv(key)))
	}
	return d
}

func (s *settings) num(key string, def int) int {
	n, err := strconv.Atoi(s.str(key, strconv.Itoa(def)))
	if err != nil || n < 0 {
		s.errs = append(s.errs, fmt.Errorf("%s: want a whole number, got %q", key, s.getenv(key)))
	}
	return n
}

// loadMailConfig reads the email settings. Mail goes over SMTP_URL when it is set; without it the
// development default (no MONGODB_URI) writes mails to files, and production has no mail. APP_URL
// defaults to publicURL, the portal's, when the portal is on.
func loadMailConfig(s *settings, mongoURI, dataDir, appName, publicURL string) mailConfig {
	getenv := s.getenv
	c := mailConfig{
		mode:            mailOff,
		appName:         appName,
		resetTTL:        s.dur("RESET_TOKEN_TTL", "15m", false),
		verifyTTL:       s.dur("VERIFY_TOKEN_TTL", "24h", false),
		addressInterval: s.dur("MAIL_ADDRESS_INTERVAL", "1m", true),
		maxPerAddress:   s.num("MAIL_MAX_PER_ADDRESS", 5),
		maxPerClient:    s.num("MAIL_MAX_PER_CLIENT", 20),
		giveUpAfter:     s.dur("MAIL_GIVE_UP_AFTER", "24h", false),
		poll:            time.Second,
		retryBase:       5 * time.Second,
		retryCap:        5 * time.Minute,
		lease:           2 * time.Minute,
		dialTimeout:     10 * time.Second,
		sendTimeout:     30 * time.Second,
	}
	from, appURL := getenv("MAIL_FROM"), getenv("APP_URL")
	if strings.TrimSpace(appURL) == "" {
		appURL = publicURL
	}
	switch raw := strings.TrimSpace(getenv("SMTP_URL")); {
	case raw != "":
		c.mode = mailSMTP
		var err error
		if c.smtp, err = parseSMTPURL(raw); err != nil {
			s.errs = append(s.errs, err)
		}
		if strings.TrimSpace(from) == "" {
			s.errs = append(s.errs, errors.New("MAIL_FROM: required with SMTP_URL, for example auth@example.com or \"Example <auth@example.com>\""))
		}
		if strings.TrimSpace(appURL) == "" {
			s.errs = append(s.errs, errors.New("APP_URL: required with SMTP_URL when PUBLIC_URL is unset: the base of the links in mails, for example https://app.example.com"))
		}
		if ca := strings.TrimSpace(getenv("SMTP_CA_FILE")); ca != "" {
			if c.smtp.roots, err = loadCAFile(ca); err != nil {
				s.errs = append(s.errs, err)
			}
		}
	case mongoURI == "":
		c.mode, c.dir = mailDir, filepath.Join(dataDir, "mail")
		from, appURL = s.str("MAIL_FROM", "auth@localhost"), s.str("APP_URL", appURL)
	}
	if c.mode != mailOff {
		if a, err := mail.ParseAddress(from); err != nil || !strings.Contains(a.Address, "@") {
			s.errs = append(s.errs, fmt.Errorf("MAIL_FROM: want an address such as auth@example.com, got %q", from))
		} else {
			c.from, c.fromAddr = a.String(), a.Address
		}
		u, err := url.Parse(strings.TrimSpace(appURL))
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.RawQuery != "" || u.Fragment != "" {
			s.errs = append(s.errs, fmt.Errorf("APP_URL: want an http(s) URL without query, such as https://app.example.com, got %q", appURL))
		} else {
			c.appURL = strings.TrimSuffix(u.String(), "/")
		}
		var err2 error
		if c.templates, err2 = loadMailTemplates(getenv("MAIL_TEMPLATES_DIR")); err2 != nil {
			s.errs = append(s.errs, err2)
		}
	}
	def := verificationOff
	if c.mode != mailOff {
		def = verificationOptional
	}
	switch c.verification = s.str("EMAIL_VERIFICATION", def); c.verification {
	case verificationOff:
	case verificationOptional, verificationRequired:
		if c.mode == mailOff {
			s.errs = append(s.errs, fmt.Errorf("EMAIL_VERIFICATION: %s needs mail: set SMTP_URL, or EMAIL_VERIFICATION=off", c.verification))
		}
	default:
		s.errs = append(s.errs, fmt.Errorf("EMAIL_VERIFICATION: want off, optional or required, got %q", c.verification))
	}
	return c
}

// parseSMTPURL reads smtp://user:pass@host:587 (STARTTLS) or smtps://user:pass@host:465.
func parseSMTPURL(raw string) (smtpConfig, error) {
	bad := func(why string) (smtpConfig, error) {
		// The URL holds a password: it is never repeated in the message.
		return smtpConfig{}, errors.New("SMTP_URL: " + why + "; want smtp://user:password@host:587 (STARTTLS) or smtps://user:password@host:465")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return bad("not a URL")
	}
	c := smtpConfig{host: u.Hostname(), port: u.Port()}
	switch u.Scheme {
	case "smtp":
		if c.port == "" {
			c.port = "587"
		}
	case "smtps":
		c.implicitTLS = true
		if c.port == "" {
			c.port = "465"
		}
	default:
		return bad("the scheme must be smtp or smtps")
	}
	if c.host == "" {
		return bad("no host")
	}
	if u.User != nil {
		c.user = u.User.Username()
		c.pass, _ = u.User.Password()
	}
	return c, nil
}

func loadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("SMTP_CA_FILE: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("SMTP_CA_FILE %s: no PEM certificate in it", path)
	}
	return pool, nil
}

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
			s.errs = append(s.errs, fmt.Errorf("PUBLIC_URL: required with COOKIE_DOMAIN or REDIRECT_ALLOWED_HOSTS: the sign-in pages' address, such as https://auth.example.com"))
		}
		return p
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" || u.User != nil ||
		(u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || !isHostName(strings.ToLower(u.Hostname())) {
		s.errs = append(s.errs, fmt.Errorf("PUBLIC_URL: want the sign-in pages' http(s) address without a path, such as https://auth.example.com, got %q", raw))
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

// loadPasskeyConfig reads the passkeys' settings. The RP ID defaults to COOKIE_DOMAIN, else the
// host of PUBLIC_URL, else localhost in development (dev); an IP address is no valid RP ID, so a
// default that is one turns passkeys off. An origin outside the RP ID would make browsers refuse
// every ceremony: WEBAUTHN_ORIGINS set so refuses the start, while CORS_ALLOWED_ORIGINS, which
// defaults into it, keeps serving its other purpose and is only left out of the origins.
func loadPasskeyConfig(s *settings, appName string, pc portalConfig, corsOrigins []string, dev bool) passkeyConfig {
	p := passkeyConfig{rpName: s.str("WEBAUTHN_RP_NAME", appName)}
	publicHost := ""
	if u, err := url.Parse(pc.publicURL); err == nil && pc.publicURL != "" {
		publicHost = strings.ToLower(u.Hostname())
	}
	rpID := strings.ToLower(s.str("WEBAUTHN_RP_ID", ""))
	switch {
	case rpID != "":
		if !isHostName(rpID) || net.ParseIP(rpID) != nil {
			s.errs = append(s.errs, fmt.Errorf("WEBAUTHN_RP_ID: want a domain such as example.com (no scheme, port or IP address), got %q", s.getenv("WEBAUTHN_RP_ID")))
			return p
		}
	case pc.cookieDomain != "":
		rpID = pc.cookieDomain
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
		if pc.publicURL != "" {
			defaults = append([]string{pc.publicURL}, corsOrigins...)
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
