package main

import (
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"
)

// probeResult is one revocation probe: a session logged out on one instance, its access token
// polled on the other until refused.
type probeResult struct {
	from, to string
	ackAt    time.Time     // the logout's 200
	lag      time.Duration // from ackAt until the other instance first answered 401
	never    bool          // accepted until it expired, or still a minute after the logout
}

// probeLoop logs the probe user in every few seconds, alternately on A and on B, checks that the
// other instance accepts the token, logs it out where it logged in, and polls the other instance
// every 50 ms until it refuses the token. The bound is REVOCATION_SYNC_INTERVAL plus a poll.
func (s *soak) probeLoop(ctx context.Context, a account, every time.Duration) {
	for i := 0; ctx.Err() == nil; i++ {
		from, to := "A", "B"
		if i%2 == 1 {
			from, to = to, from
		}
		if why := s.probe(ctx, a, from, to); why != "" {
			s.rec.probeSkipped(why)
		}
		pause(ctx, every)
	}
}

// probe runs one round and says why it did not measure anything, if it did not.
func (s *soak) probe(ctx context.Context, a account, from, to string) string {
	in, out := s.rot.get(from), s.rot.get(to)
	if in == nil || out == nil {
		return "an instance was restarting"
	}
	r := s.call("probe login", from, in, "POST", "/auth/login", a.xff, map[string]string{"email": a.email, "password": a.password})
	if r.status != http.StatusOK {
		if r.status != http.StatusServiceUnavailable && r.err == nil {
			s.rec.lostUser(r, fmt.Sprintf("probe user %s logged in on %s with the right password and got %s", a.email, from, r.answer()))
		}
		return "login " + r.answer()
	}
	p := r.pair
	if r := s.call("probe page", to, out, "GET", "/auth/page", a.xff, nil, "Authorization", "Bearer "+p.AccessToken); r.status != http.StatusOK {
		return "the fresh token on the other instance: " + r.answer()
	}
	var ack reply
	for {
		ack = s.call("probe logout", from, s.rot.get(from), "POST", "/auth/logout", a.xff, nil, "Authorization", "Bearer "+p.AccessToken)
		if ack.status == http.StatusOK {
			break
		}
		if ack.status != http.StatusServiceUnavailable && ack.err == nil {
			s.rec.fault(fmt.Sprintf("probe: logout on %s answered %s", from, ack.answer()))
			return "logout " + ack.answer()
		}
		if !pause(ctx, ack.retryAfter()) {
			return "stopped"
		}
	}
	res := probeResult{from: from, to: to, ackAt: ack.done()}
	for ctx.Err() == nil {
		out := s.rot.get(to)
		if out != nil {
			r := s.call("probe page", to, out, "GET", "/auth/page", a.xff, nil, "Authorization", "Bearer "+p.AccessToken)
			if r.status == http.StatusUnauthorized {
				res.lag = r.sent.Sub(res.ackAt)
				res.never = r.code == "token_expired" // accepted until it expired
				s.rec.probed(res)
				return ""
			}
			if r.sent.Sub(res.ackAt) > time.Minute {
				res.never = true
				s.rec.probed(res)
				return ""
			}
		}
		pause(ctx, 50*time.Millisecond)
	}
	return "stopped"
}

// outageProbe follows one session logged out on A around the database stop, as B sees its
// access token.
type outageProbe struct {
	n      int
	before bool // logged out, and acknowledged, just before the stop; otherwise during it

	firstTry    reply  // the first logout attempt
	onA         string // what A answered for the token right after a logout it answered 503
	ackAt       time.Time
	lastAccept  time.Time // B's last 200 before it first refused the token
	refusedAt   time.Time // B's first refusal
	refusal     string    // what that refusal was
	revokedAt   time.Time // B's first 401
	againAt     time.Time // B's last 200 after it had refused the token once, if any
	acceptAgain int       // how many 200s that was
	expired     bool      // the token expired before B revoked it
}

// outageProbes are the sessions that measure how long B keeps accepting a token logged out on A
// when neither can read the blacklist: some logged out just before the stop, so that the
// database has the entry but B cannot read it, and some during the stop, so that only A knows
// until the client's retried logout lands.
type outageProbes struct {
	s       *soak
	a       account
	mu      sync.Mutex
	probes  []*outageProbe
	pairs   []tokenPair
	watches sync.WaitGroup
	lost    lostRefresh
}

// lostRefresh is the refresh in flight when the database stopped: the database recorded the
// first use of its token, and the reply never came back.
type lostRefresh struct {
	first   reply // the refresh the stop cut
	tries   int   // the client's retries
	final   reply // the first retry answered otherwise than 503 or not at all
	claimed bool  // the proxy saw the claim go through before it stopped
}

// prepare logs in n sessions on A and checks that B accepts each.
func (o *outageProbes) prepare(n int) error {
	A, B := o.s.rot.get("A"), o.s.rot.get("B")
	for i := range n {
		r := o.s.call("probe login", "A", A, "POST", "/auth/login", o.a.xff, map[string]string{"email": o.a.email, "password": o.a.password})
		if r.status != http.StatusOK {
			return fmt.Errorf("outage probe %d: login on A: %s", i+1, r.answer())
		}
		if c := o.s.call("probe page", "B", B, "GET", "/auth/page", o.a.xff, nil, "Authorization", "Bearer "+r.pair.AccessToken); c.status != http.StatusOK {
			return fmt.Errorf("outage probe %d: B refused a fresh token: %s", i+1, c.answer())
		}
		o.pairs = append(o.pairs, r.pair)
	}
	return nil
}

// stopMidRefresh stops the database in the middle of a refresh on A: the proxy passes on the
// claim of the refresh token's first use and stops before the reply comes back, the case in which
// the database has recorded the successor and the client is answered 503. The client then tries
// again after every Retry-After, as it should, until it gets another answer. It returns when the
// database stopped.
func (o *outageProbes) stopMidRefresh(ctx context.Context, px *proxy) time.Time {
	if len(o.pairs) < 7 {
		return o.stopNow(px)
	}
	pair := o.pairs[6]
	stopped := px.stopAtRequest(claimOf(pair.RefreshToken))
	o.watches.Go(func() {
		refresh := func() reply {
			return o.s.call("probe refresh", "A", o.s.rot.get("A"), "POST", "/auth/refresh", o.a.xff, nil, "authorization_refresh", pair.RefreshToken)
		}
		r := refresh()
		o.mu.Lock()
		o.lost.first = r
		o.mu.Unlock()
		for r.status == http.StatusServiceUnavailable || r.err != nil {
			if !pause(ctx, r.retryAfter()) {
				return
			}
			r = refresh()
			o.mu.Lock()
			o.lost.tries++
			o.lost.final = r
			o.mu.Unlock()
		}
		if r.status == http.StatusUnauthorized {
			o.s.rec.sessionLost(r, fmt.Sprintf("the refresh cut by the stop, retried after every Retry-After since %s: answered %s",
				o.s.rec.at(o.lost.first.sent), r.answer()))
		}
	})
	select {
	case at := <-stopped:
		o.lost.claimed = true
		return at
	case <-time.After(3 * time.Second):
		if px.disarm() {
			return o.stopNow(px)
		}
		o.lost.claimed = true
		return <-stopped
	}
}

func (o *outageProbes) stopNow(px *proxy) time.Time {
	at := time.Now()
	px.stop()
	return at
}

// claimOf is what the insert that claims the first use of a refresh token holds and no other
// request does: a document whose _id is the token's id, as BSON writes that element.
func claimOf(refreshToken string) []byte {
	var claims struct {
		JTI string `json:"jti"`
	}
	if parts := strings.Split(refreshToken, "."); len(parts) == 3 {
		payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
		json.Unmarshal(payload, &claims)
	}
	b := append([]byte{0x02}, "_id\x00"...)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(claims.JTI)+1))
	return append(append(b, claims.JTI...), 0)
}

// logOut logs probe i's session out on A, and keeps trying until that is acknowledged; B is
// watched from the first attempt. before says whether the stop is still to come.
func (o *outageProbes) logOut(ctx context.Context, i int, before bool) error {
	if i >= len(o.pairs) {
		return errors.New("no session prepared")
	}
	p := &outageProbe{n: i + 1, before: before}
	o.mu.Lock()
	o.probes = append(o.probes, p)
	o.mu.Unlock()
	pair := o.pairs[i]
	o.watches.Go(func() { o.watch(ctx, p, pair) })
	r := o.s.call("probe logout", "A", o.s.rot.get("A"), "POST", "/auth/logout", o.a.xff, nil, "Authorization", "Bearer "+pair.AccessToken)
	o.mu.Lock()
	p.firstTry = r
	o.mu.Unlock()
	if r.status == http.StatusOK {
		o.setAck(p, r.done())
		return nil
	}
	if r.status != http.StatusServiceUnavailable && r.err == nil {
		return fmt.Errorf("logout on A answered %s", r.answer())
	}
	// Answered 503: in force on A at once, says the README.
	c := o.s.call("probe page", "A", o.s.rot.get("A"), "GET", "/auth/page", o.a.xff, nil, "Authorization", "Bearer "+pair.AccessToken)
	o.mu.Lock()
	p.onA = c.answer()
	o.mu.Unlock()
	// The client tries again after Retry-After until acknowledged; on A, so that B can learn of
	// the logout only through the database.
	o.watches.Go(func() {
		wait := r.retryAfter()
		for pause(ctx, wait) {
			r := o.s.call("probe logout", "A", o.s.rot.get("A"), "POST", "/auth/logout", o.a.xff, nil, "Authorization", "Bearer "+pair.AccessToken)
			if r.status == http.StatusOK {
				o.setAck(p, r.done())
				return
			}
			wait = r.retryAfter()
		}
	})
	return nil
}

func (o *outageProbes) setAck(p *outageProbe, at time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	p.ackAt = at
}

// watch polls B with the probe's access token every 100 ms until B answers 401, or for two
// minutes.
func (o *outageProbes) watch(ctx context.Context, p *outageProbe, pair tokenPair) {
	deadline := time.Now().Add(2 * time.Minute)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		if B := o.s.rot.get("B"); B != nil {
			r := o.s.call("probe page", "B", B, "GET", "/auth/page", o.a.xff, nil, "Authorization", "Bearer "+pair.AccessToken)
			o.mu.Lock()
			switch {
			case r.status == http.StatusOK && p.refusedAt.IsZero():
				p.lastAccept = r.sent
			case r.status == http.StatusOK:
				p.againAt = r.sent
				p.acceptAgain++
			case r.code == "token_expired":
				p.expired = true
			case r.status == http.StatusUnauthorized || r.status == http.StatusServiceUnavailable:
				if p.refusedAt.IsZero() {
					p.refusedAt, p.refusal = r.sent, r.answer()
				}
				if r.status == http.StatusUnauthorized {
					p.revokedAt = r.sent
				}
			}
			done := !p.revokedAt.IsZero() || p.expired
			o.mu.Unlock()
			if done {
				return
			}
		}
		pause(ctx, 100*time.Millisecond)
	}
}

// results waits for the watches and returns the probes and the refresh cut by the stop.
func (o *outageProbes) results() ([]*outageProbe, lostRefresh) {
	o.watches.Wait()
	return o.probes, o.lost
}
