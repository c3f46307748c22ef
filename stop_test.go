package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"
)

// freePort returns a loopback port that nothing listens on at the moment.
func freePort(tb testing.TB) string {
	tb.Helper()
	_, port, _ := net.SplitHostPort(freeLoopbackAddr(tb))
	return port
}

// service is a whole service process (run, or the binary) seen from outside, over HTTP.
type service struct {
	tb   testing.TB
	base string
}

func (s service) do(method, path string, body any, headers ...string) response {
	s.tb.Helper()
	client := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return send(s.tb, client, method, s.base+path, body, headers...)
}

// waitHealthy polls /healthz until the service answers, failing early if exited reports.
func (s service) waitHealthy(exited <-chan error) {
	s.tb.Helper()
	deadline := time.Now().Add(2 * time.Minute) // the first start also creates the database
	for {
		res, err := http.Get(s.base + "/healthz")
		if err == nil {
			res.Body.Close()
			if res.StatusCode == 200 {
				return
			}
		}
		select {
		case err := <-exited:
			s.tb.Fatalf("the service exited before it was healthy: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			s.tb.Fatal("the service did not become healthy")
		}
	}
}

// waitClosed polls until nothing accepts connections on the service's port any more.
func (s service) waitClosed() {
	s.tb.Helper()
	addr := strings.TrimPrefix(s.base, "http://")
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err != nil {
			return
		}
		c.Close()
		if time.Now().After(deadline) {
			s.tb.Fatal("the listener is still open")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// inFlight is a login sent up to the middle of its body, so that it is certainly still being
// served when the stop begins.
type inFlight struct {
	tb   testing.TB
	conn net.Conn
	rest string
}

func (s service) startLogin(email, password string) *inFlight {
	s.tb.Helper()
	conn, err := net.Dial("tcp", strings.TrimPrefix(s.base, "http://"))
	if err != nil {
		s.tb.Fatal(err)
	}
	s.tb.Cleanup(func() { conn.Close() })
	body, _ := json.Marshal(credentials{email, password})
	half := len(body) / 2
	fmt.Fprintf(conn, "POST /auth/login HTTP/1.1\r\nHost: auth\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s",
		len(body), body[:half])
	// The server accepts connections in order: once a later one is answered, this one is in.
	s.do("GET", "/healthz", nil).want(s.tb, 200, "")
	return &inFlight{s.tb, conn, string(body[half:])}
}

// finish sends the rest of the login and returns its answer.
func (f *inFlight) finish() response {
	f.tb.Helper()
	if _, err := io.WriteString(f.conn, f.rest); err != nil {
		f.tb.Fatalf("the in-flight request was cut off: %v", err)
	}
	res := readResponse(f.tb, f.conn)
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	r := response{status: res.StatusCode, header: res.Header, raw: string(raw)}
	json.Unmarshal(raw, &r.body)
	return r
}

// startRun runs the service in this process on dataDir and port; stop cancels its context, the
// same path as SIGTERM, and returns what run returned.
func startRun(tb testing.TB, dataDir, port string, extraEnv ...string) (s service, stop func() error) {
	tb.Helper()
	// MEMORY_LIMIT_MIB=0: the limit is process-wide, and this process is the whole test suite.
	env := map[string]string{"DATA_DIR": dataDir, "HOST": "127.0.0.1", "PORT": port, "MEMORY_LIMIT_MIB": "0"}
	for i := 0; i+1 < len(extraEnv); i += 2 {
		env[extraEnv[i]] = extraEnv[i+1]
	}
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	exited := make(chan error, 1)
	go func() { exited <- run(ctx, nil, func(k string) string { return env[k] }, logs, logs) }()
	stopped := false
	stop = func() error {
		tb.Helper()
		stopped = true
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
		if !stopped {
			stop()
		}
	})
	s = service{tb, "http://127.0.0.1:" + port}
	s.waitHealthy(exited)
	return s, stop
}

func TestRunStopsCleanlyAndARestartKeepsEverything(t *testing.T) {
	t.Parallel()
	dataDir, port := t.TempDir(), freePort(t)
	s, stop := startRun(t, dataDir, port)

	const email, password = "ada@example.com", "correct horse battery"
	s.do("POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
	kept := s.do("POST", "/auth/login", credentials{email, password}).want(t, 200, "")
	ended := s.do("POST", "/auth/login", credentials{email, password}).want(t, 200, "")
	s.do("POST", "/auth/logout", nil, "authorization_access", ended.str("access_token"),
		"authorization_refresh", ended.str("refresh_token")).want(t, 200, "")

	login := s.startLogin(email, password)
	stopErr := make(chan error, 1)
	go func() { stopErr <- stop() }()
	s.waitClosed()
	late := login.finish().want(t, 200, "")
	if err := <-stopErr; err != nil {
		t.Fatalf("run returned %v, want nil", err)
	}

	s, _ = startRun(t, dataDir, port)
	for _, tt := range []struct {
		name   string
		r      response
		status int
		code   string
	}{
		{"the user can still log in", s.do("POST", "/auth/login", credentials{email, password}), 200, ""},
		{"an access token from before the restart still works", s.do("GET", "/auth/page", nil, "Authorization", "Bearer "+kept.str("access_token")), 200, ""},
		{"the token of the login in flight at the stop works", s.do("GET", "/auth/page", nil, "Authorization", "Bearer "+late.str("access_token")), 200, ""},
		{"a refresh token from before the restart still works", s.do("POST", "/auth/refresh", nil, "authorization_refresh", kept.str("refresh_token")), 200, ""},
		{"an access token logged out before the restart stays refused", s.do("GET", "/auth/page", nil, "Authorization", "Bearer "+ended.str("access_token")), 401, "token_revoked"},
		{"a refresh token logged out before the restart stays refused", s.do("POST", "/auth/refresh", nil, "authorization_refresh", ended.str("refresh_token")), 401, "token_revoked"},
	} {
		t.Run(tt.name, func(t *testing.T) { tt.r.want(t, tt.status, tt.code) })
	}
}

// TestMain runs main instead of the tests when this variable is set, so that a test can start
// the service as a real process without building a second binary.
const runMainEnv = "AUTH_TEST_RUN_MAIN"

func TestSIGTERMFinishesInFlightRequestsAndExitsZero(t *testing.T) {
	t.Parallel()
	port := freePort(t)
	var out bytes.Buffer
	cmd := exec.Command(os.Args[0])
	// MONGODB_URI emptied: the suite may run against a real MongoDB, the process is about the
	// embedded default and its DATA_DIR.
	cmd.Env = append(os.Environ(), runMainEnv+"=1", "MONGODB_URI=", "DATA_DIR="+t.TempDir(), "PORT="+port)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
	})
	s := service{t, "http://127.0.0.1:" + port}
	s.waitHealthy(exited)

	const email, password = "ada@example.com", "correct horse battery"
	s.do("POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
	login := s.startLogin(email, password)
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	s.waitClosed()
	login.finish().want(t, 200, "")
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("exit: %v; output:\n%s", err, &out)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("the process did not exit after SIGTERM; output:\n%s", &out)
	}
	if !strings.Contains(out.String(), `"msg":"stopped"`) {
		t.Fatalf("no clean stop in the log:\n%s", &out)
	}
}

func TestMetricsCanHaveAPortOfTheirOwn(t *testing.T) {
	t.Parallel()
	metricsAddr := freeLoopbackAddr(t)
	s, stop := startRun(t, t.TempDir(), freePort(t), "METRICS_ADDR", metricsAddr)
	s.do("GET", "/metrics", nil).want(t, 404, "not_found")
	m := service{t, "http://" + metricsAddr}.do("GET", "/metrics", nil)
	if m.status != 200 || !strings.Contains(m.raw, "auth_http_requests_total") {
		t.Fatalf("metrics port: %d %.200s", m.status, m.raw)
	}
	if err := stop(); err != nil {
		t.Fatalf("run: %v", err)
	}
}
