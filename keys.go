package main

// keys.go holds the signing keys: their rotation, their sealed storage and the published JWKS.

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

var (
	errUnknownKey = errors.New("the token names no key that may sign")
	// errNoSigningKey is answered 503: it lasts at most one poll, after every key was revoked.
	errNoSigningKey = fmt.Errorf("%w: no signing key is in force yet", ErrUnavailable)
)

// verifyKey is one key that a live token may be signed with. Once it leaves the key set
// (revoked, or every token it signed has expired) it is marked dropped, and the verified-token
// cache refuses the tokens it had checked with it.
type verifyKey struct {
	kid, alg string
	key      any // []byte for HS256, ed25519.PublicKey, *ecdsa.PublicKey, *rsa.PublicKey
	dropped  atomic.Bool
}

// signKey is one key of the signing schedule: its record and, for a key that may still sign, its
// private half (the secret itself for HS256).
type signKey struct {
	rec     SigningKey
	method  jwt.SigningMethod
	private any // nil when it could not be unsealed, or is no longer needed
}

// keySet is one instance's view of the keys, replaced whole on every change so that the token
// check reads it with one atomic load and no lock.
type keySet struct {
	signers []*signKey            // the schedule, by generation
	verify  map[string]*verifyKey // by kid: every key whose tokens may be live
	// noKid checks tokens without a kid, which the service issued before tokens had one: only the
	// current HS256 secret does, never a previous secret or an asymmetric key.
	noKid *verifyKey
	jwks  []byte // the public keys of verify, as /.well-known/jwks.json serves them
}

// signerAt picks the key that signs at now from a schedule ordered by generation: the latest
// whose activation has come. If that one is revoked, the next live key takes over at once (an
// emergency: it was published when it was made, but maybe not publish-ahead ago); a retired key
// never signs again. With no key active yet (the very first start), the first live one signs.
func signerAt(keys []*signKey, now time.Time) *signKey {
	sched := -1
	for i, k := range keys {
		if !k.rec.ActivateAt.After(now) {
			sched = i
		}
	}
	if sched >= 0 && keys[sched].rec.RevokedAt.IsZero() {
		return keys[sched]
	}
	for _, k := range keys[sched+1:] {
		if k.rec.RevokedAt.IsZero() {
			return k
		}
	}
	return nil
}

// retiredAt is when keys[i] stopped signing: the first activation of a later key, if that has
// come by now; zero otherwise.
func retiredAt(keys []*signKey, i int, now time.Time) time.Time {
	var at time.Time
	for _, k := range keys[i+1:] {
		if a := k.rec.ActivateAt; !a.After(now) && (at.IsZero() || a.Before(at)) {
			at = a
		}
	}
	return at
}

func (s *keySet) signer(now time.Time) *signKey { return signerAt(s.signers, now) }

// lookup finds the key a token claims to be signed with. The token must name it by kid and use
// its algorithm, so that no key is ever used with another algorithm (an HS256 token "signed"
// with a public key as its secret finds no HS256 key of that kid). Headers that point elsewhere
// for a key (jku, x5u, x5c, jwk) are never followed: a token carrying one is refused outright,
// as is one with critical extensions, which the service never writes.
func (s *keySet) lookup(tok *jwt.Token) (*verifyKey, error) {
	for _, h := range [...]string{"jku", "x5u", "x5c", "jwk", "crit"} {
		if _, ok := tok.Header[h]; ok {
			return nil, errUnknownKey
		}
	}
	var k *verifyKey
	switch kid := tok.Header["kid"].(type) {
	case nil:
		if _, ok := tok.Header["kid"]; !ok {
			k = s.noKid
		}
	case string:
		k = s.verify[kid]
	}
	if k == nil || k.alg != tok.Method.Alg() {
		return nil, errUnknownKey
	}
	return k, nil
}

// keyring holds this instance's signing and verification keys. With HS256 they are JWT_SECRET and
// JWT_SECRET_PREVIOUS (verifies only). With EdDSA or ES256 the service makes and rotates key pairs
// in signing_keys, JWT_SECRET sealing their private halves; every instance polls that collection,
// so the token check never waits on the database. The schedule lives in the records: a key takes
// over at its activate_at, and the next is made, by whichever instance gets there first, when the
// previous one takes over, so it is published a rotation period (publish-ahead at least) before
// it signs. Instances agree because they read the same records.
type keyring struct {
	alg   string
	store keyStore // nil with HS256
	now   func() time.Time
	log   *slog.Logger
	keks  []*sealer // from JWT_SECRET, then JWT_SECRET_PREVIOUS
	// rotation is JWT_KEY_ROTATION; publishAhead JWT_KEY_PUBLISH_AHEAD. retention is how long a
	// retired or revoked key stays after it stopped signing: the longest a token lives, plus
	// publish-ahead for clocks that disagree and instances that learn of a rotation one poll late.
	rotation, publishAhead, retention time.Duration
	// onDrop is told of every key that leaves the set, so that tokens checked with it leave the
	// verified-token cache.
	onDrop func(*verifyKey)
	// rsaKey makes an RS256 key pair: rsaKeyPair, or in tests one shared key (RSA generation is slow).
	rsaKey func() (*rsa.PrivateKey, error)

	set atomic.Pointer[keySet]

	mu       sync.Mutex            // one sync at a time; guards private and verify
	private  map[string]any        // unsealed private keys by kid
	verifyBy map[string]*verifyKey // the verifyKey of each kid seen, so that it stays one object
}

// hmacKID names an HS256 secret in the kid header: a truncated SHA-256 of it, which tells nothing
// about the secret (at least 32 bytes) but tells which secret signed.
func hmacKID(secret []byte) string {
	h := sha256.New()
	h.Write([]byte("auth hs256 kid\x00"))
	h.Write(secret)
	return base64.RawURLEncoding.EncodeToString(h.Sum(nil)[:12])
}

// newHMACKeyring is the HS256 key set: secret signs, secret and previous verify.
func newHMACKeyring(secret []byte, previous [][]byte) *keyring {
	r := &keyring{alg: algHS256}
	cur := &verifyKey{kid: hmacKID(secret), alg: algHS256, key: secret}
	set := &keySet{
		signers: []*signKey{{rec: SigningKey{KID: cur.kid, Alg: algHS256}, method: jwt.SigningMethodHS256, private: secret}},
		verify:  map[string]*verifyKey{cur.kid: cur},
		noKid:   cur,
		// Secrets are never published: the set is empty.
		jwks: []byte(`{"keys":[]}`),
	}
	for _, p := range previous {
		if kid := hmacKID(p); set.verify[kid] == nil {
			set.verify[kid] = &verifyKey{kid: kid, alg: algHS256, key: p}
		}
	}
	r.set.Store(set)
	return r
}

// newManagedKeyring is the key set of EdDSA, ES256 or RS256 on store; load fills it. Rings of
// several algorithms may share store: each reads only its own algorithm's records.
func newManagedKeyring(alg string, store keyStore, secret []byte, previous [][]byte,
	rotation, publishAhead, retention time.Duration, now func() time.Time, log *slog.Logger) *keyring {
	r := &keyring{alg: alg, store: store, now: now, log: log, rotation: rotation, publishAhead: publishAhead,
		retention: retention, private: make(map[string]any), verifyBy: make(map[string]*verifyKey), rsaKey: rsaKeyPair}
	for _, s := range append([][]byte{secret}, previous...) {
		r.keks = append(r.keks, newSealer(s, "signing key"))
	}
	r.set.Store(&keySet{verify: map[string]*verifyKey{}, jwks: []byte(`{"keys":[]}`)})
	return r
}

func (r *keyring) managed() bool { return r.store != nil }

// current is the key set in force; the token check reads it on every first sight of a token.
func (r *keyring) current() *keySet { return r.set.Load() }

// methods are the only algorithms the parser accepts.
func (r *keyring) methods() []string { return []string{r.alg} }

// load reads the keys at start, making the first ones if there are none. Unlike a later poll, it
// fails when a key that may sign cannot be unsealed: an instance with another JWT_SECRET than
// the others must not start.
func (r *keyring) load(ctx context.Context) error {
	if !r.managed() {
		return nil
	}
	return r.sync(ctx, true)
}

// run polls the keys every interval until ctx ends.
func (r *keyring) follow(ctx context.Context, every time.Duration) {
	if !r.managed() {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := r.sync(ctx, false); err != nil && ctx.Err() == nil {
				r.log.Warn("signing key sync failed; signing and checking with the last known keys", "err", err)
			}
		}
	}
}

// sync reads the records, does whatever the schedule says is due (a first key, the next key, an
// emergency takeover, purging keys whose tokens have all expired), and installs what it read.
func (r *keyring) sync(ctx context.Context, strict bool) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	recs, err := r.store.SigningKeys(ctx)
	if err != nil {
		return err
	}
	// Each round writes at most one key; a few rounds settle any state (a first key, then its
	// successor) even when other instances write at the same time.
	for range 3 {
		changed, err := r.maintain(ctx, recs)
		if err != nil {
			if ierr := r.install(recs, strict); ierr != nil {
				return errors.Join(err, ierr)
			}
			return err
		}
		if !changed {
			break
		}
		if recs, err = r.store.SigningKeys(ctx); err != nil {
			return err
		}
	}
	return r.install(recs, strict)
}

// schedule is the records of this instance's algorithm as signKeys, by generation. Records of
// another algorithm (left by a JWT_ALG that was changed) take no part but for numbering.
func (r *keyring) schedule(recs []SigningKey) []*signKey {
	var keys []*signKey
	for _, rec := range recs {
		if rec.Alg == r.alg {
			keys = append(keys, &signKey{rec: rec, method: jwt.GetSigningMethod(r.alg)})
		}
	}
	return keys
}

// maintain makes the one write, if any, that the records call for at now; changed says it wrote
// something (or lost a race to another instance that did), so the records must be read again.
func (r *keyring) maintain(ctx context.Context, recs []SigningKey) (changed bool, err error) {
	now := r.now().Truncate(time.Millisecond)
	keys := r.schedule(recs)
	var maxGen int64
	for _, rec := range recs {
		maxGen = max(maxGen, rec.Gen)
	}
	cur := signerAt(keys, now)
	// A key made here is sealed with this instance's JWT_SECRET: make none unless that opens the
	// keys the others made, so that one misconfigured instance cannot leave the rest unable to sign.
	if len(keys) > 0 {
		check := keys[len(keys)-1]
		if cur != nil {
			check = cur
		}
		if _, ok := r.private[check.rec.KID]; !ok {
			if _, err := unseal(r.alg, r.keks, check.rec); err != nil {
				return false, err
			}
		}
	}
	switch {
	case cur == nil:
		// No key at all, or every key revoked: a key that signs at once.
		return r.add(ctx, maxGen+1, now, now)
	case cur.rec.ActivateAt.After(now):
		// The current key was revoked and its successor took over early: say so in its record, so
		// that the rotation after it is counted from now.
		return true, r.store.AdvanceSigningKey(ctx, cur.rec.Gen, now)
	}
	hasNext := false
	for _, k := range keys {
		hasNext = hasNext || (k.rec.Gen > cur.rec.Gen && k.rec.RevokedAt.IsZero())
	}
	if !hasNext {
		// The next key, one rotation after the current one took over, and in any case published
		// at least publish-ahead before it signs.
		at := cur.rec.ActivateAt.Add(r.rotation)
		if soonest := now.Add(r.publishAhead); at.Before(soonest) {
			at = soonest
		}
		return r.add(ctx, maxGen+1, now, at)
	}
	for i, k := range keys {
		if k.rec.Gen == maxGen {
			continue
		}
		stopped := retiredAt(keys, i, now)
		if !k.rec.RevokedAt.IsZero() && (stopped.IsZero() || k.rec.RevokedAt.Before(stopped)) {
			stopped = k.rec.RevokedAt
		}
		if !stopped.IsZero() && !now.Before(stopped.Add(r.retention)) {
			r.log.Info("signing key removed: every token it signed has expired", "kid", k.rec.KID)
			return true, r.store.DeleteSigningKey(ctx, k.rec.Gen)
		}
	}
	return false, nil
}

// add makes a key pair of generation gen that signs from activate. Another instance may make that
// generation first: then its key is the one, and this one is thrown away.
func (r *keyring) add(ctx context.Context, gen int64, now, activate time.Time) (bool, error) {
	rec, err := newSigningKeyWith(r.alg, r.keks[0], gen, now, activate, r.rsaKey)
	if err != nil {
		return false, err
	}
	switch err := r.store.AddSigningKey(ctx, rec); {
	case errors.Is(err, ErrDuplicate):
		return true, nil
	case err != nil:
		return false, err
	}
	r.log.Info("signing key created", "kid", rec.KID, "alg", rec.Alg, "activate_at", rec.ActivateAt)
	return true, nil
}

// install makes recs the key set in force. Keys that may still sign are unsealed once; a key
// that cannot be unsealed fails load and is logged by a poll (this instance then cannot sign
// with it, and answers 503 rather than sign with a retired key).
func (r *keyring) install(recs []SigningKey, strict bool) error {
	now := r.now()
	keys := r.schedule(recs)
	set := &keySet{signers: keys, verify: make(map[string]*verifyKey)}
	var jwks []map[string]string
	var errs []error
	for i, k := range keys {
		stopped := retiredAt(keys, i, now)
		if !k.rec.RevokedAt.IsZero() || (!stopped.IsZero() && !now.Before(stopped.Add(r.retention))) {
			continue // revoked, or every token it signed has expired: neither published nor trusted
		}
		vk := r.verifyBy[k.rec.KID]
		if vk == nil {
			pub, err := x509.ParsePKIXPublicKey(k.rec.Public)
			if err != nil || !keyFits(r.alg, pub) {
				errs = append(errs, fmt.Errorf("signing key %s: the public key is not an %s key", k.rec.KID, r.alg))
				continue
			}
			vk = &verifyKey{kid: k.rec.KID, alg: r.alg, key: pub}
			r.verifyBy[k.rec.KID] = vk
		}
		set.verify[vk.kid] = vk
		jwks = append(jwks, publicJWK(vk))
		if !stopped.IsZero() {
			delete(r.private, k.rec.KID) // retired: it never signs again
		} else {
			// May sign now or later.
			priv, ok := r.private[k.rec.KID]
			if !ok {
				var err error
				if priv, err = unseal(r.alg, r.keks, k.rec); err != nil {
					errs = append(errs, err)
					continue
				}
				r.private[k.rec.KID] = priv
			}
			k.private = priv
		}
	}
	if jwks == nil {
		jwks = []map[string]string{}
	}
	set.jwks, _ = json.Marshal(map[string]any{"keys": jwks})
	for kid, vk := range r.verifyBy {
		if set.verify[kid] == nil {
			delete(r.verifyBy, kid)
			delete(r.private, kid)
			vk.dropped.Store(true)
			if r.onDrop != nil {
				r.onDrop(vk)
			}
		}
	}
	r.set.Store(set)
	if err := errors.Join(errs...); err != nil {
		if strict {
			return err
		}
		r.log.Error("signing keys unusable here", "err", err)
	}
	return nil
}

// keyInfo is what the admin operations answer: the key acted on, and the key that signs now.
type keyInfo struct {
	KID         string     `json:"kid"`
	ActivatesAt *time.Time `json:"activates_at,omitempty"`
	RevokedAt   *time.Time `json:"revoked_at,omitempty"`
	SigningKID  string     `json:"signing_kid"`
}

// rotate starts a rotation now: the next key, published since it was made, takes over as soon as
// it has been published for publish-ahead (at once, usually, since it is made a whole rotation
// period ahead). The key after it is made when it takes over.
func (r *keyring) rotate(ctx context.Context) (keyInfo, error) {
	if !r.managed() {
		return keyInfo{}, errKeysNotManaged
	}
	if err := r.sync(ctx, false); err != nil {
		return keyInfo{}, err
	}
	now := r.now().Truncate(time.Millisecond)
	set := r.current()
	cur := set.signer(now)
	var next *signKey
	for _, k := range set.signers {
		if cur != nil && k.rec.Gen > cur.rec.Gen && k.rec.RevokedAt.IsZero() {
			next = k
			break
		}
	}
	if next == nil {
		return keyInfo{}, fmt.Errorf("%w: no next signing key yet", ErrUnavailable)
	}
	at := next.rec.CreatedAt.Add(r.publishAhead)
	if at.Before(now) {
		at = now
	}
	if at.Before(next.rec.ActivateAt) {
		if err := r.store.AdvanceSigningKey(ctx, next.rec.Gen, at); err != nil {
			return keyInfo{}, err
		}
		r.log.Info("signing key rotation started", "kid", next.rec.KID, "activate_at", at)
	} else {
		at = next.rec.ActivateAt
	}
	if err := r.sync(ctx, false); err != nil {
		return keyInfo{}, err
	}
	info := keyInfo{KID: next.rec.KID, ActivatesAt: &at}
	if s := r.current().signer(now); s != nil {
		info.SigningKID = s.rec.KID
	}
	return info, nil
}

// revoke voids key kid and every token it signed, on this instance at once and on every other
// within one poll. If it was signing, the next key takes over at once.
func (r *keyring) revoke(ctx context.Context, kid string) (keyInfo, error) {
	if !r.managed() {
		return keyInfo{}, errKeysNotManaged
	}
	now := r.now().Truncate(time.Millisecond)
	switch err := r.store.RevokeSigningKey(ctx, kid, now); {
	case errors.Is(err, ErrNotFound):
		return keyInfo{}, errKeyNotFound
	case err != nil:
		return keyInfo{}, err
	}
	r.log.Warn("signing key revoked; every token it signed is refused", "kid", kid)
	// The revocation is in force here even if this sync fails: the poller tries again.
	if err := r.sync(ctx, false); err != nil {
		return keyInfo{}, err
	}
	info := keyInfo{KID: kid}
	set := r.current()
	for _, k := range set.signers {
		if k.rec.KID == kid {
			at := k.rec.RevokedAt
			info.RevokedAt = &at
		}
	}
	if s := set.signer(r.now()); s != nil {
		info.SigningKID = s.rec.KID
	}
	return info, nil
}

// sealedFor binds a sealed private key to its record's kid and algorithm: a sealed key moved to
// another record does not open.
func sealedFor(rec *SigningKey) []byte { return []byte(rec.Alg + "\x00" + rec.KID) }

// unseal opens rec's private key with the first of keks that fits.
func unseal(alg string, keks []*sealer, rec SigningKey) (any, error) {
	for _, kek := range keks {
		plain, err := kek.open(rec.Private, sealedFor(&rec))
		if err != nil {
			continue
		}
		priv, err := x509.ParsePKCS8PrivateKey(plain)
		if err != nil {
			return nil, fmt.Errorf("signing key %s: %w", rec.KID, err)
		}
		switch p := priv.(type) {
		case ed25519.PrivateKey:
			if alg == algEdDSA {
				return p, nil
			}
		case *ecdsa.PrivateKey:
			if alg == algES256 && p.Curve == elliptic.P256() {
				return p, nil
			}
		case *rsa.PrivateKey:
			if alg == algRS256 {
				return p, nil
			}
		}
		return nil, fmt.Errorf("signing key %s: not an %s key", rec.KID, alg)
	}
	return nil, fmt.Errorf("signing key %s cannot be unsealed with JWT_SECRET or JWT_SECRET_PREVIOUS: "+
		"every instance needs the JWT_SECRET that the others have", rec.KID)
}

// rsaKeyPair makes an RS256 key pair: 2048 bits, as RFC 7518 asks at least.
func rsaKeyPair() (*rsa.PrivateKey, error) { return rsa.GenerateKey(rand.Reader, 2048) }

// newSigningKey makes a key pair of alg and its record, the private half sealed with kek.
func newSigningKey(alg string, kek *sealer, gen int64, created, activate time.Time) (*SigningKey, error) {
	return newSigningKeyWith(alg, kek, gen, created, activate, rsaKeyPair)
}

// newSigningKeyWith is newSigningKey with RS256 pairs from rsaKey.
func newSigningKeyWith(alg string, kek *sealer, gen int64, created, activate time.Time, rsaKey func() (*rsa.PrivateKey, error)) (*SigningKey, error) {
	var pub, priv any
	switch alg {
	case algEdDSA:
		p, s, err := ed25519.GenerateKey(rand.Reader)
		if err != nil {
			return nil, err
		}
		pub, priv = p, s
	case algES256:
		s, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return nil, err
		}
		pub, priv = &s.PublicKey, s
	case algRS256:
		s, err := rsaKey()
		if err != nil {
			return nil, err
		}
		pub, priv = &s.PublicKey, s
	default:
		return nil, fmt.Errorf("no key pairs for %s", alg)
	}
	pubDER, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	privDER, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, err
	}
	rec := &SigningKey{Gen: gen, KID: thumbprint(publicJWK(&verifyKey{key: pub})), Alg: alg, Public: pubDER,
		CreatedAt: created, ActivateAt: activate}
	rec.Private = kek.seal(privDER, sealedFor(rec))
	return rec, nil
}

// keyFits reports whether pub is a public key of alg.
func keyFits(alg string, pub any) bool {
	switch p := pub.(type) {
	case ed25519.PublicKey:
		return alg == algEdDSA
	case *ecdsa.PublicKey:
		return alg == algES256 && p.Curve == elliptic.P256()
	case *rsa.PublicKey:
		return alg == algRS256 && p.N.BitLen() >= 2048
	}
	return false
}

// publicJWK is k as a JSON Web Key (RFC 7517, 8037): the members of its thumbprint, and kid,
// alg and use once k has them.
func publicJWK(k *verifyKey) map[string]string {
	enc := base64.RawURLEncoding.EncodeToString
	var j map[string]string
	switch p := k.key.(type) {
	case ed25519.PublicKey:
		j = map[string]string{"kty": "OKP", "crv": "Ed25519", "x": enc(p)}
	case *ecdsa.PublicKey:
		e, err := p.ECDH()
		if err != nil {
			return nil
		}
		b := e.Bytes() // 0x04, X, Y
		j = map[string]string{"kty": "EC", "crv": "P-256", "x": enc(b[1:33]), "y": enc(b[33:])}
	case *rsa.PublicKey:
		j = map[string]string{"kty": "RSA", "n": enc(p.N.Bytes()), "e": enc(big.NewInt(int64(p.E)).Bytes())}
	default:
		return nil
	}
	if k.kid != "" {
		j["kid"], j["alg"], j["use"] = k.kid, k.alg, "sig"
	}
	return j
}

// thumbprint is the RFC 7638 thumbprint of a public JWK, which names the key as its kid: every
// JWKS library can compute it, and it cannot name two keys.
func thumbprint(jwk map[string]string) string {
	// The required members in lexical order, which json.Marshal gives a map.
	req := map[string]string{"kty": jwk["kty"], "crv": jwk["crv"], "x": jwk["x"]}
	switch jwk["kty"] {
	case "EC":
		req["y"] = jwk["y"]
	case "RSA":
		req = map[string]string{"kty": "RSA", "n": jwk["n"], "e": jwk["e"]}
	}
	b, _ := json.Marshal(req)
	sum := sha256.Sum256(b)
	return base64.RawURLEncoding.EncodeToString(sum[:])
}
