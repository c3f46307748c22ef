package main

// oidc_logout.go is the OpenID provider's RP-initiated logout (OpenID Connect RP-Initiated Logout
// 1.0): a client signs the user out of the portal, and is sent back to an address it registered.

import (
	"errors"
	"net/http"
	"net/url"
	"slices"
)

// logoutRequest is a checked logout request.
type logoutRequest struct {
	client   *OAuthClient // nil when neither id_token_hint nor client_id names one
	redirect string       // a registered post_logout_redirect_uri, or ""
	state    string
	sid      string // the portal session id_token_hint names; "" without a hint
	query    url.Values
}

// parseLogout checks a logout request; every refusal is a page, never a redirect.
func (o *oidcProvider) parseLogout(r *http.Request, q url.Values) (*logoutRequest, error) {
	for name := range q {
		if len(q[name]) > 1 {
			return nil, &pageError{"The sign-out request sent " + name + " more than once."}
		}
	}
	lr := &logoutRequest{state: q.Get("state"), query: q}
	id := q.Get("client_id")
	if hint := q.Get("id_token_hint"); hint != "" {
		c, err := o.parseIDToken(hint)
		if err != nil {
			return nil, &pageError{"The sign-out request carries an ID token this service did not issue."}
		}
		aud, _ := c["aud"].(string)
		if id != "" && id != aud {
			return nil, &pageError{"The sign-out request's client_id is not its ID token's."}
		}
		id = aud
		lr.sid, _ = c["sid"].(string)
	}
	if id != "" {
		client, err := o.clients.byID(r.Context(), id)
		if errors.Is(err, errNoSuchClient) {
			return nil, &pageError{"The application that sent you here is not registered with this service."}
		} else if err != nil {
			return nil, err
		}
		lr.client = client
	}
	if to := q.Get("post_logout_redirect_uri"); to != "" {
		if lr.client == nil || !slices.Contains(lr.client.PostLogoutRedirectURIs, to) {
			return nil, &pageError{"The application asked to send you to an address it did not register, so you are not sent there."}
		}
		lr.redirect = to
	}
	return lr, nil
}

// logout is the end-session endpoint, GET or POST. With an id_token_hint of the browser's current
// portal session the session ends at once; otherwise the user confirms first, so that no other
// site can sign them out by a link.
func (o *oidcProvider) logout(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	q := r.URL.Query()
	if r.Method == http.MethodPost {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		if err := r.ParseForm(); err != nil {
			return o.refusedPage(d, "The sign-out request could not be read.")
		}
		q = r.PostForm
	}
	lr, err := o.parseLogout(r, q)
	if err != nil {
		return o.logoutRefused(w, r, d, err)
	}
	c := o.site.signedIn(r)
	switch {
	case c == nil:
		return o.signedOut(w, r, d, lr) // nothing to end
	case lr.sid != "" && lr.sid == c.Session:
		if err := o.site.signOut(w, r); err != nil {
			return o.site.failed(w, r, d, err)
		}
		return o.signedOut(w, r, d, lr)
	}
	v := &consentView{pageData: d, Request: q.Encode()}
	if lr.client != nil {
		v.ClientName = lr.client.Name
	}
	d.Title, d.Email, d.template = "Sign out?", c.Email, "oidc_logout"
	o.site.render(w, v)
	return nil
}

// confirmLogout is the confirmation's POST: the request is checked again, then the browser's
// portal session ends.
func (o *oidcProvider) confirmLogout(w http.ResponseWriter, r *http.Request, d *pageData) *pageData {
	q, err := url.ParseQuery(r.PostForm.Get("request"))
	if err != nil {
		return o.refusedPage(d, "The sign-out request could not be read.")
	}
	lr, err := o.parseLogout(r, q)
	if err != nil {
		return o.logoutRefused(w, r, d, err)
	}
	if err := o.site.signOut(w, r); err != nil {
		return o.site.failed(w, r, d, err)
	}
	return o.signedOut(w, r, d, lr)
}

func (o *oidcProvider) logoutRefused(w http.ResponseWriter, r *http.Request, d *pageData, err error) *pageData {
	var pe *pageError
	if errors.As(err, &pe) {
		return o.refusedPage(d, pe.message)
	}
	return o.site.failed(w, r, d, err)
}

// signedOut sends the browser to the client's registered address with its state, or shows that
// it is signed out.
func (o *oidcProvider) signedOut(w http.ResponseWriter, r *http.Request, d *pageData, lr *logoutRequest) *pageData {
	if lr.redirect != "" {
		u, _ := url.Parse(lr.redirect)
		if lr.state != "" {
			q := u.Query()
			q.Set("state", lr.state)
			u.RawQuery = q.Encode()
		}
		w.Header().Set("Cache-Control", "no-store")
		http.Redirect(w, r, u.String(), http.StatusSeeOther)
		return nil
	}
	d.Title, d.template, d.Link, d.LinkText = "Signed out", "message", "/login", "Sign in again"
	d.Notice = "You are signed out."
	return d
}
