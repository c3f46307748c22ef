package main

// portal.go is the login portal: its pages (sign-in, second factor, step-up, sign-out), the
// forward-auth endpoint that sends a browser to them, and their guards (CSRF, return addresses).

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// portal serves the pages; it signs in through the same login, throttles and second factor as
// the API, into cookie sessions.
type portal struct {
	cfg      portalConfig
	appName  string
	log      *slog.Logger
	now      func() time.Time
	clients  clientIPs
	logins   *logins
	mfa      *mfa
	sessions *sessionKeeper
	tokens   *tokens
	revs     *revocations
	allow    *allowList // FORWARD_AUTH_ALLOW
	accounts *accounts
	mail     *mailFlows
	grants   grantKeeper // the OpenID provider's consents; nil when it is off
	passkeys *passkeys
	csrfKey  []byte
}

// errorPage is the message page that answers ServeMux's 404 or 405 on the portal's paths, with
// the pages' headers; nil off them.
func (p *portal) errorPage(r *http.Request) func(http.ResponseWriter, int) {
	path := r.URL.Path
	for _, pp := range portalPaths {
		if path == pp || strings.HasPrefix(path, pp+"/") {
			return func(w http.ResponseWriter, code int) {
				securePage(w)
				d := p.newPage()
				d.Title, d.Error, d.status, d.template = "Not found", "There is no such page here.", code, "message"
				if code == http.StatusMethodNotAllowed {
					d.Title, d.Error = "Not allowed", "This page cannot be asked for that way."
				}
				d.Link, d.LinkText = "/login", "Sign in"
				p.render(w, d)
			}
		}
	}
	return nil
}

// page serves a GET page: f fills d (CSRF token included).
func (p *portal) page(f pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securePage(w)
		d := p.newPage()
		d.CSRF = p.csrfToken(w, r)
		if d = f(w, r, d); d != nil {
			p.render(w, d)
		}
	})
}

// form serves a form's POST: refused without the page's CSRF token or from another origin.
func (p *portal) form(f pageFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		securePage(w)
		d := p.newPage()
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil || !strings.HasPrefix(r.Header.Get("Content-Type"), "application/x-www-form-urlencoded") {
			d.Title, d.Error, d.status, d.template = "Bad request", "The form could not be read; go back and try again.", http.StatusBadRequest, "message"
			p.render(w, d)
			return
		}
		if !p.sameOrigin(r) || !p.csrfValid(r) {
			d.Title, d.Error, d.status, d.template = "Form expired", "This form has expired or came from another site. Go back, reload the page and try again.", http.StatusForbidden, "message"
			d.Link, d.LinkText = "/login", "Sign in"
			p.csrfToken(w, r)
			p.render(w, d)
			return
		}
		d.CSRF = p.csrfToken(w, r)
		if d = f(w, r, d); d != nil {
			p.render(w, d)
		}
	})
}

func (p *portal) newPage() *pageData {
	return &pageData{AppName: p.appName, PublicURL: p.cfg.publicURL, SignupOpen: !p.accounts.signupsClosed,
		MailOn: p.mail.cfg.enabled(), status: http.StatusOK}
}

// render writes v with its page's status and template.
func (p *portal) render(w http.ResponseWriter, v interface{ page() *pageData }) {
	d := v.page()
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.WriteHeader(d.status)
	if err := portalPages.ExecuteTemplate(w, d.template, v); err != nil {
		p.log.Error("rendering a portal page failed", "template", d.template, "err", err)
	}
}

// sameOrigin reports whether a form's POST comes from the portal's own pages: Sec-Fetch-Site says
// so, or, from a browser that sends none, Origin is PUBLIC_URL's.
func (p *portal) sameOrigin(r *http.Request) bool {
	if site := r.Header.Values("Sec-Fetch-Site"); len(site) > 0 {
		return len(site) == 1 && site[0] == "same-origin"
	}
	origin := r.Header.Values("Origin")
	return len(origin) == 1 && strings.EqualFold(origin[0], p.cfg.publicURL)
}

// The CSRF guard is a signed double submit: a random cookie, and in each form the HMAC of it and
// of the browser's session (csrfBinding). Over plain http the cookie has no __Host- prefix, so a
// sibling host can plant one with a token taken from another browser: the pair is then refused,
// since that token names another session.
func (p *portal) csrfCookieName() string {
	if p.cfg.secure {
		return "__Host-auth_csrf" // host-only, Secure, Path=/: no other host can set it
	}
	return "auth_csrf"
}

// csrfSignedOut is what a form token binds to for a browser with no session cookie.
const csrfSignedOut = "signed-out"

// csrfToken returns the form token of the browser's CSRF cookie, setting one first if it has none.
func (p *portal) csrfToken(w http.ResponseWriter, r *http.Request) string {
	cs := r.CookiesNamed(p.csrfCookieName())
	if len(cs) != 1 || len(cs[0].Value) < 22 {
		cs = []*http.Cookie{p.rotateCSRF(w, r)}
	}
	return p.csrfOf(cs[0].Value, p.csrfBinding(r))
}

// rotateCSRF sets a fresh CSRF cookie, in place of any r carries, so that a later token in this
// request agrees. A sign-in and a sign-out rotate it: no token of before outlives them.
func (p *portal) rotateCSRF(w http.ResponseWriter, r *http.Request) *http.Cookie {
	c := &http.Cookie{Name: p.csrfCookieName(), Value: newID(), Path: "/", HttpOnly: true,
		Secure: p.cfg.secure, SameSite: http.SameSiteStrictMode}
	http.SetCookie(w, c)
	kept := r.Cookies()
	r.Header.Del("Cookie")
	for _, k := range kept {
		if k.Name != c.Name {
			r.AddCookie(k)
		}
	}
	r.AddCookie(&http.Cookie{Name: c.Name, Value: c.Value})
	return c
}

// cookieSessions are the ids of the sessions of r's session cookies whose signature holds, ended
// or expired ones too.
func (p *portal) cookieSessions(r *http.Request) []string {
	var sids []string
	for _, ck := range r.CookiesNamed(cookieName) {
		if c, err := p.tokens.parse(ck.Value, useCookie); err == nil || errors.Is(err, errTokenExpired) {
			sids = append(sids, c.Session)
		}
	}
	return sids
}

// csrfBinding is the session a form token is bound to: the browser's cookieSessions (an ended or
// expired one's form still reaches its handler, which sends the browser to sign in), or
// csrfSignedOut.
func (p *portal) csrfBinding(r *http.Request) string {
	sids := p.cookieSessions(r)
	if len(sids) == 0 {
		return csrfSignedOut
	}
	return strings.Join(sids, " ")
}

func (p *portal) csrfOf(cookie, binding string) string {
	m := hmac.New(sha256.New, p.csrfKey)
	m.Write([]byte(cookie))
	m.Write([]byte{0})
	m.Write([]byte(binding))
	return base64.RawURLEncoding.EncodeToString(m.Sum(nil))
}

func (p *portal) csrfValid(r *http.Request) bool {
	cs := r.CookiesNamed(p.csrfCookieName())
	sent := r.PostForm["csrf"]
	return len(cs) == 1 && len(sent) == 1 && hmac.Equal([]byte(sent[0]), []byte(p.csrfOf(cs[0].Value, p.csrfBinding(r))))
}

// returnTo is where a sign-in sends the browser: rd when it is safe (safeReturn), else the
// portal's account page.
func (p *portal) returnTo(rd string) string {
	if u, ok := safeReturn(p.cfg, rd); ok {
		return u
	}
	return p.cfg.publicURL + "/account"
}

// safeRD is rd when a sign-in may return to it (safeReturn), else "".
func (p *portal) safeRD(rd string) string {
	if _, ok := safeReturn(p.cfg, rd); !ok {
		return ""
	}
	return rd
}

// signedIn is the cookie session of r, if any is valid.
func (p *portal) signedIn(r *http.Request) *claims {
	c, err := cookieClaims(p.tokens, p.revs, r)
	if err != nil {
		return nil
	}
	return c
}

func (p *portal) loginForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.RD, d.template = "Sign in", p.safeRD(r.URL.Query().Get("rd")), "login"
	d.Email = cut(r.URL.Query().Get("login_hint"), 320) // an OpenID client's hint, to fill in
	p.offerPasskeys(w, d)
	return d
}

// signIn is the form's POST: the API's login, for a cookie session.
func (p *portal) signIn(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Sign in", "login"
	d.Email, d.RD = strings.TrimSpace(r.PostForm.Get("email")), r.PostForm.Get("rd")
	p.offerPasskeys(w, d)
	password := r.PostForm.Get("password")
	if d.Email == "" || password == "" {
		d.Error, d.status = "Enter your email and password.", http.StatusBadRequest
		return d
	}
	a, err := p.logins.loginAs(r.Context(), sessionCookie, p.clients.of(r), r.UserAgent(), d.Email, password)
	if err != nil {
		return p.failed(w, r, d, err)
	}
	if a.mfaToken != "" {
		securePage(w) // the code page runs a script only to offer a passkey
		d.Title, d.MFAToken, d.Action, d.template, d.Passkeys = "Second factor", a.mfaToken, "/login/code", "code", false
		if slices.Contains(a.methods, "passkey") {
			p.offerPasskeys(w, d)
		}
		return d
	}
	return p.signedInTo(w, r, a.pair, d.RD)
}

// secondFactor is the code page's POST after a password: the API's challenge, for a cookie
// session.
func (p *portal) secondFactor(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Action, d.template = "Second factor", "/login/code", "code"
	d.RD, d.MFAToken = r.PostForm.Get("rd"), r.PostForm.Get("mfa_token")
	if ch, err := p.mfa.liveChallenge(r.Context(), d.MFAToken, sessionCookie); err == nil {
		if has, err := p.passkeys.anyOf(r.Context(), ch.UserID); err == nil && has {
			p.offerPasskeys(w, d)
		}
	}
	code, recovery := formCodes(r)
	if code == "" && recovery == "" {
		d.Error, d.status = "Enter the code from your authenticator app, or a recovery code.", http.StatusBadRequest
		return d
	}
	pair, err := p.mfa.verifyChallengeAs(r.Context(), sessionCookie, d.MFAToken, p.clients.of(r), r.UserAgent(), code, recovery)
	if errors.Is(err, errTokenInvalid) {
		// The challenge is spent or void: back to the password.
		d.Title, d.MFAToken, d.template = "Sign in", "", "login"
		d.Error, d.status = "This sign-in has expired; sign in again.", http.StatusUnauthorized
		return d
	}
	if err != nil {
		return p.failed(w, r, d, err)
	}
	return p.signedInTo(w, r, pair, d.RD)
}

// signedInTo hands out the new session's cookie and sends the browser on.
func (p *portal) signedInTo(w http.ResponseWriter, r *http.Request, pair tokenPair, rd string) *pageData {
	setSessionCookie(w, p.cfg, pair.cookie, p.now())
	p.rotateCSRF(w, r)
	http.Redirect(w, r, p.returnTo(rd), http.StatusSeeOther)
	return nil
}

// failed turns a refusal into the page d with its message, as the API words it.
func (p *portal) failed(w http.ResponseWriter, r *http.Request, d *pageData, err error) *pageData {
	e := apiErrorOf(err)
	if e == nil {
		p.log.LogAttrs(r.Context(), slog.LevelError, "internal error", slog.String("err", err.Error()))
		e = errInternal
	}
	if e.retryAfter > 0 {
		w.Header().Set("Retry-After", retryAfter(e.retryAfter))
	}
	msg := e.message
	if e == errInternal || errors.Is(e, errUnavailable) {
		msg = "The service cannot sign you in right now; try again shortly."
	}
	d.Error, d.status = strings.ToUpper(msg[:1])+msg[1:]+".", e.status
	return d
}

func (p *portal) stepUpForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.RD = p.safeRD(r.URL.Query().Get("rd"))
	c := p.signedIn(r)
	if c == nil {
		return toSignIn(w, r, d.RD)
	}
	d.Title, d.Email, d.Action, d.template = "Confirm with your second factor", c.Email, "/step-up", "code"
	d.PHR = r.URL.Query().Get("level") == "phr"
	return p.stepUpFactors(w, r, d, c)
}

// stepUpFactors fills the step-up page d of c's account with its factors: the code form, and a
// passkey when it has one; the account page when it has neither.
func (p *portal) stepUpFactors(w http.ResponseWriter, r *http.Request, d *pageData, c *claims) *pageData {
	totp, err := p.mfa.enrolled(r.Context(), c.Subject)
	if err != nil {
		return p.failed(w, r, d, err)
	}
	passkey, err := p.passkeys.anyOf(r.Context(), c.Subject)
	if err != nil {
		return p.failed(w, r, d, err)
	}
	if d.PHR && !passkey {
		d.Title, d.template = "Passkey needed", "message"
		d.Error, d.status = "This page needs a passkey, and your account has none. Add one to your account first.", http.StatusForbidden
		d.Link, d.LinkText = "/account", "Go to your account"
		return d
	}
	if !totp && !passkey {
		return noSecondFactor(d)
	}
	if passkey {
		p.offerPasskeys(w, d)
		d.StepUp = true
	}
	return d
}

// stepUp moves a signed-in browser to aal2: a right code opens a new cookie session at aal2 (a
// fresh id), and the aal1 one ends.
func (p *portal) stepUp(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.Action, d.template = "Confirm with your second factor", "/step-up", "code"
	d.RD = r.PostForm.Get("rd")
	c := p.signedIn(r)
	if c == nil {
		return toSignIn(w, r, d.RD)
	}
	d.Email = c.Email
	ctx, client := r.Context(), p.clients.of(r)
	u, err := p.mfa.signedIn(ctx, c)
	if err != nil {
		return p.failed(w, r, d, err)
	}
	code, recovery := formCodes(r)
	if err := p.mfa.prove(ctx, client, u, code, recovery); errors.Is(err, errMFANotEnrolled) {
		return noSecondFactor(d)
	} else if err != nil {
		if d := p.stepUpFactors(w, r, d, c); d.template != "code" {
			return d
		}
		return p.failed(w, r, d, err)
	}
	pair, err := p.sessions.startAs(ctx, sessionCookie, u, client, r.UserAgent(), levelTwoFactor)
	if err != nil {
		return p.failed(w, r, d, err)
	}
	if err := p.sessions.end(ctx, c.Session, endSteppedUp); err != nil {
		p.log.Warn("ending the session a step-up replaced failed", "session_id", c.Session, "err", err)
	}
	return p.signedInTo(w, r, pair, d.RD)
}

func (p *portal) logoutForm(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template = "Sign out", "logout"
	if c := p.signedIn(r); c != nil {
		d.Email = c.Email
	}
	return d
}

// logout ends the cookie's session, wherever the cookie reached, and clears the cookie on both
// scopes. An ended or expired cookie's session ends all the same.
func (p *portal) logout(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	d.Title, d.template, d.Link, d.LinkText = "Signed out", "message", "/login", "Sign in again"
	if err := p.signOut(w, r); err != nil {
		return p.failed(w, r, d, err)
	}
	d.Notice = "You are signed out."
	return d
}

// signOut ends the sessions of the browser's cookies, clears them and rotates the CSRF cookie.
func (p *portal) signOut(w http.ResponseWriter, r *http.Request) error {
	for _, sid := range p.cookieSessions(r) {
		if err := p.sessions.end(r.Context(), sid, endLogout); err != nil {
			return err
		}
	}
	clearSessionCookies(w, p.cfg)
	p.rotateCSRF(w, r)
	return nil
}

// forward is GET /auth/forward, for proxies that follow a redirect (Traefik, Caddy): as
// /auth/page, except that a browser's navigation that is refused goes to the sign-in page, or
// to the step-up page for a cookie session that lacks the level the route asks for.
func (p *portal) forward() http.Handler {
	credential := bearerOrCookie(p.tokens, p.revs, true)
	pass := handleForwardAuth(p.now)
	check := requireWith(p.log, credential)(requireAllowed(p.log, p.allow)(pass))
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !isNavigation(r) {
			check.ServeHTTP(w, r)
			return
		}
		c, err := admitBy(r, credential)
		if err == nil {
			if err := admitted(p.log, p.allow, r, c); err != nil {
				p.notAdmitted(w, r, c, err)
				return
			}
			pass.ServeHTTP(w, withClaims(r, c))
			return
		}
		to, q := "/login", url.Values{}
		if errors.Is(err, errMFARequired) && c != nil && c.Use == useCookie {
			to = "/step-up"
			if err == errPHRRequired { // a route that only a passkey opens: the page offers no code
				q.Set("level", "phr")
			}
		}
		if orig := originalURL(r); orig != "" {
			q.Set("rd", orig)
		}
		if len(q) > 0 {
			to += "?" + q.Encode()
		}
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, p.cfg.publicURL+to, http.StatusFound)
	})
}

// notAdmitted is the page of a signed-in browser that the allow lists refuse (err from
// admitted). The proxy shows it on the app's host: its links are absolute.
func (p *portal) notAdmitted(w http.ResponseWriter, r *http.Request, c *claims, err error) {
	securePage(w)
	d := p.newPage()
	d.Email, d.RD, d.template = c.Email, originalURL(r), "refused"
	var e *apiError
	if !errors.As(err, &e) {
		e = errInternal
	}
	d.status = e.status
	switch e {
	case errNotAllowed:
		d.Title = "Not admitted"
		d.Error = "You are signed in as " + c.Email + ", but this application does not admit this account."
	case errAllowUnverified:
		d.Title = "Address not confirmed"
		d.Error = "You are signed in as " + c.Email + ", but this application admits only confirmed addresses. " +
			"Follow the link mailed to you, then sign out and sign in again."
	default:
		d.Title, d.Email = "This application is misconfigured", ""
		d.Error = "The proxy in front of this application sent a request the service cannot read; its operator must fix it."
	}
	p.render(w, d)
}

// offerPasskeys makes the login page d offer a passkey, when passkeys are on: its script is the
// only one the portal serves, from its own origin, so the page's policy allows exactly that.
func (p *portal) offerPasskeys(w http.ResponseWriter, d *pageData) {
	if p.passkeys.on() != nil {
		return
	}
	d.Passkeys = true
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; connect-src 'self'; img-src 'self'; "+
		"style-src 'self'; frame-ancestors 'none'; base-uri 'none'")
}
