package main

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestSlowLorisClientIsCutOffByTheHeaderTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.readHeaderTimeout = 200 * time.Millisecond })

	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// One header byte every 50ms: each arrives well within any per-read timeout, but the
	// header as a whole would take a minute.
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		if _, err := io.WriteString(conn, "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: "); err != nil {
			return
		}
		for range 1200 {
			if _, err := conn.Write([]byte("a")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang detector
	_, err = io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server still held the connection of a client that never finished its header")
	}
	conn.Close()
	<-stopped
	e.do(t, "GET", "/healthz", nil).want(t, 200, "")
}

func TestSlowBodyIsCutOffByTheReadTimeout(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.readTimeout = 300 * time.Millisecond })

	conn, err := net.Dial("tcp", e.srv.Listener.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	io.WriteString(conn, "POST /auth/login HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{")
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		for range 600 {
			if _, err := conn.Write([]byte(" ")); err != nil {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang detector
	res, err := io.ReadAll(conn)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the server still held the connection of a client that never finished its body")
	}
	if strings.Contains(string(res), " 200 ") {
		t.Fatalf("a body that never arrived was answered with success:\n%s", res)
	}
	conn.Close()
	<-stopped
}

func TestOversizedHeadersAnswer431(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	r := e.do(t, "GET", "/healthz", nil, "X-Big", strings.Repeat("a", 2*e.cfg.maxHeaderBytes))
	if r.status != http.StatusRequestHeaderFieldsTooLarge {
		t.Fatalf("got %d %s, want 431", r.status, r.raw)
	}
	e.do(t, "GET", "/healthz", nil).want(t, 200, "")
}

func TestOversizedBodiesAnswer413OnEveryEndpointThatReadsOne(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	big := `{"email":"a@example.com","password":"` + strings.Repeat("a", maxBody) + `"}`
	for _, ep := range []struct{ method, path string }{
		{"POST", "/auth/signup"},
		{"POST", "/auth/login"},
		{"POST", "/auth/refresh"},
		{"POST", "/auth/logout"},
		{"POST", "/auth/verify"},
		{"GET", "/auth/verify"},
	} {
		t.Run(ep.method+" "+ep.path, func(t *testing.T) {
			e.do(t, ep.method, ep.path, big).want(t, 413, "payload_too_large")
		})
	}
}

// readResponse reads one HTTP answer from a raw connection.
func readResponse(tb testing.TB, conn net.Conn) *http.Response {
	tb.Helper()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second)) // hang detector
	res, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		tb.Fatal(err)
	}
	return res
}

// A success forgets its account's failures from its client. When it found none, its own record
// is removed after it answers; that late removal takes only that record, never the failures that
// came after the success.
func TestALateRemovalAfterASuccessKeepsTheFailuresThatCameAfter(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	g, ctx := e.deps.passwords.limits, t.Context()
	client, email := netip.MustParseAddr("198.51.100.7"), "late@example.com"
	good, err := g.password(ctx, client, email)
	if err == nil {
		err = good.check(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	for range 3 { // wrong passwords after the good one: their records stay
		bad, err := g.password(ctx, client, email)
		if err == nil {
			err = bad.check(ctx)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := good.succeeded(ctx); err != nil {
		t.Fatal(err)
	}
	account, _ := loginKeys(client, email)
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		left, err := e.store.Attempts(ctx, account, time.Time{}, "", 10)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) <= 3 { // the good one's record is gone
			if len(left) != 3 {
				t.Fatalf("%d failures left after the success's removal, want the 3 that came after it", len(left))
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the success's own record was never removed")
		}
	}
}
