package main

// oidc_clients.go is the OpenID provider's clients: their registration (admin API and
// OIDC_CLIENTS_FILE), their secrets, and how a client proves itself at the token endpoint.

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"time"
)

// The two kinds of client (OAuthClient.Type).
const (
	clientPublic       = "public"       // a browser or native app: no secret, PKCE required
	clientConfidential = "confidential" // a server: a secret, PKCE accepted
)

// oauthScopes are the scopes the provider knows; profile adds nothing beyond sub today.
var oauthScopes = []string{"openid", "email", "profile", "offline_access"}

var (
	errNoSuchClient = &apiError{status: http.StatusNotFound, code: "not_found", message: "no such client"}
	// errInvalidClient is the token endpoint's answer to a client that is unknown or whose
	// credentials are wrong, alike (RFC 6749 section 5.2).
	errInvalidClient = &apiError{status: http.StatusUnauthorized, code: "invalid_client",
		message: "client authentication failed", oauth: true}
)

// oauthClients are the registered clients: in the store (the admin API), and for development in
// OIDC_CLIENTS_FILE, read at start and kept in memory.
type oauthClients struct {
	store clientStore
	file  map[string]*OAuthClient
	algs  []string // the ID token algorithms the provider signs with
	now   func() time.Time
}

// clientRequest is the admin API's body for a new client, and for a change (PATCH: only the
// fields sent change).
type clientRequest struct {
	Name                   *string   `json:"name"`
	Type                   string    `json:"type"`
	RedirectURIs           *[]string `json:"redirect_uris"`
	PostLogoutRedirectURIs *[]string `json:"post_logout_redirect_uris"`
	Scopes                 *[]string `json:"scopes"`
	FirstParty             *bool     `json:"first_party"`
	IDTokenAlg             *string   `json:"id_token_signed_response_alg"`
}

func badClient(format string, a ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: fmt.Sprintf(format, a...)}
}

// apply sets the fields req sends on c, and checks the result.
func (cs *oauthClients) apply(c *OAuthClient, req clientRequest) error {
	if req.Name != nil {
		c.Name = strings.TrimSpace(*req.Name)
	}
	if req.RedirectURIs != nil {
		c.RedirectURIs = *req.RedirectURIs
	}
	if req.PostLogoutRedirectURIs != nil {
		c.PostLogoutRedirectURIs = *req.PostLogoutRedirectURIs
	}
	if req.Scopes != nil {
		c.Scopes = *req.Scopes
	}
	if req.FirstParty != nil {
		c.FirstParty = *req.FirstParty
	}
	if req.IDTokenAlg != nil {
		c.IDTokenAlg = *req.IDTokenAlg
	}
	if c.Name == "" || len(c.Name) > 200 {
		return badClient("name: give the client a name of at most 200 bytes, shown on the consent page")
	}
	if len(c.RedirectURIs) == 0 {
		return badClient("redirect_uris: give at least one")
	}
	for _, u := range append(slices.Clone(c.RedirectURIs), c.PostLogoutRedirectURIs...) {
		if err := checkRedirectURI(u, c.Type); err != nil {
			return err
		}
	}
	if c.Scopes == nil {
		c.Scopes = oauthScopes
	}
	for _, s := range c.Scopes {
		if !slices.Contains(oauthScopes, s) {
			return badClient("scopes: %q is not one of %s", s, strings.Join(oauthScopes, ", "))
		}
	}
	if !slices.Contains(c.Scopes, "openid") {
		return badClient("scopes: openid is required")
	}
	if c.IDTokenAlg == "" {
		c.IDTokenAlg = algRS256
	}
	if !slices.Contains(cs.algs, c.IDTokenAlg) {
		return badClient("id_token_signed_response_alg: want one of %s", strings.Join(cs.algs, ", "))
	}
	return nil
}

// checkRedirectURI accepts an absolute URI without a fragment: https; http only to a loopback
// address or localhost; and for a public (native) client a private-use scheme with a dot in it
// (RFC 8252 section 7.1, such as com.example.app:/callback).
func checkRedirectURI(raw, kind string) error {
	u, err := url.Parse(raw)
	bad := badClient("redirect URI %q: want an absolute https URI without a fragment, http only to localhost or a loopback address, or for a public client a scheme such as com.example.app", raw)
	if err != nil || u.Fragment != "" || strings.Contains(raw, "#") || u.Scheme == "" || len(raw) > 2000 ||
		u.User != nil || !validHost(u.Hostname()) {
		return bad
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "http" && (u.Hostname() == "localhost" || isLoopback(u.Hostname())):
	case kind == clientPublic && strings.Contains(u.Scheme, ".") && u.Scheme != "http" && u.Scheme != "https":
	default:
		return bad
	}
	return nil
}

// validHost accepts an IP address, a DNS name of letters, digits, hyphens and dots, or nothing (a
// private-use scheme's URI has no host): a host a reader could misread ("*", "a@b") is refused.
func validHost(h string) bool {
	if _, err := netip.ParseAddr(h); err == nil {
		return true
	}
	for _, label := range strings.Split(h, ".") {
		if h == "" {
			break
		}
		if label == "" || len(label) > 63 || strings.HasPrefix(label, "-") || strings.HasSuffix(label, "-") ||
			strings.ContainsFunc(label, func(r rune) bool {
				return !('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '-')
			}) {
			return false
		}
	}
	return true
}

// newClientSecret is 32 random bytes, base64url: what the client is shown once, and its digest.
func newClientSecret() (secret, sum string) {
	secret = newSecretToken()
	return secret, digest(secret)
}

// create registers a client; the secret, for a confidential one, is answered this once.
func (cs *oauthClients) create(ctx context.Context, req clientRequest) (*OAuthClient, string, error) {
	if req.Type != clientPublic && req.Type != clientConfidential {
		return nil, "", badClient("type: want public or confidential")
	}
	c := &OAuthClient{ID: newID(), Type: req.Type, CreatedAt: cs.now().UTC().Truncate(time.Millisecond)}
	if err := cs.apply(c, req); err != nil {
		return nil, "", err
	}
	if err := cs.store.CreateClient(ctx, c); err != nil {
		return nil, "", err
	}
	if c.Type != clientConfidential {
		return c, "", nil
	}
	// Should this fail, the client has no secret and authenticates nowhere until one is rotated in.
	secret, sum := newClientSecret()
	if err := cs.store.SetClientSecret(ctx, c.ID, sum); err != nil {
		return nil, "", err
	}
	return c, secret, nil
}

// byID finds client id, in the file or the store; errNoSuchClient when there is none.
func (cs *oauthClients) byID(ctx context.Context, id string) (*OAuthClient, error) {
	if c := cs.file[id]; c != nil {
		return c, nil
	}
	if id == "" || len(id) > 200 {
		return nil, errNoSuchClient
	}
	c, err := cs.store.ClientByID(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, errNoSuchClient
	}
	return c, err
}

// list is every client, the file's first.
func (cs *oauthClients) list(ctx context.Context) ([]OAuthClient, error) {
	var out []OAuthClient
	for _, c := range cs.file {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(a, b OAuthClient) int { return strings.Compare(a.ID, b.ID) })
	stored, err := cs.store.Clients(ctx)
	return append(out, stored...), err
}

// errFileClient refuses a change to a client that OIDC_CLIENTS_FILE declares.
var errFileClient = &apiError{status: http.StatusConflict, code: "conflict",
	message: "this client is declared in OIDC_CLIENTS_FILE; change it there"}

// update changes the fields req sends; the type never changes.
func (cs *oauthClients) update(ctx context.Context, id string, req clientRequest) (*OAuthClient, error) {
	if cs.file[id] != nil {
		return nil, errFileClient
	}
	c, err := cs.byID(ctx, id)
	if err != nil {
		return nil, err
	}
	if req.Type != "" && req.Type != c.Type {
		return nil, badClient("type: a client's type cannot change; register a new client")
	}
	if err := cs.apply(c, req); err != nil {
		return nil, err
	}
	if err := cs.store.ReplaceClient(ctx, c); errors.Is(err, ErrNotFound) {
		return nil, errNoSuchClient
	} else if err != nil {
		return nil, err
	}
	return c, nil
}

// remove deletes client id: its codes, tokens and sessions are refused from then on, as they name
// a client that no longer exists.
func (cs *oauthClients) remove(ctx context.Context, id string) error {
	if cs.file[id] != nil {
		return errFileClient
	}
	if err := cs.store.DeleteClient(ctx, id); errors.Is(err, ErrNotFound) {
		return errNoSuchClient
	} else if err != nil {
		return err
	}
	return nil
}

// rotateSecret gives confidential client id a new secret, answered this once; the old one stops
// working at once.
func (cs *oauthClients) rotateSecret(ctx context.Context, id string) (*OAuthClient, string, error) {
	if cs.file[id] != nil {
		return nil, "", errFileClient
	}
	c, err := cs.byID(ctx, id)
	if err != nil {
		return nil, "", err
	}
	if c.Type != clientConfidential {
		return nil, "", badClient("a public client has no secret")
	}
	secret, sum := newClientSecret()
	if err := cs.store.SetClientSecret(ctx, c.ID, sum); err != nil {
		return nil, "", err
	}
	return c, secret, nil
}

// clientCredentials are the client id and secret a token, revocation or introspection request
// sent: client_secret_basic, client_secret_post, or a public client's client_id alone. Two
// Authorization headers, two ways at once, or two ids that differ are refused.
func clientCredentials(r *http.Request) (id, secret string, err error) {
	if _, err := header(r, "Authorization"); err != nil {
		return "", "", errInvalidClient
	}
	id, secret, basic := r.BasicAuth()
	if basic {
		// RFC 6749 section 2.3.1: both are form-encoded before they are put in the header.
		var err1, err2 error
		id, err1 = url.QueryUnescape(id)
		secret, err2 = url.QueryUnescape(secret)
		if err1 != nil || err2 != nil || len(r.PostForm["client_secret"]) > 0 {
			return "", "", errInvalidClient
		}
	} else {
		id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		if len(r.PostForm["client_id"]) > 1 || len(r.PostForm["client_secret"]) > 1 {
			return "", "", errInvalidClient
		}
	}
	if form := r.PostForm.Get("client_id"); form != "" && form != id {
		return "", "", errInvalidClient
	}
	return id, secret, nil
}

// authenticate finds the client of credentials id and secret (see clientCredentials). An unknown
// client and a wrong secret are answered alike; the secret's digest is compared in constant time.
func (cs *oauthClients) authenticate(ctx context.Context, id, secret string) (*OAuthClient, error) {
	c, err := cs.byID(ctx, id)
	if errors.Is(err, errNoSuchClient) {
		return nil, errInvalidClient
	} else if err != nil {
		return nil, err
	}
	switch c.Type {
	case clientPublic:
		if secret != "" {
			return nil, errInvalidClient
		}
	default:
		if secret == "" {
			return nil, errInvalidClient
		}
		want := c.SecretDigest // a file client's; the store keeps the others' apart
		if cs.file[c.ID] == nil {
			if want, err = cs.store.ClientSecret(ctx, c.ID); errors.Is(err, ErrNotFound) {
				return nil, errInvalidClient
			} else if err != nil {
				return nil, err
			}
		}
		if subtle.ConstantTimeCompare([]byte(digest(secret)), []byte(want)) != 1 {
			return nil, errInvalidClient
		}
	}
	return c, nil
}

// fileClient is one client of OIDC_CLIENTS_FILE: as the admin API takes it, with its id and, for a
// confidential one, its secret in clear (a development file).
type fileClient struct {
	ID     string `json:"client_id"`
	Secret string `json:"client_secret"`
	clientRequest
}

// loadClientsFile reads OIDC_CLIENTS_FILE, a JSON array of clients.
func (cs *oauthClients) loadFile(path string) error {
	if path == "" {
		return nil
	}
	raw, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("OIDC_CLIENTS_FILE: %w", err)
	}
	var list []fileClient
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields() // a setting the service does not know is one the operator believes set
	if err := dec.Decode(&list); err != nil {
		return fmt.Errorf("OIDC_CLIENTS_FILE %s: want a JSON array of clients: %w", path, err)
	}
	cs.file = make(map[string]*OAuthClient)
	for i, f := range list {
		c := &OAuthClient{ID: f.ID, Type: f.Type}
		if f.ID == "" || cs.file[f.ID] != nil {
			return fmt.Errorf("OIDC_CLIENTS_FILE %s: client %d: want a client_id of its own", path, i+1)
		}
		if f.Type != clientPublic && f.Type != clientConfidential {
			return fmt.Errorf("OIDC_CLIENTS_FILE %s: client %s: type: want public or confidential", path, f.ID)
		}
		if err := cs.apply(c, f.clientRequest); err != nil {
			return fmt.Errorf("OIDC_CLIENTS_FILE %s: client %s: %w", path, f.ID, err)
		}
		switch {
		case c.Type == clientConfidential && len(f.Secret) < 32:
			return fmt.Errorf("OIDC_CLIENTS_FILE %s: client %s: a confidential client needs a client_secret of at least 32 bytes", path, f.ID)
		case c.Type == clientPublic && f.Secret != "":
			return fmt.Errorf("OIDC_CLIENTS_FILE %s: client %s: a public client has no secret", path, f.ID)
		case f.Secret != "":
			c.SecretDigest = digest(f.Secret)
		}
		cs.file[f.ID] = c
	}
	return nil
}

// clientView is a client as the admin API shows it; client_secret only when just made.
type clientView struct {
	OAuthClient
	Secret string `json:"client_secret,omitempty"`
}

// publicOrigin reports whether origin is the origin of a redirect URI of a public client: a
// single-page app there may call the token, userinfo and revocation endpoints from the browser.
func (cs *oauthClients) publicOrigin(ctx context.Context, origin string) (bool, error) {
	all, err := cs.list(ctx)
	if err != nil {
		return false, err
	}
	for _, c := range all {
		if c.Type != clientPublic {
			continue
		}
		for _, raw := range c.RedirectURIs {
			if u, err := url.Parse(raw); err == nil && (u.Scheme == "https" || u.Scheme == "http") &&
				u.Scheme+"://"+u.Host == origin {
				return true, nil
			}
		}
	}
	return false, nil
}

// newSecretToken is 256 random bits, base64url: a code or a client's secret.
func newSecretToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}
