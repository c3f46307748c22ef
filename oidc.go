package main

// oidc.go is the OpenID provider's front channel: its discovery document, the authorization
// endpoint that signs the user in through the portal, asks consent and issues codes, and the
// consents users gave.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// oidcProvider is the OpenID provider (authorization code flow with PKCE) on the portal: users
// sign in on its pages, into its cookie sessions, and each client's tokens are a session of their
// own.
type oidcProvider struct {
	cfg oidcConfig
	// site is the portal, where users sign in: the provider reads and ends its cookie sessions
	// and shows its pages.
	site interface {
		signedIn(r *http.Request) *claims
		signOut(w http.ResponseWriter, r *http.Request) error
		render(w http.ResponseWriter, v interface{ page() *pageData })
		failed(w http.ResponseWriter, r *http.Request, d *pageData, err error) *pageData
	}
	macKey  []byte    // for login_after; the portal's CSRF key
	addrs   clientIPs // the client addresses the throttle and sessions record
	clients *oauthClients
	store   interface {
		codeStore
		grantStore
		userStore
	}
	sessions *sessionKeeper
	tokens   *tokens
	revs     *revocations
	// rings sign ID tokens, by algorithm: RS256 always, and JWT_ALG's when it is managed.
	rings map[string]*keyring
	// Failed token requests, per client and per client address, within throttle's window.
	throttle                       *throttle
	maxFailures, maxClientFailures int
	log                            *slog.Logger
	now                            func() time.Time
}

// idRing is the RS256 ring, which only ID tokens use.
func (o *oidcProvider) idRing() *keyring { return o.rings[algRS256] }

// ownRings are the rings only ID tokens use (not JWT_ALG's), by algorithm: those that start and
// poll with the provider.
func (o *oidcProvider) ownRings() []*keyring {
	var out []*keyring
	for _, alg := range slices.Sorted(maps.Keys(o.rings)) {
		if r := o.rings[alg]; r != o.tokens.keys {
			out = append(out, r)
		}
	}
	return out
}

// loadRings loads the ID tokens' own rings, as run does at start.
func (o *oidcProvider) loadRings(ctx context.Context) error {
	for _, r := range o.ownRings() {
		if err := r.load(ctx); err != nil {
			return fmt.Errorf("the ID tokens' signing keys (%s): %w", r.alg, err)
		}
	}
	return nil
}

// The provider's endpoints, under the issuer.
const (
	oauthAuthorizePath  = "/oauth2/authorize"
	oauthTokenPath      = "/oauth2/token"
	oauthUserinfoPath   = "/oauth2/userinfo"
	oauthRevokePath     = "/oauth2/revoke"
	oauthIntrospectPath = "/oauth2/introspect"
	oauthLogoutPath     = "/oauth2/logout"
)

// discovery serves /.well-known/openid-configuration (OpenID Connect Discovery 1.0).
func (o *oidcProvider) discovery() http.Handler {
	iss := o.cfg.issuer
	algs := slices.Sorted(func(yield func(string) bool) {
		for a := range o.rings {
			if !yield(a) {
				return
			}
		}
	})
	doc, _ := json.Marshal(map[string]any{
		"issuer":                                        iss,
		"authorization_endpoint":                        iss + oauthAuthorizePath,
		"token_endpoint":                                iss + oauthTokenPath,
		"userinfo_endpoint":                             iss + oauthUserinfoPath,
		"jwks_uri":                                      iss + "/.well-known/jwks.json",
		"revocation_endpoint":                           iss + oauthRevokePath,
		"introspection_endpoint":                        iss + oauthIntrospectPath,
		"end_session_endpoint":                          iss + oauthLogoutPath,
		"response_types_supported":                      []string{"code"},
		"response_modes_supported":                      []string{"query"},
		"grant_types_supported":                         []string{"authorization_code", "refresh_token"},
		"subject_types_supported":                       []string{"public"},
		"id_token_signing_alg_values_supported":         algs,
		"token_endpoint_auth_methods_supported":         []string{"client_secret_basic", "client_secret_post", "none"},
		"revocation_endpoint_auth_methods_supported":    []string{"client_secret_basic", "client_secret_post", "none"},
		"introspection_endpoint_auth_methods_supported": []string{"client_secret_basic", "client_secret_post"},
		"code_challenge_methods_supported":              []string{"S256"},
		"scopes_supported":                              oauthScopes,
		"claims_supported": []string{"iss", "sub", "aud", "exp", "iat", "auth_time", "nonce", "acr", "amr", "sid",
			"azp", "at_hash", "email", "email_verified"},
		"acr_values_supported":                           []string{levelPassword.ACR, levelTwoFactor.ACR, "phr"},
		"prompt_values_supported":                        []string{"none", "login", "consent", "select_account"},
		"claims_parameter_supported":                     false,
		"request_parameter_supported":                    false,
		"request_uri_parameter_supported":                false,
		"authorization_response_iss_parameter_supported": true,
	})
	cache := fmt.Sprintf("public, max-age=%d", int(jwksMaxAge/time.Second))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", cache)
		w.Write(doc)
	})
}

// authRequest is an authorization request that passed its checks.
type authRequest struct {
	client      *OAuthClient
	redirectURI string
	state       string
	nonce       string
	challenge   string // S256; "" for none
	scopes      []string
	prompt      []string
	maxAge      int64  // -1 for none
	require     string // the level acr_values asks for, as X-Auth-Require names it: aal2, phr or ""
	loginAfter  int64  // prompt=login, carried through the sign-in: the session must be newer
	query       url.Values
}

// redirectError is a refusal sent back to the client's redirect URI (RFC 6749 section 4.1.2.1).
type redirectError struct{ code, description string }

func (e *redirectError) Error() string { return e.code + ": " + e.description }

// redirectErrorf makes the refusal code, described as format says, for the redirect URI.
func redirectErrorf(code, format string, a ...any) *redirectError {
	return &redirectError{code, fmt.Sprintf(format, a...)}
}

// covers is whether g allows every one of scopes; a nil grant allows nothing.
func (g *ConsentGrant) covers(scopes []string) bool {
	if g == nil {
		return false
	}
	for _, s := range scopes {
		if !slices.Contains(g.Scopes, s) {
			return false
		}
	}
	return true
}

// pageError is a refusal shown to the user, never redirected: the client or its redirect URI
// cannot be trusted with it.
type pageError struct{ message string }

func (e *pageError) Error() string { return e.message }

// singleParam is the value of a parameter sent at most once (RFC 6749 section 3.1), "" when
// absent.
func singleParam(q url.Values, name string) (string, bool) {
	v := q[name]
	if len(v) > 1 {
		return "", false
	}
	if len(v) == 0 {
		return "", true
	}
	return v[0], true
}

// pkceChallenge is the form of an S256 challenge, and of a verifier (RFC 7636 section 4.1).
var (
	pkceChallenge = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)
	pkceVerifier  = regexp.MustCompile(`^[A-Za-z0-9._~-]{43,128}$`)
)

// loginAfterMark is the login_after parameter of a request that sends the browser to sign in at
// time t: t and a MAC over t and the rest of the request q, so that no one can forge it to skip
// prompt=login or max_age, nor move it to another request.
func (o *oidcProvider) loginAfterMark(q url.Values, t int64) string {
	rest := cloneValues(q)
	rest.Del("login_after")
	m := hmac.New(sha256.New, o.macKey)
	m.Write([]byte("oidc login_after\x00" + strconv.FormatInt(t, 10) + "\x00" + rest.Encode()))
	return strconv.FormatInt(t, 10) + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

// signInAgainPrompt is whether a prompt value asks for a sign-in even when the browser has a
// session: login, and select_account, which with one account per browser means signing in as
// whom the user chooses.
func signInAgainPrompt(p string) bool { return p == "login" || p == "select_account" }

func signInAgain(prompt []string) bool { return slices.ContainsFunc(prompt, signInAgainPrompt) }

// loginAfterLen bounds the length of a login_after mark: a time and a MAC.
const loginAfterLen = 20 + 1 + 43

// loginAfter is the time of q's login_after mark, 0 when it has none or it is not the service's.
func (o *oidcProvider) loginAfter(q url.Values) int64 {
	v := q.Get("login_after")
	ts, _, ok := strings.Cut(v, ".")
	t, err := strconv.ParseInt(ts, 10, 64)
	if !ok || err != nil || t <= 0 || !hmac.Equal([]byte(v), []byte(o.loginAfterMark(q, t))) {
		return 0
	}
	return t
}

// parse checks an authorization request. The client and its redirect URI come first: until both
// are known good, a refusal is a pageError.
func (o *oidcProvider) parse(ctx context.Context, q url.Values) (*authRequest, error) {
	id, ok1 := singleParam(q, "client_id")
	redirect, ok2 := singleParam(q, "redirect_uri")
	if !ok1 || !ok2 || id == "" {
		return nil, &pageError{"The application sent a sign-in request without its client_id, or with a parameter twice."}
	}
	client, err := o.clients.byID(ctx, id)
	if errors.Is(err, errNoSuchClient) {
		return nil, &pageError{"The application that sent you here is not registered with this service."}
	} else if err != nil {
		return nil, err
	}
	if !redirectAllowed(client.RedirectURIs, redirect) {
		return nil, &pageError{"The application asked to send you back to an address it did not register, so you are not sent there."}
	}
	ar := &authRequest{client: client, redirectURI: redirect, maxAge: -1, query: q}
	ar.state, _ = singleParam(q, "state")
	for name := range q {
		if len(q[name]) > 1 {
			return ar, redirectErrorf("invalid_request", "%s was sent more than once", name)
		}
	}
	switch {
	case q.Get("request") != "":
		return ar, redirectErrorf("request_not_supported", "request objects are not supported")
	case q.Get("request_uri") != "":
		return ar, redirectErrorf("request_uri_not_supported", "request_uri is not supported")
	case q.Get("response_type") != "code":
		return ar, redirectErrorf("unsupported_response_type", "response_type must be code")
	case q.Get("response_mode") != "" && q.Get("response_mode") != "query":
		return ar, redirectErrorf("invalid_request", "response_mode must be query")
	case len(ar.state) > 2048:
		return ar, redirectErrorf("invalid_request", "state is longer than 2048 bytes")
	case len(o.cfg.issuer+oauthAuthorizePath)+len(q.Encode())+len("?&login_after=")+loginAfterLen > maxReturnLen:
		// The request goes through the sign-in as its way back (rd), which is bounded.
		return ar, redirectErrorf("invalid_request", "the request is too long to carry through the sign-in; send a shorter state or nonce")
	}
	ar.nonce = q.Get("nonce")
	if len(ar.nonce) > 512 {
		return ar, redirectErrorf("invalid_request", "nonce is longer than 512 bytes")
	}
	for _, s := range strings.Fields(q.Get("scope")) {
		if !slices.Contains(oauthScopes, s) {
			return ar, redirectErrorf("invalid_scope", "scope %q is not supported", s)
		}
		if !slices.Contains(client.Scopes, s) {
			return ar, redirectErrorf("invalid_scope", "this client may not ask for scope %q", s)
		}
		if !slices.Contains(ar.scopes, s) {
			ar.scopes = append(ar.scopes, s)
		}
	}
	if !slices.Contains(ar.scopes, "openid") {
		return ar, redirectErrorf("invalid_scope", "scope must include openid")
	}
	ar.challenge = q.Get("code_challenge")
	switch method := q.Get("code_challenge_method"); {
	case ar.challenge == "" && client.Type == clientPublic:
		return ar, redirectErrorf("invalid_request", "a public client must send a PKCE code_challenge (S256)")
	case ar.challenge == "" && method != "":
		return ar, redirectErrorf("invalid_request", "code_challenge_method without code_challenge")
	case ar.challenge != "" && method != "S256":
		// A missing method means plain (RFC 7636 section 4.3), which gives a stolen code away.
		return ar, redirectErrorf("invalid_request", "code_challenge_method must be S256")
	case ar.challenge != "" && !pkceChallenge.MatchString(ar.challenge):
		return ar, redirectErrorf("invalid_request", "code_challenge must be 43 base64url characters (S256)")
	}
	ar.prompt = strings.Fields(q.Get("prompt"))
	for _, p := range ar.prompt {
		if p != "none" && p != "login" && p != "consent" && p != "select_account" {
			return ar, redirectErrorf("invalid_request", "prompt %q is not supported", p)
		}
	}
	if slices.Contains(ar.prompt, "none") && len(ar.prompt) > 1 {
		return ar, redirectErrorf("invalid_request", "prompt=none cannot be combined with other values")
	}
	if v := q.Get("max_age"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			return ar, redirectErrorf("invalid_request", "max_age must be a whole number of seconds")
		}
		ar.maxAge = n
	}
	ar.loginAfter = o.loginAfter(q)
	for _, v := range strings.Fields(q.Get("acr_values")) {
		if v == "phr" || v == levelTwoFactor.ACR && ar.require == "" {
			ar.require = v
		}
	}
	return ar, nil
}

// redirectAllowed reports whether uri is one of registered, exactly; except that a loopback IP
// redirect URI may name any port (RFC 8252 section 7.3), since a native app gets one at run time.
func redirectAllowed(registered []string, uri string) bool {
	if uri == "" {
		return false
	}
	if slices.Contains(registered, uri) {
		return true
	}
	u, err := url.Parse(uri)
	if err != nil || u.Scheme != "http" || !isLoopback(u.Hostname()) || strings.Contains(uri, "#") || u.User != nil {
		return false
	}
	for _, reg := range registered {
		r, err := url.Parse(reg)
		if err == nil && r.Scheme == "http" && r.Hostname() == u.Hostname() && r.EscapedPath() == u.EscapedPath() &&
			r.RawQuery == u.RawQuery && r.User == nil {
			return true
		}
	}
	return false
}

// redirectTo sends the browser back to the client with params, and the issuer (RFC 9207).
func (o *oidcProvider) redirectTo(w http.ResponseWriter, r *http.Request, ar *authRequest, params url.Values) {
	u, _ := url.Parse(ar.redirectURI)
	q := u.Query()
	for k, v := range params {
		q[k] = v
	}
	if ar.state != "" {
		q.Set("state", ar.state)
	}
	q.Set("iss", o.cfg.issuer)
	u.RawQuery = q.Encode()
	w.Header().Set("Cache-Control", "no-store")
	http.Redirect(w, r, u.String(), http.StatusSeeOther)
}

// authorize is the authorization endpoint, GET or POST.
func (o *oidcProvider) authorize(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			return o.refusedPage(d, "The sign-in request could not be read.")
		}
		q = r.PostForm
	}
	return o.decide(w, r, d, q, "")
}

// consent is the consent page's POST: the request it carries is checked again from the start, and
// decided as the user chose.
func (o *oidcProvider) consent(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	q, err := url.ParseQuery(r.PostForm.Get("request"))
	if err != nil {
		return o.refusedPage(d, "The sign-in request could not be read.")
	}
	decision := r.PostForm.Get("decision")
	if decision != "allow" {
		decision = "deny"
	}
	return o.decide(w, r, d, q, decision)
}

func (o *oidcProvider) refusedPage(d *pageData, msg string) *pageData {
	d.Title, d.Error, d.status, d.template = "Sign-in request refused", msg, http.StatusBadRequest, "message"
	return d
}

// consentView is the consent page's data.
type consentView struct {
	*pageData
	ClientName string
	Asks       []string
	Request    string
}

// decide answers a checked request: the sign-in (or step-up) first if the portal session does not
// satisfy it, then consent for a third-party client, then a code. decision is the consent page's
// answer, "" when it was not asked.
func (o *oidcProvider) decide(w http.ResponseWriter, r *http.Request, d *pageData, q url.Values, decision string) *pageData {
	ctx := r.Context()
	ar, err := o.parse(ctx, q)
	var pe *pageError
	var re *redirectError
	switch {
	case errors.As(err, &pe):
		return o.refusedPage(d, pe.message)
	case errors.As(err, &re):
		o.redirectTo(w, r, ar, url.Values{"error": {re.code}, "error_description": {re.description}})
		return nil
	case err != nil:
		return o.failed(w, r, ar, err)
	}
	none := slices.Contains(ar.prompt, "none")
	c := o.site.signedIn(r)
	now := o.now()
	// A sign-in this request sent the browser to (login_after) satisfies prompt=login and max_age,
	// whatever seconds it took.
	fresh := c != nil && ar.loginAfter > 0 && c.IssuedAt >= ar.loginAfter
	switch {
	case c == nil, !fresh && (signInAgain(ar.prompt) || ar.loginAfter > 0 ||
		ar.maxAge >= 0 && now.Unix()-c.IssuedAt > ar.maxAge):
		if none {
			o.redirectTo(w, r, ar, url.Values{"error": {"login_required"}, "error_description": {"the user must sign in"}})
			return nil
		}
		again := cloneValues(q)
		again.Set("prompt", strings.Join(slices.DeleteFunc(slices.Clone(ar.prompt), signInAgainPrompt), " "))
		if again.Get("prompt") == "" {
			again.Del("prompt")
		}
		again.Set("login_after", o.loginAfterMark(again, now.Unix()))
		to := "/login?rd=" + url.QueryEscape(o.cfg.issuer+oauthAuthorizePath+"?"+again.Encode())
		if hint := q.Get("login_hint"); hint != "" {
			to += "&login_hint=" + url.QueryEscape(hint)
		}
		http.Redirect(w, r, to, http.StatusSeeOther)
		return nil
	case !satisfies(c.level(), ar.require):
		if none {
			o.redirectTo(w, r, ar, url.Values{"error": {"interaction_required"}, "error_description": {"the user must confirm with a second factor"}})
			return nil
		}
		to := url.Values{"rd": {o.cfg.issuer + oauthAuthorizePath + "?" + q.Encode()}}
		if ar.require == "phr" {
			to.Set("level", "phr")
		}
		http.Redirect(w, r, "/step-up?"+to.Encode(), http.StatusSeeOther)
		return nil
	}
	if !ar.client.FirstParty {
		switch decision {
		case "deny":
			o.redirectTo(w, r, ar, url.Values{"error": {"access_denied"}, "error_description": {"the user did not allow it"}})
			return nil
		case "":
			given, err := o.consented(ctx, c.Subject, ar)
			if err != nil {
				return o.failed(w, r, ar, err)
			}
			if !given || slices.Contains(ar.prompt, "consent") {
				if none {
					o.redirectTo(w, r, ar, url.Values{"error": {"consent_required"}, "error_description": {"the user must allow this client"}})
					return nil
				}
				return o.consentPage(w, d, c, ar)
			}
		case "allow":
			if err := o.saveConsent(ctx, c.Subject, ar); err != nil {
				return o.failed(w, r, ar, err)
			}
		}
	}
	code, err := o.issueCode(ctx, ar, c)
	if err != nil {
		return o.failed(w, r, ar, err)
	}
	o.redirectTo(w, r, ar, url.Values{"code": {code}})
	return nil
}

// consentPage asks the user whether the third-party client may have what it asks for.
func (o *oidcProvider) consentPage(w http.ResponseWriter, d *pageData, c *claims, ar *authRequest) *pageData {
	v := &consentView{pageData: d, ClientName: ar.client.Name, Request: ar.query.Encode()}
	d.Title, d.Email, d.template = "Allow "+ar.client.Name+"?", c.Email, "consent"
	v.Asks = append(v.Asks, "know which account you signed in with")
	if slices.Contains(ar.scopes, "email") {
		v.Asks = append(v.Asks, "see your email address, "+c.Email)
	}
	if slices.Contains(ar.scopes, "offline_access") {
		v.Asks = append(v.Asks, "stay signed in when you are not using it")
	}
	o.site.render(w, v)
	return nil
}

// failed answers an error that is the service's, not the request's: back to the client as
// server_error or temporarily_unavailable.
func (o *oidcProvider) failed(w http.ResponseWriter, r *http.Request, ar *authRequest, err error) *pageData {
	code := "server_error"
	if e := apiErrorOf(err); e != nil && e.status == http.StatusServiceUnavailable {
		code = "temporarily_unavailable"
	} else {
		o.log.LogAttrs(r.Context(), slog.LevelError, "internal error", slog.String("err", err.Error()))
	}
	o.redirectTo(w, r, ar, url.Values{"error": {code}, "error_description": {"the service cannot sign you in right now"}})
	return nil
}

// issueCode records a code for ar, signed in as c, under the account's security stamp now.
func (o *oidcProvider) issueCode(ctx context.Context, ar *authRequest, c *claims) (string, error) {
	stamp, err := o.store.Stamp(ctx, c.Subject)
	if err != nil {
		return "", err
	}
	code := newSecretToken()
	now := o.now().UTC().Truncate(time.Millisecond)
	err = o.store.CreateAuthCode(ctx, &AuthCode{Digest: digest(code), ClientID: ar.client.ID, RedirectURI: ar.redirectURI,
		Challenge: ar.challenge, UserID: c.Subject, Stamp: stamp, Scope: strings.Join(ar.scopes, " "), Nonce: ar.nonce,
		AuthTime: time.Unix(c.IssuedAt, 0).UTC(), Level: c.level(), PortalSession: c.Session, ExpiresAt: now.Add(o.cfg.codeTTL)})
	return code, err
}

func cloneValues(q url.Values) url.Values {
	out := make(url.Values, len(q))
	for k, v := range q {
		out[k] = slices.Clone(v)
	}
	return out
}

// consented reports whether user's consent to ar's client covers the scopes ar asks for.
func (o *oidcProvider) consented(ctx context.Context, user string, ar *authRequest) (bool, error) {
	g, err := o.store.GrantOf(ctx, user, ar.client.ID)
	if err != nil && !errors.Is(err, ErrNotFound) {
		return false, err
	}
	return g.covers(ar.scopes), nil
}

// saveConsent records user's consent to ar's client, for the scopes ar asks for.
func (o *oidcProvider) saveConsent(ctx context.Context, user string, ar *authRequest) error {
	return o.store.SaveGrant(ctx, ConsentGrant{UserID: user, ClientID: ar.client.ID, Scopes: ar.scopes,
		CreatedAt: o.now().UTC().Truncate(time.Millisecond)})
}

// grantsOf lists user's consents, with the names of their clients (a client deleted since shows
// without one).
func (o *oidcProvider) grantsOf(ctx context.Context, user string) ([]grantView, error) {
	gs, err := o.store.GrantsOfUser(ctx, user)
	if err != nil {
		return nil, err
	}
	out := []grantView{}
	for _, g := range gs {
		v := grantView{ClientID: g.ClientID, Scopes: g.Scopes, CreatedAt: g.CreatedAt.UTC()}
		if c, err := o.clients.byID(ctx, g.ClientID); err == nil {
			v.ClientName = c.Name
		} else if !errors.Is(err, errNoSuchClient) {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// revokeGrant withdraws user's consent to client and ends the sessions that client holds: its
// refresh tokens and access tokens die with them.
func (o *oidcProvider) revokeGrant(ctx context.Context, user, client string) error {
	if err := o.store.DeleteGrant(ctx, user, client); errors.Is(err, ErrNotFound) {
		return errNoSuchGrant
	} else if err != nil {
		return err
	}
	return o.sessions.endClient(ctx, user, client, endGrantRevoked)
}
