// Command soak runs two instances of the service on one shared database for a few minutes under
// virtual users, stops the database (10s) at a third of the run and restarts one instance at two
// thirds, and reports what the users saw: requests by endpoint and answer, sessions the service
// ended without the user asking, users who could not log in with the right password, how long a
// logout on one instance goes unseen by the other (in calm and around the stop), how soon the
// instances were ready again, and each instance's goroutines and memory. It exits non-zero when it
// found a fault.
//
// scripts/soak.sh builds the service, this program and scripts/ferretdb and runs it. Everything
// listens on 127.0.0.1 and stops with the soak. The instances get the caller's environment, so
// REVOCATION_MAX_LAG=3s scripts/soak.sh runs them with that setting.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"time"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Environ(), os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

// soak is what the virtual users, the probes and the schedule share.
type soak struct {
	rot    rotation
	client *http.Client // the users' and probes' client, with keep-alive connections
	rec    *recorder
	leeway time.Duration // TOKEN_LEEWAY: how long past expiry a token is still accepted
	checks sync.WaitGroup
}

var errFaults = errors.New("faults found")

func run(ctx context.Context, args []string, getenv func(string) string, environ []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("soak", flag.ContinueOnError)
	authBin := fs.String("auth", "", "the service's binary (required)")
	ferretBin := fs.String("ferretdb", "", "the scripts/ferretdb binary (required)")
	dir := fs.String("dir", "", "a directory for the database and the logs (required)")
	duration := fs.Duration("duration", 5*time.Minute, "how long the load runs")
	nUsers := fs.Int("users", 30, "virtual users")
	stopFor := fs.Duration("stop", 10*time.Second, "how long the database stays stopped")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *authBin == "" || *ferretBin == "" || *dir == "" {
		return errors.New("-auth, -ferretdb and -dir are required")
	}
	if *duration < time.Minute || *stopFor > *duration/4 {
		return errors.New("-duration must be at least a minute and at least four times -stop")
	}
	maxLag, err := durationEnv(getenv, "REVOCATION_MAX_LAG", 0)
	if err != nil {
		return err
	}
	leeway, err := durationEnv(getenv, "TOKEN_LEEWAY", 5*time.Second)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "soak: %s, 2 instances, %d virtual users, database stopped for %s at a third, instance B restarted at two thirds\n",
		*duration, *nUsers, *stopFor)
	fmt.Fprintf(stdout, "REVOCATION_MAX_LAG %s; %s, %d cores, load average %s\n",
		lagSetting(maxLag), runtime.Version(), runtime.NumCPU(), loadAverage())

	s := &soak{
		rot: rotation{byID: map[string]*instance{}},
		client: &http.Client{Timeout: 10 * time.Second,
			Transport: &http.Transport{MaxIdleConnsPerHost: 64, IdleConnTimeout: 30 * time.Second}},
		rec:    newRecorder(stdout),
		leeway: leeway,
	}
	var procs []*process // killed if the soak gives up half-way
	defer func() {
		for _, p := range procs {
			p.kill()
		}
	}()

	db, dbAddr, err := startDatabase(*ferretBin, filepath.Join(*dir, "db"), filepath.Join(*dir, "database.log"))
	if err != nil {
		return err
	}
	procs = append(procs, db)
	px, err := newProxy(dbAddr, "A", "B")
	if err != nil {
		return err
	}
	defer px.stop()
	secret := make([]byte, 48)
	rand.Read(secret)
	// name is the process ("B'" is B's successor), id its place in rotation and its way to the
	// database.
	start := func(name, id string) (*instance, error) {
		env := instanceEnv(environ, "mongodb://"+px.addr(id)+"/", base64.StdEncoding.EncodeToString(secret), filepath.Join(*dir, "data"))
		in, err := startInstance(name, *authBin, env, filepath.Join(*dir, strings.ReplaceAll(name, "'", "2")+".log"))
		if err == nil {
			procs = append(procs, in.process)
		}
		return in, err
	}
	A, err := start("A", "A")
	if err != nil {
		return err
	}
	B, err := start("B", "B")
	if err != nil {
		return err
	}
	s.rot.set("A", A)
	s.rot.set("B", B)

	// Every user signs up once; the clock starts when they all have.
	users := make([]*vu, *nUsers)
	for i := range users {
		users[i] = &vu{name: fmt.Sprintf("vu%02d", i+1), account: account{
			email:    fmt.Sprintf("vu%02d@soak.example", i+1),
			password: fmt.Sprintf("soak password %02d", i+1),
			// 198.18.0.0/15 is set aside for benchmarks.
			xff: fmt.Sprintf("198.18.%d.%d", i/250, i%250+1)}}
	}
	prober := account{"probe@soak.example", "soak probe password", "198.19.0.1"}
	stopProber := account{"stop-probe@soak.example", "soak probe password", "198.19.0.2"}
	accounts := []account{prober, stopProber}
	for _, u := range users {
		accounts = append(accounts, u.account)
	}
	if err := s.signUp(ctx, accounts); err != nil {
		return err
	}
	s.client.CloseIdleConnections()
	time.Sleep(time.Second)
	s.snapshot(A, "A", "at rest, before the load")
	s.snapshot(B, "B", "at rest, before the load")

	s.rec.start()
	loadCtx, stopLoad := context.WithCancel(ctx)
	defer stopLoad()
	var running sync.WaitGroup
	for i, u := range users {
		// Started over ten seconds, so that their refreshes spread over the access token's life.
		running.Go(func() {
			if pause(loadCtx, time.Duration(i)*10*time.Second/time.Duration(len(users))) {
				s.runVU(loadCtx, u)
			}
		})
	}
	running.Go(func() { s.probeLoop(loadCtx, prober, 3*time.Second) })
	running.Go(func() { s.sampleGauges(loadCtx, 500*time.Millisecond) })
	watchCtx, stopWatch := context.WithCancel(ctx)
	defer stopWatch()
	var watching sync.WaitGroup
	for _, id := range []string{"A", "B"} {
		watching.Go(func() { s.watchReady(watchCtx, id, 200*time.Millisecond) })
	}
	t0 := s.rec.t0
	interrupted := errors.New("interrupted")

	// The database stop, with sessions logged out on A just before it and during it.
	stopAt := t0.Add(*duration / 3)
	if !pauseUntil(ctx, stopAt.Add(-4*time.Second)) {
		return interrupted
	}
	op := &outageProbes{s: s, a: stopProber}
	if err := op.prepare(7); err != nil {
		s.rec.fault("the stop's probes could not be prepared: " + err.Error())
	}
	pauseUntil(ctx, stopAt)
	// Just after B has read the blacklist, so that it cannot see the logouts that follow before
	// the stop: the worst case, for an instance that polls every REVOCATION_SYNC_INTERVAL.
	select {
	case <-px.await("B", []byte("blacklist\x00"), []byte("\x03created_at\x00")):
		time.Sleep(20 * time.Millisecond) // its reply on the way
	case <-time.After(5 * time.Second):
		s.rec.event("B's poll of the blacklist not seen within 5s; stopping anyway")
	}
	for i := range 3 {
		if err := op.logOut(loadCtx, i, true); err != nil {
			s.rec.fault(fmt.Sprintf("outage probe #%d: %v", i+1, err))
		}
	}
	s.rec.event("B polled the blacklist; then 3 sessions logged out on A")
	at := op.stopMidRefresh(loadCtx, px)
	s.rec.stopped(at, op.lost.claimed)
	for i, at := range []float64{0.2, 0.5, 0.8} {
		if !pauseUntil(ctx, s.rec.stopAt.Add(time.Duration(at*float64(*stopFor)))) {
			return interrupted
		}
		if err := op.logOut(loadCtx, 3+i, false); err != nil {
			s.rec.fault(fmt.Sprintf("outage probe #%d: %v", 4+i, err))
		}
	}
	if !pauseUntil(ctx, s.rec.stopAt.Add(*stopFor)) {
		return interrupted
	}
	if err := px.start(); err != nil {
		return fmt.Errorf("bringing the database back: %w", err)
	}
	s.rec.back()

	if !pauseUntil(ctx, t0.Add(*duration/2)) {
		return interrupted
	}
	s.snapshot(A, "A", "under load, middle")
	s.snapshot(B, "B", "under load, middle")

	// B's restart: SIGTERM, a clean exit, a new process on a new port.
	if !pauseUntil(ctx, t0.Add(*duration*2/3)) {
		return interrupted
	}
	s.snapshot(B, "B", "under load, before SIGTERM")
	s.rec.restarting()
	if err := B.stop(20 * time.Second); err != nil {
		s.rec.fault("instance B on SIGTERM: " + err.Error())
	}
	s.rot.set("B", nil)
	s.rec.event(fmt.Sprintf("B exited (%v)", exitText(B.err)))
	B2, err := start("B'", "B")
	if err != nil {
		return err
	}
	s.snapshot(B2, "B'", "started, before it gets load")
	s.rot.set("B", B2)
	s.rec.restarted(B2.base)

	if !pauseUntil(ctx, t0.Add(*duration)) {
		return interrupted
	}
	s.snapshot(A, "A", "under load, end")
	s.snapshot(B2, "B'", "under load, end")
	stopLoad()
	running.Wait()
	s.checks.Wait()
	s.rec.event("load stopped")
	stopProbes, lost := op.results()
	stopWatch()
	watching.Wait()

	s.client.CloseIdleConnections()
	time.Sleep(3 * time.Second)
	s.snapshot(A, "A", "at rest, after the load")
	s.snapshot(B2, "B'", "at rest, after the load")

	// No lost user: everyone logs in on both instances.
	for _, a := range accounts {
		for _, id := range []string{"A", "B"} {
			var r reply
			for try := 0; try < 3; try++ {
				if r = s.call("final login", id, s.rot.get(id), "POST", "/auth/login", a.xff, map[string]string{"email": a.email, "password": a.password}); r.status != http.StatusServiceUnavailable {
					break
				}
				time.Sleep(r.retryAfter())
			}
			if r.status != http.StatusOK {
				s.rec.lostUser(r, fmt.Sprintf("%s logged in on %s at the end and got %s", a.email, id, r.answer()))
			}
		}
	}
	s.rec.event(fmt.Sprintf("every user (%d) logged in on both instances", len(accounts)))

	for _, in := range []*instance{A, B2} {
		if err := in.stop(20 * time.Second); err != nil {
			s.rec.fault(fmt.Sprintf("instance %s on SIGTERM: %v", in.name, err))
		}
	}
	s.rec.event(fmt.Sprintf("A exited (%s), B' exited (%s)", exitText(A.err), exitText(B2.err)))
	db.stop(10 * time.Second)

	s.rec.settle()
	faults := s.rec.reportRequests(stdout)
	faults = append(faults, s.rec.reportRevocation(stdout)...)
	faults = append(faults, s.rec.reportStop(stdout, maxLag, stopProbes, lost)...)
	faults = append(faults, s.rec.reportInstances(stdout, A.process, B.process, B2.process)...)
	if len(faults) == 0 {
		fmt.Fprintln(stdout, "\nsoak: PASS, no fault found")
		return nil
	}
	fmt.Fprintf(stdout, "\nsoak: FAIL, %d faults\n", len(faults))
	for _, f := range faults {
		fmt.Fprintln(stdout, "  - "+f)
	}
	return errFaults
}

// signUp signs every account up, each from its own client, trying again after a 503.
func (s *soak) signUp(ctx context.Context, accounts []account) error {
	errs := make([]error, len(accounts))
	var wg sync.WaitGroup
	for i, a := range accounts {
		wg.Go(func() {
			deadline := time.Now().Add(time.Minute)
			for unsure := false; ctx.Err() == nil && time.Now().Before(deadline); {
				id, in := s.rot.any()
				r := s.call("signup", id, in, "POST", "/auth/signup", a.xff, map[string]string{"email": a.email, "password": a.password})
				switch {
				case r.status == http.StatusCreated, r.status == http.StatusConflict && unsure:
					return // a conflict after an attempt without an answer: that attempt went through
				case r.status == http.StatusServiceUnavailable, r.err != nil:
					unsure = unsure || r.err != nil
					pause(ctx, r.retryAfter())
				default:
					errs[i] = fmt.Errorf("sign-up of %s: %s", a.email, r.answer())
					return
				}
			}
			errs[i] = fmt.Errorf("sign-up of %s: no success within a minute", a.email)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

func (s *soak) snapshot(in *instance, proc, moment string) {
	g, err := scrape(s.client, in)
	s.rec.snapshot(proc, moment, g, err)
}

func durationEnv(getenv func(string) string, key string, def time.Duration) (time.Duration, error) {
	v := strings.TrimSpace(getenv(key))
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", key, err)
	}
	return d, nil
}

// loadAverage is the machine's 1, 5 and 15 minute load averages, where Linux tells them.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func exitText(err error) string {
	if err == nil {
		return "exit status 0"
	}
	return err.Error()
}
