package main

// oidc_tokens.go is the OpenID provider's back channel: the token endpoint (codes and refresh
// tokens), ID tokens, userinfo, revocation (RFC 7009) and introspection (RFC 7662).

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"hash"
	"log/slog"
	"mime"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// oauthError is an error of the back-channel endpoints (RFC 6749 section 5.2).
func oauthError(code, message string) *apiError {
	return &apiError{status: http.StatusBadRequest, code: code, message: message, oauth: true}
}

var (
	errGrantInvalid   = oauthError("invalid_grant", "the code or refresh token is invalid, expired, used, or was issued to another client")
	errCodeReplayed   = oauthError("invalid_grant", "this code was used already; the tokens issued for it are revoked")
	errCodeStamp      = oauthError("invalid_grant", "the account's credentials changed after this code was issued")
	errCodeWithdrawn  = oauthError("invalid_grant", "the user withdrew this client's access after this code was issued")
	errPKCEFailed     = oauthError("invalid_grant", "code_verifier does not match the code's code_challenge")
	errPKCEDowngrade  = oauthError("invalid_grant", "code_verifier was sent for a code issued without a code_challenge")
	errRedirectDiffer = oauthError("invalid_grant", "redirect_uri is not the one the code was issued for")
)

// readForm parses a back-channel request's form body: application/x-www-form-urlencoded only,
// size-limited.
func readForm(w http.ResponseWriter, r *http.Request) error {
	mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if mt != "application/x-www-form-urlencoded" {
		return &apiError{status: http.StatusUnsupportedMediaType, code: "invalid_request", oauth: true,
			message: "send the parameters as application/x-www-form-urlencoded"}
	}
	r.Body = http.MaxBytesReader(w, r.Body, maxBody)
	if err := r.ParseForm(); err != nil {
		return oauthError("invalid_request", "the form body could not be read")
	}
	for name, v := range r.PostForm {
		if len(v) > 1 {
			return oauthError("invalid_request", name+" was sent more than once")
		}
	}
	return nil
}

// authenticate authenticates the client of a back-channel request behind the throttle. A wrong
// secret counts for the client from the request's address (LOGIN_MAX_FAILURES), and every
// failure for the address (LOGIN_MAX_CLIENT_FAILURES). A public client, whose id is public, has
// no count of its own: nobody sharing an address with an app's users can lock them out of it by
// failing on purpose. Only failures are recorded: secrets and codes are not guessable, and a
// busy server's many requests at once must not count against it. The attempt is for the request
// to end: passed, or failed for the address alone (failedForAddress).
func (o *oidcProvider) authenticate(ctx context.Context, r *http.Request) (*OAuthClient, *attempt, error) {
	id, secret, err := clientCredentials(r)
	if err != nil {
		return nil, nil, err
	}
	addr := "oauth|" + clientPrefix(o.addrs.of(r))
	limits := []limit{{key: addr, max: o.maxClientFailures}}
	if secret != "" {
		limits = append(limits, limit{key: addr + "|" + cut(id, 200), max: o.maxFailures, forgive: true})
	}
	try, err := o.throttle.ifFailed(ctx, limits...)
	if err != nil {
		return nil, nil, asOAuth(err)
	}
	client, err := o.clients.authenticate(ctx, id, secret)
	if e := apiErrorOf(err); err != nil && e != nil && e.status < 500 {
		try.recordFailure(ctx)
	}
	if err != nil {
		return nil, nil, asOAuth(err)
	}
	return client, try, nil
}

// failedForAddress ends an authenticated client's attempt that failed for another reason than its
// secret (a wrong code or refresh token): it counts for the address alone. A failure of the
// service's own is not counted.
func failedForAddress(ctx context.Context, try *attempt, err error) {
	if e := apiErrorOf(err); e != nil && e.status < 500 && len(try.docs) > 0 {
		try.recordFailure(ctx, try.docs[0].Key)
	}
}

// token is the token endpoint.
func (o *oidcProvider) token() http.Handler {
	return handle(o.log, func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Pragma", "no-cache")
		if err := readForm(w, r); err != nil {
			return err
		}
		ctx := r.Context()
		client, try, err := o.authenticate(ctx, r)
		if err != nil {
			return err
		}
		answer, err := o.grant(ctx, r, client)
		if err != nil {
			failedForAddress(ctx, try, err)
			return asOAuth(err)
		}
		if err := try.passed(ctx); err != nil {
			o.log.Warn("forgetting a client's failed token requests failed", "err", err)
		}
		encode(w, http.StatusOK, answer)
		return nil
	})
}

// asOAuth marks a refusal as the back channel's, so that its clients find error_description.
// Answers of the service's own (503, 500) stay as they are: the error writer logs them by identity.
func asOAuth(err error) error {
	if e := apiErrorOf(err); e != nil && !e.oauth && e.status < 500 {
		c := *e
		c.oauth = true
		return &c
	}
	return err
}

// tokenAnswer is the token endpoint's answer (RFC 6749 section 5.1, OpenID Connect Core 3.1.3.3).
type tokenAnswer struct {
	AccessToken  string `json:"access_token"`
	TokenType    string `json:"token_type"`
	ExpiresIn    int64  `json:"expires_in"`
	RefreshToken string `json:"refresh_token,omitempty"`
	IDToken      string `json:"id_token,omitempty"`
	Scope        string `json:"scope"`
}

// grant exchanges what client sent for tokens.
func (o *oidcProvider) grant(ctx context.Context, r *http.Request, client *OAuthClient) (*tokenAnswer, error) {
	switch r.PostForm.Get("grant_type") {
	case "authorization_code":
		return o.redeem(ctx, r, client)
	case "refresh_token":
		return o.refresh(ctx, r, client)
	case "":
		return nil, oauthError("invalid_request", "grant_type is missing")
	}
	return nil, oauthError("unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
}

// pkceS256 is the S256 challenge of verifier (RFC 7636 section 4.2).
func pkceS256(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// redeem exchanges a code. Everything the code is bound to is checked before it is used, so that a
// request that fails spends nothing; then its one use is claimed under a session id chosen first,
// which a replay of the code ends, whether or not that session has been written yet.
func (o *oidcProvider) redeem(ctx context.Context, r *http.Request, client *OAuthClient) (*tokenAnswer, error) {
	form := r.PostForm
	raw, verifier := form.Get("code"), form.Get("code_verifier")
	if raw == "" || len(raw) > 200 {
		return nil, oauthError("invalid_request", "code is missing")
	}
	ac, err := o.store.AuthCodeByDigest(ctx, digest(raw))
	switch {
	case errors.Is(err, ErrNotFound), err == nil && !o.now().Before(ac.ExpiresAt):
		return nil, o.lateReplay(ctx, digest(raw), client)
	case err != nil:
		return nil, err
	case ac.ClientID != client.ID:
		return nil, errGrantInvalid
	case form.Get("redirect_uri") != ac.RedirectURI:
		return nil, errRedirectDiffer
	case ac.Challenge == "" && verifier != "":
		return nil, errPKCEDowngrade
	case ac.Challenge != "" && (!pkceVerifier.MatchString(verifier) ||
		subtle.ConstantTimeCompare([]byte(pkceS256(verifier)), []byte(ac.Challenge)) != 1):
		return nil, errPKCEFailed
	}
	stamp, err := o.store.Stamp(ctx, ac.UserID)
	if err != nil {
		return nil, err
	}
	if stamp != ac.Stamp {
		return nil, errCodeStamp
	}
	if !client.FirstParty { // the user may have withdrawn the client's access since
		g, err := o.store.GrantOf(ctx, ac.UserID, client.ID)
		if err != nil && !errors.Is(err, ErrNotFound) {
			return nil, err
		}
		if !g.covers(strings.Fields(ac.Scope)) {
			return nil, errCodeWithdrawn
		}
	}
	sid := newID()
	first, won, err := o.store.RedeemAuthCode(ctx, CodeRedemption{Digest: ac.Digest, Session: sid, Client: client.ID,
		ExpiresAt: o.now().Add(o.sessionLife())})
	if err != nil {
		return nil, err
	}
	if !won {
		return nil, o.replayed(ctx, &first)
	}
	noteUser(ctx, ac.UserID)
	u, err := o.store.UserByID(ctx, ac.UserID)
	switch {
	case errors.Is(err, ErrNotFound):
		return nil, errGrantInvalid
	case err != nil:
		return nil, err
	case u.Disabled:
		return nil, errGrantInvalid
	}
	pair, err := o.sessions.startClient(ctx, sid, u, o.addrs.of(r), r.UserAgent(), ac.Level,
		tokenClient{client.ID, ac.Scope})
	if errors.Is(err, errInvalidCredentials) || errors.Is(err, errAccountDisabled) {
		return nil, errGrantInvalid
	} else if err != nil {
		return nil, err
	}
	scopes := strings.Fields(ac.Scope)
	idToken, err := o.idToken(client, u, ac, pair.AccessToken, scopes)
	if err != nil {
		return nil, err
	}
	answer := &tokenAnswer{AccessToken: pair.AccessToken, TokenType: "Bearer", ExpiresIn: pair.ExpiresIn,
		IDToken: idToken, Scope: ac.Scope}
	if slices.Contains(scopes, "offline_access") || client.FirstParty {
		answer.RefreshToken = pair.RefreshToken
	}
	return answer, nil
}

// sessionLife is how long a session may live, and so how long the record of a code's use is
// kept: SESSION_MAX_AGE, or 30 days when sessions have no limit.
func (o *oidcProvider) sessionLife() time.Duration {
	if o.sessions.maxAge > 0 {
		return o.sessions.maxAge
	}
	return 30 * 24 * time.Hour
}

// replayed ends the session the first use of a code started, and answers the replay (RFC 6749
// section 4.1.2: the tokens issued for the code should be revoked).
func (o *oidcProvider) replayed(ctx context.Context, first *CodeRedemption) error {
	if err := o.sessions.end(ctx, first.Session, endCodeReplayed); err != nil {
		return err
	}
	o.log.LogAttrs(ctx, slog.LevelWarn, "authorization code replayed; the tokens issued for it are revoked",
		slog.String("request_id", requestID(ctx)), slog.String("client_id", first.Client))
	return errCodeReplayed
}

// lateReplay answers a code that is expired or gone: a replay of one that client used ends the
// session its use started, however late it comes.
func (o *oidcProvider) lateReplay(ctx context.Context, sum string, client *OAuthClient) error {
	first, err := o.store.CodeRedemptionOf(ctx, sum)
	switch {
	case errors.Is(err, ErrNotFound):
		return errGrantInvalid
	case err != nil:
		return err
	case first.Client != client.ID:
		return errGrantInvalid
	}
	return o.replayed(ctx, first)
}

// refresh exchanges a client's refresh token, with the rotation and reuse detection of the API's.
func (o *oidcProvider) refresh(ctx context.Context, r *http.Request, client *OAuthClient) (*tokenAnswer, error) {
	c, err := accept(o.tokens, o.revs, r.PostForm.Get("refresh_token"), useOAuthRefresh)
	if errors.Is(err, errTokenMissing) {
		return nil, oauthError("invalid_request", "refresh_token is missing")
	}
	if err != nil {
		if e := apiErrorOf(err); e != nil && e.status == http.StatusUnauthorized {
			return nil, oauthError("invalid_grant", e.message)
		}
		return nil, err
	}
	if c.Client != client.ID {
		return nil, errGrantInvalid
	}
	pair, err := o.sessions.rotateAccepted(ctx, c)
	if err != nil {
		if e := apiErrorOf(err); e != nil && e.status == http.StatusUnauthorized {
			return nil, oauthError("invalid_grant", e.message)
		}
		return nil, err
	}
	return &tokenAnswer{AccessToken: pair.AccessToken, TokenType: "Bearer", ExpiresIn: pair.ExpiresIn,
		RefreshToken: pair.RefreshToken, Scope: c.Scope}, nil
}

// idToken signs the ID token of a code's redemption with the client's algorithm: the claims of
// OpenID Connect Core 2, and the address with the email scope.
func (o *oidcProvider) idToken(client *OAuthClient, u *User, ac *AuthCode, access string, scopes []string) (string, error) {
	alg := client.IDTokenAlg
	if alg == "" {
		alg = algRS256
	}
	ring := o.rings[alg]
	if ring == nil {
		return "", errNoSigningKey
	}
	now := o.now()
	k := ring.current().signer(now)
	if k == nil || k.private == nil {
		return "", errNoSigningKey
	}
	c := jwt.MapClaims{
		"iss": o.cfg.issuer, "sub": u.ID, "aud": client.ID, "azp": client.ID,
		"iat": now.Unix(), "exp": now.Add(o.cfg.idTokenTTL).Unix(), "auth_time": ac.AuthTime.Unix(),
		"acr": ac.Level.ACR, "amr": ac.Level.AMR, "sid": ac.PortalSession, "at_hash": leftHash(alg, access),
	}
	if ac.Level.ACR == "" {
		c["acr"], c["amr"] = levelPassword.ACR, levelPassword.AMR
	}
	if ac.Nonce != "" {
		c["nonce"] = ac.Nonce
	}
	if slices.Contains(scopes, "email") {
		c["email"], c["email_verified"] = u.Email, u.EmailVerified
	}
	tok := jwt.NewWithClaims(k.method, c)
	tok.Header["kid"] = k.rec.KID
	return tok.SignedString(k.private)
}

// leftHash is the at_hash of token for alg: the left half of its hash, base64url (OpenID Connect
// Core 3.1.3.6), SHA-512 for EdDSA as the OpenID Foundation's errata set.
func leftHash(alg, token string) string {
	var h hash.Hash = sha256.New()
	if alg == algEdDSA {
		h = sha512.New()
	}
	h.Write([]byte(token))
	sum := h.Sum(nil)
	return base64.RawURLEncoding.EncodeToString(sum[:len(sum)/2])
}

// parseIDToken checks an ID token of this provider's (an id_token_hint): signed by one of its
// rings, of its issuer. An expired one is still good as a hint; its claims come back.
func (o *oidcProvider) parseIDToken(raw string) (jwt.MapClaims, error) {
	var algs []string
	for a := range o.rings {
		algs = append(algs, a)
	}
	c := jwt.MapClaims{}
	p := jwt.NewParser(jwt.WithValidMethods(algs), jwt.WithoutClaimsValidation())
	_, err := p.ParseWithClaims(raw, c, func(tok *jwt.Token) (any, error) {
		ring := o.rings[tok.Method.Alg()]
		if ring == nil {
			return nil, errUnknownKey
		}
		k, err := ring.current().lookup(tok)
		if err != nil {
			return nil, err
		}
		return k.key, nil
	})
	if err != nil || c["iss"] != o.cfg.issuer {
		return nil, errTokenInvalid
	}
	return c, nil
}

// clientExists refuses a token of a client deleted since it was issued, as token_revoked.
func (o *oidcProvider) clientExists(ctx context.Context, c *claims) error {
	if _, err := o.clients.byID(ctx, c.Client); errors.Is(err, errNoSuchClient) {
		return errTokenRevoked
	} else if err != nil {
		return err
	}
	return nil
}

// userinfoBearer is the access token of a userinfo request: the Authorization header's, or the form's
// access_token (RFC 6750 section 2.2).
func userinfoBearer(w http.ResponseWriter, r *http.Request) (string, error) {
	v, err := header(r, "Authorization")
	if err != nil {
		return "", err
	}
	var body []string
	if r.Method == http.MethodPost && readForm(w, r) == nil {
		body = r.PostForm["access_token"]
	}
	switch {
	case v != "" && len(body) > 0:
		return "", oauthError("invalid_request", "send the access token one way, in the Authorization header or in the body, not both")
	case v != "":
		if len(v) < 7 || !strings.EqualFold(v[:7], "bearer ") {
			return "", errTokenMissing
		}
		return strings.TrimSpace(v[7:]), nil
	case len(body) > 0:
		return body[0], nil
	}
	return "", nil
}

// userinfo is the userinfo endpoint: who the access token's user is, their address as it is now
// with the email scope.
func (o *oidcProvider) userinfo() http.Handler {
	return handle(o.log, func(w http.ResponseWriter, r *http.Request) error {
		raw, err := userinfoBearer(w, r)
		if err != nil {
			return err
		}
		answer, err := o.userClaims(r.Context(), raw)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, answer)
		return nil
	})
}

// userClaims is what userinfo answers for the access token raw: its user, and their address as it
// is now with the email scope.
func (o *oidcProvider) userClaims(ctx context.Context, raw string) (map[string]any, error) {
	c, err := accept(o.tokens, o.revs, raw, useOAuthAccess)
	if err != nil {
		return nil, err
	}
	if err := o.clientExists(ctx, c); err != nil {
		return nil, err
	}
	scopes := strings.Fields(c.Scope)
	if !slices.Contains(scopes, "openid") {
		return nil, &apiError{status: http.StatusForbidden, code: "insufficient_scope", message: "the token was not granted the openid scope", oauth: true}
	}
	answer := map[string]any{"sub": c.Subject}
	if slices.Contains(scopes, "email") {
		email, verified, err := o.store.EmailOf(ctx, c.Subject)
		if errors.Is(err, ErrNotFound) {
			return nil, errTokenRevoked
		} else if err != nil {
			return nil, err
		}
		answer["email"], answer["email_verified"] = email, verified
	}
	return answer, nil
}

// clientToken is a token of the provider's that a client sent to revoke or introspect: its
// claims, or nil for anything else (which both endpoints answer without an error).
func (o *oidcProvider) clientToken(raw, hint string) *claims {
	uses := []string{useOAuthAccess, useOAuthRefresh}
	if hint == "refresh_token" {
		uses = []string{useOAuthRefresh, useOAuthAccess}
	}
	for _, use := range uses {
		c, err := o.tokens.parse(raw, use)
		if err == nil || errors.Is(err, errTokenExpired) {
			return c
		}
	}
	return nil
}

// revoke is the revocation endpoint (RFC 7009): a refresh token ends its session, and with it
// every token of the session; an access token is revoked alone. Another client's token, or
// anything not a token, is answered 200 all the same.
func (o *oidcProvider) revoke() http.Handler {
	return handle(o.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := readForm(w, r); err != nil {
			return err
		}
		ctx := r.Context()
		client, try, err := o.authenticate(ctx, r)
		if err != nil {
			return err
		}
		try.passed(ctx)
		if len(r.PostForm["token"]) == 0 {
			return oauthError("invalid_request", "token is missing")
		}
		c := o.clientToken(r.PostForm.Get("token"), r.PostForm.Get("token_type_hint"))
		if c != nil && c.Client == client.ID {
			noteUser(ctx, c.Subject)
			if c.Use == useOAuthRefresh {
				err = o.sessions.end(ctx, c.Session, endClientRevoked)
			} else {
				rev := Revocation{ID: jtiPrefix + c.ID, ExpiresAt: o.tokens.until(c.expiresAt()), CreatedAt: o.now()}
				err = o.revs.revoke(ctx, rev)
			}
			if err != nil {
				return err
			}
		}
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		return nil
	})
}

// introspect is the introspection endpoint (RFC 7662), for confidential clients: whether a token
// is active, asked of the database rather than this instance's copy of the blacklist.
func (o *oidcProvider) introspect() http.Handler {
	return handle(o.log, func(w http.ResponseWriter, r *http.Request) error {
		if err := readForm(w, r); err != nil {
			return err
		}
		ctx := r.Context()
		client, try, err := o.authenticate(ctx, r)
		if err != nil {
			return err
		}
		if client.Type != clientConfidential {
			return errInvalidClient
		}
		try.passed(ctx)
		if len(r.PostForm["token"]) == 0 {
			return oauthError("invalid_request", "token is missing")
		}
		// A token is active only for the client it was issued to (RFC 7662 section 4): another
		// client learns nothing of it, not even that it exists.
		c := o.clientToken(r.PostForm.Get("token"), r.PostForm.Get("token_type_hint"))
		inactive := map[string]any{"active": false}
		if c == nil || c.Client != client.ID || o.tokens.expired(c, o.now()) {
			encode(w, http.StatusOK, inactive)
			return nil
		}
		err = o.clientExists(ctx, c)
		if err == nil {
			err = o.sessions.current(ctx, c)
		}
		if err != nil {
			if e := apiErrorOf(err); e != nil && e.status == http.StatusUnauthorized {
				encode(w, http.StatusOK, inactive)
				return nil
			}
			return err
		}
		kind := "access_token"
		if c.Use == useOAuthRefresh {
			kind = "refresh_token"
		}
		encode(w, http.StatusOK, map[string]any{"active": true, "scope": c.Scope, "client_id": c.Client,
			"sub": c.Subject, "exp": c.Expiry, "iat": c.IssuedAt, "iss": c.Issuer, "aud": c.Audience,
			"token_type": "Bearer", "token_use": kind, "acr": c.ACR, "sid": c.Session})
		return nil
	})
}

// cors lets the registered origins of public clients read next's answers, and answers their
// preflights (userinfo's Authorization header needs one). Other origins get the answer without
// the headers, which the browser keeps from the page.
func (o *oidcProvider) cors(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin, err := header(r, "Origin")
		allowed := false
		if origin != "" && err == nil {
			if allowed, err = o.clients.publicOrigin(r.Context(), origin); err != nil {
				writeError(w, r, o.log, err)
				return
			}
		}
		h := w.Header()
		if origin != "" {
			h.Add("Vary", "Origin")
		}
		if allowed {
			h.Set("Access-Control-Allow-Origin", origin)
			h.Set("Access-Control-Expose-Headers", "WWW-Authenticate, Retry-After, X-Request-Id")
		}
		if r.Method != http.MethodOptions {
			next.ServeHTTP(w, r)
			return
		}
		if allowed {
			h.Set("Access-Control-Allow-Methods", "GET, POST")
			h.Set("Access-Control-Allow-Headers", "Authorization, Content-Type")
			h.Set("Access-Control-Max-Age", "600")
		}
		w.WriteHeader(http.StatusNoContent)
	})
}
