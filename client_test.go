package main

import (
	"net/http"
	"strings"
	"testing"
)

func TestClientModuleIsServedWithItsETag(t *testing.T) {
	t.Parallel()
	const listed = "https://app.example.com"
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{listed} })

	first := e.do(t, "GET", "/auth/client.js", nil, "Origin", listed)
	if first.status != http.StatusOK || first.raw != string(clientJS) {
		t.Fatalf("GET /auth/client.js: %d, %d bytes; want 200 and the module", first.status, len(first.raw))
	}
	etag := first.header.Get("ETag")
	for name, want := range map[string]string{
		"Content-Type":  "text/javascript; charset=utf-8",
		"Cache-Control": "public, max-age=300",
		// Module scripts are fetched under CORS: an app on a listed origin can import it.
		"Access-Control-Allow-Origin": listed,
		"X-Content-Type-Options":      "nosniff",
	} {
		if got := first.header.Get(name); got != want {
			t.Errorf("%s: %q, want %q", name, got, want)
		}
	}
	if !strings.HasPrefix(etag, `"`) || len(etag) < 10 {
		t.Fatalf("ETag %q, want a strong validator", etag)
	}

	for _, tt := range []struct {
		name    string
		method  string
		headers []string
		status  int
		body    bool
	}{
		{"the same ETag gets 304 without a body", "GET", []string{"If-None-Match", etag}, http.StatusNotModified, false},
		{"another ETag gets the module", "GET", []string{"If-None-Match", `"old"`}, http.StatusOK, true},
		{"HEAD gets the headers alone", "HEAD", nil, http.StatusOK, false},
		{"POST is not allowed", "POST", nil, http.StatusMethodNotAllowed, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, tt.method, "/auth/client.js", nil, tt.headers...)
			if r.status != tt.status || (r.raw != "") != tt.body {
				t.Fatalf("got %d with %d bytes, want %d and a body: %v", r.status, len(r.raw), tt.status, tt.body)
			}
			if tt.status != http.StatusMethodNotAllowed && r.header.Get("ETag") != etag {
				t.Fatalf("ETag %q, want %q", r.header.Get("ETag"), etag)
			}
		})
	}
}
