package main

// passwords.go hashes and checks passwords (argon2id; bcrypt when imported) within a budget.

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math"
	"runtime"
	"slices"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// argon2id with 12 MiB, 3 passes, 1 lane. OWASP's Password Storage Cheat Sheet lists five
// settings that "provide an equal level of defense", trading memory for passes (owaspArgon2id);
// this is the one whose hashes side by side still fit a shared cache of 32 MiB, as two of 19 MiB
// do not. On the 2-core VM of BENCHMARKS.md, against 19 MiB and two passes, a hash by itself costs
// the same, but a login storm on a database in its own process was served about a fifth more
// logins in time; with the database in the process, no difference showed beyond the noise.
const (
	argonMemory  = 12 * 1024 // KiB
	argonTime    = 3
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// owaspArgon2id are OWASP's equal minimums for argon2id with 1 lane: memory in KiB, passes.
var owaspArgon2id = [...][2]int{{47104, 1}, {19456, 2}, {12288, 3}, {9216, 4}, {7168, 5}}

// The setting of earlier versions, 19 MiB and two passes, which stored hashes keep. earlierArgonHash
// is a hash at it: its key matches no password, and only the cost of checking it counts.
const (
	earlierArgonMemory = 19 * 1024 // KiB
	earlierArgonTime   = 2
	earlierArgonHash   = "$argon2id$v=19$m=19456,t=2,p=1$c2FsdHNhbHRzYWx0c2FsdA$bm90IHRoZSBrZXkgb2YgYW55IHBhc3N3b3JkIGF0IGE"
)

// keptAsIs reports whether a stored argon2id hash of mem KiB and t passes (1 lane) stays as it is
// at a login: it meets one of owaspArgon2id, so it is as strong as a fresh one, and costs no more
// memory or work than the earlier versions' setting, so that the hashing memory budget holds
// and failed logins are padded to a cost a start has learnt. The 19 MiB, two-pass hashes of
// earlier versions are kept; a hash below every setting, or heavier, is made again.
func keptAsIs(mem, t int) bool {
	if mem > earlierArgonMemory || mem*t > earlierArgonMemory*earlierArgonTime {
		return false
	}
	for _, m := range owaspArgon2id {
		if mem >= m[0] && t >= m[1] {
			return true
		}
	}
	return false
}

// The most a stored hash may ask of one check. The hasher's memory budget assumes about 12 MiB
// per hash (19 MiB for one of earlier versions); a hash claiming gigabytes or hours (a corrupted
// or planted record) is refused rather than run. Node's bcrypt default cost is 10; 14 already
// takes about a second.
const (
	maxArgonMemory  = 64 * 1024 // KiB
	maxArgonTime    = 10
	maxArgonThreads = 16
	maxBcryptCost   = 14
)

var b64 = base64.RawStdEncoding

// hashPassword returns the PHC string of password: $argon2id$v=19$m=12288,t=3,p=1$salt$hash.
func hashPassword(password string) string {
	salt := make([]byte, argonSaltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// checkPassword reports whether password matches hash, and whether hash should be replaced by
// a hashPassword of today's parameters: for imported bcrypt hashes, and argon2id ones not
// keptAsIs.
func checkPassword(hash, password string) (ok, rehash bool) {
	if strings.HasPrefix(hash, "$2a$") || strings.HasPrefix(hash, "$2b$") || strings.HasPrefix(hash, "$2y$") {
		if cost, err := bcrypt.Cost([]byte(hash)); err != nil || cost > maxBcryptCost {
			return false, false
		}
		return bcrypt.CompareHashAndPassword([]byte(hash), []byte(password)) == nil, true
	}
	var (
		version, mem, t int
		threads         uint8
	)
	parts := strings.Split(hash, "$")
	if len(parts) != 6 || parts[1] != "argon2id" {
		return false, false
	}
	if _, err := fmt.Sscanf(parts[2], "v=%d", &version); err != nil || version != argon2.Version {
		return false, false
	}
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &mem, &t, &threads); err != nil ||
		mem <= 0 || mem > maxArgonMemory || t <= 0 || t > maxArgonTime || threads == 0 || threads > maxArgonThreads {
		return false, false
	}
	salt, err1 := b64.DecodeString(parts[4])
	key, err2 := b64.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(salt) < 8 || len(salt) > 64 || len(key) < 16 || len(key) > 64 {
		return false, false
	}
	got := argon2.IDKey([]byte(password), salt, uint32(t), uint32(mem), threads, uint32(len(key)))
	ok = subtle.ConstantTimeCompare(got, key) == 1
	return ok, ok && (!keptAsIs(mem, t) || threads != argonThreads || len(key) != argonKeyLen)
}

// dummyHash is checked against when a login names no account, so that an unknown email costs
// the same time as a wrong password. Making it is the first measure of how long a hash takes: a
// cold one (the process's first 12 MiB), which the calibration at start corrects.
var dummyHash, dummyHashTook = func() (string, time.Duration) {
	start := time.Now()
	return hashPassword("not the password of anyone at all"), time.Since(start)
}()

// hasher bounds the memory and the waiting that password hashing takes. At most cap(slots) hashes
// run at once, 12 MiB each (19 for a hash kept from earlier versions). A login or sign-up is
// admitted when a slot is free, or when its expected completion (the turns ahead of it and its
// own, times the length of a turn, over the slots) fits within wait; at most maxTurns are admitted
// at all. Anything beyond is answered at once, with a Retry-After from the backlog, rather than
// piling up goroutines that would time out anyway. A waiting login costs no hashing memory, so as
// many wait as the cores can serve in time.
//
// Sign-ups run in at most half the slots (at least one) and are admitted by that share alone, so
// that a flood of them, from however many clients, leaves logins slots of their own.
type hasher struct {
	slots       chan struct{}
	signupSlots chan struct{}
	wait        time.Duration
	maxTurns    int

	mu      sync.Mutex
	turns   int // admitted and not done, sign-ups included
	signups int // of which sign-ups
	// The length of a turn is the median of the last turnSamples turns, seeded with the measured
	// time of a hash (see calibrateHashing): a storm is admitted before any of its turns ends, and
	// its first turns, on a cold instance, open the database's connections and take fresh memory;
	// a median lets no few slow turns decide how many the slots can serve.
	recent   [turnSamples]time.Duration
	observed int
	took     time.Duration
}

const turnSamples = 9

func newHasher(concurrent, queued int, wait time.Duration) *hasher {
	h := &hasher{
		slots:       make(chan struct{}, concurrent),
		signupSlots: make(chan struct{}, max(concurrent/2, 1)),
		wait:        wait,
		maxTurns:    concurrent + queued,
		took:        dummyHashTook,
	}
	for i := range h.recent {
		h.recent[i] = dummyHashTook
	}
	return h
}

// hashTurn is a place in the hashing queue: every password hash and check runs through one, so
// that memory and waiting stay bounded whoever asks.
type hashTurn struct {
	h        *hasher
	signup   bool
	deadline time.Time // the latest a hash may start: wait after admission
	left     bool
}

// admit takes a place in the queue for a login, or answers errBusy at once. A login takes its
// place before it reads the database, so that a storm is turned away before it costs anything.
// The caller must call done.
func (h *hasher) admit() (*hashTurn, error) { return h.enter(false) }

func (h *hasher) enter(signup bool) (*hashTurn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	// Logins count on the slots that sign-ups cannot take, and on the rest when no sign-up waits.
	ahead, slots := h.turns-h.signups, cap(h.slots)-min(h.signups, cap(h.signupSlots))
	if signup {
		ahead, slots = h.signups, cap(h.signupSlots)
	}
	// The time until this turn's hash is done, were it admitted: its own hash too. A turn that finds
	// a slot free waits for nothing, and is admitted whatever the estimate says: an estimate over
	// wait would otherwise turn everything away, and never learn that hashing got faster.
	expected := time.Duration(ahead+1) * h.took / time.Duration(max(slots, 1))
	if h.turns >= h.maxTurns || ahead >= slots && expected > h.wait {
		return nil, &busyError{retryAfter: max(expected-h.wait, time.Second)}
	}
	h.turns++
	if signup {
		h.signups++
	}
	return &hashTurn{h: h, signup: signup, deadline: time.Now().Add(h.wait)}, nil
}

// done gives the place back; calling it twice is harmless.
func (t *hashTurn) done() {
	if t.left {
		return
	}
	t.left = true
	t.h.mu.Lock()
	defer t.h.mu.Unlock()
	t.h.turns--
	if t.signup {
		t.h.signups--
	}
}

// run calls f in a hashing slot, waiting for one at most until the turn's deadline; f hashes or
// checks passwords, and may do the database work that goes with them. The slot's time feeds the
// estimate of how long a turn takes.
func (t *hashTurn) do(ctx context.Context, f func()) error {
	timer := time.NewTimer(time.Until(t.deadline))
	defer timer.Stop()
	busy := func() error { return &busyError{retryAfter: time.Second} }
	if t.signup {
		select {
		case t.h.signupSlots <- struct{}{}:
			defer func() { <-t.h.signupSlots }()
		case <-timer.C:
			return busy()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	select {
	case t.h.slots <- struct{}{}:
	case <-timer.C:
		return busy()
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-t.h.slots }()
	start := time.Now()
	f()
	t.h.observe(time.Since(start))
	return nil
}

// observe records the length of one turn.
func (h *hasher) observe(took time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.recent[h.observed%turnSamples] = took
	h.observed++
	h.estimate()
}

// seed sets the length of the turns not yet observed to took, a calibration's.
func (h *hasher) seed(took time.Duration) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for i := h.observed; i < turnSamples; i++ {
		h.recent[i] = took
	}
	h.estimate()
}

// calibrateHashing returns how long a turn takes when every slot hashes, the seed of the estimate,
// and how long a check at the earlier versions' setting takes, which stored hashes keep: a start
// learns it before it listens, so that a failed login on such an account is padded as an unknown
// email's from the first one.
// It times rounds of slots checks of the dummy hash at once and keeps the fastest round, after a
// collection each, so that later rounds reuse the memory of earlier ones: the first hashes of a
// process get their memory fresh from the system, which on some machines takes ten times the hash.
func calibrateHashing(slots, rounds int) (turn, earlier time.Duration) {
	turn = time.Duration(math.MaxInt64)
	for range rounds {
		start := time.Now()
		var wg sync.WaitGroup
		for range slots {
			wg.Go(func() { checkPassword(dummyHash, "not the password either") })
		}
		wg.Wait()
		turn = min(turn, time.Since(start))
		runtime.GC()
	}
	// The faster of two: the first may take its 19 MiB fresh from the system.
	earlier = time.Duration(math.MaxInt64)
	for range 2 {
		start := time.Now()
		checkPassword(earlierArgonHash, "not the password either")
		earlier = min(earlier, time.Since(start))
	}
	runtime.GC()
	return turn, earlier
}

// estimate sets took to the median of the recent turns; h.mu is held.
func (h *hasher) estimate() {
	sorted := h.recent
	slices.Sort(sorted[:])
	h.took = sorted[turnSamples/2]
}

// hashSignup hashes a new account's password, in a sign-up's turn.
func (h *hasher) hashSignup(ctx context.Context, password string) (string, error) {
	return h.hashIn(ctx, true, password)
}

// hash hashes a new password in a turn of its own.
func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	return h.hashIn(ctx, false, password)
}

func (h *hasher) hashIn(ctx context.Context, signup bool, password string) (hash string, err error) {
	t, err := h.enter(signup)
	if err != nil {
		return "", err
	}
	defer t.done()
	err = t.do(ctx, func() { hash = hashPassword(password) })
	return hash, err
}

// signupsAdmitted is how many sign-ups hold a turn.
func (h *hasher) signupsAdmitted() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.signups
}

// running and waiting are the hashes being computed and the turns waiting, for the metrics.
func (h *hasher) running() int { return len(h.slots) }

func (h *hasher) waiting() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return max(h.turns-len(h.slots), 0)
}
