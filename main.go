// Command auth is a drop-in authentication microservice: sign-up, login, refresh-token rotation,
// logout and a forward-auth endpoint, on MongoDB.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	// Settings of the whole process belong here rather than in run, which tests call many times in
	// one process. A bad configuration is reported by run.
	if c, err := loadConfig(os.Getenv); err == nil {
		tuneRuntime(c, os.Getenv)
	}
	if err := run(context.Background(), os.Args, os.Getenv, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "auth:", err)
		os.Exit(1)
	}
}

// tuneRuntime sets the Go runtime's soft memory limit from MEMORY_LIMIT_MIB unless GOMEMLIMIT is
// set. The limit makes the collector reclaim the 19 MiB buffers of finished hashes before the heap
// doubles, which is what keeps a login storm's peak RSS flat.
func tuneRuntime(c config, getenv func(string) string) {
	if c.memoryLimit <= 0 || getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(c.memoryLimit)
	if getenv("GOGC") == "" {
		// With the heap capped by the limit, the collector need not also run every time the few
		// MiB of live data double: under a forward-auth load that was a tenth of the CPU
		// (BENCHMARKS.md).
		debug.SetGCPercent(400)
	}
}

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
	signupMax        int
	signupWindow     time.Duration
	hashConcurrent   int
	hashQueue        int
	hashWait         time.Duration
	memoryLimit      int64 // bytes; 0 leaves the Go runtime's default (or GOMEMLIMIT)
	metrics          bool
	metricsAddr      string // the metrics listener's address, or metricsOnAPIPort
	appName          string // shown in authenticator apps and mails
	adminToken       string // the admin API is served only when set
	adminAddr        string
	mail             mailConfig

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
		signupMax:        s.num("SIGNUP_MAX_PER_CLIENT", 10),
		signupWindow:     s.dur("SIGNUP_WINDOW", "10m", false),
		// Each hash holds 19 MiB: more than four at once would break the memory budget (see
		// BENCHMARKS.md, "Login storm") on a large machine without buying much.
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
	if c.metrics, err = strconv.ParseBool(s.str("METRICS_ENABLED", "true")); err != nil {
		s.errs = append(s.errs, fmt.Errorf("METRICS_ENABLED: want true or false, got %q", getenv("METRICS_ENABLED")))
	}
	if _, _, err := net.SplitHostPort(c.metricsAddr); err != nil && c.metricsAddr != metricsOnAPIPort {
		s.errs = append(s.errs, fmt.Errorf("METRICS_ADDR: want host:port or %s, got %q", metricsOnAPIPort, c.metricsAddr))
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
		s.errs = append(s.errs, fmt.Errorf("REVOCATION_MAX_LAG: %s is not longer than REVOCATION_SYNC_INTERVAL (%s): every instance would refuse tokens between two polls",
			c.revocationMaxLag, c.syncInterval))
	}
	if c.adminToken != "" && len(c.adminToken) < 32 {
		s.errs = append(s.errs, errors.New("ADMIN_TOKEN: must be at least 32 bytes; generate one with: openssl rand -base64 48"))
	}
	c.mail = loadMailConfig(s, c.mongoURI, c.dataDir, c.appName)
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

// newHTTPServer bounds what one client can hold: a slow-loris sender is cut off after
// readHeaderTimeout, a slow body after readTimeout, and headers beyond maxHeaderBytes get 431.
func newHTTPServer(c config, h http.Handler, log *slog.Logger) *http.Server {
	return &http.Server{
		Handler:           h,
		ReadHeaderTimeout: c.readHeaderTimeout,
		ReadTimeout:       c.readTimeout,
		WriteTimeout:      c.writeTimeout,
		IdleTimeout:       c.idleTimeout,
		MaxHeaderBytes:    c.maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	c, err := loadConfig(getenv)
	if err != nil {
		return err
	}
	logOut := newLogBuffer(stdout)
	defer logOut.Flush()
	log := newLogger(logOut, c)
	// The hashing slots' first estimate of a turn, timed while the database starts: a storm after
	// a restart is admitted on it before any of its logins is done.
	calibration := make(chan time.Duration, 1)
	go func() { calibration <- calibrateHashing(c.hashConcurrent, 3) }()

	secret := []byte(c.jwtSecret)
	uri := c.mongoURI
	if uri == "" {
		dev, err := startDevDB(c.dataDir, log)
		if err != nil {
			return err
		}
		defer dev.stop() // after the client disconnects: the database closes last
		uri = dev.uri
		if len(secret) == 0 {
			if secret, err = devSecret(c.dataDir); err != nil {
				return err
			}
		}
		log.Warn("development default: embedded FerretDB (SQLite) under DATA_DIR on a Unix socket of this user's, with a generated JWT secret; set MONGODB_URI and JWT_SECRET in production",
			"data_dir", c.dataDir, "db_socket", dev.socket)
	}

	client, err := connectMongo(uri)
	if err != nil {
		return err
	}
	if t := mongoOptions(uri).Timeout; t != nil && *t > 0 {
		c.dbWait = *t
	}
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		client.Disconnect(ctx)
	}()
	startCtx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	m := newMetrics()
	store, err := newMongoStore(startCtx, client.Database(c.mongoDatabase), m)
	if err != nil {
		return fmt.Errorf("mongodb at start: %w", err)
	}
	d := newDeps(c, store, m, secret, time.Now, log)
	d.hasher.seed(<-calibration)
	if err := d.revocations.sync(startCtx); err != nil {
		return fmt.Errorf("loading the blacklist: %w", err)
	}
	if err := d.keys.load(startCtx); err != nil {
		return fmt.Errorf("loading the signing keys (JWT_ALG=%s): %w", c.jwtAlg, err)
	}
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	go d.revocations.run(bg, c.syncInterval, time.Minute)
	// The mail sender finishes the delivery it is in before the database closes.
	mailDone := make(chan struct{})
	if c.mail.enabled() {
		go func() { defer close(mailDone); d.mail.outbox.run(bg) }()
	} else {
		close(mailDone)
	}
	defer func() { stopBG(); <-mailDone }()
	logMailSettings(log, c.mail)
	go d.keys.run(bg, c.syncInterval)
	go d.passwords.learnImportedHashes(bg)
	go logOut.flushEvery(bg, 100*time.Millisecond)

	type listener struct {
		name, addr string
		srv        *http.Server
	}
	listeners := []listener{{"api", net.JoinHostPort(c.host, c.port), newHTTPServer(c, newHandler(d, c), log)}}
	switch {
	case !c.metrics:
		log.Info("metrics are off", "metrics_enabled", false)
	case c.metricsAddr == metricsOnAPIPort:
		log.Warn("metrics are served on the API's port, where anyone who reaches it can read them; keep /metrics off the public side of the proxy",
			"metrics_addr", c.metricsAddr)
	default:
		// Its "listening" line below says where.
		listeners = append(listeners, listener{"metrics", c.metricsAddr, newHTTPServer(c, newMetricsHandler(d), log)})
	}
	if c.adminToken != "" {
		// The operators' API on an address of its own, loopback by default, never the API's port.
		listeners = append(listeners, listener{"admin", c.adminAddr, newHTTPServer(c, newAdminHandler(d, c.adminToken), log)})
	}
	serveErr := make(chan error, len(listeners))
	for i, l := range listeners {
		ln, err := net.Listen("tcp", l.addr)
		if err != nil {
			for _, started := range listeners[:i] {
				started.srv.Close()
			}
			return err
		}
		// The address as bound, so that PORT=0 (any free port) tells where the service is.
		log.Info("listening", "serves", l.name, "addr", ln.Addr().String(),
			"access_ttl", c.accessTTL.String(), "refresh_ttl", c.refreshTTL.String())
		go func() { serveErr <- l.srv.Serve(ln) }()
	}

	var failed error
	pending := len(listeners)
	select {
	case failed = <-serveErr:
		pending--
	case <-ctx.Done():
	}
	log.Info("shutting down")
	shutCtx, cancelShut := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancelShut()
	for _, l := range listeners {
		if err := l.srv.Shutdown(shutCtx); err != nil && failed == nil {
			failed = fmt.Errorf("shutdown: %w", err)
		}
	}
	for ; pending > 0; pending-- {
		if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) && failed == nil {
			failed = err
		}
	}
	if failed != nil {
		return failed
	}
	log.Info("stopped")
	return nil
}
