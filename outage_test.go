package main

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// tcpProxy stands between the driver and the database so that a test can cut the line, stall it
// and reconnect it to a restarted database, while the client keeps the one address it was given.
// It listens on TCP for the driver and dials the database's Unix socket.
type tcpProxy struct {
	ln       net.Listener
	mu       sync.Mutex
	flowing  *sync.Cond // on mu; signalled when stalled ends
	upstream string     // the database's socket; "" refuses every connection
	stalled  bool       // bytes are held, as on a network that drops every packet
	conns    map[net.Conn]struct{}
	// withhold, when not empty, is looked for in what the driver sends; the connection that
	// sends it next gets no more replies, as when a database's answer is lost on the way back.
	withhold string
}

func newTCPProxy(tb testing.TB, upstream string) *tcpProxy {
	tb.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	p := &tcpProxy{ln: ln, upstream: upstream, conns: make(map[net.Conn]struct{})}
	p.flowing = sync.NewCond(&p.mu)
	tb.Cleanup(func() {
		ln.Close()
		p.cut()
	})
	go p.serve()
	return p
}

func (p *tcpProxy) addr() string { return p.ln.Addr().String() }

func (p *tcpProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		go p.pipe(c)
	}
}

func (p *tcpProxy) pipe(c net.Conn) {
	p.mu.Lock()
	up := p.upstream
	p.mu.Unlock()
	if up == "" {
		c.Close()
		return
	}
	u, err := net.DialTimeout("unix", up, time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if p.upstream != up { // cut while dialling
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	var lost atomic.Bool // this connection's replies are withheld
	go func() { p.copy(u, c, &lost, true); done <- struct{}{} }()
	go func() { p.copy(c, u, &lost, false); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// copy is io.Copy that holds every chunk while the proxy is stalled. Upstream, it looks for the
// pattern to withhold; downstream, it drops whatever a withheld connection is sent.
func (p *tcpProxy) copy(dst, src net.Conn, lost *atomic.Bool, upstream bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 {
			p.mu.Lock()
			for p.stalled {
				p.flowing.Wait()
			}
			if upstream && p.withhold != "" && strings.Contains(string(buf[:n]), p.withhold) {
				p.withhold = ""
				lost.Store(true)
			}
			p.mu.Unlock()
			if !upstream && lost.Load() {
				continue
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// stall stops passing bytes on every connection, open or new, without closing any: the
// database host is still there as far as TCP can tell, but never answers.
func (p *tcpProxy) stall() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stalled = true
}

// withholdReplyTo lets the next request that contains pattern through to the database and drops
// every reply on its connection from then on.
func (p *tcpProxy) withholdReplyTo(pattern string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.withhold = pattern
}

// cut drops every open connection and refuses new ones, as a database host that went away does.
func (p *tcpProxy) cut() { p.connect("") }

// connect sends new connections to upstream, dropping the open ones.
func (p *tcpProxy) connect(upstream string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.upstream = upstream
	for c := range p.conns {
		c.Close()
	}
	p.stalled = false
	p.flowing.Broadcast()
}

// startOwnDevDB starts an embedded FerretDB of the test's own on dir and returns its socket.
func startOwnDevDB(tb testing.TB, dir string) (socket string, stop func()) {
	tb.Helper()
	dev, err := startDevDB(dir, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	var once sync.Once
	stop = func() { once.Do(dev.stop) }
	tb.Cleanup(stop)
	return dev.socket, stop
}

// newTestEnvThrough serves the service on the database whose socket is dbAddr, reached through a
// proxy that the test can cut, stall and reconnect.
// query, when not empty, goes into the connection string (timeoutMS=1000, say), and the service
// is told the driver's timeout as run would tell it.
func newTestEnvThrough(tb testing.TB, dbAddr, query string, opts ...func(*config)) (*testEnv, *tcpProxy) {
	tb.Helper()
	proxy := newTCPProxy(tb, dbAddr)
	uri := "mongodb://" + proxy.addr() + "/?" + query
	client, err := connectMongo(uri)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Disconnect(context.Background()) })
	opts = append(opts, func(c *config) { c.dbWait = *mongoOptions(uri).Timeout })
	return newTestEnvOn(tb, client.Database("auth"), opts...), proxy
}

// waitReady waits, 30s at most, for e to find its database again.
func waitReady(tb testing.TB, e *testEnv) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for e.do(tb, "GET", "/readyz", nil).status != 200 {
		if time.Now().After(deadline) {
			tb.Fatal("readyz still not 200 30s after the database came back")
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// outageCall is one request made while the database is away, and the answer it must get.
type outageCall struct {
	name, method, path string
	body               any
	headers            []string
	status             int
	code               string
}

// timed runs f and fails the test if it hangs; it is a hang detector, not a speed goal.
func timed[T any](tb testing.TB, what string, f func() T) T {
	tb.Helper()
	start := time.Now()
	v := f()
	if d := time.Since(start); d > 10*time.Second {
		tb.Fatalf("%s took %s: a client would have given up", what, d)
	}
	return v
}

func TestServiceRidesOutADatabaseOutage(t *testing.T) {
	t.Parallel()
	dir := newDataDir(t)
	dbAddr, stopDB := startOwnDevDB(t, dir)
	e, proxy := newTestEnvThrough(t, dbAddr, "")

	email, kept, keptRefresh := e.user(t)
	_, ended, endedRefresh := e.user(t)
	e.do(t, "POST", "/auth/logout", nil, "authorization_access", ended).want(t, 200, "")
	_, late, _ := e.user(t)

	// Cut first: FerretDB waits a few seconds for open connections before it stops.
	proxy.cut()
	stopDB()

	t.Run("during the outage", func(t *testing.T) {
		for _, tt := range []outageCall{
			{"signup answers 503", "POST", "/auth/signup", credentials{"new@example.com", "password123"}, nil, 503, "unavailable"},
			{"login answers 503", "POST", "/auth/login", credentials{email, "correct horse battery"}, nil, 503, "unavailable"},
			{"refresh answers 503", "POST", "/auth/refresh", nil, []string{"authorization_refresh", keptRefresh}, 503, "unavailable"},
			{"refresh still refuses a token revoked before the outage", "POST", "/auth/refresh", nil, []string{"authorization_refresh", endedRefresh}, 401, "token_revoked"},
			{"readyz answers 503", "GET", "/readyz", nil, nil, 503, "unavailable"},
			{"healthz answers 200", "GET", "/healthz", nil, nil, 200, ""},
			{"page lets a valid token through from memory", "GET", "/auth/page", nil, []string{"Authorization", "Bearer " + kept}, 200, ""},
			{"page refuses a token revoked before the outage", "GET", "/auth/page", nil, []string{"Authorization", "Bearer " + ended}, 401, "token_revoked"},
		} {
			r := timed(t, tt.name, func() response { return e.do(t, tt.method, tt.path, tt.body, tt.headers...) })
			r.want(t, tt.status, tt.code)
			if tt.status == 503 && r.header.Get("Retry-After") == "" {
				t.Errorf("%s: 503 without Retry-After", tt.name)
			}
		}
	})

	t.Run("a logout during the outage answers 503 yet holds on this instance", func(t *testing.T) {
		timed(t, "logout", func() response {
			return e.do(t, "POST", "/auth/logout", nil, "authorization_access", late)
		}).want(t, 503, "unavailable")
		e.page(t, late).want(t, 401, "token_revoked")
	})

	dbAddr, _ = startOwnDevDB(t, dir)
	proxy.connect(dbAddr)

	t.Run("after the outage", func(t *testing.T) {
		waitReady(t, e)
		e.login(t, email, "correct horse battery")
		e.page(t, kept).want(t, 200, "")
		e.page(t, ended).want(t, 401, "token_revoked")
		// The client retries the logout that got a 503; now every instance learns of it.
		e.do(t, "POST", "/auth/logout", nil, "authorization_access", late).want(t, 200, "")
		e.page(t, late).want(t, 401, "token_revoked")
	})

	if strings.Contains(e.logs.String(), "panic") {
		t.Fatalf("a panic was logged:\n%s", e.logs)
	}
}

func TestServiceAnswersInBoundedTimeWhenTheDatabaseStopsAnswering(t *testing.T) {
	t.Parallel()
	dbAddr, _ := startOwnDevDB(t, newDataDir(t))
	e, proxy := newTestEnvThrough(t, dbAddr, "")
	email, access, _ := e.user(t)

	// Unlike a refused connection, silence is only ended by the driver's own timeouts.
	proxy.stall()
	for _, tt := range []outageCall{
		{"login answers 503", "POST", "/auth/login", credentials{email, "correct horse battery"}, nil, 503, "unavailable"},
		{"signup answers 503", "POST", "/auth/signup", credentials{"new@example.com", "password123"}, nil, 503, "unavailable"},
		{"readyz answers 503", "GET", "/readyz", nil, nil, 503, "unavailable"},
		{"healthz answers 200", "GET", "/healthz", nil, nil, 200, ""},
		{"page answers from memory", "GET", "/auth/page", nil, []string{"Authorization", "Bearer " + access}, 200, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			timed(t, tt.name, func() response { return e.do(t, tt.method, tt.path, tt.body, tt.headers...) }).
				want(t, tt.status, tt.code)
		})
	}

	proxy.connect(dbAddr)
	waitReady(t, e)
	e.login(t, email, "correct horse battery")
}

// When the database records a refresh token's first use but its reply never comes back, the
// client is answered 503 and retries: the retry must get the successor the database recorded, not
// be taken for a stolen token's reuse, whenever it comes within the reuse interval of the 503.
func TestARefreshWhoseReplyWasLostIsSafeToRetry(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name        string
		reuse, wait time.Duration // REFRESH_REUSE_INTERVAL; how long after the 503 the client retries
	}{
		{"at the default interval, retried 9.5s after the 503", 10 * time.Second, 9500 * time.Millisecond},
		{"at a 2s interval, retried 1s after the 503", 2 * time.Second, time.Second},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			socket, _ := startOwnDevDB(t, newDataDir(t))
			// A driver timeout of 1s keeps the test short; the rule is the same at 5s.
			e, proxy := newTestEnvThrough(t, socket, "timeoutMS=1000", func(c *config) { c.reuseInterval = tt.reuse })
			_, _, refresh := e.user(t)

			proxy.withholdReplyTo("refresh_tokens") // the claim's insert arrives; its reply does not
			lost := timed(t, "the refresh with a lost reply", func() response { return e.refresh(t, refresh) })
			lost.want(t, 503, "unavailable")
			if s, _ := strconv.Atoi(lost.header.Get("Retry-After")); s < 1 || time.Duration(s)*time.Second > tt.reuse/2 {
				t.Fatalf("Retry-After %q, want well inside the %s interval", lost.header.Get("Retry-After"), tt.reuse)
			}
			// On the service's clock the claim was made at the first use; its answer was due up to
			// the driver's timeout later, and the client comes back tt.wait after that.
			e.clock.Advance(e.cfg.dbWait + tt.wait)
			retry := e.refresh(t, refresh).want(t, 200, "")
			again := e.refresh(t, refresh).want(t, 200, "")
			if retry.str("refresh_token") != again.str("refresh_token") {
				t.Fatal("the retries got different successors")
			}
			e.page(t, retry.str("access_token")).want(t, 200, "")

			// Past the interval of the 503 the same token is reuse again, and ends the session.
			e.clock.Advance(tt.reuse - tt.wait)
			e.refresh(t, refresh).want(t, 401, "token_reused")
			e.page(t, retry.str("access_token")).want(t, 401, "token_reused")
		})
	}
}

// A refresh whose reply was lost just before the database stopped for longer than the reuse
// interval: the client's retries are answered 503 until the database is back, and the first one
// after gets the successor; the time the database was out of reach does not count. Past the
// window with that time added, the token is reuse again.
func TestARefreshWhoseReplyWasLostInALongOutageIsSafeToRetry(t *testing.T) {
	t.Parallel()
	socket, _ := startOwnDevDB(t, newDataDir(t))
	e, proxy := newTestEnvThrough(t, socket, "timeoutMS=1000")
	_, _, refresh := e.user(t)

	proxy.withholdReplyTo("refresh_tokens")
	e.refresh(t, refresh).want(t, 503, "unavailable")
	proxy.cut()
	const outage = 30 * time.Second // three reuse intervals
	for range 3 {                   // the instance's polls find the database gone, meanwhile
		e.clock.Advance(outage / 3)
		if err := e.deps.revocations.sync(t.Context()); err == nil {
			t.Fatal("a poll succeeded with the database cut off")
		}
		e.refresh(t, refresh).want(t, 503, "unavailable") // the client retries, in vain
	}
	proxy.connect(socket)
	waitReady(t, e)
	e.clock.Advance(time.Second)
	retry := e.refresh(t, refresh).want(t, 200, "")
	e.page(t, retry.str("access_token")).want(t, 200, "")

	if err := e.deps.revocations.sync(t.Context()); err != nil { // the outage is over
		t.Fatal(err)
	}
	e.clock.Advance(e.reuseWindow())
	e.refresh(t, refresh).want(t, 401, "token_reused")
}

// A logout answered 503 in an outage is in force on the instance that answered it at once, and
// that instance writes it when the database is back: another instance learns of it even if the
// client never retries.
func TestALogoutAnswered503IsWrittenWhenTheDatabaseIsBack(t *testing.T) {
	t.Parallel()
	socket, _ := startOwnDevDB(t, newDataDir(t))
	a, cut := newTestEnvThrough(t, socket, "")
	b, _ := newTestEnvThrough(t, socket, "")
	_, access, _ := a.user(t)
	b.page(t, access).want(t, 200, "")

	cut.cut()
	a.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+access).want(t, 503, "unavailable")
	a.page(t, access).want(t, 401, "token_revoked")
	if err := a.deps.revocations.flush(t.Context()); err == nil {
		t.Fatal("the pending logout was written with the database cut off")
	}
	cut.connect(socket)
	waitReady(t, a)
	if err := a.deps.revocations.flush(t.Context()); err != nil { // what a's next poll does
		t.Fatal(err)
	}
	if err := b.deps.revocations.sync(t.Context()); err != nil {
		t.Fatal(err)
	}
	b.page(t, access).want(t, 401, "token_revoked")
}
