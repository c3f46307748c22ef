package main

import (
	"bytes"
	"math"
	"net/http"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
)

// scrape reads GET /metrics where e serves it and parses it with Prometheus's own parser, so that
// a format error fails the test rather than a Prometheus server in production.
func scrape(tb testing.TB, e *testEnv) map[string]*dto.MetricFamily {
	tb.Helper()
	var r response
	if e.metricsSrv != nil {
		r = send(tb, e.metricsSrv.Client(), "GET", e.metricsSrv.URL+"/metrics", nil)
	} else {
		r = e.do(tb, "GET", "/metrics", nil)
	}
	if r.status != http.StatusOK {
		tb.Fatalf("GET /metrics: %d %s", r.status, r.raw)
	}
	if ct := r.header.Get("Content-Type"); ct != "text/plain; version=0.0.4; charset=utf-8" {
		tb.Fatalf("Content-Type %q, want the text exposition format 0.0.4", ct)
	}
	return parseExposition(tb, []byte(r.raw))
}

func parseExposition(tb testing.TB, text []byte) map[string]*dto.MetricFamily {
	tb.Helper()
	var p expfmt.TextParser
	fams, err := p.TextToMetricFamilies(bytes.NewReader(text))
	if err != nil {
		tb.Fatalf("the exposition does not parse: %v\n%s", err, text)
	}
	return fams
}

// metricValue sums the samples of name whose labels include the given name, value pairs: a
// counter's or gauge's value, a histogram's count.
func metricValue(tb testing.TB, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	tb.Helper()
	f := fams[name]
	if f == nil {
		tb.Fatalf("no metric %s", name)
	}
	var sum float64
	found := false
next:
	for _, m := range f.GetMetric() {
		for i := 0; i+1 < len(labels); i += 2 {
			if labelOf(m, labels[i]) != labels[i+1] {
				continue next
			}
		}
		found = true
		switch f.GetType() {
		case dto.MetricType_COUNTER:
			sum += m.GetCounter().GetValue()
		case dto.MetricType_GAUGE:
			sum += m.GetGauge().GetValue()
		case dto.MetricType_HISTOGRAM:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	if !found {
		tb.Fatalf("no series of %s with %q", name, labels)
	}
	return sum
}

func labelOf(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestMetricsCountWhatHappened(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.maxFailures = 1 })
	_, _, refresh := e.user(t) // a signup and a successful login
	e.do(t, "POST", "/auth/login", credentials{"nobody@example.com", "wrong password"}).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/login", credentials{"nobody@example.com", "wrong password"}).want(t, 429, "too_many_attempts")
	e.refresh(t, refresh).want(t, 200, "") // rotated
	e.refresh(t, refresh).want(t, 200, "") // another tab, within the reuse interval
	e.clock.Advance(e.reuseWindow())
	e.refresh(t, refresh).want(t, 401, "token_reused") // the session ends
	_, access, _ := e.user(t)
	e.do(t, "POST", "/auth/logout", nil, "Authorization", "Bearer "+access).want(t, 200, "")
	e.do(t, "GET", "/nowhere", nil).want(t, 404, "not_found")
	e.do(t, "GET", "/auth/login", nil).want(t, 405, "method_not_allowed")
	e.do(t, "BREW", "/auth/page", nil).want(t, 401, "token_missing")

	fams := scrape(t, e)
	for _, tt := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"auth_logins_total", []string{"outcome", "success"}, 2},
		{"auth_logins_total", []string{"outcome", "invalid_credentials"}, 1},
		{"auth_logins_total", []string{"outcome", "throttled"}, 1},
		{"auth_refreshes_total", []string{"outcome", "rotated"}, 1},
		{"auth_refreshes_total", []string{"outcome", "reuse_grace"}, 1},
		{"auth_refreshes_total", []string{"outcome", "reused"}, 1},
		{"auth_revocations_total", []string{"kind", "session"}, 2}, // the reuse and the logout
		{"auth_revocations_total", []string{"kind", "token"}, 1},   // the logged-out access token
		{"auth_database_errors_total", nil, 0},
		{"auth_revocation_cache_entries", nil, 3},
		{"auth_revocation_sync_lag_seconds", nil, e.reuseWindow().Seconds()},
		{"auth_password_hashes_in_flight", nil, 0},
		{"auth_password_hashes_waiting", nil, 0},
		{"auth_http_requests_total", []string{"route", "POST /auth/login", "method", "POST", "status", "200"}, 2},
		{"auth_http_requests_total", []string{"route", "POST /auth/login", "status", "401"}, 1},
		{"auth_http_requests_total", []string{"route", "POST /auth/login", "status", "429"}, 1},
		{"auth_http_requests_total", []string{"route", "POST /auth/refresh"}, 3},
		{"auth_http_requests_total", []string{"route", "POST /auth/signup", "status", "201"}, 2},
		{"auth_http_requests_total", []string{"route", "unmatched", "method", "GET", "status", "404"}, 1},
		{"auth_http_requests_total", []string{"route", "unmatched", "method", "GET", "status", "405"}, 1},
		{"auth_http_requests_total", []string{"route", "/auth/page", "method", "other", "status", "401"}, 1},
		{"auth_http_request_duration_seconds", []string{"route", "POST /auth/login"}, 4},
		{"auth_http_request_duration_seconds", nil, 13},
	} {
		if got := metricValue(t, fams, tt.name, tt.labels...); got != tt.want {
			t.Errorf("%s%q = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
	for name, typ := range map[string]dto.MetricType{
		"auth_http_requests_total":           dto.MetricType_COUNTER,
		"auth_http_request_duration_seconds": dto.MetricType_HISTOGRAM,
		"auth_revocation_cache_entries":      dto.MetricType_GAUGE,
	} {
		if got := fams[name].GetType(); got != typ {
			t.Errorf("%s is a %v, want a %v", name, got, typ)
		}
	}
}

func TestMetricsCountDatabaseErrors(t *testing.T) {
	t.Parallel()
	e := newUnreachableEnv(t)
	// A sign-up first counts its client's other attempts: one call, which fails.
	e.do(t, "POST", "/auth/signup", credentials{"a@example.com", "password123"}).want(t, 503, "unavailable")
	if got := metricValue(t, scrape(t, e), "auth_database_errors_total"); got != 1 {
		t.Fatalf("auth_database_errors_total = %v, want 1", got)
	}
}

func TestMetricsEnabledSetting(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		value string
		want  bool
	}{{"", true}, {"true", true}, {"false", false}, {"0", false}} {
		c, err := loadConfig(func(k string) string { return map[string]string{"METRICS_ENABLED": tt.value}[k] })
		if err != nil || c.metricsOn != tt.want {
			t.Errorf("METRICS_ENABLED=%q: metrics %v, %v; want %v", tt.value, c.metricsOn, err, tt.want)
		}
	}
	t.Run("refuses a value that is not a boolean rather than guess", func(t *testing.T) {
		_, err := loadConfig(func(k string) string { return map[string]string{"METRICS_ENABLED": "no"}[k] })
		if err == nil || !strings.Contains(err.Error(), "METRICS_ENABLED") {
			t.Fatalf("got %v, want an error naming METRICS_ENABLED", err)
		}
	})
}

func TestMetricsEndpointIsOffWhenDisabled(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"", metricsOnAPIPort} {
		off, err := loadConfig(func(k string) string {
			return map[string]string{"METRICS_ENABLED": "false", "METRICS_ADDR": addr}[k]
		})
		if err != nil {
			t.Fatal(err)
		}
		e := newTestEnv(t, func(c *config) { *c = off })
		e.do(t, "GET", "/metrics", nil).want(t, 404, "not_found")
		if e.metricsSrv != nil {
			t.Fatalf("METRICS_ADDR=%q: a metrics listener with METRICS_ENABLED=false", addr)
		}
	}
}

// The counters move with what happens to an account: a reset mailed, a login refused for an
// unverified address. Read from the public port, they would tell which addresses have accounts.
func TestMetricsAreNotServedOnThePublicPort(t *testing.T) {
	t.Parallel()
	c, err := loadConfig(func(string) string { return "" })
	if err != nil || c.metricsAddr != "127.0.0.1:7880" {
		t.Fatalf("METRICS_ADDR defaults to %q (%v), want 127.0.0.1:7880", c.metricsAddr, err)
	}
	e := newTestEnv(t)
	e.do(t, "GET", "/metrics", nil).want(t, 404, "not_found")
	metricValue(t, scrape(t, e), "auth_http_requests_total", "route", "unmatched", "status", "404")
}

func TestMetricsAddrPublicServesThemOnTheAPIPort(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.metricsAddr = metricsOnAPIPort })
	if e.metricsSrv != nil {
		t.Fatal("a metrics listener of their own with METRICS_ADDR=public")
	}
	e.do(t, "GET", "/healthz", nil).want(t, 200, "")
	metricValue(t, scrape(t, e), "auth_http_requests_total")
}

func TestMetricsAddrSetting(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ value, want string }{
		{"", ""}, {"public", ""}, {"127.0.0.1:0", ""}, {"[::1]:9090", ""}, {":9090", ""},
		{"7880", "METRICS_ADDR"}, {"Public", "METRICS_ADDR"}, {"127.0.0.1", "METRICS_ADDR"},
	} {
		_, err := loadConfig(func(k string) string { return map[string]string{"METRICS_ADDR": tt.value}[k] })
		if (err == nil) != (tt.want == "") || (err != nil && !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("METRICS_ADDR=%q: got %v, want an error naming %q", tt.value, err, tt.want)
		}
	}
}

func TestMetricsExposition(t *testing.T) {
	t.Parallel()
	t.Run("escapes label values so that any of them parses back", func(t *testing.T) {
		m := newMetrics()
		odd := "GET /a\"b\\c\nd"
		m.observe(odd, "GET", 200, time.Millisecond)
		fams := parseExposition(t, m.expose(gauges{}))
		if got := metricValue(t, fams, "auth_http_requests_total", "route", odd); got != 1 {
			t.Fatalf("got %v requests for the odd route, want 1", got)
		}
	})
	t.Run("names an invented method other so that clients cannot add series", func(t *testing.T) {
		m := newMetrics()
		m.observe("/auth/page", "BREW", 401, 0)
		m.observe("/auth/page", "MKCOFFEE", 401, 0)
		fams := parseExposition(t, m.expose(gauges{}))
		if n := len(fams["auth_http_requests_total"].GetMetric()); n != 1 {
			t.Fatalf("%d series, want 1", n)
		}
		metricValue(t, fams, "auth_http_requests_total", "method", "other")
	})
	t.Run("puts each duration in the buckets it falls under", func(t *testing.T) {
		m := newMetrics()
		for _, d := range []time.Duration{0, 3 * time.Millisecond, 50 * time.Millisecond, time.Minute} {
			m.observe("GET /healthz", "GET", 200, d)
		}
		fams := parseExposition(t, m.expose(gauges{}))
		h := fams["auth_http_request_duration_seconds"].GetMetric()[0].GetHistogram()
		want := map[float64]uint64{.001: 1, .0025: 1, .005: 2, .05: 3, 10: 3}
		for _, b := range h.GetBucket() {
			if n, ok := want[b.GetUpperBound()]; ok && b.GetCumulativeCount() != n {
				t.Errorf("bucket le=%v holds %d, want %d", b.GetUpperBound(), b.GetCumulativeCount(), n)
			}
		}
		if h.GetSampleCount() != 4 || math.Abs(h.GetSampleSum()-60.053) > 1e-9 {
			t.Errorf("count %d, sum %v; want 4 and 60.053", h.GetSampleCount(), h.GetSampleSum())
		}
	})
	t.Run("writes the same bytes for the same state, families sorted by name", func(t *testing.T) {
		m := newMetrics()
		for _, route := range []string{"POST /auth/login", "GET /healthz", "unmatched"} {
			for _, status := range []int{500, 200, 404} {
				m.observe(route, "POST", status, time.Millisecond)
			}
		}
		a, b := m.expose(gauges{}), m.expose(gauges{})
		if !bytes.Equal(a, b) {
			t.Fatalf("two expositions of one state differ:\n%s\n%s", a, b)
		}
		// Every family's lines sort as text, except a histogram's, whose buckets go by le.
		var names []string
		samples := map[string][]string{}
		for _, line := range strings.Split(strings.TrimSpace(string(a)), "\n") {
			if name, ok := strings.CutPrefix(line, "# TYPE "); ok {
				names = append(names, name)
			} else if !strings.HasPrefix(line, "#") && !strings.Contains(line, "_seconds_") {
				samples[names[len(names)-1]] = append(samples[names[len(names)-1]], line)
			}
		}
		if !sortedStrings(names) {
			t.Fatalf("families not sorted by name:\n%s", a)
		}
		for name, lines := range samples {
			if !sortedStrings(lines) {
				t.Errorf("series of %s not sorted:\n%s", name, strings.Join(lines, "\n"))
			}
		}
	})
}

func sortedStrings(s []string) bool {
	for i := 1; i < len(s); i++ {
		if s[i-1] > s[i] {
			return false
		}
	}
	return true
}

// Counting is on every request's path; a benchmark of /auth/page measures the whole of it.
func TestCountingAKnownRequestAllocatesNothing(t *testing.T) {
	m := newMetrics()
	m.observe("GET /auth/page", "GET", 200, time.Millisecond)
	if n := testing.AllocsPerRun(100, func() { m.observe("GET /auth/page", "GET", 200, time.Millisecond) }); n != 0 {
		t.Fatalf("%v allocations per request, want 0", n)
	}
}

func BenchmarkMetricsObserve(b *testing.B) {
	m := newMetrics()
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.observe("/auth/page", "GET", 200, time.Millisecond)
		}
	})
}

// Dashboards and alerts written for Prometheus's own Go and process collectors must work
// unchanged: the same names, the same types, values that make sense.
func TestMetricsHaveTheRuntimeAndProcessFiguresUnderPrometheusNames(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	fams := scrape(t, e)
	for name, typ := range map[string]dto.MetricType{
		"go_goroutines":                    dto.MetricType_GAUGE,
		"go_threads":                       dto.MetricType_GAUGE,
		"go_info":                          dto.MetricType_GAUGE,
		"go_gc_duration_seconds":           dto.MetricType_SUMMARY,
		"go_memstats_alloc_bytes":          dto.MetricType_GAUGE,
		"go_memstats_alloc_bytes_total":    dto.MetricType_COUNTER,
		"go_memstats_sys_bytes":            dto.MetricType_GAUGE,
		"go_memstats_heap_alloc_bytes":     dto.MetricType_GAUGE,
		"go_memstats_heap_inuse_bytes":     dto.MetricType_GAUGE,
		"go_memstats_heap_objects":         dto.MetricType_GAUGE,
		"go_memstats_mallocs_total":        dto.MetricType_COUNTER,
		"go_memstats_frees_total":          dto.MetricType_COUNTER,
		"go_memstats_next_gc_bytes":        dto.MetricType_GAUGE,
		"go_memstats_last_gc_time_seconds": dto.MetricType_GAUGE,
		"go_memstats_stack_inuse_bytes":    dto.MetricType_GAUGE,
		"process_cpu_seconds_total":        dto.MetricType_COUNTER,
		"process_resident_memory_bytes":    dto.MetricType_GAUGE,
		"process_virtual_memory_bytes":     dto.MetricType_GAUGE,
		"process_open_fds":                 dto.MetricType_GAUGE,
		"process_max_fds":                  dto.MetricType_GAUGE,
		"process_start_time_seconds":       dto.MetricType_GAUGE,
	} {
		f := fams[name]
		if f == nil {
			t.Errorf("no %s", name)
			continue
		}
		if f.GetType() != typ {
			t.Errorf("%s is a %v, want a %v", name, f.GetType(), typ)
		}
	}
	value := func(name string) float64 { return metricValue(t, fams, name) }
	if value("go_goroutines") < 2 || value("go_memstats_heap_alloc_bytes") <= 0 || value("process_open_fds") < 3 {
		t.Errorf("goroutines %v, heap %v, open fds %v: not this process's", value("go_goroutines"),
			value("go_memstats_heap_alloc_bytes"), value("process_open_fds"))
	}
	if rss := value("process_resident_memory_bytes"); rss < 1<<20 || rss > 64<<30 {
		t.Errorf("resident memory %v bytes", rss)
	}
	if start := value("process_start_time_seconds"); math.Abs(start-float64(time.Now().Unix())) > 24*3600 {
		t.Errorf("start time %v, not today", start)
	}
	if q := fams["go_gc_duration_seconds"].GetMetric()[0].GetSummary().GetQuantile(); len(q) != 5 {
		t.Errorf("go_gc_duration_seconds has %d quantiles, want 5", len(q))
	}
	if v := labelOf(fams["go_info"].GetMetric()[0], "version"); !strings.HasPrefix(v, "go") {
		t.Errorf("go_info version %q", v)
	}
}
