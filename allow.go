package main

// allow.go decides who passes forward auth: FORWARD_AUTH_ALLOW, narrowed per route by X-Auth-Allow.

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
)

var (
	errNotAllowed = &apiError{status: http.StatusForbidden, code: "not_allowed",
		message: "this account may not use this application: its address is not on the allow list"}
	errAllowHeader = &apiError{status: http.StatusInternalServerError, code: "bad_allow_header",
		message: "the proxy sent an X-Auth-Allow header that is not a list of addresses and @domains; its operator must fix it (the service's log names the entry)"}
	errAllowUnverified = &apiError{status: http.StatusForbidden, code: "email_not_verified",
		message: "this application admits only addresses their owners have confirmed: follow the link mailed to you, then refresh the token"}
)

// allowList is a list of addresses and @domains, in the form normalizeEmail stores addresses in.
// A nil list lets everyone through.
type allowList struct {
	addresses map[string]bool
	domains   map[string]bool // without the @
}

// parseAllowList reads a comma-separated list of addresses and @domains ("ada@example.com,
// @example.org"). A list that names nobody, or an entry that is neither, is an error: a mistyped
// list must never read as "everyone".
func parseAllowList(s string) (*allowList, error) {
	l := &allowList{addresses: map[string]bool{}, domains: map[string]bool{}}
	for entry := range strings.SplitSeq(s, ",") {
		if entry = strings.TrimSpace(entry); entry == "" {
			continue
		}
		n := normalizeEmail(entry)
		switch {
		case strings.HasPrefix(n, "@") && hostName(n[1:]):
			l.domains[n[1:]] = true
		case validEmail(n):
			l.addresses[n] = true
		default:
			return nil, fmt.Errorf("%q is neither an address nor an @domain", entry)
		}
	}
	if len(l.addresses)+len(l.domains) == 0 {
		return nil, errors.New("the list names nobody; give addresses or @domains, comma-separated")
	}
	return l, nil
}

// admits reports whether email (as stored) is on l: named, or at a domain named. A domain is
// matched exactly: "@example.com" does not admit "a@dev.example.com".
func (l *allowList) admits(email string) bool {
	if l == nil {
		return true
	}
	at := strings.LastIndexByte(email, '@')
	return l.addresses[email] || (at >= 0 && l.domains[email[at+1:]])
}

// requireAllowed lets through, after requireAccess, only a user that FORWARD_AUTH_ALLOW (list)
// and the route's X-Auth-Allow both admit, when set. It reads the address and whether it was
// verified from the access token, never the database: a refresh signs them in anew, so an
// address change shows from the next refresh on. An address nobody has proved to own is on no
// list; its user gets email_not_verified. A header that does not parse shuts the gate.
func requireAllowed(log *slog.Logger, list *allowList) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if err := admitted(log, list, r, claimsFrom(r.Context())); err != nil {
				writeError(w, r, log, err)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// admitted is requireAllowed's decision on the user of c: nil when the lists let them pass,
// else errNotAllowed, errAllowUnverified, or the error of a header that does not parse (logged).
func admitted(log *slog.Logger, list *allowList, r *http.Request, c *claims) error {
	v, err := header(r, "X-Auth-Allow")
	if err != nil {
		return err
	}
	var route *allowList
	if _, sent := r.Header["X-Auth-Allow"]; sent {
		if route, err = parseAllowList(v); err != nil {
			log.LogAttrs(r.Context(), slog.LevelError, "the proxy sent a bad X-Auth-Allow header; every request with it is refused",
				slog.String("request_id", requestID(r.Context())), slog.String("err", err.Error()))
			return errAllowHeader
		}
	}
	switch {
	case list == nil && route == nil:
		return nil
	case !list.admits(c.Email) || !route.admits(c.Email):
		return errNotAllowed
	case !c.EmailVerified:
		return errAllowUnverified
	}
	return nil
}
