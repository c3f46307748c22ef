package main

import (
	"bytes"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// proxy stands between the service's instances and the database, so that the soak can stop the
// database as the instances see it and bring it back, while they keep the addresses they were
// given. Stopped, it is a database host that went away: open connections drop and new ones are
// refused (its ports are closed, not merely silent).
//
// Each instance connects to a port of its own, so that the soak can tell whose requests pass:
// it stops the database just after B has read the blacklist, and in the middle of a refresh.
type proxy struct {
	upstream string // the database

	mu      sync.Mutex
	running bool
	fronts  map[string]*front // by instance: "A", "B"
	conns   map[net.Conn]struct{}
	// stopAt, when set, is looked for in what the instances send: the database gets the request
	// that holds it, its reply is dropped, and the proxy stops moments later.
	stopAt  []byte
	stopped chan time.Time
	// awaited, when set, is looked for in what one instance sends, and told of when it passes.
	awaited *awaited
}

type front struct {
	addr string
	ln   net.Listener
}

type awaited struct {
	front    string
	patterns [][]byte // all of them
	seen     chan struct{}
}

func (a *awaited) in(front string, b []byte) bool {
	if a == nil || a.front != front {
		return false
	}
	for _, p := range a.patterns {
		if !bytes.Contains(b, p) {
			return false
		}
	}
	return true
}

// newProxy listens on a loopback port for each of the instances named.
func newProxy(upstream string, instances ...string) (*proxy, error) {
	p := &proxy{upstream: upstream, running: true, fronts: map[string]*front{}, conns: map[net.Conn]struct{}{}}
	for _, name := range instances {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			p.stop()
			return nil, err
		}
		p.fronts[name] = &front{ln.Addr().String(), ln}
	}
	for name, f := range p.fronts {
		go p.serve(name, f.ln)
	}
	return p, nil
}

// addr is where instance name connects.
func (p *proxy) addr(name string) string { return p.fronts[name].addr }

func (p *proxy) serve(name string, ln net.Listener) {
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		go p.pipe(name, c)
	}
}

func (p *proxy) pipe(name string, c net.Conn) {
	u, err := net.DialTimeout("tcp", p.upstream, 2*time.Second)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	if !p.running { // stopped while dialling
		p.mu.Unlock()
		c.Close()
		u.Close()
		return
	}
	p.conns[c], p.conns[u] = struct{}{}, struct{}{}
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	var lost atomic.Bool // this connection's replies are dropped
	go func() { p.copy(name, u, c, &lost, true); done <- struct{}{} }()
	go func() { p.copy(name, c, u, &lost, false); done <- struct{}{} }()
	<-done
	c.Close()
	u.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, u)
	p.mu.Unlock()
}

// copy passes bytes on. Upstream, it looks for what it was asked to; downstream, it drops
// whatever a connection that sent stopAt is answered.
func (p *proxy) copy(name string, dst, src net.Conn, lost *atomic.Bool, upstream bool) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if n > 0 && !(lost.Load() && !upstream) {
			var hit bool
			var seen chan struct{}
			if upstream {
				p.mu.Lock()
				if hit = p.stopAt != nil && bytes.Contains(buf[:n], p.stopAt); hit {
					p.stopAt = nil
					lost.Store(true)
				}
				if a := p.awaited; a.in(name, buf[:n]) {
					p.awaited, seen = nil, a.seen
				}
				p.mu.Unlock()
			}
			if _, werr := dst.Write(buf[:n]); werr != nil {
				return
			}
			if seen != nil {
				close(seen)
			}
			if hit {
				// Long enough for the database to carry the request out.
				time.AfterFunc(50*time.Millisecond, func() {
					at := time.Now() // before the instances can notice
					p.stop()
					p.stopped <- at
				})
			}
		}
		if err != nil {
			return
		}
	}
}

// await tells when the next request from instance name that contains every pattern has passed.
func (p *proxy) await(name string, patterns ...[]byte) <-chan struct{} {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.awaited = &awaited{name, patterns, make(chan struct{})}
	return p.awaited.seen
}

// stopAtRequest arms the proxy to stop just after it has passed on the next request that
// contains pattern, so that the database carries it out and its reply is lost. The channel tells
// when it stopped.
func (p *proxy) stopAtRequest(pattern []byte) <-chan time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.stopAt, p.stopped = pattern, make(chan time.Time, 1)
	return p.stopped
}

// disarm undoes stopAtRequest and reports whether it was still waiting for its request.
func (p *proxy) disarm() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	waiting := p.stopAt != nil
	p.stopAt = nil
	return waiting
}

// stop closes the ports and every open connection.
func (p *proxy) stop() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.running = false
	for _, f := range p.fronts {
		if f.ln != nil {
			f.ln.Close()
			f.ln = nil
		}
	}
	for c := range p.conns {
		c.Close()
	}
}

// start opens the ports again, at the same addresses.
func (p *proxy) start() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for name, f := range p.fronts {
		if f.ln != nil {
			continue
		}
		ln, err := net.Listen("tcp", f.addr)
		if err != nil {
			return err
		}
		f.ln = ln
		go p.serve(name, ln)
	}
	p.running = true
	return nil
}
