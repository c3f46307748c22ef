package main

import (
	"bytes"
	"net/http"
	"sort"
	"strconv"
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

	logins      [numLoginOutcomes]atomic.Uint64
	refreshes   [numRefreshOutcomes]atomic.Uint64
	revocations [2]atomic.Uint64 // tokens, sessions
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

type refreshOutcome int

const (
	refreshReuseGrace refreshOutcome = iota // used again within REFRESH_REUSE_INTERVAL: same session
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

func (m *metrics) login(o loginOutcome)     { m.logins[o].Add(1) }
func (m *metrics) refresh(o refreshOutcome) { m.refreshes[o].Add(1) }

// revoked counts revocations written by this instance, by what they end.
func (m *metrics) revoked(revs ...Revocation) {
	for _, r := range revs {
		if strings.HasPrefix(r.ID, sidPrefix) {
			m.revocations[1].Add(1)
		} else {
			m.revocations[0].Add(1)
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

// gauges are the values read at scrape time from the parts that own them.
type gauges struct {
	revocationEntries int
	revocationLag     time.Duration
	hashesRunning     int
	hashesWaiting     int
}

func handleMetrics(m *metrics, revs *revocations, h *hasher) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g := gauges{
			revocationEntries: revs.size(),
			revocationLag:     revs.lag(),
			hashesRunning:     h.running(),
			hashesWaiting:     h.waiting(),
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(m.expose(g))
	})
}

// family is one metric with its HELP and TYPE lines; samples writes its lines.
type family struct {
	name, help, typ string
	samples         func(b *bytes.Buffer, name string)
}

// expose renders every metric, families sorted by name and series by their labels, so that two
// scrapes of the same state are byte for byte the same.
func (m *metrics) expose(g gauges) []byte {
	fams := []family{
		{"auth_http_requests_total", "HTTP requests answered, by route pattern, method and status code.", "counter", m.writeRequests},
		{"auth_http_request_duration_seconds", "Time from receiving a request to answering it, by route pattern.", "histogram", m.writeLatency},
		{"auth_logins_total", "Login attempts that were decided, by outcome.", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range loginOutcomeNames {
				sample(b, name, m.logins[i].Load(), "outcome", o)
			}
		}},
		{"auth_refreshes_total", "Refresh tokens presented that were decided, by outcome.", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range refreshOutcomeNames {
				sample(b, name, m.refreshes[i].Load(), "outcome", o)
			}
		}},
		{"auth_revocations_total", "Blacklist entries written by this instance: single tokens and whole sessions.", "counter", func(b *bytes.Buffer, name string) {
			sample(b, name, m.revocations[1].Load(), "kind", "session")
			sample(b, name, m.revocations[0].Load(), "kind", "token")
		}},
		{"auth_sessions_ended_total", "Sessions ended by this instance, by reason.", "counter", func(b *bytes.Buffer, name string) {
			m.endsMu.Lock()
			reasons := make([]string, 0, len(m.sessionEnds))
			for r := range m.sessionEnds {
				reasons = append(reasons, r)
			}
			sort.Strings(reasons)
			counts := make([]uint64, len(reasons))
			for i, r := range reasons {
				counts[i] = m.sessionEnds[r]
			}
			m.endsMu.Unlock()
			for i, r := range reasons {
				sample(b, name, counts[i], "reason", r)
			}
		}},
		{"auth_mails_total", "Mail delivery attempts, by outcome: sent, retried (failed, to be tried again) and failed (given up).", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range mailOutcomeNames {
				sample(b, name, m.mails[i].Load(), "outcome", o)
			}
		}},
		{"auth_mail_outbox_age_seconds", "Age of the oldest mail waiting in the outbox, as this instance's sender last saw it; 0 when empty.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, time.Duration(m.mailOutboxAge.Load()).Seconds())
		}},
		{"auth_database_errors_total", "Database calls that failed for a reason other than a missing or duplicate record.", "counter", func(b *bytes.Buffer, name string) {
			sample(b, name, m.dbErrors.Load())
		}},
		{"auth_revocation_cache_entries", "Revocations held in this instance's memory.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.revocationEntries)
		}},
		{"auth_revocation_sync_lag_seconds", "Age of this instance's last successful read of the shared blacklist.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.revocationLag.Seconds())
		}},
		{"auth_password_hashes_in_flight", "Password hashes being computed now.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.hashesRunning)
		}},
		{"auth_password_hashes_waiting", "Password hashes waiting for a slot (HASH_QUEUE bounds them).", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.hashesWaiting)
		}},
	}
	sort.Slice(fams, func(i, j int) bool { return fams[i].name < fams[j].name })
	var b bytes.Buffer
	for _, f := range fams {
		b.WriteString("# HELP " + f.name + " " + escapeHelp(f.help) + "\n")
		b.WriteString("# TYPE " + f.name + " " + f.typ + "\n")
		f.samples(&b, f.name)
	}
	return b.Bytes()
}

func (m *metrics) writeRequests(b *bytes.Buffer, name string) {
	type series struct {
		requestKey
		n *atomic.Uint64
	}
	m.mu.RLock()
	all := make([]series, 0, len(m.requests))
	for k, n := range m.requests {
		all = append(all, series{k, n})
	}
	m.mu.RUnlock()
	sort.Slice(all, func(i, j int) bool {
		// The order of the labels on the line, so that the lines sort as text too.
		a, c := all[i], all[j]
		if a.method != c.method {
			return a.method < c.method
		}
		if a.route != c.route {
			return a.route < c.route
		}
		return a.status < c.status
	})
	for _, s := range all {
		sample(b, name, s.n.Load(), "method", s.method, "route", s.route, "status", strconv.Itoa(s.status))
	}
}

func (m *metrics) writeLatency(b *bytes.Buffer, name string) {
	m.mu.RLock()
	routes := make([]string, 0, len(m.latency))
	hists := make(map[string]*histogram, len(m.latency))
	for r, h := range m.latency {
		routes = append(routes, r)
		hists[r] = h
	}
	m.mu.RUnlock()
	sort.Strings(routes)
	for _, r := range routes {
		h := hists[r]
		var cum uint64
		for i := range h.counts {
			cum += h.counts[i].Load()
			le := "+Inf"
			if i < len(latencyBuckets) {
				le = strconv.FormatFloat(latencyBuckets[i], 'g', -1, 64)
			}
			sample(b, name+"_bucket", cum, "route", r, "le", le)
		}
		// The count is the +Inf bucket, so that the two agree even while requests land.
		sample(b, name+"_sum", time.Duration(h.nanos.Load()).Seconds(), "route", r)
		sample(b, name+"_count", cum, "route", r)
	}
}

// sample writes one line: name{label="value",...} value. labels are name, value pairs.
func sample[V uint64 | int | float64](b *bytes.Buffer, name string, v V, labels ...string) {
	b.WriteString(name)
	if len(labels) > 0 {
		b.WriteByte('{')
		for i := 0; i+1 < len(labels); i += 2 {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(labels[i])
			b.WriteString(`="`)
			b.WriteString(escapeLabel(labels[i+1]))
			b.WriteByte('"')
		}
		b.WriteByte('}')
	}
	b.WriteByte(' ')
	switch v := any(v).(type) {
	case uint64:
		b.WriteString(strconv.FormatUint(v, 10))
	case int:
		b.WriteString(strconv.Itoa(v))
	case float64:
		b.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	}
	b.WriteByte('\n')
}

var (
	labelEscaper = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`)
	helpEscaper  = strings.NewReplacer(`\`, `\\`, "\n", `\n`)
)

func escapeLabel(s string) string { return labelEscaper.Replace(s) }
func escapeHelp(s string) string  { return helpEscaper.Replace(s) }
