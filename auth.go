package main

// auth.go is the password check that login and every request for the password again go through,
// with its timing padding.

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// validPassword is the rule for every new password.
func validPassword(p string) bool { return len(p) >= 8 && len(p) <= 1024 }

// passwordCheck is the one place where a password is compared with an account's, with the login
// throttle around it: login uses it, and so does everything that asks for a password again.
type passwordCheck struct {
	store interface {
		userStore
		factorStore
		passkeyStore
	}
	limits *loginLimits
	hasher *hasher
	times  checkTimes
	log    *slog.Logger
}

// check returns the account of email when password is its password; otherwise errInvalidCredentials
// (a wrong password and an unknown email alike), errTooManyAttempts, errAccountDisabled (for the
// right password only), errBusy, or the store's error. meanwhile, when not nil, is called while
// the password hashes, once the attempt is within the limits, and must not wait: a login opens its
// session there (see opening). The whole check runs in a hashing slot, database work included, so
// that logins waiting for a slot cost neither memory nor database work.
func (p *passwordCheck) check(ctx context.Context, client netip.Addr, email, password string, meanwhile func(*User)) (u *User, err error) {
	turn, err := p.hasher.admit()
	if err != nil {
		return nil, err
	}
	defer turn.done()
	email = normalizeEmail(email)
	var (
		att  *attempt
		took time.Duration
	)
	if err := turn.do(ctx, func() { u, att, took, err = p.checkInSlot(ctx, client, email, password, meanwhile) }); err != nil {
		return nil, err
	}
	if errors.Is(err, errInvalidCredentials) {
		// Outside the slot: waiting costs no CPU and holds no hashing memory.
		turn.done()
		p.times.pad(ctx, took)
	}
	if err != nil {
		return nil, err
	}
	// A success forgets the account's failures from this client.
	if err := att.succeeded(ctx); err != nil {
		p.log.Warn("clearing login failures failed", "err", err)
	}
	return u, nil
}

// checkUser is check for the account with id user: for the endpoints of a signed-in user who is
// asked for their password again. A wrong password counts as a failed login.
func (p *passwordCheck) checkUser(ctx context.Context, client netip.Addr, user, password string) (*User, error) {
	u, err := p.store.UserByID(ctx, user)
	if errors.Is(err, ErrNotFound) {
		return nil, errTokenRevoked // the account is gone, and its sessions with it
	} else if err != nil {
		return nil, err
	}
	got, err := p.check(ctx, client, u.Email, password, nil)
	if err == nil && got.ID != user {
		// An address left in its old form (see normalizeStoredEmails) normalises to another
		// account's address: that account's password is not this one's.
		return nil, errInvalidCredentials
	}
	return got, err
}

// checkInSlot is check in its hashing slot; took is how long the password check itself took.
func (p *passwordCheck) checkInSlot(ctx context.Context, client netip.Addr, email, password string,
	meanwhile func(*User)) (u *User, att *attempt, took time.Duration, err error) {
	// The attempt is recorded and the account read at once: the work around the hash must stay
	// small next to the hash itself.
	var (
		userErr error
		fetched = make(chan struct{})
	)
	go func() {
		defer close(fetched)
		u, userErr = p.store.UserByEmail(ctx, email)
	}()
	att, err = p.limits.password(ctx, client, email)
	<-fetched
	if err != nil {
		return nil, nil, 0, err
	}
	if userErr != nil && !errors.Is(userErr, ErrNotFound) {
		att.forget(ctx)
		return nil, nil, 0, userErr
	}
	// An unknown email is checked against a dummy hash, so that it takes as long as a wrong
	// password and the answer is the same.
	hash := dummyHash
	if u != nil {
		hash = u.PasswordHash
	}
	// While the password hashes: the attempt's rank is read (an attempt beyond the limit learns
	// nothing about the password), and whether a second factor is to follow; then meanwhile runs.
	var rankErr, factorErr, passkeyErr error
	var keys []Passkey
	aside := make(chan struct{})
	go func() {
		defer close(aside)
		var wg sync.WaitGroup
		wg.Go(func() { rankErr = att.check(ctx) })
		factorErr = ErrNotFound
		if u != nil {
			wg.Go(func() { _, factorErr = p.store.TOTP(ctx, u.ID) })
			wg.Go(func() { keys, passkeyErr = p.store.PasskeysOf(ctx, u.ID) })
		}
		wg.Wait()
		if passkeyErr != nil && (factorErr == nil || errors.Is(factorErr, ErrNotFound)) {
			factorErr = passkeyErr
		}
		if u == nil || rankErr != nil || (factorErr != nil && !errors.Is(factorErr, ErrNotFound)) {
			return
		}
		u.hasTOTP, u.hasPasskey = factorErr == nil, len(keys) > 0
		if meanwhile != nil {
			meanwhile(u)
		}
	}()
	started := time.Now()
	ok, rehash := checkPassword(hash, password)
	took = time.Since(started)
	p.times.observe(hashKind(hash), took)
	<-aside
	if rankErr != nil {
		return nil, nil, 0, rankErr
	}
	if factorErr != nil && !errors.Is(factorErr, ErrNotFound) {
		return nil, nil, 0, factorErr
	}
	if u == nil || !ok {
		return nil, nil, took, errInvalidCredentials // the attempt stays recorded, as a failure
	}
	if u.Disabled {
		// Only the right password learns that the account exists and is disabled; the attempt
		// still counts as a failure.
		return nil, nil, took, errAccountDisabled
	}
	if rehash {
		// Moved over from bcrypt, or argon2id below OWASP's settings: upgrade while the password is
		// known, unless the password changed meanwhile (then the change ends the session this login
		// opened, see opening). A failure here costs nothing but a later retry.
		fresh := hashPassword(password)
		switch err := p.store.UpgradePasswordHash(ctx, u.ID, u.PasswordHash, fresh); {
		case err == nil:
			u.PasswordHash = fresh
		case !errors.Is(err, ErrNotFound):
			p.log.Warn("password rehash not saved", "user_id", u.ID, "err", err)
		}
	}
	return u, att, took, nil
}

// learnImportedHashes times one check at the bcrypt cost of an imported account, if any account
// still has a bcrypt hash, so that failed logins are padded from the first one after a start. It
// reads the users without an index, once, in the background.
func (p *passwordCheck) learnImportedHashes(ctx context.Context) {
	hash, err := p.store.BcryptHash(ctx)
	if err != nil {
		if !errors.Is(err, ErrNotFound) && ctx.Err() == nil {
			p.log.Warn("looking for imported bcrypt hashes failed; a failed login is padded once one is seen", "err", err)
		}
		return
	}
	cost, err := bcrypt.Cost([]byte(hash))
	if err != nil || cost > maxBcryptCost {
		return
	}
	turn, err := p.hasher.admit()
	if err != nil {
		return
	}
	defer turn.done()
	turn.do(ctx, func() {
		dummy, err := bcrypt.GenerateFromPassword([]byte("not the password of anyone at all"), cost)
		if err != nil {
			return
		}
		started := time.Now()
		checkPassword(string(dummy), "a wrong password")
		p.times.observe(hashKind(string(dummy)), time.Since(started))
	})
}

// checkTimes keeps how long a password check takes for each kind of stored hash (argon2id with
// its parameters, bcrypt with its cost), so that a failed login can be answered no sooner than the
// slowest kind this instance has seen. An unknown email is checked against an argon2id dummy; an
// account imported with bcrypt cost 10 takes nearly twice as long to check: without the padding,
// the clock would tell which emails are imported accounts.
type checkTimes struct {
	mu  sync.Mutex
	avg map[string]time.Duration // moving averages, by hashKind
}

func (c *checkTimes) observe(kind string, took time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.avg == nil {
		c.avg = make(map[string]time.Duration)
	}
	if old, ok := c.avg[kind]; ok {
		took = old + (took-old)/10
	}
	c.avg[kind] = took
}

// pad waits, after a check that took took, for as long as the slowest kind of check takes on
// average: a failed login's answer then comes as late whatever kind of hash, or none, it was
// checked against.
func (c *checkTimes) pad(ctx context.Context, took time.Duration) {
	c.mu.Lock()
	var slowest time.Duration
	for _, d := range c.avg {
		slowest = max(slowest, d)
	}
	c.mu.Unlock()
	if wait := slowest - took; wait > 0 {
		t := time.NewTimer(wait)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

// hashKind names what a check of hash costs: its algorithm and parameters.
func hashKind(hash string) string {
	parts := strings.SplitN(hash, "$", 5)
	switch {
	case len(parts) >= 4 && parts[1] == "argon2id":
		return "argon2id " + parts[3]
	case len(parts) >= 3 && strings.HasPrefix(parts[1], "2"):
		return "bcrypt " + parts[2]
	}
	return "other"
}
