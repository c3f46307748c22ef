package main

// api_metrics.go serves the counters of metrics.go at /metrics in Prometheus's text format, with
// the gauges of the parts that own them and the runtime's and the process's figures.

import (
	"bytes"
	"net/http"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// gauges are the values read at scrape time from the parts that own them.
type gauges struct {
	revocationEntries int
	revocationLag     time.Duration
	revocationStale   bool
	hashesRunning     int
	hashesWaiting     int
}

func handleMetrics(m *metrics, revs *revocations, h *hasher) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		g := gauges{
			revocationEntries: revs.size(),
			revocationLag:     revs.lag(),
			revocationStale:   !revs.vouches(),
			hashesRunning:     h.running(),
			hashesWaiting:     h.waiting(),
		}
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		w.Write(m.expose(g, runtimeFamilies()...))
	})
}

// family is one metric with its HELP and TYPE lines; samples writes its lines.
type family struct {
	name, help, typ string
	samples         func(b *bytes.Buffer, name string)
}

// expose renders every metric, families sorted by name and series by their labels, so that two
// scrapes of the same state are byte for byte the same.
func (m *metrics) expose(g gauges, extra ...family) []byte {
	fams := []family{
		{"auth_http_requests_total", "HTTP requests answered, by route pattern, method and status code.", "counter", m.writeRequests},
		{"auth_http_request_duration_seconds", "Time from receiving a request to answering it, by route pattern.", "histogram", m.writeLatency},
		{"auth_logins_total", "Login attempts that were decided, by outcome.", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range loginOutcomeNames {
				sample(b, name, m.loginCounts[i].Load(), "outcome", o)
			}
		}},
		{"auth_refreshes_total", "Refresh tokens presented that were decided, by outcome: rotated (a first use), reuse_grace (a retired token again within REFRESH_REUSE_INTERVAL plus the database timeout of its first use, 15 s by default), reused (after that: the session ended).", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range refreshOutcomeNames {
				sample(b, name, m.refreshes[i].Load(), "outcome", o)
			}
		}},
		{"auth_mfa_total", "Second-factor events, by outcome.", "counter", func(b *bytes.Buffer, name string) {
			for i, o := range mfaOutcomeNames {
				sample(b, name, m.mfas[i].Load(), "outcome", o)
			}
		}},
		{"auth_revocations_total", "Blacklist entries written by this instance: single tokens and whole sessions.", "counter", func(b *bytes.Buffer, name string) {
			sample(b, name, m.blacklisted[1].Load(), "kind", "session")
			sample(b, name, m.blacklisted[0].Load(), "kind", "token")
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
		{"auth_mail_outbox_age_seconds", "Age of the oldest mail waiting to be sent, as this instance's sender last saw it; 0 when none waits.", "gauge", func(b *bytes.Buffer, name string) {
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
		{"auth_revocation_stale", "1 while this instance refuses tokens because its copy of the blacklist is older than REVOCATION_MAX_LAG.", "gauge", func(b *bytes.Buffer, name string) {
			stale := 0
			if g.revocationStale {
				stale = 1
			}
			sample(b, name, stale)
		}},
		{"auth_password_hashes_in_flight", "Password hashes being computed now.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.hashesRunning)
		}},
		{"auth_password_hashes_waiting", "Password hashes waiting for a slot (HASH_QUEUE bounds them).", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, g.hashesWaiting)
		}},
	}
	fams = append(fams, extra...)
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

// runtimeFamilies are the Go runtime's and the process's figures, under the names and types that
// Prometheus's own Go and process collectors give them, so that existing dashboards and alerts
// work unchanged. They are read at scrape time: ReadMemStats stops the world for a moment, which
// a scrape every few seconds can afford.
func runtimeFamilies() []family {
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	gc := debug.GCStats{PauseQuantiles: make([]time.Duration, 5)}
	debug.ReadGCStats(&gc)
	gauge := func(name, help string, v float64) family {
		return family{name, help, "gauge", func(b *bytes.Buffer, name string) { sample(b, name, v) }}
	}
	counter := func(name, help string, v float64) family {
		return family{name, help, "counter", func(b *bytes.Buffer, name string) { sample(b, name, v) }}
	}
	fams := []family{
		gauge("go_goroutines", "Number of goroutines that currently exist.", float64(runtime.NumGoroutine())),
		gauge("go_threads", "Number of OS threads created.", float64(pprof.Lookup("threadcreate").Count())),
		{"go_info", "Information about the Go environment.", "gauge", func(b *bytes.Buffer, name string) {
			sample(b, name, 1, "version", runtime.Version())
		}},
		{"go_gc_duration_seconds", "A summary of the wall-time pause (stop-the-world) duration in garbage collection cycles.", "summary",
			func(b *bytes.Buffer, name string) {
				for i, q := range []string{"0", "0.25", "0.5", "0.75", "1"} {
					sample(b, name, gc.PauseQuantiles[i].Seconds(), "quantile", q)
				}
				sample(b, name+"_sum", gc.PauseTotal.Seconds())
				sample(b, name+"_count", uint64(gc.NumGC))
			}},
		gauge("go_memstats_alloc_bytes", "Number of bytes allocated in heap and currently in use.", float64(ms.HeapAlloc)),
		counter("go_memstats_alloc_bytes_total", "Total number of bytes allocated in heap until now, even if released already.", float64(ms.TotalAlloc)),
		gauge("go_memstats_sys_bytes", "Number of bytes obtained from system.", float64(ms.Sys)),
		counter("go_memstats_lookups_total", "Total number of pointer lookups.", float64(ms.Lookups)),
		counter("go_memstats_mallocs_total", "Total number of heap objects allocated, both live and gc-ed.", float64(ms.Mallocs)),
		counter("go_memstats_frees_total", "Total number of heap objects frees.", float64(ms.Frees)),
		gauge("go_memstats_heap_alloc_bytes", "Number of heap bytes allocated and currently in use.", float64(ms.HeapAlloc)),
		gauge("go_memstats_heap_sys_bytes", "Number of heap bytes obtained from system.", float64(ms.HeapSys)),
		gauge("go_memstats_heap_idle_bytes", "Number of heap bytes waiting to be used.", float64(ms.HeapIdle)),
		gauge("go_memstats_heap_inuse_bytes", "Number of heap bytes that are in use.", float64(ms.HeapInuse)),
		gauge("go_memstats_heap_released_bytes", "Number of heap bytes released to OS.", float64(ms.HeapReleased)),
		gauge("go_memstats_heap_objects", "Number of currently allocated objects.", float64(ms.HeapObjects)),
		gauge("go_memstats_stack_inuse_bytes", "Number of bytes obtained from system for stack allocator in non-CGO environments.", float64(ms.StackInuse)),
		gauge("go_memstats_stack_sys_bytes", "Number of bytes obtained from system for stack allocator.", float64(ms.StackSys)),
		gauge("go_memstats_mspan_inuse_bytes", "Number of bytes in use by mspan structures.", float64(ms.MSpanInuse)),
		gauge("go_memstats_mspan_sys_bytes", "Number of bytes used for mspan structures obtained from system.", float64(ms.MSpanSys)),
		gauge("go_memstats_mcache_inuse_bytes", "Number of bytes in use by mcache structures.", float64(ms.MCacheInuse)),
		gauge("go_memstats_mcache_sys_bytes", "Number of bytes used for mcache structures obtained from system.", float64(ms.MCacheSys)),
		gauge("go_memstats_buck_hash_sys_bytes", "Number of bytes used by the profiling bucket hash table.", float64(ms.BuckHashSys)),
		gauge("go_memstats_gc_sys_bytes", "Number of bytes used for garbage collection system metadata.", float64(ms.GCSys)),
		gauge("go_memstats_other_sys_bytes", "Number of bytes used for other system allocations.", float64(ms.OtherSys)),
		gauge("go_memstats_next_gc_bytes", "Number of heap bytes when next garbage collection will take place.", float64(ms.NextGC)),
		gauge("go_memstats_last_gc_time_seconds", "Number of seconds since 1970 of last garbage collection.", float64(ms.LastGC)/1e9),
	}
	if p, ok := readProcess(); ok {
		fams = append(fams,
			counter("process_cpu_seconds_total", "Total user and system CPU time spent in seconds.", p.cpuSeconds),
			gauge("process_resident_memory_bytes", "Resident memory size in bytes.", p.residentBytes),
			gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", p.virtualBytes),
			gauge("process_open_fds", "Number of open file descriptors.", p.openFDs),
			gauge("process_max_fds", "Maximum number of open file descriptors.", p.maxFDs),
			gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.", p.startTime),
		)
	}
	return fams
}

// processFigures are what /proc says of this process.
type processFigures struct {
	cpuSeconds, residentBytes, virtualBytes, openFDs, maxFDs, startTime float64
}

// readProcess reads /proc, as Prometheus's process collector does; false where there is none.
func readProcess() (processFigures, bool) {
	var p processFigures
	stat, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		return p, false
	}
	// The command name, in parentheses, may hold spaces: the fields start after its ')'.
	fields := strings.Fields(string(stat[bytes.LastIndexByte(stat, ')')+1:]))
	if len(fields) < 22 {
		return p, false
	}
	num := func(i int) float64 { // the i-th field of stat, counting from 1 as proc(5) does
		v, _ := strconv.ParseFloat(fields[i-3], 64)
		return v
	}
	const ticks = 100 // USER_HZ, the unit of stat's times; 100 on every Linux ABI Go runs on
	p.cpuSeconds = (num(14) + num(15)) / ticks
	p.virtualBytes = num(23)
	p.residentBytes = num(24) * float64(os.Getpagesize())
	if boot, ok := bootTime(); ok {
		p.startTime = boot + num(22)/ticks
	}
	if fds, err := os.ReadDir("/proc/self/fd"); err == nil {
		p.openFDs = float64(len(fds))
	}
	if limits, err := os.ReadFile("/proc/self/limits"); err == nil {
		for _, line := range strings.Split(string(limits), "\n") {
			if f := strings.Fields(strings.TrimPrefix(line, "Max open files")); strings.HasPrefix(line, "Max open files") && len(f) > 0 {
				p.maxFDs, _ = strconv.ParseFloat(f[0], 64)
			}
		}
	}
	return p, true
}

// bootTime is when the machine started, in seconds since 1970, from /proc/stat.
func bootTime() (float64, bool) {
	stat, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, false
	}
	for _, line := range strings.Split(string(stat), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			t, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return t, err == nil
		}
	}
	return 0, false
}
