package main

// revocations.go keeps this instance's copy of the blacklist, so that a token check never waits.

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Why a session ended, as the blacklist entry and the metrics say it.
const (
	endLogout         = "logout"           // POST /auth/logout
	endReused         = "reused"           // a retired refresh token came back after the interval
	endByUser         = "ended_by_user"    // DELETE /auth/sessions/{id}
	endLogoutOthers   = "logout_others"    // POST /auth/logout?scope=others
	endLogoutGlobal   = "logout_global"    // POST /auth/logout?scope=global
	endPasswordChange = "password_changed" // POST /auth/password
	endAccountDeleted = "account_deleted"  // DELETE /auth/account, DELETE /admin/users/{id}
	endAdminLogout    = "admin_logout"     // POST /admin/users/{id}/logout
	endDisabled       = "account_disabled" // POST /admin/users/{id}/disable
	endMFARemoved     = "mfa_removed"      // DELETE /auth/mfa/totp: the other sessions
	endMFAAdded       = "mfa_added"        // POST /auth/mfa/totp/confirm: the other sessions
	endPasswordReset  = "password_reset"   // POST /auth/password/reset
	endEmailChanged   = "email_changed"    // POST /auth/email/verify (a change link): the cookie sessions
	endCodeReplayed   = "code_replayed"    // an OpenID client's code came back: the session it opened
	endClientRevoked  = "client_revoked"   // POST /oauth2/revoke of a refresh token
	endGrantRevoked   = "grant_revoked"    // DELETE /auth/grants/{client_id}: that client's sessions
	endSteppedUp      = "stepped_up"       // a portal step-up: the cookie session it replaced with a new one
)

// revocations is this instance's copy of the unexpired blacklist, so that checking a token never
// waits on the database. Revocations made here are in it at once; those made by other instances
// arrive by polling the blacklist by its created_at index every syncEvery (change streams are not
// available on every server). Entries leave when every token they match has expired, so memory is
// bounded by the number of live revocations.
type revocations struct {
	store interface {
		revocationStore
		Purge(ctx context.Context, now time.Time) error // every store's expired records, on the same clock
	}
	now func() time.Time
	log *slog.Logger

	// maxLag, when not zero, is REVOCATION_MAX_LAG: past it without a successful poll, this
	// instance cannot vouch that a token was not revoked elsewhere, and says so (see vouches).
	maxLag time.Duration
	stale  atomic.Bool // the last check found the copy too old; for the log and the metrics

	mu sync.RWMutex
	// outages are the spans of time this instance's polls found the database unreachable, the
	// latest last; downSince is the start of the one going on, zero when polls succeed. A
	// refresh's reuse interval does not count them (see sessionKeeper.judge).
	outages   []span
	downSince time.Time
	// pending are revocations in force here that the database did not take (an outage): each
	// poll writes them first, so that the other instances learn of them without the client's
	// retry. At most maxPending; expired ones are dropped.
	pending  []Revocation
	jtis     map[string]time.Time // token id -> when the entry may be forgotten
	sids     map[string]time.Time // login session id -> likewise
	reused   map[string]bool      // the sessions among sids that ended because a token was reused
	lastSync time.Time            // start of the last successful poll
}

const (
	// syncOverlap re-reads the recent past on every poll, so that an entry written by another
	// instance whose clock lags or whose write landed late is still seen.
	syncOverlap = 10 * time.Second
)

func newRevocations(store interface {
	revocationStore
	Purge(ctx context.Context, now time.Time) error
}, now func() time.Time, log *slog.Logger, maxLag time.Duration) *revocations {
	return &revocations{store: store, now: now, log: log, maxLag: maxLag,
		jtis: make(map[string]time.Time), sids: make(map[string]time.Time), reused: make(map[string]bool)}
}

// revoked reports whether the token jti or its whole session sid has been revoked.
func (r *revocations) revoked(jti, sid string) bool {
	now := r.now()
	r.mu.RLock()
	exp, ok := r.jtis[jti]
	if !ok || !now.Before(exp) {
		exp, ok = r.sids[sid]
	}
	r.mu.RUnlock()
	return ok && now.Before(exp)
}

// refusal is the error for the token jti of session sid when either is revoked (nil otherwise):
// token_reused when its session ended because a refresh token was reused, so that every client of
// the session learns why, token_revoked for anything else.
func (r *revocations) refusal(jti, sid string) error {
	if !r.revoked(jti, sid) {
		return nil
	}
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.reused[sid] {
		return errTokenReused
	}
	return errTokenRevoked
}

// add puts revocations into memory, never shortening one it holds; the caller stores them.
func (r *revocations) add(revs ...Revocation) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, rev := range revs {
		m := r.jtis
		id, ok := strings.CutPrefix(rev.ID, jtiPrefix)
		if !ok {
			if id, ok = strings.CutPrefix(rev.ID, sidPrefix); !ok {
				continue
			}
			m = r.sids
		}
		if rev.ExpiresAt.After(m[id]) {
			m[id] = rev.ExpiresAt
		}
		if rev.Reason == endReused {
			r.reused[id] = true
		}
	}
}

// revoke records revs here and in the database. They are in force on this instance even when the
// database write fails; the error tells the client to try again, and the next poll that finds the
// database writes them anyway, so that the others learn of them if the client does not retry.
func (r *revocations) revoke(ctx context.Context, revs ...Revocation) error {
	r.add(revs...)
	err := r.store.Revoke(ctx, revs...)
	if err != nil && (errors.Is(err, ErrUnavailable) || errors.Is(err, context.DeadlineExceeded)) {
		r.mu.Lock()
		r.pending = append(r.pending, revs...)
		if len(r.pending) > maxPending {
			r.pending = r.pending[len(r.pending)-maxPending:]
		}
		r.mu.Unlock()
	}
	return err
}

// maxPending bounds the revocations kept for writing later: a long outage under heavy logout
// traffic must not grow memory without bound. Past it the oldest go, still in force here.
const maxPending = 100000

// flush writes the pending revocations that have not expired.
func (r *revocations) flush(ctx context.Context) error {
	now := r.now()
	r.mu.Lock()
	var live []Revocation
	for _, rev := range r.pending {
		if now.Before(rev.ExpiresAt) {
			live = append(live, rev)
		}
	}
	r.pending = nil
	r.mu.Unlock()
	if len(live) == 0 {
		return nil
	}
	if err := r.store.Revoke(ctx, live...); err != nil {
		r.mu.Lock()
		r.pending = append(live, r.pending...)
		r.mu.Unlock()
		return err
	}
	r.log.Info("revocations made during an outage written to the database", "count", len(live))
	return nil
}

// sync reads the revocations created since the last poll (all unexpired ones the first time).
func (r *revocations) sync(ctx context.Context) error {
	start := r.now()
	r.mu.RLock()
	since := r.lastSync
	r.mu.RUnlock()
	if !since.IsZero() {
		since = since.Add(-syncOverlap)
	}
	revs, err := r.store.RevocationsSince(ctx, since, start)
	if err != nil {
		if errors.Is(err, ErrUnavailable) {
			r.mu.Lock()
			if r.downSince.IsZero() {
				// From the last poll that worked, or a minute back at most.
				r.downSince = start.Add(-time.Minute)
				if r.lastSync.After(r.downSince) {
					r.downSince = r.lastSync
				}
			}
			r.mu.Unlock()
		}
		return err
	}
	r.add(revs...)
	r.mu.Lock()
	r.lastSync = start
	if !r.downSince.IsZero() {
		r.outages = append(r.outages, span{r.downSince, start})
		if len(r.outages) > maxOutages {
			r.outages = r.outages[1:]
		}
		r.downSince = time.Time{}
	}
	r.mu.Unlock()
	return nil
}

// span is a stretch of time.
type span struct{ from, to time.Time }

// maxOutages bounds the outages remembered: enough for any reuse interval of sane length.
const maxOutages = 32

// downtime is how much of the time from from to to this instance found the database unreachable.
func (r *revocations) downtime(from, to time.Time) time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	spans := r.outages
	if !r.downSince.IsZero() {
		spans = append(spans[:len(spans):len(spans)], span{r.downSince, to})
	}
	var d time.Duration
	for _, o := range spans {
		lo, hi := o.from, o.to
		if from.After(lo) {
			lo = from
		}
		if to.Before(hi) {
			hi = to
		}
		if hi.After(lo) {
			d += hi.Sub(lo)
		}
	}
	return d
}

// vouches reports whether this instance's copy of the blacklist is recent enough to vouch for a
// token: always, unless REVOCATION_MAX_LAG is set and the last successful poll is older than it.
// The copy stays in use either way; with the setting, an operator trades availability during an
// outage for a bound on how long a revocation made elsewhere can go unseen.
func (r *revocations) vouches() bool {
	if r.maxLag == 0 {
		return true
	}
	ok := r.lag() <= r.maxLag
	if r.stale.Swap(!ok) == ok { // it changed
		if ok {
			r.log.Info("revocation list current again; vouching again", "lag", r.lag().String())
		} else {
			r.log.Warn("revocation list older than REVOCATION_MAX_LAG; refusing every token until a poll succeeds",
				"lag", r.lag().String(), "max_lag", r.maxLag.String())
		}
	}
	return ok
}

// lag is how old the newest successful poll is.
func (r *revocations) lag() time.Duration {
	r.mu.RLock()
	defer r.mu.RUnlock()
	if r.lastSync.IsZero() {
		return 0
	}
	return r.now().Sub(r.lastSync)
}

func (r *revocations) size() int {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return len(r.jtis) + len(r.sids)
}

// forgetExpired drops the entries that can no longer match a live token.
func (r *revocations) forgetExpired() {
	now := r.now()
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, m := range []map[string]time.Time{r.jtis, r.sids} {
		for id, exp := range m {
			if !now.Before(exp) {
				delete(m, id)
				delete(r.reused, id)
			}
		}
	}
}

// run polls every syncEvery and purges expired entries, from memory and from the database, every
// purgeEvery, until ctx ends.
func (r *revocations) poll(ctx context.Context, syncEvery, purgeEvery time.Duration) {
	syncT := time.NewTicker(syncEvery)
	defer syncT.Stop()
	purgeT := time.NewTicker(purgeEvery)
	defer purgeT.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-syncT.C:
			err := r.flush(ctx)
			if err == nil {
				err = r.sync(ctx)
			}
			if err != nil && ctx.Err() == nil {
				r.log.Warn("revocation sync failed; checking each token against the last known list",
					"err", err, "lag", r.lag().String())
			}
		case <-purgeT.C:
			r.forgetExpired()
			if err := r.store.Purge(ctx, r.now()); err != nil && ctx.Err() == nil {
				r.log.Warn("purge of expired records failed", "err", err)
			}
		}
	}
}
