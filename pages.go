package main

// pages.go holds what the portal's pages are made of: templates, the data a page shows, its
// headers and script, and the rule for addresses a page may send the browser back to.

import (
	"embed"
	"html/template"
	"net/http"
	"net/url"
	"strings"
)

//go:embed portal/*.html
var portalFS embed.FS

var portalPages = template.Must(template.ParseFS(portalFS, "portal/*.html"))

// portalPaths are the first segments of the portal's pages: ServeMux's own 404 and 405 under them
// are pages too (errorPage), and JSON everywhere else.
var portalPaths = []string{"/login", "/logout", "/signup", "/account", "/step-up", "/forgot-password", "/reset-password", "/verify-email"}

// pageData is what every page template reads.
type pageData struct {
	AppName, Title, Error, Notice string
	Email, RD, CSRF, MFAToken     string
	Action, Link, LinkText        string
	Token                         string // a mailed link's token, carried by its form
	PublicURL                     string // for links on pages shown on other hosts
	SignupOpen, MailOn            bool   // whether to link to /signup and /forgot-password
	Passkeys                      bool   // the login page offers a passkey (and its script)
	StepUp                        bool   // the passkey offered raises the browser's session
	PHR                           bool   // a step-up for a route that only a passkey opens
	status                        int
	template                      string
}

// page is the common data of what a template reads: a *pageData, or a view that embeds one.
func (d *pageData) page() *pageData { return d }

// pageFunc fills d for the request and returns it to be rendered, or answers itself (a
// redirect) and returns nil.
type pageFunc func(w http.ResponseWriter, r *http.Request, d *pageData) *pageData

// securePage sets the headers of every page: no script at all, never framed, no referrer to
// other sites (same-origin keeps Origin on the portal's own forms), never cached.
func securePage(w http.ResponseWriter) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; img-src 'self'; style-src 'self'; frame-ancestors 'none'; base-uri 'none'")
	h.Set("X-Frame-Options", "DENY")
	h.Set("Referrer-Policy", "same-origin")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Content-Type-Options", "nosniff")
}

// maxReturnLen bounds a return address.
const maxReturnLen = 4096

// safeReturn returns rd, re-serialised, when it is an absolute http(s) URL to the portal's host, a
// host under COOKIE_DOMAIN or one of REDIRECT_ALLOWED_HOSTS, over https when the portal is; never
// anything a browser could read as another host (backslashes, user info, no scheme, controls).
func safeReturn(p portalConfig, rd string) (string, bool) {
	if rd == "" || len(rd) > maxReturnLen || strings.ContainsAny(rd, "\\") {
		return "", false
	}
	for _, r := range rd {
		if r <= ' ' || r == 0x7f || r > 0x7e {
			return "", false
		}
	}
	u, err := url.Parse(rd)
	if err != nil || u.Opaque != "" || u.User != nil || u.Host == "" {
		return "", false
	}
	if u.Scheme != "https" && (u.Scheme != "http" || p.secure) {
		return "", false
	}
	host := u.Hostname()
	if host != strings.ToLower(host) || !isHostName(host) {
		return "", false
	}
	own, _ := url.Parse(p.publicURL)
	ok := own != nil && host == own.Hostname() || p.cookieDomain != "" && underDomain(host, p.cookieDomain)
	for _, h := range p.redirectHosts {
		ok = ok || host == h
	}
	if !ok {
		return "", false
	}
	return u.String(), true
}

// toSignIn sends the browser to the sign-in page, which returns it to rd.
func toSignIn(w http.ResponseWriter, r *http.Request, rd string) *pageData {
	http.Redirect(w, r, "/login?rd="+url.QueryEscape(rd), http.StatusSeeOther)
	return nil
}

// formCodes are a second-factor form's code, without the spaces an app shows it with, and
// recovery code.
func formCodes(r *http.Request) (code, recovery string) {
	return strings.ReplaceAll(r.PostForm.Get("code"), " ", ""), strings.TrimSpace(r.PostForm.Get("recovery_code"))
}

// noSecondFactor is the step-up's answer to an account without a second factor: the account
// page adds one.
func noSecondFactor(d *pageData) *pageData {
	d.Title, d.template = "Second factor needed", "message"
	d.Error, d.status = "This page needs a second factor, and your account has none. Add an authenticator app or a passkey to your account first.", http.StatusForbidden
	d.Link, d.LinkText = "/account", "Go to your account"
	return d
}

// isNavigation reports whether the guarded request is a browser's navigation, which a sign-in
// page can answer: Sec-Fetch-Mode says so, or, without it, the request accepts HTML.
func isNavigation(r *http.Request) bool {
	if mode := r.Header.Values("Sec-Fetch-Mode"); len(mode) > 0 {
		return len(mode) == 1 && mode[0] == "navigate"
	}
	return strings.Contains(r.Header.Get("Accept"), "text/html")
}

// originalURL is the guarded request's URL from the proxy's X-Forwarded-Proto, -Host and -Uri,
// or "" when they are missing or repeated; the sign-in checks it again before returning to it.
func originalURL(r *http.Request) string {
	proto, err1 := header(r, "X-Forwarded-Proto")
	host, err2 := header(r, "X-Forwarded-Host")
	uri, err3 := header(r, "X-Forwarded-Uri")
	if err1 != nil || err2 != nil || err3 != nil || host == "" || (proto != "http" && proto != "https") {
		return ""
	}
	if !strings.HasPrefix(uri, "/") || strings.HasPrefix(uri, "//") {
		uri = "/"
	}
	return proto + "://" + host + uri
}

//go:embed portal/passkeys.js
var portalPasskeysJS []byte

// errCSRFInvalid refuses a script's request without its page's CSRF token, or from another origin.
var errCSRFInvalid = &apiError{status: http.StatusForbidden, code: "csrf_invalid",
	message: "this request did not come from the portal's own page; reload it"}

// handlePortalPasskeysJS serves the login page's script.
func handlePortalPasskeysJS() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", "text/javascript; charset=utf-8")
		h.Set("Cache-Control", "no-cache")
		h.Set("X-Content-Type-Options", "nosniff")
		w.Write(portalPasskeysJS)
	})
}
