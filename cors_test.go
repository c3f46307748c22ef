package main

import (
	"net/http"
	"strings"
	"testing"
)

func TestCORS(t *testing.T) {
	t.Parallel()
	const app, admin = "https://app.example.com", "https://admin.example.com"
	listed := newTestEnv(t, func(c *config) {
		// Through the environment, as an operator writes it.
		env, err := loadConfig(func(k string) string {
			if k == "CORS_ALLOWED_ORIGINS" {
				return app + ", " + admin
			}
			return ""
		})
		if err != nil {
			t.Fatal(err)
		}
		c.corsOrigins = env.corsOrigins
	})
	anyOrigin := newTestEnv(t, func(c *config) { c.corsOrigins = []string{"*"} })
	none := newTestEnv(t)
	preflight := func(origin, method, headers string) []string {
		return []string{"Origin", origin, "Access-Control-Request-Method", method, "Access-Control-Request-Headers", headers}
	}
	originalHeaders := []string{"authorization_access", "authorization_refresh", "Authorization"}
	corsHeaders := []string{"Access-Control-Allow-Origin", "Access-Control-Allow-Credentials",
		"Access-Control-Expose-Headers", "Access-Control-Allow-Methods", "Access-Control-Allow-Headers",
		"Access-Control-Max-Age"}

	for _, tt := range []struct {
		name     string
		env      *testEnv
		method   string
		path     string
		headers  []string
		status   int
		want     map[string]string   // exact values; "" means absent
		includes map[string][]string // comma-separated lists that must hold these
		noCORS   bool                // no Access-Control-* header at all
		present  []string            // headers that must be sent, if only empty
	}{
		{
			name: "echoes a listed origin and lets it send credentials", env: listed,
			method: "GET", path: "/healthz", headers: []string{"Origin", app}, status: 200,
			want:     map[string]string{"Access-Control-Allow-Origin": app, "Access-Control-Allow-Credentials": "true"},
			includes: map[string][]string{"Vary": {"Origin"}, "Access-Control-Expose-Headers": {"WWW-Authenticate"}},
		},
		{
			name: "echoes every listed origin, not only the first", env: listed,
			method: "GET", path: "/healthz", headers: []string{"Origin", admin}, status: 200,
			want:     map[string]string{"Access-Control-Allow-Origin": admin, "Access-Control-Allow-Credentials": "true"},
			includes: map[string][]string{"Vary": {"Origin"}},
		},
		{
			name: "answers a listed origin's preflight 204 allowing the original service's headers and Authorization", env: listed,
			method: "OPTIONS", path: "/auth/page", headers: preflight(app, "GET", "authorization_access"), status: 204,
			want: map[string]string{"Access-Control-Allow-Origin": app, "Access-Control-Allow-Credentials": "true"},
			includes: map[string][]string{"Vary": {"Origin"}, "Access-Control-Allow-Headers": originalHeaders,
				"Access-Control-Allow-Methods": {"GET", "POST"}},
		},
		{
			name: "answers a preflight for refresh allowing the refresh header", env: listed,
			method: "OPTIONS", path: "/auth/refresh", headers: preflight(app, "POST", "authorization_refresh"), status: 204,
			want:     map[string]string{"Access-Control-Allow-Origin": app},
			includes: map[string][]string{"Access-Control-Allow-Headers": originalHeaders},
		},
		{
			name: "lets a listed origin read WWW-Authenticate on a 401", env: listed,
			method: "GET", path: "/auth/page", headers: []string{"Origin", app}, status: 401,
			want:     map[string]string{"Access-Control-Allow-Origin": app, "WWW-Authenticate": "Bearer"},
			includes: map[string][]string{"Access-Control-Expose-Headers": {"WWW-Authenticate"}},
		},
		{
			name: "asks for a token on an OPTIONS that is not a preflight", env: listed,
			method: "OPTIONS", path: "/auth/page", headers: []string{"Origin", app}, status: 401,
			want: map[string]string{"Access-Control-Allow-Origin": app},
		},
		{
			name: "answers a preflight that a forward-auth proxy asks about with GET", env: listed,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", preflight(app, "POST", "authorization")...),
			status:   204,
			want:     map[string]string{"Access-Control-Allow-Origin": app, "X-User-Id": "", "X-User-Email": ""},
			includes: map[string][]string{"Access-Control-Allow-Headers": originalHeaders},
			// Sent empty, so that a proxy copying them onto the preflight it passes on copies nothing.
			present: []string{"X-User-Id", "X-User-Email"},
		},
		{
			name: "asks for a token when the proxy names OPTIONS without a preflight's request method", env: listed,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", "Origin", app), status: 401,
		},
		{
			name: "asks for a token when the proxy names an unlisted origin's preflight", env: listed,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", preflight("https://evil.example.com", "POST", "authorization")...),
			status: 401, noCORS: true,
		},
		{
			name: "asks for a token when the proxy names OPTIONS without an Origin", env: listed,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", "Access-Control-Request-Method", "POST"),
			status: 401, noCORS: true,
		},
		{
			name: "asks for a token when the proxy names GET, whatever method it asks with", env: listed,
			method: "OPTIONS", path: "/auth/page", headers: forwarded("GET", preflight(app, "POST", "authorization")...),
			status: 401,
		},
		{
			name: "asks for a token when a proxy asks with GET and names no method", env: listed,
			method: "GET", path: "/auth/page", headers: preflight(app, "POST", "authorization"), status: 401,
		},
		{
			name: "answers preflights off the forward-auth route whatever X-Forwarded-Method says", env: listed,
			method: "OPTIONS", path: "/auth/refresh", headers: forwarded("GET", preflight(app, "POST", "authorization_refresh")...),
			status: 204, want: map[string]string{"Access-Control-Allow-Origin": app},
		},
		{
			name: "gives an unlisted origin no CORS headers", env: listed,
			method: "GET", path: "/healthz", headers: []string{"Origin", "https://evil.example.com"}, status: 200,
			noCORS: true,
		},
		{
			name: "does not answer an unlisted origin's preflight", env: listed,
			method: "OPTIONS", path: "/auth/login", headers: preflight("https://evil.example.com", "POST", "content-type"),
			status: 405, noCORS: true,
		},
		{
			name: "does not match a listed origin under another scheme", env: listed,
			method: "GET", path: "/healthz", headers: []string{"Origin", "http://app.example.com"}, status: 200,
			noCORS: true,
		},
		{
			name: "gives a request without Origin no CORS headers", env: listed,
			method: "GET", path: "/healthz", status: 200, noCORS: true,
		},
		{
			name: "allows any origin with * but never with credentials", env: anyOrigin,
			method: "GET", path: "/healthz", headers: []string{"Origin", "https://anywhere.example.com"}, status: 200,
			want:     map[string]string{"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": ""},
			includes: map[string][]string{"Access-Control-Expose-Headers": {"WWW-Authenticate"}},
		},
		{
			name: "answers a preflight with * but never with credentials", env: anyOrigin,
			method: "OPTIONS", path: "/auth/page", headers: preflight("https://anywhere.example.com", "GET", "authorization"), status: 204,
			want:     map[string]string{"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": ""},
			includes: map[string][]string{"Access-Control-Allow-Headers": originalHeaders},
		},
		{
			name: "answers a forward-auth preflight with * but never with credentials", env: anyOrigin,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", preflight("https://anywhere.example.com", "GET", "authorization")...),
			status: 204, want: map[string]string{"Access-Control-Allow-Origin": "*", "Access-Control-Allow-Credentials": ""},
		},
		{
			name: "gives no CORS headers at all by default", env: none,
			method: "GET", path: "/healthz", headers: []string{"Origin", app}, status: 200,
			want: map[string]string{"Vary": ""}, noCORS: true,
		},
		{
			name: "answers no preflight by default", env: none,
			method: "OPTIONS", path: "/auth/login", headers: preflight(app, "POST", "content-type"), status: 405,
			noCORS: true,
		},
		{
			name: "lets no forward-auth preflight through by default", env: none,
			method: "GET", path: "/auth/page", headers: forwarded("OPTIONS", preflight(app, "POST", "authorization")...),
			status: 401, noCORS: true,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := tt.env.do(t, tt.method, tt.path, nil, tt.headers...)
			if r.status != tt.status {
				t.Fatalf("got %d %s, want %d", r.status, r.raw, tt.status)
			}
			for k, v := range tt.want {
				if got := strings.Join(r.header.Values(k), ", "); got != v {
					t.Errorf("%s: %q, want %q", k, got, v)
				}
			}
			for k, tokens := range tt.includes {
				for _, tok := range tokens {
					if !listHas(r.header.Values(k), tok) {
						t.Errorf("%s: %q, want it to include %s", k, r.header.Values(k), tok)
					}
				}
			}
			for _, k := range tt.present {
				if _, ok := r.header[k]; !ok {
					t.Errorf("%s: absent, want it sent", k)
				}
			}
			if tt.noCORS {
				for _, k := range corsHeaders {
					if v := r.header.Values(k); len(v) > 0 {
						t.Errorf("%s: %q, want none", k, v)
					}
				}
			}
		})
	}
}

// forwarded is headers as a forward-auth proxy sends them, naming the guarded request's method.
func forwarded(method string, headers ...string) []string {
	return append([]string{"X-Forwarded-Method", method}, headers...)
}

func TestCORSBelievesNoForwardedMethodGivenTwice(t *testing.T) {
	t.Parallel()
	const app = "https://app.example.com"
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{app} })
	for _, methods := range [][]string{{"OPTIONS", "GET"}, {"GET", "OPTIONS"}, {"OPTIONS", "OPTIONS"}} {
		req, err := http.NewRequest("GET", e.srv.URL+"/auth/page", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Origin", app)
		req.Header.Set("Access-Control-Request-Method", "POST")
		for _, m := range methods {
			req.Header.Add("X-Forwarded-Method", m)
		}
		res, err := e.srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		res.Body.Close()
		if res.StatusCode != http.StatusUnauthorized {
			t.Errorf("X-Forwarded-Method %q: got %d, want 401", methods, res.StatusCode)
		}
	}
}

// listHas reports whether the comma-separated header values hold tok, as browsers compare it:
// without regard to case.
func listHas(values []string, tok string) bool {
	for _, v := range values {
		for _, f := range strings.Split(v, ",") {
			if strings.EqualFold(strings.TrimSpace(f), tok) {
				return true
			}
		}
	}
	return false
}

func TestCORSPreflightsAreCountedAsPreflightsAndAllowDELETE(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{"https://app.example.com"} })
	r := e.do(t, "OPTIONS", "/auth/sessions/x", nil, "Origin", "https://app.example.com",
		"Access-Control-Request-Method", "DELETE").want(t, 204, "")
	if !listHas(r.header.Values("Access-Control-Allow-Methods"), "DELETE") {
		t.Fatalf("Access-Control-Allow-Methods %q, want DELETE among them", r.header.Values("Access-Control-Allow-Methods"))
	}
	if got := metricValue(t, scrape(t, e), "auth_http_requests_total", "route", "preflight", "status", "204"); got != 1 {
		t.Fatalf("%v preflights counted, want 1", got)
	}
}

func TestCORSForgivesATrailingSlashInTheSetting(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.corsOrigins = []string{"https://app.example.com/"} })
	r := e.do(t, "GET", "/healthz", nil, "Origin", "https://app.example.com").want(t, 200, "")
	if got := r.header.Get("Access-Control-Allow-Origin"); got != "https://app.example.com" {
		t.Fatalf("Access-Control-Allow-Origin %q", got)
	}
}
