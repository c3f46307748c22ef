package main

import (
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// caddyfile is the Caddy configuration the README shows; the end-to-end tests run exactly this
// text, with only the addresses changed.
const caddyfile = "deploy/Caddyfile"

func TestCaddyInFrontOfTheService(t *testing.T) {
	t.Parallel()
	const listed = "https://app.example.com"
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{listed} })
	px := startCaddyFront(t, e)
	email, access, _ := e.user(t)
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
				got := px.app(t, "POST", "/orders?page=2", `{"item":"book"}`, tt.headers...)
				got.wantIdentity(t, id, email)
				if got.Method != "POST" || got.URI != "/orders?page=2" || got.Body != `{"item":"book"}` {
					t.Fatalf("the app saw %s %s %q, want the request as sent", got.Method, got.URI, got.Body)
				}
			})
		}
	})

	t.Run("replaces identity headers the client sends with the token's, in every spelling", func(t *testing.T) {
		testIdentityReplaced(t, px, access, id, email)
	})

	testOnlyRealPreflightsPass(t, px, listed)

	t.Run("serves the service's own endpoints on the same origin", func(t *testing.T) {
		r := px.do(t, "POST", "/auth/login", `{"email":"`+email+`","password":"correct horse battery"}`,
			"Content-Type", "application/json")
		r.want(t, 200, "")
		px.app(t, "GET", "/orders", "", "Authorization", "Bearer "+r.str("access_token")).wantIdentity(t, id, email)
	})

	// Last, as it moves the service's clock past every token's expiry.
	t.Run("turns away a request without a valid token with the service's own 401", func(t *testing.T) {
		_, expiring, _ := e.user(t)
		e.clock.Advance(e.cfg.accessTTL + defaultLeeway + time.Second)
		for _, tt := range []struct {
			name      string
			headers   []string
			code      string
			challenge string
		}{
			{"no token", nil, "token_missing", "Bearer"},
			{"identity headers and no token", spoofedIdentity(), "token_missing", "Bearer"},
			{"garbage", []string{"Authorization", "Bearer not.a.token"}, "token_invalid", `Bearer error="invalid_token"`},
			{"an expired token", []string{"Authorization", "Bearer " + expiring}, "token_expired", `Bearer error="invalid_token"`},
		} {
			t.Run(tt.name, func(t *testing.T) {
				before := px.appHits.Load()
				r := px.do(t, "GET", "/orders", "", tt.headers...)
				// Caddy hands the client the service's answer as it is, body included.
				r.want(t, http.StatusUnauthorized, tt.code)
				if h := r.header.Get("WWW-Authenticate"); !strings.HasPrefix(h, tt.challenge) {
					t.Fatalf("WWW-Authenticate %q, want it to start with %q", h, tt.challenge)
				}
				if px.appHits.Load() != before {
					t.Fatal("the app was reached")
				}
			})
		}
	})
}

// caddyBinary finds caddy, or skips the test: Caddy is a system package, not a Go dependency.
func caddyBinary(tb testing.TB) string {
	tb.Helper()
	if p, err := exec.LookPath("caddy"); err == nil {
		return p
	}
	tb.Skip("caddy is not installed (apt-get install caddy); skipping the end-to-end Caddy test")
	return ""
}

// startCaddyFront runs Caddy with the README's Caddyfile, pointed at e and at a fresh echo app,
// and stops it when the test ends.
func startCaddyFront(tb testing.TB, e *testEnv) *proxyFront {
	tb.Helper()
	bin := caddyBinary(tb)
	app, hits := startEchoApp(tb)
	px := newProxyFront(tb, "Caddy", hits)
	// The port is free when asked for but could be taken before Caddy binds it; try again then.
	for attempt := 1; ; attempt++ {
		addr := freeLoopbackAddr(tb)
		err := runCaddy(tb, bin, caddyConfig(tb, addr, hostPort(tb, e.srv.URL), hostPort(tb, app.URL)), addr)
		if err == nil {
			px.url = "http://" + addr
			return px
		}
		if !errors.Is(err, errAddrInUse) || attempt == 3 {
			tb.Fatal(err)
		}
	}
}

// caddyConfig writes a Caddyfile for a test into a fresh directory and returns the directory: the
// README's, with its addresses replaced, under global options that keep Caddy to plain HTTP on
// listen and without its admin endpoint.
func caddyConfig(tb testing.TB, listen, auth, app string) (dir string) {
	tb.Helper()
	b, err := os.ReadFile(caddyfile)
	if err != nil {
		tb.Fatal(err)
	}
	site := string(b)
	for _, r := range [][2]string{
		// An http:// site address is served over plain HTTP, with no certificate to obtain.
		{"app.example.com {", "http://" + listen + " {"},
		{"reverse_proxy auth:7878", "reverse_proxy " + auth},
		{"forward_auth auth:7878 {", "forward_auth " + auth + " {"},
		{"reverse_proxy app:8080", "reverse_proxy " + app},
	} {
		if strings.Count(site, r[0]) != 1 {
			tb.Fatalf("%s no longer holds exactly one %q, which the test replaces", caddyfile, r[0])
		}
		site = strings.Replace(site, r[0], r[1], 1)
	}
	dir = tb.TempDir()
	conf := "{\n\tadmin off\n\tauto_https off\n}\n" + site
	if err := os.WriteFile(filepath.Join(dir, "Caddyfile"), []byte(conf), 0o600); err != nil {
		tb.Fatal(err)
	}
	return dir
}

// runCaddy starts Caddy on the Caddyfile in dir and returns once it answers on addr. Caddy keeps
// its state under the home and XDG directories, here all in dir, and runs as one foreground
// process, killed when the test ends.
func runCaddy(tb testing.TB, bin, dir, addr string) error {
	tb.Helper()
	cmd := exec.Command(bin, "run", "--config", filepath.Join(dir, "Caddyfile"), "--adapter", "caddyfile")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "HOME="+dir, "XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"XDG_DATA_HOME="+filepath.Join(dir, "data"), "XDG_CACHE_HOME="+filepath.Join(dir, "cache"))
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
			tb.Logf("Caddy's log:\n%s", out)
		}
	})
	probe := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: 2 * time.Second}
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			if strings.Contains(out.String(), "address already in use") {
				return errAddrInUse
			}
			return fmt.Errorf("caddy exited at start: %v\n%s", cmd.ProcessState, out)
		default:
		}
		// Asking over HTTP, not only connecting, tells Caddy from anything else that got the port.
		if res, err := probe.Get("http://" + addr + "/"); err == nil {
			res.Body.Close()
			if res.Header.Get("Server") == "Caddy" {
				return nil
			}
		}
		if time.Now().After(deadline) {
			return errors.New("caddy did not answer within 15s")
		}
		time.Sleep(20 * time.Millisecond)
	}
}
