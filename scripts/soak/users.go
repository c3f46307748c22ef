package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// account is a user of the service, and the client address it comes from.
type account struct {
	email, password string
	xff             string // X-Forwarded-For: each user is a client of its own
}

type tokenPair struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int64  `json:"expires_in"`
}

var errNoInstance = errors.New("no instance in rotation")

// reply is what one request got.
type reply struct {
	status int
	code   string        // the error code in the body, if any
	retry  time.Duration // Retry-After, if any
	pair   tokenPair     // tokens, from login and refresh
	sent   time.Time
	took   time.Duration
	err    error
}

func (r reply) done() time.Time { return r.sent.Add(r.took) }

// answer names the reply as the report counts it: "200", "401 token_revoked", "conn refused".
func (r reply) answer() string {
	switch {
	case r.err != nil:
		var ne net.Error
		switch {
		case errors.As(r.err, &ne) && ne.Timeout():
			return "timeout"
		case errors.Is(r.err, syscall.ECONNREFUSED):
			return "conn refused"
		case errors.Is(r.err, syscall.ECONNRESET):
			return "conn reset"
		case errors.Is(r.err, io.EOF), errors.Is(r.err, io.ErrUnexpectedEOF):
			return "conn closed"
		case errors.Is(r.err, errNoInstance):
			return "no instance"
		}
		return "error"
	case r.code != "":
		return strconv.Itoa(r.status) + " " + r.code
	}
	return strconv.Itoa(r.status)
}

// retryAfter is how long to wait before trying again: Retry-After, or a second.
func (r reply) retryAfter() time.Duration {
	if r.retry > 0 {
		return r.retry
	}
	return time.Second
}

// call sends one request to instance id and records it under ep. headers are name, value pairs;
// a body is sent as JSON.
func (s *soak) call(ep, id string, in *instance, method, path, xff string, body any, headers ...string) reply {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	r := reply{sent: time.Now()}
	if in == nil { // no instance in rotation
		r.err = errNoInstance
		s.rec.call(ep, id, r)
		return r
	}
	req, err := http.NewRequest(method, in.base+path, rd)
	if err != nil {
		panic(err) // a bug in the soak
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("X-Forwarded-For", xff)
	for i := 0; i+1 < len(headers); i += 2 {
		req.Header.Set(headers[i], headers[i+1])
	}
	res, err := s.client.Do(req)
	if err == nil {
		var b []byte
		b, err = io.ReadAll(io.LimitReader(res.Body, 64<<10))
		res.Body.Close()
		r.status = res.StatusCode
		if secs, perr := strconv.Atoi(res.Header.Get("Retry-After")); perr == nil {
			r.retry = time.Duration(secs) * time.Second
		}
		if res.StatusCode == http.StatusOK {
			json.Unmarshal(b, &r.pair)
		} else {
			var e struct{ Error string }
			json.Unmarshal(b, &e)
			r.code = e.Error
		}
	}
	r.err = err
	r.took = time.Since(r.sent)
	s.rec.call(ep, id, r)
	return r
}

// vu is a virtual user: it logs in, uses the protected page on either instance every 100-200 ms,
// refreshes before its access token expires, and now and then logs out and in again, as a
// careful client does: it keeps its tokens through a 503 or a network error and drops them only
// when the service says the session is over.
type vu struct {
	account
	name      string
	pair      tokenPair
	refreshAt time.Time
	logoutAt  time.Time
	failing   time.Time // when a refresh of the current token first failed with 503 or no answer
	recent    []string  // its last calls, the evidence when something goes wrong
}

// note keeps a call in the user's recent history, every one but the page's 200s.
func (v *vu) note(what, id string, r reply, rec *recorder) {
	if what == "page" && r.status == http.StatusOK {
		return
	}
	line := fmt.Sprintf("%s %s on %s: %s", rec.at(r.sent), what, id, r.answer())
	if v.recent = append(v.recent, line); len(v.recent) > 12 {
		v.recent = v.recent[1:]
	}
}

func (v *vu) history() string { return "\n      " + strings.Join(v.recent, "\n      ") }

// take keeps a new pair and plans its refresh five seconds before the access token expires.
func (v *vu) take(p tokenPair, at time.Time) {
	v.pair, v.failing = p, time.Time{}
	v.refreshAt = at.Add(time.Duration(p.ExpiresIn)*time.Second - 5*time.Second)
}

// drop forgets the session.
func (v *vu) drop() { v.pair, v.failing = tokenPair{}, time.Time{} }

func (s *soak) runVU(ctx context.Context, v *vu) {
	for ctx.Err() == nil {
		switch now := time.Now(); {
		case v.pair.AccessToken == "":
			s.logIn(ctx, v)
		case now.After(v.logoutAt):
			s.logOut(ctx, v)
		case now.After(v.refreshAt):
			s.refresh(ctx, v)
		default:
			s.usePage(ctx, v)
		}
		pause(ctx, time.Duration(100+rand.IntN(100))*time.Millisecond)
	}
}

func (s *soak) logIn(ctx context.Context, v *vu) {
	id, in := s.rot.any()
	r := s.call("login", id, in, "POST", "/auth/login", v.xff, map[string]string{"email": v.email, "password": v.password})
	v.note("login", id, r, s.rec)
	switch {
	case r.status == http.StatusOK:
		v.take(r.pair, r.done())
		v.logoutAt = r.done().Add(time.Duration(20+rand.IntN(40)) * time.Second)
	case r.status == http.StatusServiceUnavailable, r.err != nil:
		pause(ctx, r.retryAfter())
	default:
		s.rec.lostUser(r, fmt.Sprintf("%s (%s) logged in with the right password on %s and got %s%s",
			v.name, v.email, id, r.answer(), v.history()))
		pause(ctx, time.Second)
	}
}

func (s *soak) refresh(ctx context.Context, v *vu) {
	id, in := s.rot.any()
	r := s.call("refresh", id, in, "POST", "/auth/refresh", v.xff, nil, "authorization_refresh", v.pair.RefreshToken)
	v.note("refresh", id, r, s.rec)
	switch {
	case r.status == http.StatusOK:
		if !v.failing.IsZero() {
			s.rec.refreshRetried(r.done().Sub(v.failing))
		}
		v.take(r.pair, r.done())
	case r.status == http.StatusUnauthorized:
		s.rec.sessionLost(r, fmt.Sprintf("%s: refresh on %s answered %s%s", v.name, id, r.answer(), v.history()))
		v.drop()
	default: // 503 or no answer: keep the tokens and try again
		if v.failing.IsZero() {
			v.failing = r.sent
		}
		v.refreshAt = time.Now().Add(r.retryAfter())
	}
}

func (s *soak) usePage(ctx context.Context, v *vu) {
	id, in := s.rot.any()
	r := s.call("page", id, in, "GET", "/auth/page", v.xff, nil, "Authorization", "Bearer "+v.pair.AccessToken)
	v.note("page", id, r, s.rec)
	switch {
	case r.status == http.StatusUnauthorized && r.code == "token_expired":
		// A refresh held up by an outage: wait for its next try, after Retry-After.
		if !v.refreshAt.After(time.Now()) {
			v.refreshAt = time.Now()
		}
		pause(ctx, time.Until(v.refreshAt))
	case r.status == http.StatusUnauthorized:
		s.rec.sessionLost(r, fmt.Sprintf("%s: page on %s answered %s%s", v.name, id, r.answer(), v.history()))
		v.drop()
	case r.status == http.StatusServiceUnavailable:
		pause(ctx, r.retryAfter())
	}
}

// logOut ends the session, trying again after a 503 or a network error until it is
// acknowledged, and has both instances checked to refuse its tokens.
func (s *soak) logOut(ctx context.Context, v *vu) {
	old := v.pair
	for ctx.Err() == nil {
		id, in := s.rot.any()
		r := s.call("logout", id, in, "POST", "/auth/logout", v.xff, nil,
			"Authorization", "Bearer "+old.AccessToken, "authorization_refresh", old.RefreshToken)
		v.note("logout", id, r, s.rec)
		switch {
		case r.status == http.StatusOK:
			s.checkLoggedOut(ctx, v.account, old, id, r.done())
			v.drop()
			return
		case r.status == http.StatusServiceUnavailable, r.err != nil:
			pause(ctx, r.retryAfter())
		default:
			s.rec.fault(fmt.Sprintf("%s: logout on %s answered %s%s", v.name, id, r.answer(), v.history()))
			v.drop()
			return
		}
	}
}

// loggedOutCheck is what became of one acknowledged logout on both instances.
type loggedOutCheck struct {
	ackAt        time.Time     // the logout's 200
	expires      time.Time     // when its access token is refused anyway
	refusedIn    time.Duration // from the acknowledgment until both instances refused the access token
	never        bool          // an instance accepted it until it expired
	expiredFirst bool          // it had expired before it could be tried (a refresh held up by the stop)
	refreshed    bool          // its refresh token still worked
}

// checkLoggedOut looks, 1.5s after a logout was acknowledged (one sync interval and a poll),
// whether both instances refuse its access token, and again every 250 ms until they do or the
// token expires; and whether its refresh token is refused.
func (s *soak) checkLoggedOut(ctx context.Context, a account, p tokenPair, id string, ackAt time.Time) {
	s.checks.Go(func() {
		c := &loggedOutCheck{ackAt: ackAt, expires: expiry(p.AccessToken).Add(s.leeway)}
		if !pauseUntil(ctx, ackAt.Add(1500*time.Millisecond)) {
			return
		}
		rid, rin := s.rot.any()
		if r := s.call("refresh, logged out", rid, rin, "POST", "/auth/refresh", a.xff, nil, "authorization_refresh", p.RefreshToken); r.status == http.StatusOK {
			c.refreshed = true
			s.rec.fault(fmt.Sprintf("%s: the refresh token of a session logged out on %s at %s was refreshed on %s at %s",
				a.email, id, s.rec.at(ackAt), rid, s.rec.at(r.sent)))
		}
		if time.Now().After(c.expires) {
			c.expiredFirst = true
			s.rec.loggedOutChecked(c)
			return
		}
		for _, iid := range []string{"A", "B"} {
			for accepted := false; ; {
				in := s.rot.get(iid)
				if in == nil { // restarting; the new process loads the blacklist when it starts
					if !pause(ctx, 250*time.Millisecond) {
						return
					}
					continue
				}
				r := s.call("page, logged out", iid, in, "GET", "/auth/page", a.xff, nil, "Authorization", "Bearer "+p.AccessToken)
				if r.code == "token_expired" {
					c.never = accepted // else it expired as this instance was first asked
					c.expiredFirst = !accepted
					break
				}
				if r.status == http.StatusUnauthorized || r.status == http.StatusServiceUnavailable {
					c.refusedIn = max(c.refusedIn, r.sent.Sub(ackAt))
					break
				}
				accepted = accepted || r.status == http.StatusOK
				if !pause(ctx, 250*time.Millisecond) {
					return
				}
			}
		}
		s.rec.loggedOutChecked(c)
	})
}

// expiry reads a token's exp claim, without checking it: the service does that.
func expiry(token string) time.Time {
	var claims struct {
		Exp int64 `json:"exp"`
	}
	if parts := strings.Split(token, "."); len(parts) == 3 {
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		json.Unmarshal(payload, &claims)
	}
	return time.Unix(claims.Exp, 0)
}

// pause waits d, or less if ctx ends; it reports whether ctx is still going.
func pause(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

func pauseUntil(ctx context.Context, t time.Time) bool { return pause(ctx, time.Until(t)) }
