package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// process is a child of the soak: the database or an instance of the service. Its output goes to
// a log file, read line by line on the way.
type process struct {
	name string
	cmd  *exec.Cmd
	log  *os.File
	done chan struct{} // closed when it has exited
	err  error         // how it exited, once done

	first         chan string // the first line of stdout
	listen        chan string // the API's address, from the service's "listening" line
	metricsListen chan string // the metrics listener's address, from its "listening" line
	panics        atomic.Int64
	mu            sync.Mutex
	logged        map[string]int // WARN and ERROR lines by level and message
}

// startProcess starts bin with env, logging to logPath. The child is killed if the soak dies
// without stopping it (see killWithParent).
func startProcess(name, bin string, args, env []string, logPath string) (*process, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, err
	}
	p := &process{name: name, log: f, done: make(chan struct{}),
		first: make(chan string, 1), listen: make(chan string, 1), metricsListen: make(chan string, 1), logged: map[string]int{}}
	p.cmd = exec.Command(bin, args...)
	p.cmd.Env = env
	p.cmd.Stdout = &lineWriter{line: p.sawLine}
	p.cmd.Stderr = &lineWriter{line: p.sawLine}
	killWithParent(p.cmd)
	if err := p.cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	go func() {
		p.err = p.cmd.Wait()
		f.Close()
		close(p.done)
	}()
	return p, nil
}

// sawLine writes one line of output to the log and notes what the soak looks for in it: the
// addresses the service listens on, and its warnings and errors by message.
func (p *process) sawLine(line []byte) {
	p.log.Write(line)
	select {
	case p.first <- strings.TrimSpace(string(line)):
	default:
	}
	if bytes.Contains(line, []byte("panic")) {
		p.panics.Add(1)
	}
	// Most lines are access lines; only these few are worth decoding.
	for _, s := range []string{`"level":"WARN"`, `"level":"ERROR"`, `"msg":"listening"`} {
		if !bytes.Contains(line, []byte(s)) {
			continue
		}
		var rec struct{ Level, Msg, Serves, Addr string }
		if json.Unmarshal(line, &rec) != nil {
			return
		}
		if rec.Msg == "listening" {
			to := map[string]chan string{"api": p.listen, "metrics": p.metricsListen}[rec.Serves]
			select {
			case to <- rec.Addr: // a nil channel (another listener) is never ready
			default:
			}
		}
		if rec.Level == "WARN" || rec.Level == "ERROR" {
			p.mu.Lock()
			p.logged[rec.Level+" "+rec.Msg]++
			p.mu.Unlock()
		}
		return
	}
}

// stop sends SIGTERM and waits up to wait for the process to exit; it reports how it exited.
func (p *process) stop(wait time.Duration) error {
	select {
	case <-p.done:
		return fmt.Errorf("%s had already exited: %v", p.name, p.err)
	default:
	}
	p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-p.done:
		return p.err
	case <-time.After(wait):
		p.cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("%s did not exit within %s of SIGTERM; killed", p.name, wait)
	}
}

// kill ends the process at once, when the soak is giving up.
func (p *process) kill() {
	select {
	case <-p.done:
	default:
		p.cmd.Process.Kill()
		<-p.done
	}
}

// lineWriter hands whole lines, newline included, to line.
type lineWriter struct {
	buf  []byte
	line func([]byte)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		w.line(w.buf[:i+1])
		w.buf = w.buf[i+1:]
	}
}

// startDatabase starts scripts/ferretdb on dir and returns it with its host:port.
func startDatabase(bin, dir, logPath string) (*process, string, error) {
	p, err := startProcess("database", bin, []string{"-dir", dir}, os.Environ(), logPath)
	if err != nil {
		return nil, "", err
	}
	select {
	case uri := <-p.first:
		addr := strings.TrimSuffix(strings.TrimPrefix(uri, "mongodb://"), "/")
		if !strings.HasPrefix(addr, "127.0.0.1:") {
			p.kill()
			return nil, "", fmt.Errorf("the database said %q, not a loopback address", uri)
		}
		return p, addr, nil
	case <-p.done:
		return nil, "", fmt.Errorf("the database exited at start: %v (see %s)", p.err, logPath)
	case <-time.After(30 * time.Second):
		p.kill()
		return nil, "", errors.New("the database did not start within 30s")
	}
}

// instance is one running process of the service and where it answers.
type instance struct {
	*process
	base        string // http://127.0.0.1:port
	metricsBase string // where its /metrics is: http://127.0.0.1:port
}

// startInstance starts the service and waits until it answers /readyz with 200.
func startInstance(name, bin string, env []string, logPath string) (*instance, error) {
	p, err := startProcess(name, bin, nil, env, logPath)
	if err != nil {
		return nil, err
	}
	in := &instance{process: p}
	for _, l := range []struct {
		addr *string
		seen chan string
	}{{&in.base, p.listen}, {&in.metricsBase, p.metricsListen}} {
		select {
		case addr := <-l.seen:
			*l.addr = "http://" + addr
		case <-p.done:
			return nil, fmt.Errorf("instance %s exited at start: %v (see %s)", name, p.err, logPath)
		case <-time.After(60 * time.Second):
			p.kill()
			return nil, fmt.Errorf("instance %s did not listen within 60s (see %s)", name, logPath)
		}
	}
	// A client of its own, whose connection is closed after: the soak counts the instance's
	// goroutines at rest.
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	for deadline := time.Now().Add(30 * time.Second); ; {
		res, err := client.Get(in.base + "/readyz")
		if err == nil {
			io.Copy(io.Discard, res.Body)
			res.Body.Close()
			if res.StatusCode == http.StatusOK {
				return in, nil
			}
		}
		if time.Now().After(deadline) {
			p.kill()
			return nil, fmt.Errorf("instance %s not ready within 30s (see %s)", name, logPath)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// instanceEnv is the environment of every instance: the soak's defaults, then whatever the
// caller's environment sets (REVOCATION_MAX_LAG, say), then what the soak cannot do without.
func instanceEnv(environ []string, mongoURI, secret, dataDir string) []string {
	defaults := []string{
		"ACCESS_TOKEN_TTL=20s", // refreshes every 15 seconds or so
		"REFRESH_TOKEN_TTL=60s",
		"SIGNUP_MAX_PER_CLIENT=1000",
		"LOG_LEVEL=info",
	}
	required := []string{
		"HOST=127.0.0.1",
		"PORT=0", // any free port; the service logs the one it got
		"MONGODB_URI=" + mongoURI,
		"JWT_SECRET=" + secret,
		"TRUSTED_PROXIES=127.0.0.1", // each virtual user is a client of its own, by X-Forwarded-For
		"METRICS_ENABLED=true",
		"METRICS_ADDR=127.0.0.1:0", // any free port, as the API's: two instances share the machine
		"ADMIN_TOKEN=",             // no admin listener: two instances would want the same port
		"DATA_DIR=" + dataDir,
		"LOG_FORMAT=json",
	}
	// exec keeps the last value of a name given twice.
	return append(append(append([]string{}, defaults...), environ...), required...)
}

// rotation is the load balancer in front of the instances: where a request goes.
type rotation struct {
	mu   sync.RWMutex
	byID map[string]*instance // "A", "B"; absent while that instance is down
}

func (r *rotation) set(id string, in *instance) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if in == nil {
		delete(r.byID, id)
	} else {
		r.byID[id] = in
	}
}

func (r *rotation) get(id string) *instance {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.byID[id]
}

// any picks an instance in rotation at random, and says which.
func (r *rotation) any() (string, *instance) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	ids := make([]string, 0, 2)
	for id := range r.byID {
		ids = append(ids, id)
	}
	if len(ids) == 0 {
		return "", nil
	}
	id := ids[rand.IntN(len(ids))]
	return id, r.byID[id]
}

// gauges are the figures the soak reads from an instance's /metrics.
type gauges struct {
	goroutines, rssMiB, revocations float64
	syncLag                         float64 // seconds since its last successful read of the blacklist
}

func scrape(client *http.Client, in *instance) (gauges, error) {
	res, err := client.Get(in.metricsBase + "/metrics")
	if err != nil {
		return gauges{}, err
	}
	defer res.Body.Close()
	if res.StatusCode != http.StatusOK {
		return gauges{}, fmt.Errorf("/metrics: %s", res.Status)
	}
	var g gauges
	sc := bufio.NewScanner(res.Body)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		name, value, ok := strings.Cut(sc.Text(), " ")
		if !ok || strings.HasPrefix(name, "#") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil {
			continue
		}
		switch name {
		case "go_goroutines":
			g.goroutines = v
		case "process_resident_memory_bytes":
			g.rssMiB = v / (1 << 20)
		case "auth_revocation_cache_entries":
			g.revocations = v
		case "auth_revocation_sync_lag_seconds":
			g.syncLag = v
		}
	}
	return g, sc.Err()
}

// watchReady asks id's /readyz every interval until ctx ends, and notes each change of answer.
func (s *soak) watchReady(ctx context.Context, id string, interval time.Duration) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	last := ""
	for ctx.Err() == nil {
		answer := "down"
		if in := s.rot.get(id); in != nil {
			answer = "no answer"
			if res, err := client.Get(in.base + "/readyz"); err == nil {
				io.Copy(io.Discard, res.Body)
				res.Body.Close()
				answer = strconv.Itoa(res.StatusCode)
			}
		}
		if answer != last { // noted when the answer came: a ping can wait up to 2s for the database
			s.rec.readyChanged(id, time.Now(), answer)
			last = answer
		}
		select {
		case <-ctx.Done():
		case <-time.After(interval):
		}
	}
}

// sampleGauges reads both instances' gauges every interval until ctx ends: how stale each one's
// copy of the blacklist gets, and its goroutines under load.
func (s *soak) sampleGauges(ctx context.Context, interval time.Duration) {
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	client := &http.Client{Timeout: 3 * time.Second, Transport: tr}
	for pause(ctx, interval) {
		for _, id := range []string{"A", "B"} {
			if in := s.rot.get(id); in != nil {
				if g, err := scrape(client, in); err == nil {
					s.rec.sampled(in.name, time.Now(), g)
				}
			}
		}
	}
}
