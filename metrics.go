package main

// metrics.go counts what an operator watches: logins, refreshes, second factors, mail, requests.

import (
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// metrics counts what an operator watches, for GET /metrics in the Prometheus text format
// (version 0.0.4). It is written by hand because the product keeps to its dependency list; a
// test parses the output with Prometheus's own parser so that the format cannot drift.
//
// The request path only adds to atomic counters. Label values come from small fixed sets: the
// route is a ServeMux pattern (or "unmatched"), the method one of the standard ones (or "other"),
// the status a code the service itself wrote, so no client can make the series grow.
type metrics struct {
	mu       sync.RWMutex
	requests map[requestKey]*atomic.Uint64
	latency  map[string]*histogram // by route

	loginCounts [numLoginOutcomes]atomic.Uint64
	refreshes   [numRefreshOutcomes]atomic.Uint64
	mfas        [numMFAOutcomes]atomic.Uint64
	blacklisted [2]atomic.Uint64 // tokens, sessions
	dbErrors    atomic.Uint64

	mails         [numMailOutcomes]atomic.Uint64
	mailOutboxAge atomic.Int64 // nanoseconds, as of the sender's last look

	endsMu      sync.Mutex
	sessionEnds map[string]uint64 // by reason, one of the end* constants
}

func newMetrics() *metrics {
	return &metrics{requests: make(map[requestKey]*atomic.Uint64), latency: make(map[string]*histogram),
		sessionEnds: make(map[string]uint64)}
}

type requestKey struct {
	route, method string
	status        int
}

// Outcomes are listed in the alphabetical order of their names, which is the order of the output.
type loginOutcome int

const (
	loginDisabled loginOutcome = iota
	loginUnverified
	loginInvalidCredentials
	loginSuccess
	loginThrottled
	numLoginOutcomes
)

var loginOutcomeNames = [numLoginOutcomes]string{"disabled", "email_not_verified", "invalid_credentials", "success", "throttled"}

type mfaOutcome int

const (
	mfaEnrolled mfaOutcome = iota
	mfaInvalid
	mfaRecoveryCode
	mfaRemoved
	mfaReplayed
	mfaThrottled
	mfaVerified
	numMFAOutcomes
)

var mfaOutcomeNames = [numMFAOutcomes]string{"enrolled", "invalid", "recovery_code", "removed", "replayed", "throttled", "verified"}

func (m *metrics) factor(o mfaOutcome) { m.mfas[o].Add(1) }

type refreshOutcome int

const (
	refreshReuseGrace refreshOutcome = iota // used again within the interval plus the database timeout
	refreshReused                           // used again after it: the session was revoked
	refreshRotated                          // the token's first use
	numRefreshOutcomes
)

var refreshOutcomeNames = [numRefreshOutcomes]string{"reuse_grace", "reused", "rotated"}

// What became of a mail delivery attempt.
type mailOutcome int

const (
	mailFailed  mailOutcome = iota // given up: refused for good, or too old
	mailRetried                    // failed, and will be tried again
	mailSent
	numMailOutcomes
)

var mailOutcomeNames = [numMailOutcomes]string{"failed", "retried", "sent"}

func (m *metrics) mailed(o mailOutcome) { m.mails[o].Add(1) }

func (m *metrics) login(o loginOutcome)     { m.loginCounts[o].Add(1) }
func (m *metrics) refresh(o refreshOutcome) { m.refreshes[o].Add(1) }

// revoked counts revocations written by this instance, by what they end.
func (m *metrics) revoked(revs ...Revocation) {
	for _, r := range revs {
		if strings.HasPrefix(r.ID, sidPrefix) {
			m.blacklisted[1].Add(1)
		} else {
			m.blacklisted[0].Add(1)
		}
	}
}

// sessionEnded counts a session ended for reason (always one of the end* constants).
func (m *metrics) sessionEnded(reason string) {
	m.endsMu.Lock()
	defer m.endsMu.Unlock()
	m.sessionEnds[reason]++
}

// latencyBuckets are upper bounds in seconds; a login costs one argon2id hash, tens of
// milliseconds, and everything else should be far below that.
var latencyBuckets = [...]float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}

type histogram struct {
	counts [len(latencyBuckets) + 1]atomic.Uint64 // per bucket, not cumulative; the last is +Inf
	nanos  atomic.Int64
}

func (h *histogram) observe(d time.Duration) {
	d = max(d, 0)
	h.counts[sort.SearchFloat64s(latencyBuckets[:], d.Seconds())].Add(1)
	h.nanos.Add(int64(d))
}

// observe counts one answered request; route is the pattern that matched or "unmatched".
func (m *metrics) observe(route, method string, status int, d time.Duration) {
	k := requestKey{route, knownMethod(method), status}
	m.mu.RLock()
	n, h := m.requests[k], m.latency[route]
	m.mu.RUnlock()
	if n == nil || h == nil {
		m.mu.Lock()
		if n = m.requests[k]; n == nil {
			n = new(atomic.Uint64)
			m.requests[k] = n
		}
		if h = m.latency[route]; h == nil {
			h = new(histogram)
			m.latency[route] = h
		}
		m.mu.Unlock()
	}
	n.Add(1)
	h.observe(d)
}

// knownMethod returns method as a constant when it is a standard one and "other" otherwise, so
// that a client inventing methods adds no series.
func knownMethod(method string) string {
	switch method {
	case "GET":
		return "GET"
	case "HEAD":
		return "HEAD"
	case "POST":
		return "POST"
	case "PUT":
		return "PUT"
	case "PATCH":
		return "PATCH"
	case "DELETE":
		return "DELETE"
	case "OPTIONS":
		return "OPTIONS"
	case "CONNECT":
		return "CONNECT"
	case "TRACE":
		return "TRACE"
	}
	return "other"
}
