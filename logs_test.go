package main

import (
	"encoding/json"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// accessLines returns the access log lines of e, decoded, by request id.
func accessLines(tb testing.TB, e *testEnv) map[string]map[string]any {
	tb.Helper()
	lines := make(map[string]map[string]any)
	for _, line := range strings.Split(strings.TrimSpace(e.logs.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(line), &v); err != nil {
			tb.Fatalf("a log line is not JSON: %q: %v", line, err)
		}
		if v["msg"] == "request" {
			id, _ := v["request_id"].(string)
			lines[id] = v
		}
	}
	return lines
}

func TestAccessLog(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	page := e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access, "X-Request-Id", "page-1").want(t, 200, "")
	nowhere := e.do(t, "GET", "/nowhere", nil, "X-Request-Id", "nowhere-1").want(t, 404, "not_found")
	lines := accessLines(t, e)

	t.Run("names method, path, route, status, duration, bytes, request id and user", func(t *testing.T) {
		l := lines["page-1"]
		userID := page.body["user"].(map[string]any)["id"]
		for key, want := range map[string]any{
			"level": "INFO", "method": "GET", "path": "/auth/page", "route": "/auth/page",
			"status": float64(200), "bytes": float64(len(page.raw)), "request_id": "page-1", "user_id": userID,
		} {
			if l[key] != want {
				t.Errorf("%s = %v, want %v in %v", key, l[key], want, l)
			}
		}
		if _, ok := l["duration_us"].(float64); !ok {
			t.Errorf("no duration_us in %v", l)
		}
	})
	t.Run("says unmatched for the route of an unknown path, and no user", func(t *testing.T) {
		l := lines["nowhere-1"]
		if l["route"] != "unmatched" || l["status"] != float64(404) || l["path"] != "/nowhere" ||
			l["bytes"] != float64(len(nowhere.raw)) {
			t.Errorf("got %v", l)
		}
		if _, ok := l["user_id"]; ok {
			t.Errorf("a user for an anonymous request: %v", l)
		}
	})
	t.Run("names the user of a login", func(t *testing.T) {
		email := "login-log@example.com"
		e.signup(t, email, "password123")
		r := e.do(t, "POST", "/auth/login", credentials{email, "password123"}, "X-Request-Id", "login-1").want(t, 200, "")
		v := e.do(t, "POST", "/auth/verify", map[string]string{"token": r.str("access_token")}).want(t, 200, "")
		if got, want := accessLines(t, e)["login-1"]["user_id"], v.body["claims"].(map[string]any)["sub"]; got != want {
			t.Errorf("user_id %v, want %v", got, want)
		}
	})
}

func TestAccessLogAsText(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.logFormat = "text" })
	e.do(t, "GET", "/healthz", nil, "X-Request-Id", "text-1").want(t, 200, "")
	for _, want := range []string{"msg=request", "method=GET", "path=/healthz", `route="GET /healthz"`, "status=200", "request_id=text-1"} {
		if !strings.Contains(e.logs.String(), want) {
			t.Errorf("no %s in %s", want, e.logs.String())
		}
	}
}

func TestRequestID(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)

	t.Run("echoes a sane id and logs under it", func(t *testing.T) {
		id := "Req_1.2-3:abc"
		r := e.do(t, "GET", "/healthz", nil, "X-Request-Id", id).want(t, 200, "")
		if got := r.header.Get("X-Request-Id"); got != id {
			t.Fatalf("X-Request-Id %q, want %q", got, id)
		}
		if _, ok := accessLines(t, e)[id]; !ok {
			t.Fatalf("no access line under %q", id)
		}
	})
	t.Run("generates an id when none is sent", func(t *testing.T) {
		a := e.do(t, "GET", "/healthz", nil).header.Get("X-Request-Id")
		b := e.do(t, "GET", "/healthz", nil).header.Get("X-Request-Id")
		if !saneRequestID(a) || !saneRequestID(b) || a == b {
			t.Fatalf("ids %q and %q, want two different sane ones", a, b)
		}
	})
	for _, tt := range []struct{ name, id string }{
		{"replaces an id with spaces", "two words"},
		{"replaces an id with a tab", "a\tb"},
		{"replaces an id of 200 characters", strings.Repeat("a", 200)},
		{"replaces an id with quotes", `a"b`},
		{"replaces an id with bytes beyond ASCII", "caf\xc3\xa9"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			r := e.do(t, "GET", "/healthz", nil, "X-Request-Id", tt.id).want(t, 200, "")
			if got := r.header.Get("X-Request-Id"); got == tt.id || !saneRequestID(got) {
				t.Fatalf("X-Request-Id %q for %q, want a generated one", got, tt.id)
			}
		})
	}
	t.Run("replaces an id with a newline, so that it cannot forge a log line", func(t *testing.T) {
		// No HTTP client sends a newline in a header, so this one goes to the handler directly.
		forged := "x\n{\"level\":\"INFO\",\"msg\":\"forged\"}"
		req := httptest.NewRequest("GET", "/healthz", nil)
		req.Header["X-Request-Id"] = []string{forged}
		w := httptest.NewRecorder()
		newHandler(e.deps, e.cfg).ServeHTTP(w, req)
		if got := w.Header().Get("X-Request-Id"); got == forged || !saneRequestID(got) {
			t.Fatalf("X-Request-Id %q, want a generated one", got)
		}
		if strings.Contains(e.logs.String(), "forged") {
			t.Fatalf("the sent id reached the log:\n%s", e.logs.String())
		}
	})
}

func TestLogsNeverHoldPasswordsTokensOrHashes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.logLevel = slog.LevelDebug })
	const (
		email    = "secretive@example.com"
		password = "Tr0ub4dor&3-secret"
		wrong    = "wrong-Tr0ub4dor&3"
	)
	e.signup(t, email, password)
	access, refresh := e.login(t, email, password)
	e.do(t, "POST", "/auth/login", credentials{email, wrong}).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/signup", credentials{email, password}).want(t, 409, "email_taken")
	r := e.refresh(t, refresh).want(t, 200, "")
	access2, refresh2 := r.str("access_token"), r.str("refresh_token")
	e.do(t, "POST", "/auth/verify", map[string]string{"token": access2}).want(t, 200, "")
	e.do(t, "GET", "/auth/verify", nil, "authorization_access", access2).want(t, 200, "")
	e.do(t, "GET", "/auth/page", nil, "authorization_access", access2).want(t, 200, "")
	e.do(t, "GET", "/auth/page", nil, "authorization_access", access2+"x").want(t, 401, "token_invalid")
	e.clock.Advance(e.reuseWindow())
	e.refresh(t, refresh).want(t, 401, "token_reused") // logs a warning naming the user
	access3, refresh3 := e.login(t, email, password)
	e.do(t, "POST", "/auth/logout", map[string]string{"refresh_token": refresh3}, "Authorization", "Bearer "+access3).want(t, 200, "")
	e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access3).want(t, 401, "token_revoked")

	u, err := e.store.UserByEmail(t.Context(), email)
	if err != nil {
		t.Fatal(err)
	}
	hashParts := strings.Split(u.PasswordHash, "$")
	secrets := map[string]string{
		"the password":                     password,
		"the wrong password":               wrong,
		"the password, JSON-escaped":       strings.ReplaceAll(password, "&", `\u0026`),
		"the wrong password, JSON-escaped": strings.ReplaceAll(wrong, "&", `\u0026`),
		"the password hash":                u.PasswordHash,
		"the hash's salt":                  hashParts[len(hashParts)-2],
		"the hash's key":                   hashParts[len(hashParts)-1],
	}
	for i, tok := range []string{access, refresh, access2, refresh2, access3, refresh3} {
		parts := strings.Split(tok, ".")
		if len(parts) != 3 {
			t.Fatalf("token %d is not a JWT: %q", i, tok)
		}
		secrets["token "+string(rune('A'+i))] = tok
		secrets["the claims of token "+string(rune('A'+i))] = parts[1]
		secrets["the signature of token "+string(rune('A'+i))] = parts[2]
	}
	logs := e.logs.String()
	if !strings.Contains(logs, `"msg":"refresh token reused; session revoked"`) {
		t.Fatalf("the drive did not reach the reuse warning; the test checks less than it claims:\n%s", logs)
	}
	for what, s := range secrets {
		if strings.Contains(logs, s) {
			t.Errorf("the log holds %s", what)
		}
	}
}

func TestAPanickingHandlerIsAnswered500AndStillLoggedAndCounted(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	log := newLogger(logs, testConfig(t))
	m := newMetrics()
	boom := http.HandlerFunc(func(http.ResponseWriter, *http.Request) { panic("boom") })
	h := recoverer(log)(accessLog(log, time.Now, newRequestIDs(), m)(boom))
	w := httptest.NewRecorder()
	h.ServeHTTP(w, httptest.NewRequest("GET", "/explode", nil))
	if w.Code != 500 || !strings.Contains(w.Body.String(), `"internal"`) || strings.Contains(w.Body.String(), "boom") {
		t.Fatalf("answer %d %s, want a 500 internal that does not show the panic", w.Code, w.Body.String())
	}
	out := logs.String()
	if !strings.Contains(out, `"msg":"request"`) || !strings.Contains(out, `"status":500`) {
		t.Fatalf("no access line with status 500 in %s", out)
	}
	if !strings.Contains(out, `"msg":"panic"`) || !strings.Contains(out, "logs_test.go") {
		t.Fatalf("the panic's stack, down to where it happened, is not logged: %s", out)
	}
	if exposed := string(m.expose(gauges{})); !strings.Contains(exposed, `status="500"`) {
		t.Fatalf("the 500 is not counted:\n%s", exposed)
	}
}
