package main

import (
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"
)

// jarBrowser is a browser on a whole service process: a cookie jar, no redirects followed, and
// forms posted from the portal's own pages.
type jarBrowser struct {
	base   string
	client *http.Client
	last   string
}

func newJarBrowser(tb testing.TB, base string) *jarBrowser {
	tb.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		tb.Fatal(err)
	}
	return &jarBrowser{base: base, client: &http.Client{Jar: jar, Timeout: 30 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}}
}

func (b *jarBrowser) send(tb testing.TB, method, path string, form url.Values) int {
	tb.Helper()
	var body io.Reader
	if form != nil {
		if m := csrfField.FindStringSubmatch(b.last); m != nil {
			form.Set("csrf", m[1])
		}
		body = strings.NewReader(form.Encode())
	}
	req, err := http.NewRequest(method, b.base+path, body)
	if err != nil {
		tb.Fatal(err)
	}
	if form != nil {
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		req.Header.Set("Sec-Fetch-Site", "same-origin")
	}
	res, err := b.client.Do(req)
	if err != nil {
		tb.Fatal(err)
	}
	defer res.Body.Close()
	raw, _ := io.ReadAll(res.Body)
	b.last = string(raw)
	return res.StatusCode
}

// The signing key of the cookies and of the forms lives in DATA_DIR with the database: a restart
// of `go run .` keeps a browser signed in, and one signed out stays out.
func TestACookieSessionOutlivesARestartAndAnEndedOneStaysEnded(t *testing.T) {
	t.Parallel()
	dataDir := newDataDir(t)
	s, _, stop := startRun(t, dataDir)
	const email, password = "ada@example.com", "correct horse battery"
	s.do(t, "POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
	signIn := func(b *jarBrowser) {
		t.Helper()
		b.send(t, "GET", "/login", nil)
		if got := b.send(t, "POST", "/login", url.Values{"email": {email}, "password": {password}}); got != http.StatusSeeOther {
			t.Fatalf("sign-in: %d %s", got, b.last)
		}
	}
	kept, ended := newJarBrowser(t, s.base), newJarBrowser(t, s.base)
	signIn(kept)
	signIn(ended)
	kept.send(t, "GET", "/account", nil) // a form served before the restart, posted after
	var endedCookie *http.Cookie
	for _, c := range ended.client.Jar.Cookies(mustURL(t, s.base)) {
		if c.Name == cookieName {
			endedCookie = c
		}
	}
	ended.send(t, "GET", "/logout", nil)
	if got := ended.send(t, "POST", "/logout", url.Values{}); got != 200 {
		t.Fatalf("sign-out: %d %s", got, ended.last)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}

	s, _, _ = startRun(t, dataDir)
	kept.base, ended.base = s.base, s.base // a jar's cookies are the host's, whatever the port
	ended.client.Jar.SetCookies(mustURL(t, s.base), []*http.Cookie{endedCookie})
	if got := kept.send(t, "POST", "/account/sessions/end-others", url.Values{}); got != http.StatusSeeOther {
		t.Fatalf("the account page's form from before the restart: %d %s", got, kept.last)
	}
	if got := kept.send(t, "GET", "/auth/page", nil); got != 200 {
		t.Fatalf("the cookie after the restart: %d %s", got, kept.last)
	}
	if got := ended.send(t, "GET", "/auth/page", nil); got != 401 || !strings.Contains(ended.last, "token_revoked") {
		t.Fatalf("the signed-out browser after the restart: %d %s", got, ended.last)
	}
}

func mustURL(tb testing.TB, raw string) *url.URL {
	tb.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		tb.Fatal(err)
	}
	return u
}
