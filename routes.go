package main

// routes.go lists every route, and builds the components that the handlers depend on.

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"fmt"
	"log/slog"
	"maps"
	"net/http"
	"slices"
	"time"
)

// routeAdder is what addRoutes registers on: a *http.ServeMux, or a test listing the patterns.
type routeAdder interface {
	Handle(pattern string, handler http.Handler)
}

// addRoutes lists the whole API and what each route depends on; openapi.yaml describes it.
func addRoutes(mux routeAdder, d *deps) {
	mux.Handle("POST /auth/signup", handleSignup(d.log, d.clients, d.accounts))
	mux.Handle("POST /auth/login", handleLogin(d.log, d.clients, d.logins))
	mux.Handle("POST /auth/refresh", handleRefresh(d.log, d.sessions))
	mux.Handle("POST /auth/logout", handleLogout(d.log, d.sessions))
	signedIn := requireAccess(d.log, d.tokens, d.revocations)
	mux.Handle("GET /auth/sessions", signedIn(handleSessions(d.log, d.sessions)))
	mux.Handle("DELETE /auth/sessions/{id}", signedIn(handleEndSession(d.log, d.sessions)))
	mux.Handle("POST /auth/password", signedIn(handlePasswordChange(d.log, d.clients, d.accounts)))
	mux.Handle("DELETE /auth/account", signedIn(handleDeleteAccount(d.log, d.clients, d.accounts)))
	mux.Handle("POST /auth/mfa/totp", signedIn(handleEnrolTOTP(d.log, d.clients, d.mfa)))
	mux.Handle("POST /auth/mfa/totp/confirm", signedIn(handleConfirmTOTP(d.log, d.clients, d.mfa)))
	mux.Handle("DELETE /auth/mfa/totp", signedIn(handleRemoveTOTP(d.log, d.clients, d.mfa)))
	mux.Handle("POST /auth/mfa/verify", handleVerifyMFA(d.log, d.clients, d.mfa))
	on := passkeysOn(d.log, d.passkeys)
	mux.Handle("POST /auth/passkeys/register/begin", on(signedIn(handleRegisterPasskeyBegin(d.log, d.clients, d.passkeys))))
	mux.Handle("POST /auth/passkeys/register/finish", on(signedIn(handleRegisterPasskeyFinish(d.log, d.passkeys))))
	mux.Handle("GET /auth/passkeys", on(signedIn(handlePasskeys(d.log, d.passkeys))))
	mux.Handle("PATCH /auth/passkeys/{id}", on(signedIn(handleRenamePasskey(d.log, d.passkeys))))
	mux.Handle("DELETE /auth/passkeys/{id}", on(signedIn(handleRemovePasskey(d.log, d.clients, d.passkeys))))
	mux.Handle("POST /auth/passkeys/login/begin", on(handlePasskeyLoginBegin(d.log, d.clients, d.passkeys)))
	mux.Handle("POST /auth/passkeys/login/finish", on(handlePasskeyLoginFinish(d.log, d.clients, d.passkeys)))
	mux.Handle("POST /auth/password/forgot", handleMailRequest(d.log, d.clients, d.mail, mailReset,
		"if an account has this address, a reset link is on its way to it"))
	mux.Handle("POST /auth/password/reset", handleResetPassword(d.log, d.mail, d.accounts))
	mux.Handle("POST /auth/email/verify", handleVerifyEmail(d.log, d.mail, d.accounts))
	mux.Handle("POST /auth/email/resend", handleMailRequest(d.log, d.clients, d.mail, mailVerify,
		"if this address has an account that is not verified yet, a link is on its way to it"))
	mux.Handle("POST /auth/email/change", signedIn(handleEmailChange(d.log, d.clients, d.mail, d.accounts)))
	mux.Handle("POST /auth/verify", handleIntrospect(d.log, d.tokens, d.revocations))
	mux.Handle("GET /auth/verify", handleIntrospect(d.log, d.tokens, d.revocations))
	// Forward-auth proxies ask with GET (nginx, Caddy, Traefik by default) or with the guarded
	// request's own method, so the protected route answers every method.
	mux.Handle(forwardAuthPath, requireWith(d.log, bearerOrCookie(d.tokens, d.revocations, d.portal.on()))(requireAllowed(d.log, d.allow)(handleForwardAuth(d.now))))
	mux.Handle("GET /auth/client.js", handleClientJS())
	mux.Handle("GET /auth/client.d.ts", handleClientDTS())
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(d.log, d.store.Ping, d.revocations))
	mux.Handle("GET /openapi.yaml", handleOpenAPI())
	// The public keys, for services that check tokens themselves; the admin API rotates and
	// revokes them (handleKeyRotate, handleKeyRevoke).
	mux.Handle("GET /.well-known/jwks.json", handleJWKS(d.jwks()...))
	if d.provider != nil {
		mux.Handle("GET /.well-known/openid-configuration", d.provider.discovery())
		addProviderRoutes(mux, d.provider, d.portalPages)
		mux.Handle("GET /auth/grants", signedIn(handleGrants(d.log, d.provider)))
		mux.Handle("DELETE /auth/grants/{client_id}", signedIn(handleRevokeGrant(d.log, d.sessions, d.provider)))
	} else {
		mux.Handle("GET /.well-known/openid-configuration", handleOpenIDConfiguration(d.log, d.issuer))
	}
	if d.metricsOnAPIPort {
		addMetricsRoutes(mux, d)
	}
	if d.portalPages != nil {
		addPortalRoutes(mux, d.portalPages)
	}
}

// addMetricsRoutes lists what the metrics listener serves: on METRICS_ADDR, or on the API's port
// with METRICS_ADDR=public.
func addMetricsRoutes(mux routeAdder, d *deps) {
	mux.Handle("GET /metrics", handleMetrics(d.metrics, d.revocations, d.hasher))
}

// newMetricsHandler is the listener on METRICS_ADDR. Scrapes are neither logged nor counted: they
// would drown the requests the service exists for.
func newMetricsHandler(d *deps) http.Handler {
	mux := http.NewServeMux()
	addMetricsRoutes(mux, d)
	return recoverer(d.log)(muxErrorsAsJSON(mux))
}

// newHandler is the whole HTTP service: the routes inside the middleware chain, recovery outermost.
func newHandler(d *deps, c config) http.Handler {
	mux := http.NewServeMux()
	addRoutes(mux, d)
	var h http.Handler = mux
	if d.portalPages != nil {
		h = muxErrorsAs(h, d.portalPages.errorPage)
	} else {
		h = muxErrorsAsJSON(h)
	}
	h = cors(c.corsOrigins)(h)
	h = accessLog(d.log, d.now, newRequestIDs(), d.metrics)(h)
	h = recoverer(d.log)(h)
	return h
}

// deps are the service's parts, made once by newDeps; addRoutes hands each handler the few it uses.
type deps struct {
	log              *slog.Logger
	now              func() time.Time
	store            Store
	tokens           *tokens
	keys             *keyring
	issuer           string
	revocations      *revocations
	sessions         *sessionKeeper
	accounts         *accounts
	mfa              *mfa
	passkeys         *passkeys
	logins           *logins
	passwords        *passwordCheck
	hasher           *hasher
	clients          clientIPs
	metricsOnAPIPort bool // METRICS_ADDR=public
	metrics          *metrics
	mail             *mailFlows
	allow            *allowList // FORWARD_AUTH_ALLOW
	portal           portalConfig
	portalPages      *portal       // nil when the portal is off
	provider         *oidcProvider // the OpenID provider; nil when the portal is off
}

// jwks are the key rings whose public keys the JWKS publishes: the API's, and the ID tokens'.
func (d *deps) jwks() []*keyring {
	rings := []*keyring{d.keys}
	if d.provider != nil {
		rings = append(rings, d.provider.ownRings()...)
	}
	return rings
}

// newDeps wires the service's parts together over store; m also counts store's failures.
func newDeps(c config, store Store, m *metrics, secret []byte, now func() time.Time, log *slog.Logger) *deps {
	h := newHasher(c.hashConcurrent, c.hashQueue, c.hashWait)
	keys := newHMACKeyring(secret, c.previousSecrets)
	// A retired key stays until every token it signed has expired; see keyring.
	retention := max(c.accessTTL, c.refreshTTL) + c.leeway + c.keyPublishAhead
	if c.jwtAlg != algHS256 {
		keys = newManagedKeyring(c.jwtAlg, store, secret, c.previousSecrets, c.keyRotation, c.keyPublishAhead,
			retention, now, log)
	}
	t := newTokensWith(keys, c.issuer, c.audience, c.accessTTL, c.refreshTTL, c.leeway, now)
	revs := newRevocations(store, now, log, c.revocationMaxLag)
	sessions := &sessionKeeper{store: store, tokens: t, revs: revs, metrics: m, log: log,
		maxAge: c.sessionMaxAge, reuse: c.reuseInterval, answerBy: c.dbWait, cookieTTL: c.portalCfg.ttl}
	limits := &loginLimits{throttle: &throttle{store: store, now: now, window: c.failureWindow},
		maxAccount: c.maxFailures, maxClient: c.maxClientFails, maxFactor: c.mfaMaxFailures,
		maxChallenge: mfaChallengeMaxWrong, challengeWindow: mfaTokenTTL}
	passwords := &passwordCheck{store: store, hasher: h, limits: limits, log: log}
	clients := clientIPs{trusted: c.trustedProxies}
	var transport mailTransport
	switch c.mail.mode {
	case mailSMTP:
		transport = &smtpTransport{cfg: c.mail.smtp, from: c.mail.fromAddr, dialTimeout: c.mail.dialTimeout}
	case mailDir:
		transport = &mailDirTransport{dir: c.mail.dir, log: log}
	}
	render := func(ctx context.Context, msg MailMessage) (*outgoingMail, error) {
		return renderMail(ctx, c.mail, store, now, msg)
	}
	mail := &mailFlows{cfg: c.mail, store: store, outbox: newOutbox(store, c.mail, transport, render, m, now, log),
		perInterval: &throttle{store: store, now: now, window: c.mail.addressInterval},
		perWindow:   &throttle{store: store, now: now, window: mailWindow},
		now:         now, log: log}
	users := &accounts{store: store, sessions: sessions, passwords: passwords, hasher: h, mail: mail,
		signups: &throttle{store: store, now: now, window: c.signupWindow}, signupsPerClient: c.signupMax,
		signupsClosed: !c.signupEnabled, now: now, log: log}
	second := &mfa{store: store, tokens: t, seal: newSealer(secret, "totp"), revs: revs, sessions: sessions, stamps: users,
		mail: mail, passwords: passwords, limits: limits, metrics: m, appName: c.appName, log: log}
	rp, err := newRelyingParty(c.passkeys)
	if err != nil {
		// loadConfig checked the settings the library checks: this is a bug, and passkeys stay off.
		log.Error("passkeys are off: the WebAuthn relying party refused its settings", "err", err)
	}
	decoy := hmac.New(sha256.New, secret)
	decoy.Write([]byte("passkey decoys"))
	pk := &passkeys{store: store, rp: rp, tokens: t, revs: revs, second: second, sessions: sessions, stamps: users,
		passwords: passwords, limits: limits, mail: mail, metrics: m, decoyKey: decoy.Sum(nil),
		requireVerified: c.mail.verification == verificationRequired, log: log}
	d := &deps{
		log:         log,
		now:         now,
		store:       store,
		tokens:      t,
		keys:        keys,
		issuer:      c.issuer,
		revocations: revs,
		sessions:    sessions,
		accounts:    users,
		passwords:   passwords,
		mfa:         second,
		passkeys:    pk,
		logins: &logins{passwords: passwords, sessions: sessions, second: second, metrics: m,
			requireVerified: c.mail.verification == verificationRequired},
		hasher:           h,
		clients:          clients,
		metricsOnAPIPort: c.metricsOn && c.metricsAddr == metricsOnAPIPort,
		metrics:          m,
		mail:             mail,
		allow:            c.forwardAuthAllow,
		portal:           c.portalCfg,
	}
	if c.portalCfg.on() {
		d.portalPages = newPortal(c, d, secret)
	}
	if c.oidc.on() && d.portalPages != nil {
		d.provider = newProvider(c, d, store, secret)
		d.portalPages.grants = d.provider
	}
	return d
}

// newProvider is the OpenID provider on the portal. Its ID tokens are signed by managed rings of
// their own whatever JWT_ALG is: RS256 by default, ES256 or EdDSA per client (JWT_ALG's own ring
// when it is one of them).
func newProvider(c config, d *deps, store Store, secret []byte) *oidcProvider {
	// A retired ID token key stays until every ID token it signed has expired.
	retention := c.oidc.idTokenTTL + c.leeway + c.keyPublishAhead
	rings := map[string]*keyring{}
	for _, alg := range []string{algRS256, algES256, algEdDSA} {
		if d.keys.managed() && d.keys.alg == alg {
			rings[alg] = d.keys
			continue
		}
		ring := newManagedKeyring(alg, store, secret, c.previousSecrets, c.keyRotation, c.keyPublishAhead,
			retention, d.now, d.log)
		ring.rsaKey = c.oidc.rsaKey
		rings[alg] = ring
	}
	algs := slices.Sorted(maps.Keys(rings))
	cfg := c.oidc
	cfg.issuer = c.portalCfg.publicURL // the same, but where tests set the portal's
	return &oidcProvider{cfg: cfg, site: d.portalPages, macKey: d.portalPages.csrfKey, addrs: d.clients, clients: &oauthClients{store: store, algs: algs, now: d.now},
		store: store, sessions: d.sessions, tokens: d.tokens, revs: d.revocations, rings: rings,
		throttle: &throttle{store: store, now: d.now, window: c.failureWindow}, maxFailures: c.maxFailures,
		maxClientFailures: c.maxClientFails, log: d.log, now: d.now}
}

// addProviderRoutes lists the OpenID provider's routes, served with the portal. The authorization
// endpoint and the consent and logout pages are the portal's pages; the others speak JSON.
func addProviderRoutes(mux routeAdder, o *oidcProvider, p *portal) {
	mux.Handle("GET "+oauthAuthorizePath, p.page(o.authorize))
	mux.Handle("POST "+oauthAuthorizePath, p.page(o.authorize)) // the client's form: no CSRF token of ours
	mux.Handle("POST /oauth2/consent", p.form(o.consent))
	// The token, userinfo and revocation endpoints answer CORS for public clients' origins.
	mux.Handle("POST "+oauthTokenPath, o.cors(o.token()))
	mux.Handle("OPTIONS "+oauthTokenPath, o.cors(nil))
	mux.Handle("GET "+oauthUserinfoPath, o.cors(o.userinfo()))
	mux.Handle("POST "+oauthUserinfoPath, o.cors(o.userinfo()))
	mux.Handle("OPTIONS "+oauthUserinfoPath, o.cors(nil))
	mux.Handle("POST "+oauthRevokePath, o.cors(o.revoke()))
	mux.Handle("OPTIONS "+oauthRevokePath, o.cors(nil))
	mux.Handle("POST "+oauthIntrospectPath, o.introspect())
	mux.Handle("GET "+oauthLogoutPath, p.page(o.logout))
	mux.Handle("POST "+oauthLogoutPath, p.page(o.logout)) // the client's form, as GET
	mux.Handle("POST "+oauthLogoutPath+"/confirm", p.form(o.confirmLogout))
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

// handleReadyz answers ready when ping reaches the database and the revocations are current
// enough to vouch for tokens.
func handleReadyz(log *slog.Logger, ping func(context.Context) error, revs *revocations) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := ping(ctx); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		if !revs.vouches() {
			return errCannotVouch
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
		return nil
	})
}

// addAdminRoutes lists the operators' API. It is served only on ADMIN_ADDR, never on the public
// port, and only when ADMIN_TOKEN is set; every call needs that token (see requireAdmin).
func addAdminRoutes(mux routeAdder, d *deps) {
	mux.Handle("GET /admin/users", handleAdminFindUser(d.log, d.accounts))
	mux.Handle("POST /admin/users", handleAdminCreateUser(d.log, d.accounts))
	mux.Handle("GET /admin/users/{id}/sessions", handleAdminSessions(d.log, d.accounts))
	mux.Handle("POST /admin/users/{id}/logout", handleAdminLogout(d.log, d.accounts))
	mux.Handle("POST /admin/users/{id}/disable", handleAdminSetDisabled(d.log, d.accounts, true))
	mux.Handle("POST /admin/users/{id}/enable", handleAdminSetDisabled(d.log, d.accounts, false))
	mux.Handle("DELETE /admin/users/{id}", handleAdminDeleteUser(d.log, d.accounts))
	mux.Handle("POST /admin/keys/rotate", handleKeyRotate(d.log, d.keys))
	mux.Handle("DELETE /admin/keys/{kid}", handleKeyRevoke(d.log, d.keys))
	if d.provider != nil {
		cs := d.provider.clients
		mux.Handle("POST /admin/oauth/clients", handleAdminCreateClient(d.log, cs))
		mux.Handle("GET /admin/oauth/clients", handleAdminClients(d.log, cs))
		mux.Handle("GET /admin/oauth/clients/{id}", handleAdminClient(d.log, cs))
		mux.Handle("PATCH /admin/oauth/clients/{id}", handleAdminUpdateClient(d.log, cs))
		mux.Handle("DELETE /admin/oauth/clients/{id}", handleAdminDeleteClient(d.log, cs))
		mux.Handle("POST /admin/oauth/clients/{id}/secret", handleAdminClientSecret(d.log, cs))
	}
}

// newAdminHandler is the operators' API inside the same middleware as the public one, the token
// check innermost so that refused calls are logged and counted too.
func newAdminHandler(d *deps, token string) http.Handler {
	mux := http.NewServeMux()
	addAdminRoutes(mux, d)
	var h http.Handler = mux
	h = muxErrorsAsJSON(h)
	h = requireAdmin(d.log, token)(h)
	h = accessLog(d.log, d.now, newRequestIDs(), d.metrics)(h)
	h = recoverer(d.log)(h)
	return h
}

func newPortal(c config, d *deps, secret []byte) *portal {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte("portal csrf"))
	return &portal{cfg: c.portalCfg, appName: c.appName, log: d.log, now: d.now, clients: d.clients, logins: d.logins,
		mfa: d.mfa, sessions: d.sessions, tokens: d.tokens, revs: d.revocations, allow: d.allow,
		accounts: d.accounts, mail: d.mail, passkeys: d.passkeys, csrfKey: m.Sum(nil)}
}

// addPortalRoutes lists the portal's routes, served when PUBLIC_URL is set.
func addPortalRoutes(mux routeAdder, p *portal) {
	addAccountRoutes(mux, p)
	mux.Handle("GET /login", p.page(p.loginForm))
	mux.Handle("POST /login", p.form(p.signIn))
	mux.Handle("POST /login/code", p.form(p.secondFactor))
	mux.Handle("GET /login/passkeys.js", handlePortalPasskeysJS())
	mux.Handle("POST /login/passkey/begin", p.passkeyBegin())
	mux.Handle("POST /login/passkey", p.form(p.passkeySignIn))
	mux.Handle("GET /step-up", p.page(p.stepUpForm))
	mux.Handle("POST /step-up", p.form(p.stepUp))
	mux.Handle("GET /logout", p.page(p.logoutForm))
	mux.Handle("POST /logout", p.form(p.logout))
	mux.Handle("GET /auth/forward", p.forward())
	addPortalMailRoutes(mux, p)
}

// addAccountRoutes lists the account page's routes (see addPortalRoutes).
func addAccountRoutes(mux routeAdder, p *portal) {
	mux.Handle("GET /account", p.page(p.accountPage))
	mux.Handle("POST /account/sessions/end", p.form(p.endSessionForm))
	mux.Handle("POST /account/sessions/end-others", p.form(p.endOtherSessions))
	mux.Handle("POST /account/password", p.form(p.changePassword))
	mux.Handle("POST /account/authenticator", p.form(p.addAuthenticator))
	mux.Handle("POST /account/authenticator/confirm", p.form(p.confirmAuthenticator))
	mux.Handle("POST /account/authenticator/remove", p.form(p.removeAuthenticator))
	mux.Handle("POST /account/grants/revoke", p.form(p.revokeGrantForm))
	mux.Handle("POST /account/passkeys/begin", p.addPasskeyBegin())
	mux.Handle("POST /account/passkeys", p.form(p.addPasskey))
	mux.Handle("POST /account/passkeys/rename", p.form(p.renamePasskey))
	mux.Handle("POST /account/passkeys/remove", p.form(p.removePasskey))
}

// addPortalMailRoutes lists the pages that the links in the mails open (APP_URL defaults to
// PUBLIC_URL), and sign-up. Their GET never uses a token: mail scanners fetch links.
func addPortalMailRoutes(mux routeAdder, p *portal) {
	mux.Handle("GET /signup", p.page(p.signupPage(p.signupForm)))
	mux.Handle("POST /signup", p.form(p.signupPage(p.signUp)))
	mux.Handle("GET /forgot-password", p.page(p.mailPage(p.forgotForm)))
	mux.Handle("POST /forgot-password", p.form(p.mailPage(p.forgot)))
	mux.Handle("GET /reset-password", p.page(p.mailPage(p.resetForm)))
	mux.Handle("POST /reset-password", p.form(p.mailPage(p.reset)))
	mux.Handle("GET /verify-email", p.page(p.mailPage(p.verifyForm)))
	mux.Handle("POST /verify-email", p.form(p.mailPage(p.verify)))
}
