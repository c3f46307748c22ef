package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// The tests talk to a real MongoDB wire-protocol server, one for the whole run: MONGODB_URI when
// set; otherwise an embedded FerretDB, on PostgreSQL when AUTH_TEST_POSTGRESQL_URL names a database
// there and on SQLite files when it does not. CI runs the suite both ways, because FerretDB's two
// backends lose different races: a store that is only right on one of them is wrong. Every test
// gets a database of its own.
//
// Tests that stop and restart a database of their own (startOwnDevDB, and the processes that
// stop_test.go starts) use the embedded SQLite default whichever backend the run is on: they are
// about outages and restarts, not about the backend.
var (
	testMongoURI string
	testClient   *mongo.Client
)

// testPostgreSQLEnv names a PostgreSQL database (postgres://user:password@host:port/db) for the
// embedded FerretDB of the test run.
const testPostgreSQLEnv = "AUTH_TEST_POSTGRESQL_URL"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0)
	}
	os.Exit(testMain(m))
}

func testMain(m *testing.M) int {
	testMongoURI = os.Getenv("MONGODB_URI")
	pgURL := os.Getenv(testPostgreSQLEnv)
	switch {
	case testMongoURI != "" && pgURL != "":
		fmt.Fprintf(os.Stderr, "MONGODB_URI and %s are both set; set one of them\n", testPostgreSQLEnv)
		return 1
	case testMongoURI != "":
		fmt.Println("test database: MONGODB_URI", redactedURL(testMongoURI))
	case pgURL != "":
		uri, stop, err := startPostgreSQLTestDB(pgURL)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer stop()
		testMongoURI = uri
		fmt.Println("test database: embedded FerretDB on PostgreSQL", redactedURL(pgURL))
	default:
		dir, err := os.MkdirTemp("", "authtest-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
		defer os.RemoveAll(dir)
		dev, err := startDevDB(dir, slog.New(slog.DiscardHandler))
		if err != nil {
			fmt.Fprintln(os.Stderr, "embedded FerretDB:", err)
			return 1
		}
		defer dev.stop()
		testMongoURI = dev.uri
		fmt.Println("test database: embedded FerretDB on SQLite in", dir)
	}
	var err error
	if testClient, err = connectMongo(testMongoURI); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer testClient.Disconnect(context.Background())
	return m.Run()
}

// startPostgreSQLTestDB starts an embedded FerretDB on loopback that keeps its data in the
// PostgreSQL database at pgURL, and waits until it has reached PostgreSQL, so that a wrong URL
// stops the run with one clear message rather than failing every test.
func startPostgreSQLTestDB(pgURL string) (uri string, stop func(), err error) {
	if u, err := url.Parse(pgURL); err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", nil, fmt.Errorf("%s: want a postgres:// URL", testPostgreSQLEnv)
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:      ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:       "postgresql",
		PostgreSQLURL: pgURL,
		// Silent: on PostgreSQL, FerretDB logs every duplicate key, which the tests cause on
		// purpose, as an error. A PostgreSQL it cannot reach is reported by the check below.
		Logger: slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return "", nil, fmt.Errorf("embedded FerretDB on PostgreSQL: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	stop = func() { cancel(); <-done }

	// FerretDB opens its PostgreSQL pool on the first command that needs one.
	client, err := connectMongo(f.MongoDBURI())
	if err == nil {
		defer client.Disconnect(context.Background())
		pingCtx, cancelPing := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancelPing()
		_, err = client.ListDatabaseNames(pingCtx, bson.D{})
	}
	if err != nil {
		stop()
		return "", nil, fmt.Errorf("embedded FerretDB on PostgreSQL %s: %w", redactedURL(pgURL), err)
	}
	return f.MongoDBURI(), stop, nil
}

// redactedURL is a connection string fit for a log: its password, if any, masked.
func redactedURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return "(not shown: not a URL)"
	}
	return u.Redacted()
}

// clock is a settable time source, so that expiry is tested by moving time, not by sleeping.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// syncBuffer collects log output from many goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// testEnv is one service under test: the real handler, behind the http.Server that run builds, on a
// real listener, over its own database.
type testEnv struct {
	cfg   config
	admin *httptest.Server // the admin API, with testAdminToken
	// metricsSrv is the listener METRICS_ADDR gives; nil when metrics are off or on the API's port.
	metricsSrv *httptest.Server
	clock      *clock
	store      *mongoStore
	deps       *deps
	srv        *httptest.Server
	logs       *syncBuffer
	secret     []byte
}

const (
	testSecret     = "test-secret-that-is-at-least-32-bytes-long"
	testAdminToken = "test-admin-token-that-is-32-bytes-or-more"
)

// defaultLeeway is TOKEN_LEEWAY's default, which testConfig keeps.
const defaultLeeway = 5 * time.Second

// testConfig is the default configuration, as an empty environment gives it, but for the sign-up
// limit: tests sign up many users from one address. The sign-up throttle's own tests set it. And
// email verification is off, as it was in the original service, whose answers (409 for a taken
// address) the tests written before it hold the service to; email_test.go turns it on.
func testConfig(tb testing.TB) config {
	tb.Helper()
	c, err := loadConfig(func(string) string { return "" })
	if err != nil {
		tb.Fatal(err)
	}
	c.signupMax = 1000
	c.mail.verification = verificationOff
	c.oidc.rsaKey = testRSAKey
	if raceDetector {
		// The server's 15-second write timeout is set for a plain binary. Under -race, with the
		// embedded database in the same instrumented process, a busy machine's login queued
		// behind hashes outlived it and the client saw EOF instead of the answer under test.
		c.writeTimeout = 2 * time.Minute
	}
	return c
}

// testRSAKey hands the RS256 key rings of the tests the few RSA key pairs of the test run in turn:
// generating one per test is slow on two cores, and slower under -race. A ring needs two that
// differ (the signing key and the next, whose kids are unique), and a rotation a third.
func testRSAKey() (*rsa.PrivateKey, error) {
	keys, err := testRSAKeys()
	if err != nil {
		return nil, err
	}
	return keys[testRSATurn.Add(1)%uint64(len(keys))], nil
}

var (
	testRSAKeys = sync.OnceValues(func() ([]*rsa.PrivateKey, error) {
		keys := make([]*rsa.PrivateKey, 3)
		for i := range keys {
			var err error
			if keys[i], err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
				return nil, err
			}
		}
		return keys, nil
	})
	testRSATurn atomic.Uint64
)

// newTestDB returns a fresh, empty database that is dropped when the test ends.
func newTestDB(tb testing.TB) *mongo.Database {
	tb.Helper()
	var b [6]byte
	rand.Read(b[:])
	name := "t_" + hex.EncodeToString(b[:])
	db := testClient.Database(name)
	tb.Cleanup(func() { db.Drop(context.Background()) })
	return db
}

func newTestEnv(tb testing.TB, opts ...func(*config)) *testEnv {
	tb.Helper()
	return newTestEnvOn(tb, newTestDB(tb), opts...)
}

// newTestEnvOn starts a service instance on db; two of them on one db are two instances of one
// deployment.
func newTestEnvOn(tb testing.TB, db *mongo.Database, opts ...func(*config)) *testEnv {
	tb.Helper()
	cfg := testConfig(tb)
	for _, o := range opts {
		o(&cfg)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := newMetrics()
	// As run starts: a busy machine's slow first commands delay the start, not fail it.
	var store *mongoStore
	err := retryAtStart(ctx, func() (err error) { store, err = newMongoStore(ctx, db, &m.dbErrors); return err })
	if err != nil {
		tb.Fatal(err)
	}
	e := serveTestEnv(tb, cfg, store, m)
	if err := retryAtStart(ctx, func() error { return normalizeStoredEmails(ctx, store, e.deps.log) }); err != nil {
		tb.Fatal(err)
	}
	if err := retryAtStart(ctx, func() error { return e.deps.revocations.sync(ctx) }); err != nil {
		tb.Fatal(err)
	}
	return e
}

// newTestPair is two instances of one deployment: two services on one fresh database.
func newTestPair(tb testing.TB, opts ...func(*config)) (a, b *testEnv) {
	tb.Helper()
	db := newTestDB(tb)
	return newTestEnvOn(tb, db, opts...), newTestEnvOn(tb, db, opts...)
}

// newUnreachableEnv is a service whose database never answers.
func newUnreachableEnv(tb testing.TB) *testEnv {
	tb.Helper()
	// Nothing listens on port 1: every call fails once server selection gives up, after the URI's
	// 300 ms rather than the service's default.
	client, err := connectMongo("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Disconnect(context.Background()) })
	m := newMetrics()
	return serveTestEnv(tb, testConfig(tb), mongoCollections(client.Database("x"), &m.dbErrors), m)
}

// serveTestEnv serves the service over store with cfg, on a fake clock and a captured log, behind
// the http.Server that run builds, limits and all.
func serveTestEnv(tb testing.TB, cfg config, store *mongoStore, m *metrics) *testEnv {
	tb.Helper()
	e := &testEnv{cfg: cfg, clock: newClock(), store: store, logs: &syncBuffer{}, secret: []byte(testSecret)}
	log := newLogger(e.logs, cfg)
	e.deps = newDeps(cfg, store, m, e.secret, e.clock.Now, log)
	e.srv = httptest.NewUnstartedServer(nil)
	e.srv.Config = newHTTPServer(cfg, newHandler(e.deps, cfg), log)
	e.srv.Start()
	tb.Cleanup(e.srv.Close)
	e.admin = httptest.NewUnstartedServer(nil)
	e.admin.Config = newHTTPServer(cfg, newAdminHandler(e.deps, testAdminToken), log)
	e.admin.Start()
	tb.Cleanup(e.admin.Close)
	if cfg.metricsOn && cfg.metricsAddr != metricsOnAPIPort {
		e.metricsSrv = httptest.NewUnstartedServer(nil)
		e.metricsSrv.Config = newHTTPServer(cfg, newMetricsHandler(e.deps), log)
		e.metricsSrv.Start()
		tb.Cleanup(e.metricsSrv.Close)
	}
	tb.Cleanup(func() {
		// A failed test shows what the service logged at WARN and above: the cause of a 503.
		if !tb.Failed() {
			return
		}
		for line := range strings.Lines(e.logs.String()) {
			if strings.Contains(line, `"level":"WARN"`) || strings.Contains(line, `"level":"ERROR"`) ||
				strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				tb.Log(strings.TrimSpace(line))
			}
		}
	})
	return e
}

// reuseWindow is how long after its first use a retired refresh token still gets its successor:
// the longest the first use's answer may take, and the reuse interval after that.
func (e *testEnv) reuseWindow() time.Duration { return e.cfg.dbWait + e.cfg.reuseInterval }

// adminDo calls the admin API of e with the admin token.
func (e *testEnv) adminDo(tb testing.TB, method, path string, body any) response {
	tb.Helper()
	return send(tb, e.admin.Client(), method, e.admin.URL+path, body, "Authorization", "Bearer "+testAdminToken)
}

func httptestServer(tb testing.TB, h http.Handler) *httptest.Server {
	tb.Helper()
	srv := httptest.NewServer(h)
	tb.Cleanup(srv.Close)
	return srv
}

// response is what a test reads of an answer.
type response struct {
	status int
	header http.Header
	body   map[string]any
	raw    string
}

func (r response) str(key string) string {
	s, _ := r.body[key].(string)
	return s
}

// do sends a request to e; see send.
func (e *testEnv) do(tb testing.TB, method, path string, body any, headers ...string) response {
	tb.Helper()
	return send(tb, e.srv.Client(), method, e.srv.URL+path, body, headers...)
}

// send makes one request and reads its answer; body is JSON-encoded unless it is a string, which
// is sent as it is, and headers are name, value pairs (a name given twice is sent twice). A body goes as application/json unless the
// headers say otherwise.
func send(tb testing.TB, client *http.Client, method, url string, body any, headers ...string) response {
	tb.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			tb.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, url, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	given := map[string]bool{}
	for i := 0; i+1 < len(headers); i += 2 {
		// A name given twice is sent twice; given once, it replaces the default Content-Type.
		if name := http.CanonicalHeaderKey(headers[i]); given[name] {
			req.Header.Add(name, headers[i+1])
		} else {
			req.Header.Set(name, headers[i+1])
			given[name] = true
		}
	}
	res, err := client.Do(req)
	if err != nil {
		// Errorf, not Fatalf: tests send from goroutines of their own too, which may not stop the
		// test. The empty answer then fails the caller's own check.
		tb.Errorf("%s %s: %v", method, url, err)
		return response{}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

// want fails the test unless r has the status and, when code is not empty, the error code.
func (r response) want(tb testing.TB, status int, code string) response {
	tb.Helper()
	if r.status != status || (code != "" && r.str("error") != code) {
		tb.Fatalf("got %d %s, want %d %s", r.status, r.raw, status, code)
	}
	if ct := r.header.Get("Content-Type"); r.raw != "" && ct != "application/json" {
		tb.Fatalf("Content-Type %q, want application/json", ct)
	}
	return r
}

func (e *testEnv) signup(tb testing.TB, email, password string) response {
	tb.Helper()
	return e.do(tb, "POST", "/auth/signup", credentials{email, password}).want(tb, http.StatusCreated, "")
}

// login returns the access and refresh tokens of a successful login.
func (e *testEnv) login(tb testing.TB, email, password string) (access, refresh string) {
	tb.Helper()
	r := e.do(tb, "POST", "/auth/login", credentials{email, password}).want(tb, http.StatusOK, "")
	return r.str("access_token"), r.str("refresh_token")
}

// user signs up a fresh account and logs it in.
func (e *testEnv) user(tb testing.TB) (email, access, refresh string) {
	tb.Helper()
	email = strings.ToLower("user-" + newID()[:8] + "@example.com")
	e.signup(tb, email, "correct horse battery")
	access, refresh = e.login(tb, email, "correct horse battery")
	return email, access, refresh
}

func (e *testEnv) page(tb testing.TB, access string) response {
	tb.Helper()
	return e.do(tb, "GET", "/auth/page", nil, "Authorization", "Bearer "+access)
}

func (e *testEnv) refresh(tb testing.TB, refresh string) response {
	tb.Helper()
	return e.do(tb, "POST", "/auth/refresh", nil, "authorization_refresh", refresh)
}

// waitFor polls cond until it holds, for 30 seconds at most: the conditions here follow from
// requests in flight, and a loaded machine may take a while to answer them.
func waitFor(tb testing.TB, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("waited 30s for %s", what)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
