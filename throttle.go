package main

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"time"
)

// throttle limits password guessing, in the manner of Authelia's regulation but keyed so that an
// attacker cannot lock a user out: failures count per (account, client), so guesses from one client
// do not block the same account from another, and a looser per-client count caps guessing across
// many accounts. The counts live in the database, so they hold across instances and restarts.
type throttle struct {
	store      Store
	now        func() time.Time
	window     time.Duration
	maxAccount int // failures for one account from one client within window
	maxClient  int // failures from one client, any account, within window
}

func throttleKeys(client netip.Addr, email string) (account, clientKey string) {
	c := clientPrefix(client)
	return "acct:" + c + "|" + email, "client:" + c
}

// clientPrefix names a client: its address, or for IPv6 its /64, which one subscriber usually holds
// in whole.
func clientPrefix(a netip.Addr) string {
	if a.Is6() && !a.Is4In6() {
		p, _ := a.Prefix(64)
		return p.String()
	}
	return a.Unmap().String()
}

// wait answers how long client must wait before trying to log in as email (zero: go ahead), and
// how many recent failures that account has from that client.
func (t *throttle) wait(ctx context.Context, client netip.Addr, email string) (time.Duration, int, error) {
	now := t.now()
	account, clientKey := throttleKeys(client, email)
	recent, err := t.store.Failures(ctx, now.Add(-t.window), account, clientKey)
	if err != nil {
		return 0, 0, err
	}
	var longest time.Duration
	for _, lim := range []struct {
		key string
		max int
	}{{account, t.maxAccount}, {clientKey, t.maxClient}} {
		if times := recent[lim.key]; lim.max > 0 && len(times) >= lim.max {
			// The count drops below max once the max-th newest failure leaves the window.
			longest = max(longest, times[lim.max-1].Add(t.window).Sub(now))
		}
	}
	return longest, len(recent[account]), nil
}

func (t *throttle) failed(ctx context.Context, client netip.Addr, email string) error {
	now := t.now()
	account, clientKey := throttleKeys(client, email)
	return t.store.AddFailure(ctx, now, now.Add(t.window), account, clientKey)
}

func (t *throttle) succeeded(ctx context.Context, client netip.Addr, email string) error {
	account, _ := throttleKeys(client, email)
	return t.store.ClearFailures(ctx, account)
}

// clientIPs finds the client of a request: the TCP peer, unless the peer is a trusted proxy, in
// which case X-Forwarded-For is read from the right, skipping trusted hops.
type clientIPs struct {
	trusted []netip.Prefix
}

func parseTrustedProxies(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == ' ' }) {
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("TRUSTED_PROXIES: %q is not a CIDR or an address", f)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

func (c clientIPs) isTrusted(a netip.Addr) bool {
	a = a.Unmap()
	for _, p := range c.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func (c clientIPs) of(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	peer, err := netip.ParseAddr(host)
	if err != nil {
		return netip.IPv4Unspecified()
	}
	peer = peer.Unmap()
	if !c.isTrusted(peer) {
		return peer
	}
	hops := strings.Split(strings.Join(r.Header.Values("X-Forwarded-For"), ","), ",")
	for i := len(hops) - 1; i >= 0; i-- {
		a, err := netip.ParseAddr(strings.TrimSpace(hops[i]))
		if err != nil {
			return peer
		}
		if a = a.Unmap(); !c.isTrusted(a) {
			return a
		}
		peer = a
	}
	return peer
}
