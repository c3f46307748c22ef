package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// service is a whole service process (run, or the binary) seen from outside, over HTTP.
type service struct {
	base string
}

func (s service) do(tb testing.TB, method, path string, body any, headers ...string) response {
	tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return send(tb, client, method, s.base+path, body, headers...)
}

// listenAddr waits for the service to log where its listener serves (it binds port 0, any free
// port, and logs the address it got), failing early if exited reports.
func listenAddr(tb testing.TB, logs *syncBuffer, serves string, exited <-chan error) string {
	tb.Helper()
	deadline := time.Now().Add(2 * time.Minute) // the first start also creates the database
	for {
		for _, line := range strings.Split(logs.String(), "\n") {
			var l struct{ Msg, Serves, Addr string }
			if json.Unmarshal([]byte(line), &l) == nil && l.Msg == "listening" && l.Serves == serves {
				return l.Addr
			}
		}
		select {
		case err := <-exited:
			tb.Fatalf("the service exited before it listened: %v\n%s", err, logs)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the service did not start listening; logs:\n%s", logs)
		}
	}
}

// waitClosed polls until nothing accepts connections on the service's port any more.
func (s service) waitClosed(tb testing.TB) {
	tb.Helper()
	addr := strings.TrimPrefix(s.base, "http://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			tb.Fatal("the listener is still open")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inFlight is a login whose handler has started reading its body and waits for the rest, so that
// it is certainly being served when the stop begins.
type inFlight struct {
	conn net.Conn
	rd   *bufio.Reader
	body string
}

// startLogin sends a login's headers with Expect: 100-continue and returns once the server
// answers 100 Continue, which net/http does only when the handler reads the body.
func (s service) startLogin(tb testing.TB, email, password string) *inFlight {
	tb.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	body, _ := json.Marshal(credentials{email, password})
	fmt.Fprintf(conn, "POST /auth/login HTTP/1.1\r\nHost: auth\r\nContent-Type: application/json\r\n"+
		"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n", len(body))
	rd := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang detector
	status, err := rd.ReadString('\n')
	if err != nil || !strings.HasPrefix(status, "HTTP/1.1 100 ") {
		tb.Fatalf("want 100 Continue, got %q, %v", status, err)
	}
	if blank, err := rd.ReadString('\n'); err != nil || blank != "\r\n" {
		tb.Fatalf("the 100 Continue answer ends with %q, %v", blank, err)
	}
	return &inFlight{conn, rd, string(body)}
}

// finish sends the login's body and returns its answer.
func (f *inFlight) finish(tb testing.TB) response {
	tb.Helper()
	if _, err := io.WriteString(f.conn, f.body); err != nil {
		tb.Fatalf("the in-flight request was cut off: %v", err)
	}
	f.conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang detector
	res, err := http.ReadResponse(f.rd, nil)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

// startRun runs the service in this process on dataDir, on any free loopback ports (the API's and
// the metrics'); stop cancels its context, the same path as SIGTERM, and returns what run
// returned. logs holds what it logged.
func startRun(tb testing.TB, dataDir string, extraEnv ...string) (s service, logs *syncBuffer, stop func() error) {
	tb.Helper()
	env := map[string]string{"DATA_DIR": dataDir, "HOST": "127.0.0.1", "PORT": "0", "METRICS_ADDR": "127.0.0.1:0"}
	for i := 0; i+1 < len(extraEnv); i += 2 {
		env[extraEnv[i]] = extraEnv[i+1]
	}
	logs = &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 1)
	// Closed after the one send, so that whoever reads the exit second (stop, after listenAddr
	// saw a failed start) does not wait for it.
	go func() { exited <- run(ctx, nil, func(k string) string { return env[k] }, logs, logs); close(exited) }()
	var stopped atomic.Bool // stop may run in a goroutine of the test's; the cleanup reads it
	stop = func() error {
		tb.Helper()
		stopped.Store(true)
		cancel()
		select {
		case err := <-exited:
			if strings.Contains(logs.String(), "panic") {
				tb.Errorf("a panic was logged:\n%s", logs)
			}
			return err
		case <-time.After(30 * time.Second):
			tb.Fatalf("run did not return after its context ended; logs:\n%s", logs)
			return nil
		}
	}
	tb.Cleanup(func() {
		if !stopped.Load() {
			stop()
		}
	})
	s = service{"http://" + listenAddr(tb, logs, "api", exited)}
	return s, logs, stop
}

func TestRunStopsCleanlyAndARestartKeepsEverything(t *testing.T) {
	t.Parallel()
	dataDir := newDataDir(t)
	s, _, stop := startRun(t, dataDir)

	const email, password = "ada@example.com", "correct horse battery"
	s.do(t, "POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
	kept := s.do(t, "POST", "/auth/login", credentials{email, password}).want(t, 200, "")
	ended := s.do(t, "POST", "/auth/login", credentials{email, password}).want(t, 200, "")
	s.do(t, "POST", "/auth/logout", nil, "authorization_access", ended.str("access_token"),
		"authorization_refresh", ended.str("refresh_token")).want(t, 200, "")

	login := s.startLogin(t, email, password)
	stopErr := make(chan error, 1)
	go func() { stopErr <- stop() }()
	s.waitClosed(t)
	late := login.finish(t).want(t, 200, "")
	if err := <-stopErr; err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}

	s, _, _ = startRun(t, dataDir)
	for _, tt := range []struct {
		name   string
		r      response
		status int
		code   string
	}{
		{"the user can still log in", s.do(t, "POST", "/auth/login", credentials{email, password}), 200, ""},
		{"an access token from before the restart still works", s.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+kept.str("access_token")), 200, ""},
		{"the token of the login in flight at the stop works", s.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+late.str("access_token")), 200, ""},
		{"a refresh token from before the restart still works", s.do(t, "POST", "/auth/refresh", nil, "authorization_refresh", kept.str("refresh_token")), 200, ""},
		{"an access token logged out before the restart stays refused", s.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+ended.str("access_token")), 401, "token_revoked"},
		{"a refresh token logged out before the restart stays refused", s.do(t, "POST", "/auth/refresh", nil, "authorization_refresh", ended.str("refresh_token")), 401, "token_revoked"},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.r.want(t, tt.status, tt.code) })
	}
}

// TestMain runs main instead of the tests when this variable is set, so that a test can start
// the service as a real process without building a second binary.
const runMainEnv = "AUTH_TEST_RUN_MAIN"

func TestSIGTERMFinishesInFlightRequestsAndExitsZero(t *testing.T) {
	t.Parallel()
	out := &syncBuffer{}
	cmd := exec.Command(os.Args[0])
	// MONGODB_URI emptied: the suite may run against a real MongoDB, the process is about the
	// embedded default and its DATA_DIR.
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "MONGODB_URI=", "DATA_DIR="+newDataDir(t),
		"HOST=127.0.0.1", "PORT=0", "METRICS_ADDR=127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
	})
	s := service{"http://" + listenAddr(t, out, "api", exited)}

	const email, password = "ada@example.com", "correct horse battery"
	s.do(t, "POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
	login := s.startLogin(t, email, password)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.waitClosed(t)
	login.finish(t).want(t, 200, "")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v; output:\n%s", err, out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the process did not exit after SIGTERM; output:\n%s", out)
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop in the log:\n%s", out)
	}
}

func TestRunServesMetricsOnTheirOwnListenerOnly(t *testing.T) {
	t.Parallel()
	t.Run("on METRICS_ADDR, and the API's port answers 404", func(t *testing.T) {
		t.Parallel()
		s, logs, stop := startRun(t, newDataDir(t)) // METRICS_ADDR=127.0.0.1:0
		s.do(t, "GET", "/metrics", nil).want(t, 404, "not_found")
		m := service{"http://" + listenAddr(t, logs, "metrics", nil)}.do(t, "GET", "/metrics", nil)
		if m.status != 200 || !strings.Contains(m.raw, "auth_http_requests_total") {
			t.Fatalf("metrics port: %d %.200s", m.status, m.raw)
		}
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
	})
	t.Run("on the API's port with METRICS_ADDR=public, and no listener of their own", func(t *testing.T) {
		t.Parallel()
		s, logs, stop := startRun(t, newDataDir(t), "METRICS_ADDR", "public")
		if m := s.do(t, "GET", "/metrics", nil); m.status != 200 || !strings.Contains(m.raw, "auth_http_requests_total") {
			t.Fatalf("API port: %d %.200s", m.status, m.raw)
		}
		if err := stop(); err != nil {
			t.Fatalf("run: %v", err)
		}
		if l := logs.String(); strings.Contains(l, `"serves":"metrics"`) || !strings.Contains(l, "metrics are served on the API's port") {
			t.Fatalf("want no metrics listener and a warning saying where they are:\n%s", l)
		}
	})
}
