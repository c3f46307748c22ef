package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// nginxConf is the nginx configuration docs/proxies.md links; the end-to-end tests run exactly
// this text, with only the addresses changed.
const nginxConf = "deploy/nginx.conf"

func TestNginxInFrontOfTheService(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	px := startNginxFront(t, e)
	email, access, refresh := e.user(t)
	id := userID(t, e, access)

	t.Run("lets a valid token through and tells the app who the user is", func(t *testing.T) {
		for _, tt := range []struct {
			name    string
			headers []string
		}{
			{"Authorization: Bearer", []string{"Authorization", "Bearer " + access}},
			{"the original service's authorization_access header", []string{"authorization_access", access}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				got := px.app(t, "GET", "/orders?page=2", "", tt.headers...)
				got.wantIdentity(t, id, email)
				if got.URI != "/orders?page=2" {
					t.Fatalf("the app saw %q, want /orders?page=2", got.URI)
				}
			})
		}
	})

	t.Run("asks with every method and leaves the body to the app", func(t *testing.T) {
		for _, method := range []string{"GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"} {
			t.Run(method, func(t *testing.T) {
				body := ""
				if method == "POST" || method == "PUT" || method == "PATCH" {
					body = `{"item":"book","quantity":2}`
				}
				got := px.app(t, method, "/orders", body, "Authorization", "Bearer "+access)
				got.wantIdentity(t, id, email)
				if got.Method != method || got.Body != body {
					t.Fatalf("the app saw %s %q, want %s %q", got.Method, got.Body, method, body)
				}
			})
		}
		t.Run("HEAD", func(t *testing.T) {
			if r := px.do(t, "HEAD", "/orders", "", "Authorization", "Bearer "+access); r.status != 200 {
				t.Fatalf("HEAD: %d", r.status)
			}
		})
	})

	t.Run("turns away a request without a valid token with 401 and never reaches the app", func(t *testing.T) {
		_, loggedOut, _ := e.user(t)
		e.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+loggedOut).want(t, 200, "")
		for _, tt := range []struct {
			name      string
			headers   []string
			challenge string
		}{
			{"no token", nil, "Bearer"},
			{"garbage", []string{"Authorization", "Bearer not.a.token"}, `Bearer error="invalid_token"`},
			{"garbage in the original service's header", []string{"authorization_access", "garbage"}, `Bearer error="invalid_token"`},
			{"a refresh token", []string{"Authorization", "Bearer " + refresh}, `Bearer error="invalid_token"`},
			{"a logged-out token", []string{"Authorization", "Bearer " + loggedOut}, `Bearer error="invalid_token"`},
			{"identity headers and no token", []string{"X-User-Id", id, "X-User-Email", email}, "Bearer"},
		} {
			t.Run(tt.name, func(t *testing.T) {
				for _, method := range []string{"GET", "POST"} {
					before := px.appHits.Load()
					r := px.do(t, method, "/orders", `{"item":"book"}`, tt.headers...)
					if r.status != http.StatusUnauthorized {
						t.Fatalf("%s: got %d %s, want 401", method, r.status, r.raw)
					}
					if h := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(h, tt.challenge) {
						t.Fatalf("%s: WWW-Authenticate %q, want it to start with %q", method, h, tt.challenge)
					}
					if px.appHits.Load() != before {
						t.Fatalf("%s: the app was reached", method)
					}
				}
			})
		}
	})

	t.Run("replaces identity headers the client sends with the token's, in every spelling", func(t *testing.T) {
		testIdentityReplaced(t, px, access, id, email)
	})

	t.Run("serves the service's own endpoints on the same origin", func(t *testing.T) {
		r := px.do(t, "POST", "/auth/login", `{"email":"`+email+`","password":"correct horse battery"}`,
			"Content-Type", "application/json")
		r.want(t, 200, "")
		px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+r.str("access_token")).wantIdentity(t, id, email)
	})
}

func TestNginxTurnsAwayAnExpiredTokenUntilTheClientRefreshes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	px := startNginxFront(t, e)
	email, access, refresh := e.user(t)
	id := userID(t, e, access)
	e.clock.Advance(e.cfg.accessTTL + defaultLeeway + time.Second)

	r := px.do(t, "GET", "/orders", "", "Authorization", "Bearer "+access)
	if r.status != http.StatusUnauthorized {
		t.Fatalf("expired token: got %d, want 401", r.status)
	}
	// The signal a single-page app acts on: nginx passes the service's challenge through.
	if h := r.header.Get("WWW-Authenticate"); !strings.Contains(h, `error="invalid_token"`) || !strings.Contains(h, "expired") {
		t.Fatalf("WWW-Authenticate %q, want invalid_token saying the token expired", h)
	}
	fresh := px.do(t, "POST", "/auth/refresh", "", "authorization_refresh", refresh).want(t, 200, "")
	px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+fresh.str("access_token")).wantIdentity(t, id, email)
}

func TestNginxPassesOnlyARealPreflightToTheAppWithoutAToken(t *testing.T) {
	t.Parallel()
	const listed = "https://app.example.com"
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{listed} })
	testOnlyRealPreflightsPass(t, startNginxFront(t, e), listed)
}

// testIdentityReplaced checks that whatever identity a client claims, under any spelling, the app
// is told only the one that access proves.
func testIdentityReplaced(t *testing.T, px *proxyFront, access, id, email string) {
	for _, name := range identitySpellings {
		t.Run(name, func(t *testing.T) {
			px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+access, name, "admin").wantIdentity(t, id, email)
		})
	}
	t.Run("all at once", func(t *testing.T) {
		px.app(t, "GET", "/orders", "", append(spoofedIdentity(), "Authorization", "Bearer "+access)...).
			wantIdentity(t, id, email)
	})
}

// testOnlyRealPreflightsPass checks that px lets a CORS preflight from the listed origin through
// to the app without a token and without identity, and nothing else that looks like one.
func testOnlyRealPreflightsPass(t *testing.T, px *proxyFront, listed string) {
	t.Run("a preflight from a listed origin reaches the app, and its answer comes back, with no identity", func(t *testing.T) {
		got := px.app(t, "OPTIONS", "/orders", "", append(spoofedIdentity(),
			"Origin", listed, "Access-Control-Request-Method", "POST", "Access-Control-Request-Headers", "authorization")...)
		if got.Method != "OPTIONS" || got.Header.Get("Origin") != listed {
			t.Fatalf("the app saw %s from %q, want the preflight from %s", got.Method, got.Header.Get("Origin"), listed)
		}
		got.wantNoIdentity(t)
	})

	t.Run("anything else without a token gets 401 and never reaches the app", func(t *testing.T) {
		for _, tt := range []struct {
			name, method string
			headers      []string
		}{
			{"OPTIONS without Access-Control-Request-Method", "OPTIONS", []string{"Origin", listed}},
			{"OPTIONS from an unlisted origin", "OPTIONS",
				[]string{"Origin", "https://evil.example.com", "Access-Control-Request-Method", "POST"}},
			{"OPTIONS without an Origin", "OPTIONS", []string{"Access-Control-Request-Method", "POST"}},
			{"a GET naming itself OPTIONS in X-Forwarded-Method", "GET",
				[]string{"Origin", listed, "Access-Control-Request-Method", "POST", "X-Forwarded-Method", "OPTIONS"}},
			{"a DELETE naming itself OPTIONS in X-Forwarded-Method", "DELETE",
				[]string{"Origin", listed, "Access-Control-Request-Method", "POST", "X-Forwarded-Method", "OPTIONS"}},
		} {
			t.Run(tt.name, func(t *testing.T) {
				before := px.appHits.Load()
				r := px.do(t, tt.method, "/orders", "", tt.headers...)
				if r.status != http.StatusUnauthorized {
					t.Fatalf("got %d %s, want 401", r.status, r.raw)
				}
				if h := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(h, "Bearer") {
					t.Fatalf("WWW-Authenticate %q, want a Bearer challenge", h)
				}
				if px.appHits.Load() != before {
					t.Fatal("the app was reached")
				}
			})
		}
	})
}

// identityHeaders are the headers a proxy copies from the service's answer onto the request.
var identityHeaders = []string{"X-User-Id", "X-User-Email", "X-User-Email-Verified", "X-User-Acr", "X-User-Amr"}

// identitySpellings are the names under which a client might slip an identity past a proxy: each
// identity header with "_" or "-" at each of its joins, which CGI, PHP, WSGI and Rack read as the
// same header (nginx passes them with underscores_in_headers on); and each in lower case too,
// because proxies compare names without regard to it and a test must show that they do.
var identitySpellings = func() []string {
	var out []string
	for _, name := range identityHeaders {
		parts := strings.Split(name, "-")
		for mask := 0; mask < 1<<(len(parts)-1); mask++ {
			s := parts[0]
			for i, p := range parts[1:] {
				sep := "-"
				if mask&(1<<i) != 0 {
					sep = "_"
				}
				s += sep + p
			}
			out = append(out, s, strings.ToLower(s))
		}
	}
	return out
}()

// spoofedIdentity is every identity spelling as header name, value pairs, claiming to be an admin.
func spoofedIdentity() []string {
	var h []string
	for _, name := range identitySpellings {
		h = append(h, name, "admin")
	}
	return h
}

// userID asks the service who the holder of access is.
func userID(tb testing.TB, e *testEnv, access string) string {
	tb.Helper()
	user, _ := e.page(tb, access).want(tb, 200, "").body["user"].(map[string]any)
	id, _ := user["id"].(string)
	if id == "" {
		tb.Fatal("no user id")
	}
	return id
}

// proxyFront is a real reverse proxy, configured as the README says, in front of one service and
// of an app that echoes what reaches it.
type proxyFront struct {
	name    string // for messages: "nginx", "Caddy"
	url     string
	client  *http.Client
	appHits *atomic.Int64
}

// newProxyFront is a proxyFront without its address, which the caller fills in once the proxy
// answers; its client's connections are closed when the test ends.
func newProxyFront(tb testing.TB, name string, appHits *atomic.Int64) *proxyFront {
	tb.Helper()
	tr := &http.Transport{}
	tb.Cleanup(tr.CloseIdleConnections)
	return &proxyFront{name: name, client: &http.Client{Transport: tr, Timeout: 30 * time.Second}, appHits: appHits}
}

// echoed is what the app saw of a request.
type echoed struct {
	Method string      `json:"method"`
	URI    string      `json:"uri"`
	Header http.Header `json:"header"`
	Body   string      `json:"body"`
}

// wantIdentity fails unless the app was told exactly this user, under every spelling of the
// identity headers an app framework might read, and the service's own word on whether its address
// is verified and how it signed in: one value each, never one a client sent ("admin").
func (got echoed) wantIdentity(tb testing.TB, id, email string) {
	tb.Helper()
	for name, want := range map[string]string{"x-user-id": id, "x-user-email": email} {
		if values := got.identity(name); len(values) != 1 || values[0] != want {
			tb.Fatalf("the app saw %s %q, want only %q; headers %v", name, values, want, got.Header)
		}
	}
	for name, allowed := range map[string][]string{"x-user-email-verified": {"true", "false"}, "x-user-acr": {"aal1", "aal2"},
		"x-user-amr": {"pwd", "pwd,otp", "pwd,hwk", "pwd,swk", "hwk,mfa", "swk,mfa"}} {
		if values := got.identity(name); len(values) != 1 || !slices.Contains(allowed, values[0]) {
			tb.Fatalf("the app saw %s %q, want only the service's; headers %v", name, values, got.Header)
		}
	}
}

// wantNoIdentity fails if the app was told of any user, under any spelling. An empty header says
// nothing, and Caddy 2.6 passes the service's empty ones on as they are.
func (got echoed) wantNoIdentity(tb testing.TB) {
	tb.Helper()
	for _, name := range identityHeaders {
		for _, v := range got.identity(strings.ToLower(name)) {
			if v != "" {
				tb.Fatalf("the app saw %s %q, want none; headers %v", name, v, got.Header)
			}
		}
	}
}

// identity is every value the app saw under any spelling of name, as frameworks that fold "_"
// into "-" and ignore case read it.
func (got echoed) identity(name string) []string {
	var values []string
	for k, v := range got.Header {
		if strings.ReplaceAll(strings.ToLower(k), "_", "-") == name {
			values = append(values, v...)
		}
	}
	return values
}

func startEchoApp(tb testing.TB) (*httptest.Server, *atomic.Int64) {
	tb.Helper()
	hits := new(atomic.Int64)
	srv := httptestServer(tb, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		body, _ := io.ReadAll(r.Body)
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(echoed{r.Method, r.RequestURI, r.Header, string(body)})
	}))
	return srv, hits
}

// nginxBinary finds nginx, or skips the test: nginx is a system package, not a Go dependency.
func nginxBinary(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("nginx"); err == nil {
		return p
	}
	if _, err := os.Stat("/usr/sbin/nginx"); err == nil {
		return "/usr/sbin/nginx"
	}
	tb.Skip("nginx is not installed (apt-get install nginx-light); skipping the end-to-end reverse-proxy test")
	return ""
}

// startNginxFront runs nginx in the foreground with the README's configuration, pointed at e and
// at a fresh echo app, and stops it when the test ends.
func startNginxFront(tb testing.TB, e *testEnv, edits ...func(site string) string) *proxyFront {
	tb.Helper()
	bin := nginxBinary(tb)
	app, hits := startEchoApp(tb)
	px := newProxyFront(tb, "nginx", hits)
	// The port is free when asked for but could be taken before nginx binds it; try again then.
	for attempt := 1; ; attempt++ {
		addr := freeLoopbackAddr(tb)
		err := runNginx(tb, bin, nginxConfig(tb, bin, addr, hostPort(tb, e.srv.URL), hostPort(tb, app.URL), edits...), addr)
		if err == nil {
			px.url = "http://" + addr
			return px
		}
		if !errors.Is(err, errAddrInUse) || attempt == 3 {
			tb.Fatal(err)
		}
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address that nothing listens on at the moment. nginx and
// Caddy cannot be told to take any free port and report it, so they get one picked here. It is
// picked below the kernel's ephemeral range, where neither an outgoing connection nor a listener
// on port 0 (every httptest server) can take it before the proxy binds it, and never twice in one
// run. startNginxFront and startCaddyFront still try again if another program took it.
func freeLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	lo := 10000
	hi := ephemeralLow()
	for range 200 {
		port := lo + rand.IntN(hi-lo)
		if _, taken := pickedPorts.LoadOrStore(port, true); taken {
			continue
		}
		ln, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
		if err != nil {
			continue
		}
		ln.Close()
		return ln.Addr().String()
	}
	tb.Fatalf("no free port on 127.0.0.1 between %d and %d", lo, hi)
	return ""
}

var pickedPorts sync.Map // port → true: the ports freeLoopbackAddr handed out in this run

// ephemeralLow is the lowest port the kernel hands to outgoing connections and to port 0, or
// 32768, its usual value, where that cannot be read.
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if f := strings.Fields(string(b)); err == nil && len(f) == 2 {
		if n, err := strconv.Atoi(f[0]); err == nil && n > 11000 {
			return n
		}
	}
	return 32768
}

func hostPort(tb testing.TB, rawURL string) string {
	tb.Helper()
	u, err := url.Parse(rawURL)
	if err != nil {
		tb.Fatal(err)
	}
	return u.Host
}

// nginxConfig is a whole nginx.conf for a test: the README's configuration inside an http block,
// with its addresses replaced, then each of edits applied to it, and every file nginx writes kept
// in a temporary directory.
func nginxConfig(tb testing.TB, bin, listen, auth, app string, edits ...func(site string) string) (dir string) {
	tb.Helper()
	b, err := os.ReadFile(nginxConf)
	if err != nil {
		tb.Fatal(err)
	}
	site := string(b)
	for _, r := range [][2]string{
		{"listen 80;", "listen " + listen + ";"},
		{"server 127.0.0.1:7878;", "server " + auth + ";"},
		{"server 127.0.0.1:8080;", "server " + app + ";"},
	} {
		if strings.Count(site, r[0]) != 1 {
			tb.Fatalf("%s no longer holds exactly one %q, which the test replaces", nginxConf, r[0])
		}
		site = strings.Replace(site, r[0], r[1], 1)
	}
	for _, edit := range edits {
		site = edit(site)
	}
	return nginxConfFile(tb, bin, site)
}

// nginxConfFile writes a whole nginx.conf around site (what goes in the http block) into a fresh
// directory, where nginx keeps every file it writes, and returns the directory.
func nginxConfFile(tb testing.TB, bin, site string) (dir string) {
	tb.Helper()
	dir = tb.TempDir()
	var c strings.Builder
	fmt.Fprintf(&c, "daemon off;\nmaster_process off;\npid %q;\nerror_log %q notice;\n",
		filepath.Join(dir, "nginx.pid"), filepath.Join(dir, "error.log"))
	if os.Geteuid() == 0 {
		// Otherwise nginx, started by root, looks up and switches to "nobody".
		c.WriteString("user root;\n")
	}
	c.WriteString("events { worker_connections 64; }\nhttp {\naccess_log off;\n")
	fmt.Fprintf(&c, "client_body_temp_path %q;\nproxy_temp_path %q;\n",
		filepath.Join(dir, "body"), filepath.Join(dir, "proxy"))
	// The packaged binary writes its other temporary files under /var/lib/nginx unless told
	// otherwise, and fails where it may not; a module left out of the build must not be named.
	v, _ := exec.Command(bin, "-V").CombinedOutput()
	for _, m := range []string{"fastcgi", "uwsgi", "scgi"} {
		if !strings.Contains(string(v), "--without-http_"+m+"_module") {
			fmt.Fprintf(&c, "%s_temp_path %q;\n", m, filepath.Join(dir, m))
		}
	}
	c.WriteString(site)
	c.WriteString("}\n")
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(c.String()), 0o600); err != nil {
		tb.Fatal(err)
	}
	return dir
}

var errAddrInUse = errors.New("address in use")

// runNginx starts nginx on the configuration in dir and returns once it accepts connections on
// addr. nginx runs as one foreground process, killed when the test ends.
func runNginx(tb testing.TB, bin, dir, addr string) error {
	tb.Helper()
	errLog := filepath.Join(dir, "error.log")
	cmd := exec.Command(bin, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", errLog)
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return err
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	tb.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if tb.Failed() {
			log, _ := os.ReadFile(errLog)
			tb.Logf("nginx error log:\n%s%s", out, log)
		}
	})
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			log, _ := os.ReadFile(errLog)
			if strings.Contains(string(log)+out.String(), "Address already in use") {
				return errAddrInUse
			}
			return fmt.Errorf("nginx exited at start: %v\n%s%s", cmd.ProcessState, out, log)
		default:
		}
		// Asking over HTTP, not only connecting, tells nginx from anything else that got the port.
		if res, err := probe.Get("http://" + addr + "/"); err == nil {
			res.Body.Close()
			if strings.HasPrefix(res.Header.Get("Server"), "nginx") {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("nginx did not accept connections within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// do sends a request through the proxy; body is sent as it is, and header names as they are
// written, case included, so that a test can send any spelling.
func (px *proxyFront) do(tb testing.TB, method, path, body string, headers ...string) response {
	tb.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, px.url+path, rd)
	if err != nil {
		tb.Fatal(err)
	}
	if rd != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header[headers[i]] = append(req.Header[headers[i]], headers[i+1])
	}
	res, err := px.client.Do(req)
	if err != nil {
		tb.Fatalf("%s %s through %s: %v", method, path, px.name, err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

// app sends a request that the proxy must let through, and returns what the app saw of it.
func (px *proxyFront) app(tb testing.TB, method, path, body string, headers ...string) echoed {
	tb.Helper()
	r := px.do(tb, method, path, body, headers...)
	var got echoed
	if r.status != http.StatusOK || json.Unmarshal([]byte(r.raw), &got) != nil {
		tb.Fatalf("%s %s through %s: got %d %s, want 200 from the app", method, path, px.name, r.status, r.raw)
	}
	return got
}

// The nginx file's /admin/ pages demand two factors: a password-only session is sent RFC 9470's
// challenge through nginx, steps up with a code, and gets in; elsewhere it gets in as it is.
func TestNginxDemandsTwoFactorsOnTheRoutesItChooses(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	px := startNginxFront(t, e)
	email, access, _ := e.user(t)
	id := userID(t, e, access)
	secret, _ := e.enrolTOTP(t, access)

	got := px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+access, "X-User-Acr", "aal2")
	got.wantIdentity(t, id, email)
	if acr := got.Header.Get("X-User-Acr"); acr != "aal1" {
		t.Fatalf("the app saw X-User-Acr %q for a password-only session, want aal1", acr)
	}
	r := px.do(t, "GET", "/admin/users", "", "Authorization", "Bearer "+access, "X-Auth-Require", "aal1")
	if h := r.header.Get("WWW-Authenticate"); r.status != 401 || !strings.Contains(h, `error="insufficient_user_authentication"`) ||
		!strings.Contains(h, `acr_values="aal2"`) {
		t.Fatalf("a password-only session on /admin/: %d, WWW-Authenticate %q", r.status, h)
	}
	stepped := px.do(t, "POST", "/auth/mfa/verify", `{"code":"`+oathtool(t, secret, e.clock.Now())+`"}`,
		"Authorization", "Bearer "+access).want(t, 200, "")
	got = px.app(t, "GET", "/admin/users", "", "Authorization", "Bearer "+stepped.str("access_token"))
	got.wantIdentity(t, id, email)
	if acr := got.Header.Get("X-User-Acr"); acr != "aal2" {
		t.Fatalf("the app saw X-User-Acr %q after step-up, want aal2", acr)
	}
}
