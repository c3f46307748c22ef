package main

// oidc_test.go drives the OpenID provider with relying parties nobody here wrote (go-oidc and
// golang.org/x/oauth2), and as an attacker would.

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/coreos/go-oidc/v3/oidc"
	"golang.org/x/oauth2"
)

const testRedirectURI = "https://app.example.test/callback"

// newOIDCEnv is a service with the portal and so the provider on, at testPortalURL, its ID
// tokens' keys loaded as run loads them at start.
func newOIDCEnv(tb testing.TB, opts ...func(*config)) *testEnv {
	tb.Helper()
	e := newTestEnv(tb, append([]func(*config){withPortal}, opts...)...)
	if err := e.deps.provider.loadRings(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return e
}

// toTestServer sends what a relying party or a browser asks of testPortalURL to e's server, so
// that the issuer they see is https://auth.example.test as configured.
type toTestServer struct{ e *testEnv }

func (t toTestServer) RoundTrip(r *http.Request) (*http.Response, error) {
	if "https://"+r.URL.Host != testPortalURL {
		return nil, fmt.Errorf("the tests reach only %s, not %s", testPortalURL, r.URL)
	}
	target, _ := url.Parse(t.e.srv.URL)
	out := r.Clone(r.Context())
	out.URL.Scheme, out.URL.Host, out.Host = target.Scheme, target.Host, ""
	return t.e.srv.Client().Transport.RoundTrip(out)
}

// oidcClient is a registered client and a relying party configured for it.
type oidcClient struct {
	id, secret string
	ctx        context.Context // carries the HTTP client that reaches e
	provider   *oidc.Provider
	cfg        oauth2.Config
}

// registerClient registers a client through the admin API (body: the API's fields) and sets up a
// relying party for it by discovery.
func registerClient(tb testing.TB, e *testEnv, body map[string]any) *oidcClient {
	tb.Helper()
	if body["redirect_uris"] == nil {
		body["redirect_uris"] = []string{testRedirectURI}
	}
	if body["name"] == nil {
		body["name"] = "Test app"
	}
	r := e.adminDo(tb, "POST", "/admin/oauth/clients", body).want(tb, 201, "")
	c := &oidcClient{id: r.str("client_id"), secret: r.str("client_secret")}
	c.ctx = oidc.ClientContext(tb.Context(), &http.Client{Transport: toTestServer{e}})
	var err error
	if c.provider, err = oidc.NewProvider(c.ctx, testPortalURL); err != nil {
		tb.Fatal(err)
	}
	scopes := []string{oidc.ScopeOpenID, "email", oidc.ScopeOfflineAccess}
	c.cfg = oauth2.Config{ClientID: c.id, ClientSecret: c.secret, Endpoint: c.provider.Endpoint(),
		RedirectURL: testRedirectURI, Scopes: scopes}
	return c
}

// local is the path and query of a URL on the portal, which the test browser asks for.
func local(tb testing.TB, u string) string {
	tb.Helper()
	rest, ok := strings.CutPrefix(u, testPortalURL)
	if !ok && !strings.HasPrefix(u, "/") {
		tb.Fatalf("%q is not on the portal", u)
	}
	if !ok {
		return u
	}
	return rest
}

// authorize sends the browser to authURL, signs in as email when the portal asks, allows when
// the consent page asks, and returns where the provider finally redirects to.
func authorize(tb testing.TB, b *browser, authURL, email string) *url.URL {
	tb.Helper()
	p := b.send(tb, "GET", local(tb, authURL), nil)
	for range 6 {
		loc := p.header.Get("Location")
		switch {
		case p.status == 200 && strings.Contains(p.body, `action="/oauth2/consent"`):
			p = b.post(tb, "/oauth2/consent", url.Values{"request": {formValue(tb, p.body, "request")}, "decision": {"allow"}})
		case p.status != http.StatusSeeOther:
			tb.Fatalf("authorize: %d %s", p.status, p.body)
		case strings.HasPrefix(loc, "/login?"):
			u, _ := url.Parse(loc)
			b.send(tb, "GET", loc, nil)
			p = b.post(tb, "/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "rd": {u.Query().Get("rd")}})
		case strings.HasPrefix(loc, testPortalURL):
			p = b.send(tb, "GET", local(tb, loc), nil)
		default:
			u, err := url.Parse(loc)
			if err != nil {
				tb.Fatal(err)
			}
			return u
		}
	}
	tb.Fatalf("authorize went round in circles: %d %s", p.status, p.header.Get("Location"))
	return nil
}

// formValue is the value of the hidden field name on a page.
func formValue(tb testing.TB, page, name string) string {
	tb.Helper()
	m := regexp.MustCompile(`name="` + name + `" value="([^"]*)"`).FindStringSubmatch(page)
	if m == nil {
		tb.Fatalf("no field %s on %s", name, page)
	}
	return strings.NewReplacer("&amp;", "&", "&#43;", "+", "&lt;", "<", "&gt;", ">", "&#34;", `"`, "&#39;", "'").Replace(m[1])
}

// codeFlow runs the browser's part of a sign-in for c as email, and returns the code, checking
// the state and the issuer of the answer.
func codeFlow(tb testing.TB, e *testEnv, b *browser, c *oidcClient, email, verifier string, opts ...oauth2.AuthCodeOption) string {
	tb.Helper()
	state := newID()
	if verifier != "" {
		opts = append(opts, oauth2.S256ChallengeOption(verifier))
	}
	back := authorize(tb, b, c.cfg.AuthCodeURL(state, opts...), email)
	q := back.Query()
	if got := back.Scheme + "://" + back.Host + back.Path; got != testRedirectURI {
		tb.Fatalf("redirected to %s", back)
	}
	if q.Get("state") != state || q.Get("iss") != testPortalURL || q.Get("code") == "" {
		tb.Fatalf("answer %s", back)
	}
	return q.Get("code")
}

func TestOpenIDConfidentialClientSignsInVerifiesTheIDTokenRefreshesAndRevokes(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	if c.secret == "" {
		t.Fatal("a confidential client got no secret")
	}
	b := newBrowser(e)
	verifier, nonce := oauth2.GenerateVerifier(), newID()
	code := codeFlow(t, e, b, c, email, verifier, oidc.Nonce(nonce))

	tok, err := c.cfg.Exchange(c.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := tok.Extra("id_token").(string)
	idt, err := c.provider.Verifier(&oidc.Config{ClientID: c.id}).Verify(c.ctx, raw)
	if err != nil {
		t.Fatal(err)
	}
	if idt.Nonce != nonce || idt.Issuer != testPortalURL || idt.AccessTokenHash == "" {
		t.Fatalf("ID token %+v", idt)
	}
	if err := idt.VerifyAccessToken(tok.AccessToken); err != nil {
		t.Fatal(err)
	}
	if h := jwtPart(t, raw, 0); h["alg"] != "RS256" {
		t.Fatalf("header %v", h)
	}
	var claims struct {
		Email    string   `json:"email"`
		ACR      string   `json:"acr"`
		AMR      []string `json:"amr"`
		SID      string   `json:"sid"`
		AuthTime int64    `json:"auth_time"`
	}
	if err := idt.Claims(&claims); err != nil {
		t.Fatal(err)
	}
	if claims.Email != email || claims.ACR != "aal1" || !slices.Equal(claims.AMR, []string{"pwd"}) || claims.SID == "" || claims.AuthTime == 0 {
		t.Fatalf("claims %+v", claims)
	}

	info, err := c.provider.UserInfo(c.ctx, oauth2.StaticTokenSource(tok))
	if err != nil {
		t.Fatal(err)
	}
	if info.Subject != idt.Subject || info.Email != email {
		t.Fatalf("userinfo %+v", info)
	}

	// The client's tokens are not the API's: neither the forward-auth check nor the API takes them.
	e.page(t, tok.AccessToken).want(t, 401, "token_invalid")
	e.refresh(t, tok.RefreshToken).want(t, 401, "token_invalid")

	// Refresh rotates: the successor works, and the old token is refused after the reuse window.
	expired := *tok
	expired.Expiry = e.clock.Now().Add(-1)
	next, err := c.cfg.TokenSource(c.ctx, &expired).Token()
	if err != nil {
		t.Fatal(err)
	}
	if next.RefreshToken == "" || next.RefreshToken == tok.RefreshToken || next.AccessToken == tok.AccessToken {
		t.Fatalf("refresh answered %+v", next)
	}
	if _, err := c.provider.UserInfo(c.ctx, oauth2.StaticTokenSource(next)); err != nil {
		t.Fatal(err)
	}

	// Revoking the refresh token ends the session: its access token and refresh token die.
	revoke := send(t, e.srv.Client(), "POST", e.srv.URL+oauthRevokePath,
		url.Values{"token": {next.RefreshToken}, "client_id": {c.id}, "client_secret": {c.secret}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded")
	if revoke.status != 200 {
		t.Fatalf("revoke: %d %s", revoke.status, revoke.raw)
	}
	if _, err := c.provider.UserInfo(c.ctx, oauth2.StaticTokenSource(next)); err == nil {
		t.Fatal("userinfo took the access token of a revoked session")
	}
	expired = *next
	expired.Expiry = e.clock.Now().Add(-1)
	if _, err := c.cfg.TokenSource(c.ctx, &expired).Token(); err == nil || !strings.Contains(err.Error(), "invalid_grant") {
		t.Fatalf("refresh after revocation: %v", err)
	}
}

// pkceChallengeOf is the S256 challenge of verifier, as a client computes it.
func pkceChallengeOf(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// exchange posts a code to the token endpoint as client c would, with form's extra fields.
func exchange(tb testing.TB, e *testEnv, c *oidcClient, form url.Values) response {
	tb.Helper()
	if form.Get("grant_type") == "" {
		form.Set("grant_type", "authorization_code")
	}
	if form.Get("redirect_uri") == "" && form.Get("grant_type") == "authorization_code" {
		form.Set("redirect_uri", testRedirectURI)
	}
	form.Set("client_id", c.id)
	if c.secret != "" {
		form.Set("client_secret", c.secret)
	}
	return send(tb, e.srv.Client(), "POST", e.srv.URL+oauthTokenPath, form.Encode(), "Content-Type", "application/x-www-form-urlencoded")
}

func TestOpenIDPublicClientSignsInWithPKCEAndNoSecret(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "public", "first_party": true})
	if c.secret != "" {
		t.Fatal("a public client got a secret")
	}
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	tok, err := c.cfg.Exchange(c.ctx, code, oauth2.VerifierOption(verifier))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.provider.Verifier(&oidc.Config{ClientID: c.id}).Verify(c.ctx, tok.Extra("id_token").(string)); err != nil {
		t.Fatal(err)
	}
	// A public client that sends a secret anyway is refused: it has none.
	code = codeFlow(t, e, newBrowser(e), c, email, verifier)
	c.secret = "not-a-secret"
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 401, "invalid_client")
}

// A public client that sends no PKCE challenge, or a plain one, or one without its method (which
// means plain), is answered at its redirect URI with an error, the state and the issuer.
func TestOpenIDAuthorizationWithoutS256PKCEIsRefusedAtTheRedirectURI(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	c := registerClient(t, e, map[string]any{"type": "public"})
	b := newBrowser(e)
	base := url.Values{"client_id": {c.id}, "redirect_uri": {testRedirectURI}, "response_type": {"code"},
		"scope": {"openid"}, "state": {"s1"}}
	for name, extra := range map[string]url.Values{
		"no challenge":      {},
		"plain":             {"code_challenge": {strings.Repeat("a", 43)}, "code_challenge_method": {"plain"}},
		"no method":         {"code_challenge": {strings.Repeat("a", 43)}},
		"implicit response": {"code_challenge": {pkceChallengeOf(oauth2.GenerateVerifier())}, "code_challenge_method": {"S256"}, "response_type": {"token"}},
	} {
		q := cloneValues(base)
		for k, v := range extra {
			q[k] = v
		}
		p := b.send(t, "GET", oauthAuthorizePath+"?"+q.Encode(), nil)
		loc, _ := url.Parse(p.header.Get("Location"))
		if p.status != 303 || !strings.HasPrefix(loc.String(), testRedirectURI+"?") || loc.Query().Get("error") == "" ||
			loc.Query().Get("state") != "s1" || loc.Query().Get("iss") != testPortalURL || loc.Query().Get("code") != "" {
			t.Errorf("%s: %d to %s", name, p.status, loc)
		}
	}
}

// A request goes through the sign-in as its way back, which is bounded: one whose state fits
// comes back whole, and one too long to carry is refused at the redirect URI, not lost on the way.
func TestOpenIDLongStateComesBackWholeOrIsRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	state := strings.Repeat("s", 2000)
	back := authorize(t, newBrowser(e), c.cfg.AuthCodeURL(state), email)
	if back.Query().Get("state") != state || back.Query().Get("code") == "" {
		t.Fatalf("a 2000-byte state came back as %d bytes: %.200s", len(back.Query().Get("state")), back)
	}
	state = strings.Repeat("/", 1500) // thrice as long once encoded
	p := newBrowser(e).send(t, "GET", local(t, c.cfg.AuthCodeURL(state)), nil)
	loc, _ := url.Parse(p.header.Get("Location"))
	if p.status != 303 || loc.Query().Get("error") != "invalid_request" || loc.Query().Get("state") != state {
		t.Fatalf("a state too long to carry: %d to %.300s", p.status, loc)
	}
}

// An unknown client, or a redirect URI the client did not register, gets an error page: the
// browser is never sent to an address nobody vouched for.
func TestOpenIDUnknownClientOrUnregisteredRedirectURIShowsAPageAndNeverRedirects(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	c := registerClient(t, e, map[string]any{"type": "confidential"})
	b := newBrowser(e)
	for name, q := range map[string]url.Values{
		"unknown client":      {"client_id": {"nobody"}, "redirect_uri": {testRedirectURI}},
		"other redirect":      {"client_id": {c.id}, "redirect_uri": {"https://evil.example/callback"}},
		"longer path":         {"client_id": {c.id}, "redirect_uri": {testRedirectURI + "/x"}},
		"no redirect":         {"client_id": {c.id}},
		"redirect sent twice": {"client_id": {c.id}, "redirect_uri": {testRedirectURI, "https://evil.example/callback"}},
	} {
		q.Set("response_type", "code")
		q.Set("scope", "openid")
		p := b.send(t, "GET", oauthAuthorizePath+"?"+q.Encode(), nil)
		if p.status != 400 || p.header.Get("Location") != "" || !strings.Contains(p.body, "<html") {
			t.Errorf("%s: %d %q", name, p.status, p.header.Get("Location"))
		}
	}
}

// A native app's loopback redirect URI may name any port (RFC 8252 section 7.3), and nothing else
// about it may differ.
func TestOpenIDLoopbackRedirectURIMayNameAnyPort(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "public", "first_party": true,
		"redirect_uris": []string{"http://127.0.0.1/callback"}})
	b := newBrowser(e)
	verifier := oauth2.GenerateVerifier()
	q := url.Values{"client_id": {c.id}, "redirect_uri": {"http://127.0.0.1:53682/callback"}, "response_type": {"code"},
		"scope": {"openid"}, "code_challenge": {pkceChallengeOf(verifier)}, "code_challenge_method": {"S256"}}
	back := authorize(t, b, testPortalURL+oauthAuthorizePath+"?"+q.Encode(), email)
	if back.Host != "127.0.0.1:53682" || back.Query().Get("code") == "" {
		t.Fatalf("redirected to %s", back)
	}
	// The code is bound to the port it was sent to.
	exchange(t, e, c, url.Values{"code": {back.Query().Get("code")}, "code_verifier": {verifier},
		"redirect_uri": {"http://127.0.0.1:1/callback"}}).want(t, 400, "invalid_grant")
	for _, other := range []string{"http://127.0.0.1:53682/other", "http://localhost:53682/callback", "http://127.0.0.2:53682/callback"} {
		q.Set("redirect_uri", other)
		if p := b.send(t, "GET", oauthAuthorizePath+"?"+q.Encode(), nil); p.status != 400 || p.header.Get("Location") != "" {
			t.Errorf("%s: %d %q", other, p.status, p.header.Get("Location"))
		}
	}
}

func TestOpenIDCodeWithAWrongOrMissingVerifierIsRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	exchange(t, e, c, url.Values{"code": {code}}).want(t, 400, "invalid_grant")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {oauth2.GenerateVerifier()}}).want(t, 400, "invalid_grant")
	// The failures spent nothing: the client with the verifier still gets its tokens.
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
}

// A code issued without a challenge, redeemed with a verifier, is refused: a verifier the code is
// not bound to proves nothing (the PKCE downgrade of RFC 9700 section 4.8.2).
func TestOpenIDVerifierForACodeWithoutChallengeIsRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	code := codeFlow(t, e, newBrowser(e), c, email, "")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {oauth2.GenerateVerifier()}}).want(t, 400, "invalid_grant")
	exchange(t, e, c, url.Values{"code": {code}}).want(t, 200, "")
}

func TestOpenIDCodeReplayIsRefusedAndRevokesTheTokensOfItsFirstUse(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	first := exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
	access := first.str("access_token")
	userinfo := func() response {
		return e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+access)
	}
	userinfo().want(t, 200, "")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
	userinfo().want(t, 401, "token_revoked")
	exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {first.str("refresh_token")}}).want(t, 400, "invalid_grant")
}

// A replay after the code expired, and after the code itself is purged, still ends the session
// its first use started; another client replaying it ends nothing.
func TestOpenIDCodeReplayedAfterItExpiredStillRevokesTheTokensOfItsFirstUse(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	other := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	first := exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
	e.clock.Advance(oauthCodeTTL + time.Second)
	if err := e.store.purgeOAuth(t.Context(), e.clock.Now()); err != nil {
		t.Fatal(err)
	}
	userinfo := func() response {
		return e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+first.str("access_token"))
	}
	exchange(t, e, other, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
	userinfo().want(t, 200, "")
	r := exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
	if !strings.Contains(r.str("error_description"), "used already") {
		t.Fatalf("a late replay: %s", r.raw)
	}
	userinfo().want(t, 401, "token_revoked")
}

func TestOpenIDCodeOfAnotherClientIsRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	other := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	exchange(t, e, other, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
	// With the right client id but another client's secret, the client is refused.
	stolen := *c
	stolen.secret = other.secret
	exchange(t, e, &stolen, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 401, "invalid_client")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
}

func TestOpenIDRedirectURIOtherThanTheCodesIsRefusedAtTheTokenEndpoint(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true,
		"redirect_uris": []string{testRedirectURI, "https://app.example.test/other"}})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}, "redirect_uri": {"https://app.example.test/other"}}).want(t, 400, "invalid_grant")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
}

// A code carries the account's security stamp: a password change between its issue and its
// redemption voids it (issue 19's rule for everything issued on an account's behalf).
func TestOpenIDCodeIssuedBeforeAPasswordChangeIsRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, access, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	e.do(t, "POST", "/auth/password", map[string]string{"current_password": "correct horse battery",
		"new_password": "another horse battery"}, "Authorization", "Bearer "+access).want(t, 200, "")
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
}

// A code lives 60 seconds.
func TestOpenIDCodeExpiresAfterItsMinute(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), c, email, verifier)
	e.clock.Advance(oauthCodeTTL)
	exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
}

// A third-party client gets the consent page once; the grant is remembered, listed and revoked by
// the user, and revoking it ends the client's refresh tokens. A denial goes back as access_denied.
func TestOpenIDThirdPartyClientAsksConsentOnceAndRevokingItEndsTheClientsTokens(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, access, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "name": "Partner app"})
	b := newBrowser(e)
	b.signIn(t, email, "")
	verifier := oauth2.GenerateVerifier()
	p := b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.S256ChallengeOption(verifier))), nil)
	wantPage(t, p, 200, "Partner app")
	if !strings.Contains(p.body, "see your email address") || !strings.Contains(p.body, "stay signed in") {
		t.Fatalf("consent page %s", p.body)
	}
	denied := b.post(t, "/oauth2/consent", url.Values{"request": {formValue(t, p.body, "request")}, "decision": {"deny"}})
	if loc, _ := url.Parse(denied.header.Get("Location")); loc == nil || loc.Query().Get("error") != "access_denied" || loc.Query().Get("iss") != testPortalURL {
		t.Fatalf("denied: %d %s", denied.status, denied.header.Get("Location"))
	}

	code := codeFlow(t, e, b, c, email, verifier) // allows on the page
	tok := exchange(t, e, c, url.Values{"code": {code}, "code_verifier": {verifier}}).want(t, 200, "")
	if tok.str("refresh_token") == "" {
		t.Fatal("offline_access allowed, and no refresh token")
	}
	// The grant is remembered: no page the second time, even with prompt=none.
	back := authorize(t, b, c.cfg.AuthCodeURL("s2", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("prompt", "none")), email)
	if back.Query().Get("code") == "" {
		t.Fatalf("second sign-in: %s", back)
	}
	grants := e.do(t, "GET", "/auth/grants", nil, "Authorization", "Bearer "+access).want(t, 200, "")
	if !strings.Contains(grants.raw, `"client_name":"Partner app"`) || !strings.Contains(grants.raw, "offline_access") {
		t.Fatalf("grants %s", grants.raw)
	}
	e.do(t, "DELETE", "/auth/grants/"+c.id, nil, "Authorization", "Bearer "+access).want(t, 204, "")
	exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.str("refresh_token")}}).want(t, 400, "invalid_grant")
	// A code issued before the withdrawal is not redeemed after it.
	exchange(t, e, c, url.Values{"code": {back.Query().Get("code")}, "code_verifier": {verifier}}).want(t, 400, "invalid_grant")
	e.do(t, "DELETE", "/auth/grants/"+c.id, nil, "Authorization", "Bearer "+access).want(t, 404, "not_found")
	// Asked again, with prompt=none: consent_required.
	p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s3", oauth2.S256ChallengeOption(verifier), oauth2.SetAuthURLParam("prompt", "none"))), nil)
	if loc, _ := url.Parse(p.header.Get("Location")); loc == nil || loc.Query().Get("error") != "consent_required" {
		t.Fatalf("prompt=none without a grant: %d %s", p.status, p.header.Get("Location"))
	}
}

// prompt=none without a portal session is answered login_required at the redirect URI; prompt=login
// sends a signed-in browser through the sign-in again, and the ID token's auth_time is the new one.
func TestOpenIDPromptNoneAndLoginAreHonoured(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	b := newBrowser(e)
	p := b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("prompt", "none"))), nil)
	if loc, _ := url.Parse(p.header.Get("Location")); loc == nil || loc.Query().Get("error") != "login_required" || loc.Query().Get("state") != "s" {
		t.Fatalf("prompt=none signed out: %d %s", p.status, p.header.Get("Location"))
	}
	b.signIn(t, email, "")
	first := b.cookies[cookieName]
	e.clock.Advance(time.Minute)
	for _, prompt := range []string{"select_account", "login"} { // choosing an account is signing in as it
		p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("prompt", prompt))), nil)
		if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/login?") {
			t.Fatalf("prompt=%s signed in: %d %s", prompt, p.status, p.header.Get("Location"))
		}
	}
	// The mark of a sign-in the request sent the browser to is the service's own: one made up, or
	// taken from another request, is ignored.
	sent, _ := url.Parse(p.header.Get("Location"))
	rd, _ := url.Parse(sent.Query().Get("rd"))
	mark := rd.Query().Get("login_after")
	if !strings.Contains(mark, ".") {
		t.Fatalf("the sign-in's way back carries no login_after mark: %s", rd)
	}
	for _, forged := range []string{"1", mark} {
		p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("other", oauth2.SetAuthURLParam("max_age", "0"),
			oauth2.SetAuthURLParam("login_after", forged))), nil)
		if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/login?") {
			t.Fatalf("login_after=%s: %d %s", forged, p.status, p.header.Get("Location"))
		}
	}
	back := authorize(t, b, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("prompt", "login")), email)
	if b.cookies[cookieName] == first || back.Query().Get("code") == "" {
		t.Fatalf("prompt=login did not sign in again: %s", back)
	}
	tok := exchange(t, e, c, url.Values{"code": {back.Query().Get("code")}}).want(t, 200, "")
	if at := jwtPart(t, tok.str("id_token"), 1)["auth_time"]; at != float64(e.clock.Now().Unix()) {
		t.Fatalf("auth_time %v, want %d", at, e.clock.Now().Unix())
	}
}

// RP-initiated logout: with the ID token of the browser's session it ends the portal session at
// once and returns to the registered address with the state; without it, the user confirms first;
// an address the client did not register gets a page.
func TestOpenIDLogoutEndsThePortalSessionAndReturnsOnlyToRegisteredAddresses(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	const after = "https://app.example.test/signed-out"
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true, "post_logout_redirect_uris": []string{after}})
	b := newBrowser(e)
	code := codeFlow(t, e, b, c, email, "")
	idToken := exchange(t, e, c, url.Values{"code": {code}}).want(t, 200, "").str("id_token")
	cookie := b.cookies[cookieName]

	// Without a hint: a confirmation page; the session lives until the user confirms.
	p := b.send(t, "GET", oauthLogoutPath+"?client_id="+c.id+"&post_logout_redirect_uri="+url.QueryEscape(after), nil)
	wantPage(t, p, 200, "/oauth2/logout/confirm")
	if f := newBrowserWith(e, cookie).forward(t, "/auth/page"); f.status != 200 {
		t.Fatalf("the session ended before the user confirmed: %d", f.status)
	}
	// Another address than the registered one: a page, no redirect.
	p = b.send(t, "GET", oauthLogoutPath+"?id_token_hint="+idToken+"&post_logout_redirect_uri="+url.QueryEscape("https://evil.example/"), nil)
	if p.status != 400 || p.header.Get("Location") != "" {
		t.Fatalf("unregistered address: %d %s", p.status, p.header.Get("Location"))
	}
	// With the hint: at once.
	p = b.send(t, "GET", oauthLogoutPath+"?id_token_hint="+idToken+"&state=xyz&post_logout_redirect_uri="+url.QueryEscape(after), nil)
	if p.status != 303 || p.header.Get("Location") != after+"?state=xyz" {
		t.Fatalf("logout: %d %s", p.status, p.header.Get("Location"))
	}
	if f := newBrowserWith(e, cookie).forward(t, "/auth/page"); f.status != 401 {
		t.Fatalf("the portal session outlived the logout: %d", f.status)
	}
}

// newBrowserWith is a browser holding only the session cookie value.
func newBrowserWith(e *testEnv, cookie string) *browser {
	b := newBrowser(e)
	b.cookies[cookieName] = cookie
	return b
}

// Introspection answers confidential clients only, from the database: a revoked token is
// inactive at once.
func TestOpenIDIntrospectionIsForConfidentialClientsAndSeesRevocations(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	pub := registerClient(t, e, map[string]any{"type": "public", "first_party": true})
	tok := exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "")
	introspect := func(who *oidcClient, token string) response {
		form := url.Values{"token": {token}, "client_id": {who.id}}
		if who.secret != "" {
			form.Set("client_secret", who.secret)
		}
		return send(t, e.srv.Client(), "POST", e.srv.URL+oauthIntrospectPath, form.Encode(), "Content-Type", "application/x-www-form-urlencoded")
	}
	r := introspect(c, tok.str("access_token")).want(t, 200, "")
	if r.body["active"] != true || r.str("client_id") != c.id || r.str("scope") == "" {
		t.Fatalf("introspection %s", r.raw)
	}
	introspect(pub, tok.str("access_token")).want(t, 401, "invalid_client")
	// Another confidential client learns nothing of c's token (RFC 7662 section 4).
	other := registerClient(t, e, map[string]any{"type": "confidential", "first_party": false})
	if r := introspect(other, tok.str("access_token")).want(t, 200, ""); len(r.body) != 1 || r.body["active"] != false {
		t.Fatalf("another client's introspection: %s", r.raw)
	}
	introspect(c, "").want(t, 200, "")
	send(t, e.srv.Client(), "POST", e.srv.URL+oauthIntrospectPath, url.Values{"client_id": {c.id}, "client_secret": {c.secret}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded").want(t, 400, "invalid_request")
	send(t, e.srv.Client(), "POST", e.srv.URL+oauthRevokePath, url.Values{"client_id": {c.id}, "client_secret": {c.secret}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded").want(t, 400, "invalid_request")
	if r := introspect(c, "not-a-token").want(t, 200, ""); r.body["active"] != false {
		t.Fatalf("garbage: %s", r.raw)
	}
	send(t, e.srv.Client(), "POST", e.srv.URL+oauthRevokePath, url.Values{"token": {tok.str("refresh_token")}}.Encode(),
		"Content-Type", "application/x-www-form-urlencoded", "Authorization", basicAuth(c.id, c.secret))
	if r := introspect(c, tok.str("access_token")).want(t, 200, ""); r.body["active"] != false {
		t.Fatalf("after revocation: %s", r.raw)
	}
}

func basicAuth(id, secret string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(url.QueryEscape(id)+":"+url.QueryEscape(secret)))
}

// The admin API shows a confidential client's secret once, never a public client one; a rotated
// secret replaces the old at once.
func TestAdminRegistersOAuthClientsAndShowsASecretOnlyOnce(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	got := e.adminDo(t, "GET", "/admin/oauth/clients/"+c.id, nil).want(t, 200, "")
	if got.str("client_secret") != "" || strings.Contains(got.raw, "secret_digest") || got.str("type") != "confidential" {
		t.Fatalf("client %s", got.raw)
	}
	list := e.adminDo(t, "GET", "/admin/oauth/clients", nil).want(t, 200, "")
	if !strings.Contains(list.raw, c.id) {
		t.Fatalf("list %s", list.raw)
	}
	e.adminDo(t, "PATCH", "/admin/oauth/clients/"+c.id, map[string]any{"name": "Renamed"}).want(t, 200, "")
	e.adminDo(t, "PATCH", "/admin/oauth/clients/"+c.id, map[string]any{"redirect_uris": []string{"http://app.example.test/cb"}}).want(t, 400, "invalid_request")
	e.adminDo(t, "POST", "/admin/oauth/clients", map[string]any{"type": "public", "name": "x", "redirect_uris": []string{testRedirectURI},
		"id_token_signed_response_alg": "HS256"}).want(t, 400, "invalid_request")
	// A redirect URI a reader could misread, and a setting the service does not know, are refused.
	for _, body := range []map[string]any{
		{"redirect_uris": []string{"https://app.example.test@evil.example/cb"}},
		{"redirect_uris": []string{"https://*.example.test/cb"}},
		{"redirect_uris": []string{"https://app..example.test/cb"}},
		{"redirect_uris": []string{testRedirectURI}, "grant_types": []string{"implicit"}},
	} {
		body["type"], body["name"] = "confidential", "x"
		r := e.adminDo(t, "POST", "/admin/oauth/clients", body).want(t, 400, "invalid_request")
		if body["grant_types"] != nil && !strings.Contains(r.str("message"), "grant_types") {
			t.Errorf("an unknown setting: %s", r.raw)
		}
	}
	e.adminDo(t, "POST", "/admin/oauth/clients", map[string]any{"type": "public", "name": "x",
		"redirect_uris": []string{"http://[::1]:8000/cb", "http://127.0.0.1/cb", "com.example.app:/cb"}}).want(t, 201, "")

	rotated := e.adminDo(t, "POST", "/admin/oauth/clients/"+c.id+"/secret", nil).want(t, 200, "")
	if rotated.str("client_secret") == "" || rotated.str("client_secret") == c.secret {
		t.Fatalf("rotation %s", rotated.raw)
	}
	exchange(t, e, c, url.Values{"code": {"whatever"}}).want(t, 401, "invalid_client")
	c.secret = rotated.str("client_secret")
	exchange(t, e, c, url.Values{"code": {"whatever"}}).want(t, 400, "invalid_grant")

	pub := e.adminDo(t, "POST", "/admin/oauth/clients", map[string]any{"type": "public", "name": "SPA", "redirect_uris": []string{testRedirectURI}}).want(t, 201, "")
	if pub.str("client_secret") != "" {
		t.Fatalf("public client %s", pub.raw)
	}
	e.adminDo(t, "POST", "/admin/oauth/clients/"+pub.str("client_id")+"/secret", nil).want(t, 400, "invalid_request")
	e.adminDo(t, "DELETE", "/admin/oauth/clients/"+c.id, nil).want(t, 204, "")
	exchange(t, e, c, url.Values{"code": {"whatever"}}).want(t, 401, "invalid_client")
}

// A rotation of a client's secret and a change of the client at the same moment never put the
// old secret back: the secret is kept apart from the client, which a change writes whole.
func TestASecretRotationRacingAChangeOfTheClientKeepsTheNewSecret(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	for round := range 5 {
		old := c.secret
		var rotated response
		var wg sync.WaitGroup
		wg.Go(func() {
			rotated = e.adminDo(t, "POST", "/admin/oauth/clients/"+c.id+"/secret", nil)
		})
		var patched response
		wg.Go(func() {
			patched = e.adminDo(t, "PATCH", "/admin/oauth/clients/"+c.id, map[string]any{"name": fmt.Sprint("Round ", round)})
		})
		wg.Wait()
		if rotated.status == http.StatusServiceUnavailable || patched.status == http.StatusServiceUnavailable {
			t.Skipf("round %d: the store did not answer in time; the secret's state is unknown", round)
		}
		patched.want(t, 200, "")
		c.secret = rotated.want(t, 200, "").str("client_secret")
		exchange(t, e, c, url.Values{"code": {"whatever"}}).want(t, 400, "invalid_grant")
		c.secret, old = old, c.secret
		exchange(t, e, c, url.Values{"code": {"whatever"}}).want(t, 401, "invalid_client")
		c.secret = old
	}
}

// JWT_ISSUER that is a URL must be PUBLIC_URL, the provider's issuer, or the service does not start.
func TestAnIssuerURLOtherThanPublicURLStopsTheStart(t *testing.T) {
	t.Parallel()
	env := map[string]string{"PUBLIC_URL": "https://auth.example.com", "JWT_ISSUER": "https://other.example.com"}
	_, err := loadConfig(func(k string) string { return env[k] })
	if err == nil || !strings.Contains(err.Error(), "JWT_ISSUER") {
		t.Fatalf("err %v", err)
	}
	for _, ok := range []string{"https://auth.example.com", "https://auth.example.com/", "auth"} {
		env["JWT_ISSUER"] = ok
		if _, err := loadConfig(func(k string) string { return env[k] }); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

// backChannel posts form to one of the provider's back-channel endpoints from client, an
// X-Forwarded-For address of a trusted loopback, with headers.
func backChannel(tb testing.TB, e *testEnv, path, client string, form url.Values, headers ...string) response {
	tb.Helper()
	return send(tb, e.srv.Client(), "POST", e.srv.URL+path, form.Encode(), append([]string{
		"Content-Type", "application/x-www-form-urlencoded", "X-Forwarded-For", client}, headers...)...)
}

// Wrong secrets of a client count for it from the address they come from, at the token,
// introspection and revocation endpoints alike and however its id is spelled in a Basic header:
// after LOGIN_MAX_FAILURES even the right secret waits there, and another address is not held up.
func TestOpenIDWrongSecretsAreThrottledPerClientAndAddressAtEveryEndpoint(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t, trustLoopback, func(c *config) { c.maxFailures = 3 })
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	// The id's first letter percent-encoded: the same id once decoded (RFC 6749 section 2.3.1).
	encoded := fmt.Sprintf("%%%02X", c.id[0]) + c.id[1:]
	wrong := func(id string) string {
		return "Basic " + base64.StdEncoding.EncodeToString([]byte(id+":wrong"))
	}
	form := url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}, "token": {"x"}}
	backChannel(t, e, oauthTokenPath, clientNo(0), form, "Authorization", wrong(c.id)).want(t, 401, "invalid_client")
	backChannel(t, e, oauthIntrospectPath, clientNo(0), form, "Authorization", wrong(encoded)).want(t, 401, "invalid_client")
	backChannel(t, e, oauthRevokePath, clientNo(0), form, "Authorization", wrong(c.id)).want(t, 401, "invalid_client")
	right := []string{"Authorization", basicAuth(c.id, c.secret)}
	r := backChannel(t, e, oauthTokenPath, clientNo(0), form, right...).want(t, 429, "too_many_attempts")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	backChannel(t, e, oauthIntrospectPath, clientNo(0), form, right...).want(t, 429, "too_many_attempts")
	backChannel(t, e, oauthTokenPath, clientNo(1), form, right...).want(t, 400, "invalid_grant")
}

// A wrong code or refresh token is no guess at a secret: it counts for the address only, at
// LOGIN_MAX_CLIENT_FAILURES. A public client's id is public, so whoever shares an address with its
// users and fails on purpose does not lock it for them beyond that.
func TestOpenIDWrongGrantsAreThrottledPerAddressOnly(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t, trustLoopback, func(c *config) { c.maxFailures, c.maxClientFails = 2, 4 })
	email, _, _ := e.user(t)
	pub := registerClient(t, e, map[string]any{"type": "public", "first_party": true})
	conf := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	guess := func(c *oidcClient, client string) response {
		form := url.Values{"grant_type": {"authorization_code"}, "code": {"guess"}, "redirect_uri": {testRedirectURI},
			"code_verifier": {oauth2.GenerateVerifier()}, "client_id": {c.id}}
		if c.secret != "" {
			form.Set("client_secret", c.secret)
		}
		return backChannel(t, e, oauthTokenPath, client, form)
	}
	for range 3 { // beyond LOGIN_MAX_FAILURES for the public client: nothing of its own
		guess(pub, clientNo(0)).want(t, 400, "invalid_grant")
	}
	guess(conf, clientNo(0)).want(t, 400, "invalid_grant") // the right secret: the address's fourth
	guess(pub, clientNo(0)).want(t, 429, "too_many_attempts")
	guess(conf, clientNo(0)).want(t, 429, "too_many_attempts")

	// From another address, the public client's users redeem their codes.
	verifier := oauth2.GenerateVerifier()
	code := codeFlow(t, e, newBrowser(e), pub, email, verifier)
	backChannel(t, e, oauthTokenPath, clientNo(1), url.Values{"grant_type": {"authorization_code"}, "code": {code},
		"redirect_uri": {testRedirectURI}, "code_verifier": {verifier}, "client_id": {pub.id}}).want(t, 200, "")
}

// Only failures count: a server refreshing many users' tokens at once, from one address, is not
// held up by its own successes in flight.
func TestOpenIDABurstOfGoodTokenRequestsFromOneAddressGoesThrough(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t, func(c *config) { c.maxFailures, c.maxClientFails = 2, 3 })
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	refresh := make([]string, 12)
	for i := range refresh {
		refresh[i] = exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "").str("refresh_token")
	}
	got := make([]response, len(refresh))
	var wg sync.WaitGroup
	for i := range refresh {
		wg.Go(func() {
			got[i] = exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {refresh[i]}})
		})
	}
	wg.Wait()
	for _, r := range witnesses(t, got) { // a busy machine's database may time one out
		r.want(t, 200, "")
	}
}

// The back channel takes the client's credentials from one place: two Authorization headers are
// refused, not read as the first.
func TestOpenIDTwoAuthorizationHeadersAreRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	for _, path := range []string{oauthTokenPath, oauthIntrospectPath, oauthRevokePath} {
		backChannel(t, e, path, "", url.Values{"grant_type": {"refresh_token"}, "refresh_token": {"x"}, "token": {"x"}},
			"Authorization", basicAuth(c.id, c.secret), "Authorization", basicAuth(c.id, "wrong")).want(t, 401, "invalid_client")
	}
}

// A single-page app, a public client, calls the token, userinfo and revocation endpoints from its
// own origin; another origin is not let read the answers.
func TestOpenIDPublicClientsOriginGetsCORSOnTheTokenUserinfoAndRevocationEndpoints(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	registerClient(t, e, map[string]any{"type": "public", "first_party": true})
	registerClient(t, e, map[string]any{"type": "confidential", "redirect_uris": []string{"https://server.example.test/cb"}})
	for _, path := range []string{oauthTokenPath, oauthUserinfoPath, oauthRevokePath} {
		r := e.do(t, "OPTIONS", path, nil, "Origin", "https://app.example.test", "Access-Control-Request-Method", "POST",
			"Access-Control-Request-Headers", "authorization")
		if r.status != 204 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.test" ||
			!strings.Contains(r.header.Get("Access-Control-Allow-Headers"), "Authorization") {
			t.Errorf("%s preflight: %d %v", path, r.status, r.header)
		}
		for _, other := range []string{"https://evil.example", "https://server.example.test"} {
			if r := e.do(t, "OPTIONS", path, nil, "Origin", other, "Access-Control-Request-Method", "POST"); r.header.Get("Access-Control-Allow-Origin") != "" {
				t.Errorf("%s from %s: %v", path, other, r.header)
			}
		}
	}
	r := e.do(t, "GET", oauthUserinfoPath, nil, "Origin", "https://app.example.test")
	if r.status != 401 || r.header.Get("Access-Control-Allow-Origin") != "https://app.example.test" {
		t.Fatalf("userinfo: %d %v", r.status, r.header)
	}
}

// The client's access token is a JWT it can read: without the email scope it carries no address.
func TestOpenIDAccessTokenCarriesNoAddressWithoutTheEmailScope(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	c.cfg.Scopes = []string{"openid"}
	tok := exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "")
	for _, raw := range []string{tok.str("access_token"), tok.str("id_token")} {
		if strings.Contains(fmt.Sprint(jwtPart(t, raw, 1)), email) {
			t.Errorf("a token without the email scope names the address: %v", jwtPart(t, raw, 1))
		}
	}
	info := e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+tok.str("access_token")).want(t, 200, "")
	if info.str("email") != "" || info.str("sub") == "" {
		t.Fatalf("userinfo %s", info.raw)
	}
	// The token in the body (RFC 6750 section 2.2) works, but not with another in the header.
	body := url.Values{"access_token": {tok.str("access_token")}}.Encode()
	send(t, e.srv.Client(), "POST", e.srv.URL+oauthUserinfoPath, body, "Content-Type", "application/x-www-form-urlencoded").want(t, 200, "")
	send(t, e.srv.Client(), "POST", e.srv.URL+oauthUserinfoPath, body, "Content-Type", "application/x-www-form-urlencoded",
		"Authorization", "Bearer "+tok.str("access_token")).want(t, 400, "invalid_request")
}

// max_age sends a browser signed in longer ago through the sign-in again, once; acr_values=aal2
// sends a browser signed in at aal1 to the step-up page, or answers interaction_required with
// prompt=none.
func TestOpenIDMaxAgeAndACRValuesAskForAFresherOrStrongerSignIn(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	b := newBrowser(e)
	b.signIn(t, email, "")
	e.clock.Advance(10 * time.Minute)
	p := b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("max_age", "60"))), nil)
	if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/login?") {
		t.Fatalf("max_age: %d %s", p.status, p.header.Get("Location"))
	}
	// max_age=0 asks for a sign-in at every request, and the sign-in it leads to satisfies it,
	// however long it took.
	p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("max_age", "0"))), nil)
	login, _ := url.Parse(p.header.Get("Location"))
	b.send(t, "GET", login.String(), nil)
	p = b.post(t, "/login", url.Values{"email": {email}, "password": {"correct horse battery"}, "rd": {login.Query().Get("rd")}})
	e.clock.Advance(3 * time.Second)
	p = b.send(t, "GET", local(t, p.header.Get("Location")), nil)
	if back, _ := url.Parse(p.header.Get("Location")); back == nil || back.Query().Get("code") == "" {
		t.Fatalf("max_age=0 after its sign-in: %d %s", p.status, p.header.Get("Location"))
	}

	p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("acr_values", "aal2"))), nil)
	if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/step-up?") {
		t.Fatalf("acr_values=aal2: %d %s", p.status, p.header.Get("Location"))
	}
	p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("acr_values", "aal2"), oauth2.SetAuthURLParam("prompt", "none"))), nil)
	if loc, _ := url.Parse(p.header.Get("Location")); loc == nil || loc.Query().Get("error") != "interaction_required" {
		t.Fatalf("acr_values=aal2, prompt=none: %d %s", p.status, p.header.Get("Location"))
	}
	// phr (phishing-resistant) is met by a passkey alone, as at forward auth: the step-up page for
	// it asks for the passkey.
	p = b.send(t, "GET", local(t, c.cfg.AuthCodeURL("s", oauth2.SetAuthURLParam("acr_values", "phr aal2"))), nil)
	if p.status != 303 || !strings.HasPrefix(p.header.Get("Location"), "/step-up?level=phr&rd=") {
		t.Fatalf("acr_values=phr: %d %s", p.status, p.header.Get("Location"))
	}
}

// A browser signed in with a passkey meets acr_values=phr: the code comes at once, and the ID
// token names the passkey among its methods.
func TestOpenIDPhishingResistantRequestIsMetByAPasskeySession(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t, withPortalPasskeys)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	key.origin, key.rpID = testPortalURL, "example.test"
	e.addPasskey(t, access, key)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	b := newBrowser(e)
	csrf := csrfField.FindStringSubmatch(b.send(t, "GET", "/login", nil).body)[1]
	var opts map[string]any
	if err := json.Unmarshal([]byte(b.send(t, "POST", "/login/passkey/begin", url.Values{"csrf": {csrf}}).body), &opts); err != nil {
		t.Fatal(err)
	}
	assertion, _ := json.Marshal(key.get(t, opts))
	b.send(t, "POST", "/login/passkey", url.Values{"csrf": {csrf}, "credential": {string(assertion)}})
	code := codeFlow(t, e, b, c, email, "", oauth2.SetAuthURLParam("acr_values", "phr"))
	tok := exchange(t, e, c, url.Values{"code": {code}}).want(t, 200, "")
	if amr := fmt.Sprint(jwtPart(t, tok.str("id_token"), 1)["amr"]); !strings.Contains(amr, "hwk") {
		t.Fatalf("the ID token's amr %s, want the passkey's hwk", amr)
	}
}

// A deleted client's tokens are refused at once, not when they expire.
func TestOpenIDDeletedClientsTokensAreRefused(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	tok := exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "")
	e.adminDo(t, "DELETE", "/admin/oauth/clients/"+c.id, nil).want(t, 204, "")
	e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+tok.str("access_token")).want(t, 401, "token_revoked")
	exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.str("refresh_token")}}).want(t, 401, "invalid_client")
}

// With JWT_ALG=EdDSA a client may ask for EdDSA ID tokens, which go-oidc checks against the JWKS
// as it does RS256 ones.
func TestOpenIDClientMayAskForIDTokensInJWTAlg(t *testing.T) {
	t.Parallel()
	// The API's tokens carry the provider's issuer too: the one set-up where a client's access
	// token and its ID tokens share key, algorithm and iss.
	e := newOIDCEnv(t, func(c *config) { c.jwtAlg, c.issuer = algEdDSA, testPortalURL })
	if err := e.deps.keys.load(t.Context()); err != nil {
		t.Fatal(err)
	}
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true, "id_token_signed_response_alg": "EdDSA"})
	tok, err := c.cfg.Exchange(c.ctx, codeFlow(t, e, newBrowser(e), c, email, ""))
	if err != nil {
		t.Fatal(err)
	}
	raw := tok.Extra("id_token").(string)
	if h := jwtPart(t, raw, 0); h["alg"] != "EdDSA" {
		t.Fatalf("header %v", h)
	}
	v := c.provider.Verifier(&oidc.Config{ClientID: c.id, SupportedSigningAlgs: []string{"EdDSA"}})
	if _, err := v.Verify(c.ctx, raw); err != nil {
		t.Fatal(err)
	}
	// Still, the relying party's check of an ID token refuses the client's access and refresh
	// tokens: their aud is not the client.
	for _, other := range []string{tok.AccessToken, tok.RefreshToken} {
		if _, err := v.Verify(c.ctx, other); err == nil || !strings.Contains(err.Error(), "audience") {
			t.Fatalf("a client's token passed as its ID token: %v", err)
		}
	}
}

// The account page lists the apps the user allowed, and withdrawing one there signs it out.
func TestAccountPageListsAllowedAppsAndWithdrawsThem(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "name": "Partner app"})
	b := newBrowser(e)
	tok := exchange(t, e, c, url.Values{"code": {codeFlow(t, e, b, c, email, "")}}).want(t, 200, "")
	p := b.send(t, "GET", "/account", nil)
	wantPage(t, p, 200, "Partner app")
	p = b.post(t, "/account/grants/revoke", url.Values{"client_id": {c.id}})
	if p.status != 303 {
		t.Fatalf("withdraw: %d %s", p.status, p.body)
	}
	if p = b.send(t, "GET", "/account?done=grant", nil); strings.Contains(p.body, "Partner app") {
		t.Fatalf("still listed: %s", p.body)
	}
	exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.str("refresh_token")}}).want(t, 400, "invalid_grant")
	e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+tok.str("access_token")).want(t, 401, "token_revoked")
}

// Whatever JWT_ALG is, a client may ask for ES256 ID tokens; RS256 is the default.
func TestOpenIDClientMayAskForES256IDTokensWithHS256(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true, "id_token_signed_response_alg": "ES256"})
	tok, err := c.cfg.Exchange(c.ctx, codeFlow(t, e, newBrowser(e), c, email, ""))
	if err != nil {
		t.Fatal(err)
	}
	raw := tok.Extra("id_token").(string)
	if h := jwtPart(t, raw, 0); h["alg"] != "ES256" {
		t.Fatalf("header %v", h)
	}
	v := c.provider.Verifier(&oidc.Config{ClientID: c.id, SupportedSigningAlgs: []string{"ES256"}})
	if _, err := v.Verify(c.ctx, raw); err != nil {
		t.Fatal(err)
	}
}

// OIDC_CLIENTS_FILE declares clients for development; the admin API cannot change them.
func TestOpenIDClientsFileDeclaresClients(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	path := t.TempDir() + "/clients.json"
	const secret = "a-development-secret-of-32-bytes-or-more"
	if err := os.WriteFile(path, []byte(`[{"client_id":"dev-app","client_secret":"`+secret+`","name":"Dev app",
		"type":"confidential","first_party":true,"redirect_uris":["`+testRedirectURI+`"]}]`), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := e.deps.provider.clients.loadFile(path); err != nil {
		t.Fatal(err)
	}
	email, _, _ := e.user(t)
	c := &oidcClient{id: "dev-app", secret: secret}
	c.cfg = oauth2.Config{ClientID: c.id, ClientSecret: secret, RedirectURL: testRedirectURI, Scopes: []string{"openid"},
		Endpoint: oauth2.Endpoint{AuthURL: testPortalURL + oauthAuthorizePath}}
	exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "")
	e.adminDo(t, "PATCH", "/admin/oauth/clients/dev-app", map[string]any{"name": "x"}).want(t, 409, "conflict")
	for _, bad := range []string{`[{"client_id":"x","type":"confidential","name":"x","redirect_uris":["` + testRedirectURI + `"],"client_secret":"short"}]`,
		`[{"client_id":"x","type":"public","name":"x","redirect_uris":["http://evil.example/cb"]}]`, `{}`} {
		os.WriteFile(path, []byte(bad), 0o600)
		if err := e.deps.provider.clients.loadFile(path); err == nil || !strings.Contains(err.Error(), "OIDC_CLIENTS_FILE") {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

// Clients racing to redeem one code: exactly one gets tokens, and since the others are replays,
// those tokens are revoked too.
func TestOpenIDCodeRedeemedManyTimesAtOnceGivesOneAnswerWhoseTokensDie(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t, func(c *config) { c.maxFailures, c.maxClientFails = 100, 100 }) // the losers fail
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	code := codeFlow(t, e, newBrowser(e), c, email, "")
	const racers = 8
	answers := make([]response, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Go(func() { answers[i] = exchange(t, e, c, url.Values{"code": {code}}) })
	}
	wg.Wait()
	var won []response
	for _, a := range answers {
		switch {
		case a.status == 200:
			won = append(won, a)
		case a.status == 503:
			t.Skip("the store did not answer a racer in time; its outcome is unknown")
		case a.status != 400 || a.str("error") != "invalid_grant":
			t.Fatalf("a racer got %d %s", a.status, a.raw)
		}
	}
	if len(won) != 1 {
		t.Fatalf("%d racers got tokens", len(won))
	}
	e.do(t, "GET", oauthUserinfoPath, nil, "Authorization", "Bearer "+won[0].str("access_token")).want(t, 401, "token_revoked")
}

// Deleting an account deletes the consents it gave.
func TestDeletingAnAccountDeletesItsConsents(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, access, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential"})
	codeFlow(t, e, newBrowser(e), c, email, "")
	id := jwtPart(t, access, 1)["sub"].(string)
	if gs, err := e.store.GrantsOfUser(t.Context(), id); err != nil || len(gs) != 1 {
		t.Fatalf("grants %v %v", gs, err)
	}
	e.do(t, "DELETE", "/auth/account", map[string]string{"password": "correct horse battery"}, "Authorization", "Bearer "+access).want(t, 204, "")
	if gs, err := e.store.GrantsOfUser(t.Context(), id); err != nil || len(gs) != 0 {
		t.Fatalf("grants after deletion %v %v", gs, err)
	}
}

// DELETE /admin/keys/{kid} revokes an ID token key too: the ring drops it at its next poll, and
// the next key signs.
func TestAdminRevokesAnIDTokenKey(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, _, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "first_party": true})
	idToken := func() string {
		return exchange(t, e, c, url.Values{"code": {codeFlow(t, e, newBrowser(e), c, email, "")}}).want(t, 200, "").str("id_token")
	}
	kid, _ := jwtPart(t, idToken(), 0)["kid"].(string)
	e.adminDo(t, "DELETE", "/admin/keys/"+kid, nil).want(t, 409, "keys_not_managed") // HS256: the API's keys are not managed
	// With a managed JWT_ALG the call reaches the store, which holds every ring's keys.
	m := newOIDCEnv(t, func(c *config) { c.jwtAlg = algEdDSA })
	if err := m.deps.keys.load(t.Context()); err != nil {
		t.Fatal(err)
	}
	mc := registerClient(t, m, map[string]any{"type": "confidential", "first_party": true})
	memail, _, _ := m.user(t)
	first := exchange(t, m, mc, url.Values{"code": {codeFlow(t, m, newBrowser(m), mc, memail, "")}}).want(t, 200, "").str("id_token")
	kid, _ = jwtPart(t, first, 0)["kid"].(string)
	m.adminDo(t, "DELETE", "/admin/keys/"+kid, nil).want(t, 200, "")
	if err := m.deps.provider.idRing().sync(t.Context(), false); err != nil { // its poll
		t.Fatal(err)
	}
	if strings.Contains(m.do(t, "GET", "/.well-known/jwks.json", nil).raw, kid) {
		t.Fatal("the revoked key is still published")
	}
	next := exchange(t, m, mc, url.Values{"code": {codeFlow(t, m, newBrowser(m), mc, memail, "")}}).want(t, 200, "").str("id_token")
	if k, _ := jwtPart(t, next, 0)["kid"].(string); k == kid || k == "" {
		t.Fatalf("signed with %q after its revocation", k)
	}
}

// A consent is no credential: it survives a password change (the client's sessions end with the
// others, as sessions do), so the user is not asked again.
func TestOpenIDConsentSurvivesAPasswordChange(t *testing.T) {
	t.Parallel()
	e := newOIDCEnv(t)
	email, access, _ := e.user(t)
	c := registerClient(t, e, map[string]any{"type": "confidential", "name": "Partner app"})
	b := newBrowser(e)
	tok := exchange(t, e, c, url.Values{"code": {codeFlow(t, e, b, c, email, "")}}).want(t, 200, "")
	changed := e.do(t, "POST", "/auth/password", map[string]string{"current_password": "correct horse battery",
		"new_password": "another horse battery"}, "Authorization", "Bearer "+access).want(t, 200, "")
	exchange(t, e, c, url.Values{"grant_type": {"refresh_token"}, "refresh_token": {tok.str("refresh_token")}}).want(t, 400, "invalid_grant")
	grants := e.do(t, "GET", "/auth/grants", nil, "Authorization", "Bearer "+changed.str("access_token")).want(t, 200, "")
	if !strings.Contains(grants.raw, c.id) {
		t.Fatalf("grants after the change: %s", grants.raw)
	}
	// The browser's cookie session ended with the change: it signs in again, and is not asked to consent.
	b2 := newBrowser(e)
	p := b2.send(t, "GET", local(t, c.cfg.AuthCodeURL("s")), nil)
	login, _ := url.Parse(p.header.Get("Location"))
	b2.send(t, "GET", login.String(), nil)
	p = b2.post(t, "/login", url.Values{"email": {email}, "password": {"another horse battery"}, "rd": {login.Query().Get("rd")}})
	p = b2.send(t, "GET", local(t, p.header.Get("Location")), nil)
	if back, _ := url.Parse(p.header.Get("Location")); p.status != 303 || back.Query().Get("code") == "" {
		t.Fatalf("after the change: %d %s", p.status, p.body)
	}
}
