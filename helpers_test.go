package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"strings"
	"sync"
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

// testEnv is one service under test: the real handler on a real listener, over its own database.
type testEnv struct {
	tb     testing.TB
	cfg    config
	clock  *clock
	store  *mongoStore
	deps   *deps
	srv    *httptest.Server
	logs   *syncBuffer
	secret []byte
}

const testSecret = "test-secret-that-is-at-least-32-bytes-long"

// testConfig is the default configuration, as an empty environment gives it.
func testConfig(tb testing.TB) config {
	tb.Helper()
	c, err := loadConfig(func(string) string { return "" })
	if err != nil {
		tb.Fatal(err)
	}
	return c
}

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
	store, err := newMongoStore(ctx, db)
	if err != nil {
		tb.Fatal(err)
	}
	e := serveTestEnv(tb, cfg, store)
	if err := e.deps.revocations.sync(ctx); err != nil {
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
	client, err := connectMongo("mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=300")
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Disconnect(context.Background()) })
	return serveTestEnv(tb, testConfig(tb), mongoCollections(client.Database("x")))
}

// serveTestEnv serves the service over store with cfg, on a fake clock and a captured log.
func serveTestEnv(tb testing.TB, cfg config, store *mongoStore) *testEnv {
	tb.Helper()
	e := &testEnv{tb: tb, cfg: cfg, clock: newClock(), store: store, logs: &syncBuffer{}, secret: []byte(testSecret)}
	e.deps = newDeps(cfg, store, e.secret, e.clock.Now, newLogger(e.logs, cfg))
	e.srv = httptestServer(tb, newHandler(e.deps, cfg))
	return e
}

func httptestServer(tb testing.TB, h http.Handler) *httptest.Server {
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
func (e *testEnv) do(method, path string, body any, headers ...string) response {
	e.tb.Helper()
	return send(e.tb, e.srv.Client(), method, e.srv.URL+path, body, headers...)
}

// send makes one request and reads its answer; body is JSON-encoded unless it is a string, which
// is sent as it is, and headers are name, value pairs.
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
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := client.Do(req)
	if err != nil {
		// Errorf, not Fatalf: tb may be a parent test whose helpers a subtest calls, and only the
		// test's own goroutine may stop it. The empty answer then fails the caller's own check.
		tb.Errorf("%s %s: %v", method, url, err)
		return response{}
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

// freeLoopbackAddr returns a 127.0.0.1 address that nothing listens on at the moment.
func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// expect is want for the harness's own helpers, which subtests call with their parent's tb: it
// marks the test failed without stopping a goroutine that is not the test's.
func (r response) expect(tb testing.TB, status int) response {
	tb.Helper()
	if r.status != status {
		tb.Errorf("got %d %s, want %d", r.status, r.raw, status)
	}
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

func (e *testEnv) signup(email, password string) response {
	e.tb.Helper()
	return e.do("POST", "/auth/signup", credentials{email, password}).expect(e.tb, http.StatusCreated)
}

// login returns the access and refresh tokens of a successful login.
func (e *testEnv) login(email, password string) (access, refresh string) {
	e.tb.Helper()
	r := e.do("POST", "/auth/login", credentials{email, password}).expect(e.tb, http.StatusOK)
	return r.str("access_token"), r.str("refresh_token")
}

// user signs up a fresh account and logs it in.
func (e *testEnv) user() (email, access, refresh string) {
	e.tb.Helper()
	email = strings.ToLower("user-" + newID()[:8] + "@example.com")
	e.signup(email, "correct horse battery")
	access, refresh = e.login(email, "correct horse battery")
	return email, access, refresh
}

func (e *testEnv) page(access string) response {
	e.tb.Helper()
	return e.do("GET", "/auth/page", nil, "Authorization", "Bearer "+access)
}

func (e *testEnv) refresh(refresh string) response {
	e.tb.Helper()
	return e.do("POST", "/auth/refresh", nil, "authorization_refresh", refresh)
}
