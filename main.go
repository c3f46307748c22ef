// Command auth is a drop-in authentication microservice: sign-up, login, refresh-token rotation,
// logout and a forward-auth endpoint, on MongoDB.
package main

// main.go starts the service: it reads the settings, opens the database and serves until a signal.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"os"
	"os/signal"
	"runtime"
	"runtime/debug"
	rtmetrics "runtime/metrics"
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
// set. The limit makes the collector reclaim the 12 MiB buffers of finished hashes before the
// heap doubles, which is what keeps a login storm's peak RSS flat.
func tuneRuntime(c config, getenv func(string) string) {
	if c.memoryLimit <= 0 || getenv("GOMEMLIMIT") != "" {
		return
	}
	debug.SetMemoryLimit(c.memoryLimit)
	if getenv("GOGC") == "" {
		// The collector need not run every time the few MiB of live data double (under a
		// forward-auth load that was a tenth of the CPU, scripts/loadtest.sh), but a storm's heap
		// must stay below the limit: at GOGC 400 it ran into it every cycle, and the runtime gave
		// 20-28 MiB back to the system each time, which the next hashes faulted in again.
		debug.SetGCPercent(200)
	}
}

// warmHeap has the kernel back, before the service listens, the memory the heap may grow to under
// limit, and leaves it to the heap. A page touched for the first time costs a fault, two when read
// before written as argon2 does, about 16 µs each on some VMs: a 19 MiB hash (the setting then)
// on fresh memory took 180 ms instead of 22. A login storm after a restart grew the heap to the
// limit on such pages. The runtime gives the memory back to the system when the service stays idle.
func warmHeap(limit int64) {
	if limit <= 0 || limit == math.MaxInt64 {
		return // tests, and a process without a limit: no size to warm to
	}
	// The limit counts the memory mapped and not released; the runtime returns what is over 95%.
	sample := []rtmetrics.Sample{{Name: "/memory/classes/total:bytes"}, {Name: "/memory/classes/heap/released:bytes"}}
	held := func() int64 {
		rtmetrics.Read(sample)
		return int64(sample[0].Value.Uint64() - sample[1].Value.Uint64())
	}
	var bufs [][]byte
	for size := int64(argonMemory) << 10; held()+size < limit*9/10; {
		b := make([]byte, size)
		for i := 0; i < len(b); i += os.Getpagesize() {
			b[i] = 1
		}
		bufs = append(bufs, b)
	}
	// Live until here, so that the heap grows rather than reuse them; no collection after: one
	// now would tell the runtime the heap is small, and it would return the pages at once.
	runtime.KeepAlive(bufs)
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
	// a restart is admitted on it before any of its logins is done. And the cost of a check at the
	// earlier versions' argon2id setting, for the padding of failed logins.
	calibration := make(chan [2]time.Duration, 1)
	go func() {
		turn, earlier := calibrateHashing(c.hashConcurrent, 2)
		calibration <- [2]time.Duration{turn, earlier}
	}()

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
	startCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	m := newMetrics()
	var store *mongoStore
	err = retryAtStart(startCtx, func() (err error) {
		store, err = newMongoStore(startCtx, client.Database(c.mongoDatabase), &m.dbErrors)
		return err
	})
	if err != nil {
		return fmt.Errorf("mongodb at start: %w", err)
	}
	if err := normalizeStoredEmails(startCtx, store, log); err != nil {
		// Not fatal: only accounts with an address from before the rule miss their login, until
		// a start that succeeds at this.
		log.Warn("normalising the stored addresses failed", "err", err)
	}
	d := newDeps(c, store, m, secret, time.Now, log)
	timed := <-calibration
	d.hasher.seed(timed[0])
	d.passwords.times.observe(hashKind(earlierArgonHash), timed[1])
	if err := retryAtStart(startCtx, func() error { return d.revocations.sync(startCtx) }); err != nil {
		return fmt.Errorf("loading the blacklist: %w", err)
	}
	if err := retryAtStart(startCtx, func() error { return d.keys.load(startCtx) }); err != nil {
		return fmt.Errorf("loading the signing keys (JWT_ALG=%s): %w", c.jwtAlg, err)
	}
	if o := d.provider; o != nil {
		if err := retryAtStart(startCtx, func() error { return o.loadRings(startCtx) }); err != nil {
			return fmt.Errorf("loading %w", err)
		}
		if err := o.clients.loadFile(c.oidc.clientsFile); err != nil {
			return err
		}
	}
	bg, stopBG := context.WithCancel(context.Background())
	defer stopBG()
	go d.revocations.poll(bg, c.syncInterval, time.Minute)
	// The mail sender finishes the delivery it is in before the database closes.
	mailDone := make(chan struct{})
	if c.mail.enabled() {
		go func() { defer close(mailDone); d.mail.outbox.loop(bg) }()
	} else {
		close(mailDone)
	}
	defer func() { stopBG(); <-mailDone }()
	logMailSettings(log, c.mail)
	for _, w := range c.passkeys.warnings {
		log.Warn(w)
	}
	go d.keys.follow(bg, c.syncInterval)
	if d.provider != nil {
		for _, r := range d.provider.ownRings() {
			go r.follow(bg, c.syncInterval)
		}
	}
	go d.passwords.learnImportedHashes(bg)
	go logOut.flushEvery(bg, 100*time.Millisecond)

	warmHeap(debug.SetMemoryLimit(-1)) // the limit main set, if any

	type listener struct {
		name, addr string
		srv        *http.Server
	}
	listeners := []listener{{"api", net.JoinHostPort(c.host, c.port), newHTTPServer(c, newHandler(d, c), log)}}
	switch {
	case !c.metricsOn:
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
			"access_ttl", c.accessTTL.String(), "refresh_ttl", c.refreshTTL.String(),
			"refresh_reuse_window", (c.reuseInterval + c.dbWait).String())
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

// retryAtStart runs f until it succeeds, fails for another reason than an unavailable database, or
// ctx ends: a database that is slow to answer its first commands (one starting beside the
// service, or a busy machine) delays the start rather than failing it.
func retryAtStart(ctx context.Context, f func() error) error {
	for {
		err := f()
		if err == nil || !errors.Is(err, ErrUnavailable) {
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(250 * time.Millisecond):
		}
	}
}
