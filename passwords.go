package main

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// argon2id with OWASP's first recommended parameter set: 19 MiB, 2 passes, 1 lane.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// The most a stored hash may ask of one check. The hasher's memory budget assumes about 19 MiB
// per hash; a hash claiming gigabytes or hours (a corrupted or planted record) is refused rather
// than run. Node's bcrypt default cost is 10; 14 already takes about a second.
const (
	maxArgonMemory  = 64 * 1024 // KiB
	maxArgonTime    = 10
	maxArgonThreads = 16
	maxBcryptCost   = 14
)

var b64 = base64.RawStdEncoding

// hashPassword returns the PHC string of password: $argon2id$v=19$m=19456,t=2,p=1$salt$hash.
func hashPassword(password string) string {
	salt := make([]byte, argonSaltLen)
	rand.Read(salt)
	key := argon2.IDKey([]byte(password), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, argonMemory, argonTime, argonThreads, b64.EncodeToString(salt), b64.EncodeToString(key))
}

// checkPassword reports whether password matches hash, and whether hash should be replaced by
// a hashPassword of today's parameters (true for bcrypt hashes from the Node service).
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
	return ok, ok && (mem != argonMemory || t != argonTime || threads != argonThreads || len(key) != argonKeyLen)
}

// dummyHash is checked against when a login names no account, so that an unknown email costs
// the same time as a wrong password.
var dummyHash = hashPassword("not the password of anyone at all")

// errBusy says every hashing slot and queue place is taken.
var errBusy = errors.New("password hashing at capacity")

// hasher bounds the memory that password hashing takes: at most cap(slots) hashes run at once
// (19 MiB each), at most cap(queue) more wait for a slot, each for at most wait; anything beyond
// is turned away at once rather than piling up goroutines and memory.
type hasher struct {
	slots chan struct{}
	queue chan struct{}
	wait  time.Duration
}

func newHasher(concurrent, queued int, wait time.Duration) *hasher {
	return &hasher{slots: make(chan struct{}, concurrent), queue: make(chan struct{}, concurrent+queued), wait: wait}
}

// hashTurn is a place in the hashing queue: every password hash and check runs through one, so
// that memory and waiting stay bounded whoever asks.
type hashTurn struct {
	h    *hasher
	left bool
}

// admit takes a place in the queue, or answers errBusy at once when it is full. A login takes its
// place before it reads the database, so that a storm is turned away before it costs anything.
// The caller must call done.
func (h *hasher) admit() (*hashTurn, error) {
	select {
	case h.queue <- struct{}{}:
		return &hashTurn{h: h}, nil
	default:
		return nil, errBusy
	}
}

// done gives the place back; calling it twice is harmless.
func (t *hashTurn) done() {
	if !t.left {
		t.left = true
		<-t.h.queue
	}
}

// verify reports whether password matches hash, and whether hash should be replaced (see
// checkPassword).
func (t *hashTurn) verify(ctx context.Context, hash, password string) (ok, rehash bool, err error) {
	err = t.run(ctx, func() { ok, rehash = checkPassword(hash, password) })
	return ok, rehash, err
}

// hash returns a new hash of password.
func (t *hashTurn) hash(ctx context.Context, password string) (hash string, err error) {
	err = t.run(ctx, func() { hash = hashPassword(password) })
	return hash, err
}

// run computes f in a hashing slot, waiting at most the hasher's wait for one.
func (t *hashTurn) run(ctx context.Context, f func()) error {
	timer := time.NewTimer(t.h.wait)
	defer timer.Stop()
	select {
	case t.h.slots <- struct{}{}:
	case <-timer.C:
		return errBusy
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-t.h.slots }()
	f()
	return nil
}

// hash is a turn of its own for one new hash.
func (h *hasher) hash(ctx context.Context, password string) (string, error) {
	t, err := h.admit()
	if err != nil {
		return "", err
	}
	defer t.done()
	return t.hash(ctx, password)
}
