package main

import (
	"cmp"
	"fmt"
	"io"
	"math"
	"slices"
	"strings"
	"sync"
	"time"
)

// recorder keeps everything the soak saw, for the report at the end.
type recorder struct {
	mu  sync.Mutex
	out io.Writer // the timeline is written as it happens
	t0  time.Time // the start of the load; the report counts seconds from it

	calls     []callRecord
	faults    []string
	lost      []string // logins with the right password refused
	ended     []string // sessions the service ended without the user asking
	ready     []readyChange
	probes    []probeResult
	skipped   map[string]int
	loggedOut []*loggedOutCheck
	snaps     []snapshot
	retried   []time.Duration // refreshes that failed and then succeeded with the same token: for how long
	samples   []sample        // the instances' gauges, every half second

	stopAt, backAt          time.Time // the database stop
	termAt, restartedAt     time.Time // instance B's restart
	recoveredAt             time.Time // both instances ready again after the stop
	readyAgain, unreadyFrom map[string]time.Duration
}

type callRecord struct {
	ep, id, answer string
	sent           time.Time
	took           time.Duration
}

type readyChange struct {
	id, answer string
	at         time.Time
}

type sample struct {
	proc string
	at   time.Time
	g    gauges
}

type snapshot struct {
	proc, moment string
	g            gauges
	err          error
}

func newRecorder(out io.Writer) *recorder {
	return &recorder{out: out, skipped: map[string]int{}, t0: time.Now()}
}

// at is t as the report writes it: seconds since the load started.
func (r *recorder) at(t time.Time) string { return fmt.Sprintf("t=%.1fs", t.Sub(r.t0).Seconds()) }

func (r *recorder) call(ep, id string, rep reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls = append(r.calls, callRecord{ep, id, rep.answer(), rep.sent, rep.took})
}

func (r *recorder) fault(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.faults = append(r.faults, what)
}

func (r *recorder) lostUser(rep reply, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.lost = append(r.lost, r.at(rep.sent)+" "+what)
}

func (r *recorder) sessionLost(rep reply, what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ended = append(r.ended, r.at(rep.sent)+" "+what)
}

// event writes a line of the timeline.
func (r *recorder) event(what string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.eventLocked(time.Now(), what)
}

func (r *recorder) eventLocked(at time.Time, what string) {
	fmt.Fprintf(r.out, "  %7.1f  %s\n", at.Sub(r.t0).Seconds(), what)
}

func (r *recorder) start() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.t0 = time.Now()
	fmt.Fprintln(r.out, "\ntimeline (seconds from the start of the load)")
	r.eventLocked(r.t0, "load started")
}

func (r *recorder) stopped(at time.Time, midRefresh bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.stopAt = at
	what := "database stopped (the proxy's ports closed, their connections dropped)"
	if midRefresh {
		what += ", a refresh's claim just passed"
	}
	r.eventLocked(r.stopAt, what)
}

func (r *recorder) back() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.backAt = time.Now()
	r.eventLocked(r.backAt, "database back")
}

func (r *recorder) restarting() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.termAt = time.Now()
	r.eventLocked(r.termAt, "B sent SIGTERM")
}

func (r *recorder) restarted(base string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.restartedAt = time.Now()
	r.eventLocked(r.restartedAt, fmt.Sprintf("B' ready on %s and in rotation, %s after B's SIGTERM", strings.TrimPrefix(base, "http://"), secs(r.restartedAt.Sub(r.termAt))))
}

func (r *recorder) readyChanged(id string, at time.Time, answer string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ready = append(r.ready, readyChange{id, answer, at})
	if !r.stopAt.IsZero() || answer != "200" {
		r.eventLocked(at, fmt.Sprintf("%s /readyz: %s", id, answer))
	}
}

func (r *recorder) probed(p probeResult) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.probes = append(r.probes, p)
}

func (r *recorder) probeSkipped(why string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.skipped[why]++
}

func (r *recorder) loggedOutChecked(c *loggedOutCheck) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.loggedOut = append(r.loggedOut, c)
}

func (r *recorder) refreshRetried(d time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.retried = append(r.retried, d)
}

func (r *recorder) sampled(proc string, at time.Time, g gauges) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.samples = append(r.samples, sample{proc, at, g})
}

func (r *recorder) snapshot(proc, moment string, g gauges, err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.snaps = append(r.snaps, snapshot{proc, moment, g, err})
}

// settle works out, once the run is over, when each instance stopped and started being ready
// around the database stop.
func (r *recorder) settle() {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.readyAgain, r.unreadyFrom = map[string]time.Duration{}, map[string]time.Duration{}
	r.recoveredAt = r.backAt
	for _, id := range []string{"A", "B"} {
		for _, c := range r.ready {
			if c.id != id || c.at.Before(r.stopAt) {
				continue
			}
			if _, seen := r.unreadyFrom[id]; !seen && c.answer != "200" && c.at.Before(r.backAt) {
				r.unreadyFrom[id] = c.at.Sub(r.stopAt)
			}
			if !c.at.Before(r.backAt) && c.answer == "200" {
				r.readyAgain[id] = c.at.Sub(r.backAt)
				r.recoveredAt = maxTime(r.recoveredAt, c.at)
				break
			}
		}
	}
}

// phase names the part of the run a request overlapped: the database stop (until both
// instances were ready again), B's restart (until the new process was in rotation), or neither.
func (r *recorder) phase(sent, done time.Time) int {
	overlaps := func(from, to time.Time) bool { return !from.IsZero() && !done.Before(from) && !sent.After(to) }
	switch {
	case overlaps(r.stopAt, r.recoveredAt):
		return phaseStop
	case overlaps(r.termAt, r.restartedAt):
		return phaseRestart
	}
	return phaseOutside
}

const (
	phaseOutside = iota
	phaseStop
	phaseRestart
)

var endpointOrder = []string{"signup", "login", "refresh", "logout", "page",
	"refresh, logged out", "page, logged out", "probe login", "probe page", "probe logout", "probe refresh", "final login"}

// reportRequests writes the requests by endpoint and answer, the times to answer and the
// sessions and users lost, and returns the faults among them.
func (r *recorder) reportRequests(w io.Writer) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	faults := slices.Clone(r.faults)

	// Requests by endpoint and answer, in and out of the two faults.
	type key struct{ ep, answer string }
	counts := map[key]*[3]int{}
	var server [3]int // 5xx
	var fiveHundreds []string
	durs := map[string][]time.Duration{}
	for _, c := range r.calls {
		k := key{c.ep, c.answer}
		if counts[k] == nil {
			counts[k] = &[3]int{}
		}
		ph := r.phase(c.sent, c.sent.Add(c.took))
		counts[k][ph]++
		if strings.HasPrefix(c.answer, "5") {
			server[ph]++
			if !strings.HasPrefix(c.answer, "503") {
				fiveHundreds = append(fiveHundreds, fmt.Sprintf("%s %s on %s: %s", r.at(c.sent), c.ep, c.id, c.answer))
			}
		}
		if ph == phaseOutside {
			durs[c.ep] = append(durs[c.ep], c.took)
		}
	}
	keys := make([]key, 0, len(counts))
	for k := range counts {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(slices.Index(endpointOrder, a.ep), slices.Index(endpointOrder, b.ep)), cmp.Compare(a.answer, b.answer))
	})
	fmt.Fprintf(w, "\nrequests by endpoint and answer\n  %-34s %9s %9s %9s\n", "", "outside", "db stop", "restart")
	for _, k := range keys {
		c := counts[k]
		fmt.Fprintf(w, "  %-34s %9d %9d %9d\n", k.ep+" "+k.answer, c[0], c[1], c[2])
	}
	fmt.Fprintf(w, "  (\"db stop\" is from the stop until both instances answered /readyz 200 again; \"restart\" from B's SIGTERM until its successor was in rotation)\n")
	fmt.Fprintf(w, "5xx answers: %d outside, %d during the db stop, %d during the restart; other than 503: %d\n",
		server[0], server[1], server[2], len(fiveHundreds))
	for _, f := range fiveHundreds {
		faults = append(faults, "a server error: "+f)
	}

	fmt.Fprintf(w, "\ntime to answer outside the faults\n  %-10s %8s %8s %8s %8s\n", "", "n", "p50", "p99", "max")
	for _, ep := range []string{"login", "refresh", "logout", "page"} {
		d := durs[ep]
		if len(d) == 0 {
			continue
		}
		slices.Sort(d)
		fmt.Fprintf(w, "  %-10s %8d %8s %8s %8s\n", ep, len(d), ms(quantile(d, 0.5)), ms(quantile(d, 0.99)), ms(d[len(d)-1]))
	}

	fmt.Fprintf(w, "\nsessions ended unexpectedly (401 on a refresh or the page of a session the user had not ended): %d\n", len(r.ended))
	for _, e := range r.ended {
		fmt.Fprintln(w, "  "+e)
		faults = append(faults, "a session ended unexpectedly: "+e)
	}
	fmt.Fprintf(w, "lost users (a login with the right password refused): %d\n", len(r.lost))
	for _, e := range r.lost {
		fmt.Fprintln(w, "  "+e)
		faults = append(faults, "a lost user: "+e)
	}

	return faults
}

// reportRevocation writes how long logouts went unseen outside the database stop.
func (r *recorder) reportRevocation(w io.Writer) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var faults []string
	var calm, restart []time.Duration
	never := 0
	for _, p := range r.probes {
		if p.never {
			never++
			faults = append(faults, fmt.Sprintf("a revocation never enforced: probe logged out on %s at %s, accepted by %s until it expired", p.from, r.at(p.ackAt), p.to))
			continue
		}
		switch r.phase(p.ackAt, p.ackAt.Add(p.lag)) {
		case phaseOutside:
			calm = append(calm, p.lag)
		case phaseRestart:
			restart = append(restart, p.lag)
		}
	}
	fmt.Fprintln(w, "\nrevocation lag: a logout acknowledged by one instance until the other refuses its access token")
	fmt.Fprintf(w, "  probes outside the faults: %s\n", lagSummary(calm))
	slow := slices.Clone(r.probes)
	slices.SortFunc(slow, func(a, b probeResult) int { return cmp.Compare(b.lag, a.lag) })
	for _, p := range slow[:min(3, len(slow))] {
		if p.lag > 1100*time.Millisecond && r.phase(p.ackAt, p.ackAt.Add(p.lag)) == phaseOutside {
			fmt.Fprintf(w, "    slow: logged out on %s at %s, refused by %s %s later\n", p.from, r.at(p.ackAt), p.to, secs(p.lag))
		}
	}
	if len(restart) > 0 {
		fmt.Fprintf(w, "  probes across B's restart: %s\n", lagSummary(restart))
	}
	if never > 0 {
		fmt.Fprintf(w, "  probes never refused: %d\n", never)
	}
	for why, n := range r.skipped {
		fmt.Fprintf(w, "  probe rounds skipped (%s): %d\n", why, n)
	}
	var first, later, neverOut, neverFault, refreshed, expired int
	var worst time.Duration
	for _, c := range r.loggedOut {
		ph := r.phase(c.ackAt, c.expires)
		switch {
		case c.refreshed:
			refreshed++
		case c.expiredFirst:
			expired++
			continue
		case c.never && ph == phaseOutside:
			neverOut++
			faults = append(faults, fmt.Sprintf("a revocation never enforced: a session logged out at %s was accepted until its token expired", r.at(c.ackAt)))
		case c.never:
			neverFault++
		case c.refusedIn <= 1600*time.Millisecond:
			first++
		default:
			later++
			worst = max(worst, c.refusedIn)
		}
	}
	fmt.Fprintf(w, "  virtual users' logouts, the access token tried on both instances 1.5s after: %d; refused at once %d, later %d (at most %s), never: %d outside the faults, %d across them\n",
		len(r.loggedOut)-expired, first, later, secs(worst), neverOut, neverFault)
	fmt.Fprintf(w, "  a logged-out session's refresh token refreshed: %d\n", refreshed)
	if expired > 0 {
		fmt.Fprintf(w, "  logouts whose access token had already expired (a refresh held up by the stop), their refresh token refused: %d\n", expired)
	}

	// How stale each instance's copy of the blacklist got, from its own gauge.
	fmt.Fprintln(w, "  auth_revocation_sync_lag_seconds, read every half second, outside the faults:")
	for _, proc := range []string{"A", "B", "B'"} {
		var lags []float64
		var over []string
		for _, s := range r.samples {
			// A sample belongs to the stop when the read it dates from was before the stop ended.
			if s.proc != proc || r.phase(s.at.Add(-seconds(s.g.syncLag)), s.at) != phaseOutside {
				continue
			}
			lags = append(lags, s.g.syncLag)
			if s.g.syncLag > 1.5 {
				over = append(over, fmt.Sprintf("%.1fs at %s", s.g.syncLag, r.at(s.at)))
			}
		}
		if len(lags) == 0 {
			continue
		}
		slices.Sort(lags)
		fmt.Fprintf(w, "    %-3s n=%d, median %.2fs, max %.2fs; over 1.5s: %d", proc, len(lags), lags[len(lags)/2], lags[len(lags)-1], len(over))
		if len(over) > 0 {
			fmt.Fprintf(w, " (%s)", strings.Join(over[:min(8, len(over))], ", "))
		}
		fmt.Fprintln(w)
	}

	return faults
}

// reportStop writes what the database stop did: readiness, the page's answers, and the sessions
// logged out around it.
func (r *recorder) reportStop(w io.Writer, maxLag time.Duration, probes []*outageProbe, lost lostRefresh) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var faults []string
	if r.stopAt.IsZero() {
		return nil
	}
	fmt.Fprintf(w, "\ndatabase stop at %s for %s; REVOCATION_MAX_LAG %s\n", r.at(r.stopAt), secs(r.backAt.Sub(r.stopAt)), lagSetting(maxLag))
	for _, id := range []string{"A", "B"} {
		from, ok := r.unreadyFrom[id]
		fromText := "never"
		if ok {
			fromText = "from " + secs(from) + " after the stop"
		}
		again, ok := r.readyAgain[id]
		againText := "not again"
		if ok {
			againText = secs(again) + " after the database was back"
		}
		fmt.Fprintf(w, "  %s: /readyz not 200 %s; 200 again %s\n", id, fromText, againText)
		if !ok {
			faults = append(faults, fmt.Sprintf("instance %s was not ready again after the database came back", id))
		}
	}
	pages := map[string]int{}
	for _, c := range r.calls {
		if c.ep == "page" && !c.sent.Before(r.stopAt) && c.sent.Before(r.backAt) {
			pages[c.answer]++
		}
	}
	fmt.Fprintf(w, "  the virtual users' page requests while the database was stopped: %s\n", tally(pages))
	worst := map[string]float64{}
	for _, s := range r.samples {
		if r.phase(s.at.Add(-seconds(s.g.syncLag)), s.at) == phaseStop {
			worst[s.proc] = max(worst[s.proc], s.g.syncLag)
		}
	}
	fmt.Fprintf(w, "  auth_revocation_sync_lag_seconds at its highest: A %.1fs, B %.1fs\n", worst["A"], worst["B"])
	faults = append(faults, r.outageProbes(w, probes)...)

	how := "cut as the database got its claim of the token"
	if !lost.claimed {
		how = "sent as the database stopped (no claim seen within 3s)"
	}
	fmt.Fprintf(w, "  a refresh on A %s: answered %s; retried after every Retry-After, %d times, until %s %s\n",
		how, lost.first.answer(), lost.tries, lost.final.answer(), r.sinceBack(lost.final.done()))
	slices.Sort(r.retried)
	fmt.Fprintf(w, "  virtual users' refreshes answered 503 or not at all, then retried with the same token until 200: %d", len(r.retried))
	if len(r.retried) > 0 {
		fmt.Fprintf(w, ", the longest %s after the first failure", secs(r.retried[len(r.retried)-1]))
	}
	fmt.Fprintln(w)
	return faults
}

// outageProbes writes what became of the sessions logged out on A around the stop.
func (r *recorder) outageProbes(w io.Writer, probes []*outageProbe) []string {
	var faults []string
	fmt.Fprintln(w, "  sessions logged out on A around the stop, their access token polled on B every 100 ms:")
	for _, p := range probes {
		var b strings.Builder
		if p.before {
			fmt.Fprintf(&b, "#%d logged out %s before the stop (%s)", p.n, secs(r.stopAt.Sub(p.firstTry.done())), p.firstTry.answer())
		} else {
			fmt.Fprintf(&b, "#%d logged out %s into the stop: %s; A then answered %s for it", p.n, secs(p.firstTry.sent.Sub(r.stopAt)), p.firstTry.answer(), p.onA)
			if !p.ackAt.IsZero() {
				fmt.Fprintf(&b, "; the retried logout landed %s", r.sinceBack(p.ackAt))
			}
		}
		from := p.firstTry.sent
		switch {
		case p.refusedAt.IsZero() && p.expired:
			fmt.Fprintf(&b, "; B accepted it until it expired")
		case p.refusedAt.IsZero():
			fmt.Fprintf(&b, "; B never refused it")
			faults = append(faults, fmt.Sprintf("outage probe #%d: B never refused a token logged out on A", p.n))
		default:
			fmt.Fprintf(&b, "; B accepted it for %s, then answered %s", secs(p.refusedAt.Sub(from)), p.refusal)
			if !p.lastAccept.IsZero() {
				fmt.Fprintf(&b, " (last 200 %s)", r.sinceBack(p.lastAccept))
			}
		}
		if p.acceptAgain > 0 {
			fmt.Fprintf(&b, "; B accepted it again %d times after refusing it, the last %s", p.acceptAgain, r.sinceBack(p.againAt))
		}
		switch {
		case !p.revokedAt.IsZero():
			fmt.Fprintf(&b, "; 401 on B %s", r.sinceBack(p.revokedAt))
		case p.expired:
			fmt.Fprintf(&b, "; it expired before B answered 401")
		}
		fmt.Fprintln(w, "    "+b.String())
	}
	return faults
}

// reportInstances writes each process's gauges at each moment and the warnings and errors it
// logged, and returns the faults: goroutines that did not come back down once the load was over,
// a panic, an error logged.
func (r *recorder) reportInstances(w io.Writer, procs ...*process) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var faults []string
	fmt.Fprintf(w, "\ninstances, from /metrics\n  %-8s %-30s %10s %8s %19s\n", "process", "moment", "goroutines", "RSS MiB", "revocation entries")
	rest := map[string][]float64{} // goroutines at rest, before and after the load
	for _, s := range r.snaps {
		if s.err != nil {
			fmt.Fprintf(w, "  %-8s %-30s %v\n", s.proc, s.moment, s.err)
			continue
		}
		fmt.Fprintf(w, "  %-8s %-30s %10.0f %8.1f %19.0f\n", s.proc, s.moment, s.g.goroutines, s.g.rssMiB, s.g.revocations)
		if strings.Contains(s.moment, "rest") || strings.Contains(s.moment, "before it gets load") {
			rest[s.proc] = append(rest[s.proc], s.g.goroutines)
		}
	}
	// At rest, with no client connection open, a process runs the same goroutines whatever work
	// it has done; the margin is for the database driver's connections being set up or closed.
	for proc, g := range rest {
		if len(g) == 2 && g[1] > g[0]+10 {
			faults = append(faults, fmt.Sprintf("instance %s: %0.f goroutines at rest after the load, %0.f before it", proc, g[1], g[0]))
		}
	}
	fmt.Fprintln(w, "log lines at WARN and ERROR")
	for _, p := range procs {
		p.mu.Lock()
		fmt.Fprintf(w, "  %s: %s\n", p.name, tally(p.logged))
		for k, n := range p.logged {
			if strings.HasPrefix(k, "ERROR") {
				faults = append(faults, fmt.Sprintf("instance %s logged %q %d times", p.name, k, n))
			}
		}
		p.mu.Unlock()
		if n := p.panics.Load(); n > 0 {
			faults = append(faults, fmt.Sprintf("instance %s: %d log lines mention a panic", p.name, n))
		}
	}
	return faults
}

func quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[max(int(math.Ceil(q*float64(len(sorted))))-1, 0)]
}

func lagSummary(d []time.Duration) string {
	if len(d) == 0 {
		return "none"
	}
	slices.Sort(d)
	return fmt.Sprintf("n=%d, median %s, p99 %s, max %s", len(d), secs(quantile(d, 0.5)), secs(quantile(d, 0.99)), secs(d[len(d)-1]))
}

func tally(m map[string]int) string {
	keys := slices.Sorted(func(yield func(string) bool) {
		for k := range m {
			if !yield(k) {
				return
			}
		}
	})
	parts := make([]string, len(keys))
	for i, k := range keys {
		parts[i] = fmt.Sprintf("%s: %d", k, m[k])
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}

func lagSetting(d time.Duration) string {
	if d == 0 {
		return "off"
	}
	return d.String()
}

func seconds(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }

func ms(d time.Duration) string   { return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond)) }
func secs(d time.Duration) string { return fmt.Sprintf("%.2fs", d.Seconds()) }

// sinceBack places t against the database's return.
func (r *recorder) sinceBack(t time.Time) string {
	if d := t.Sub(r.backAt); d >= 0 {
		return secs(d) + " after the database was back"
	} else {
		return secs(-d) + " before the database was back"
	}
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}
