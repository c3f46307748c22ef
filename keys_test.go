package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

var allAlgs = []string{algHS256, algEdDSA, algES256}

func withAlg(alg string) func(*config) { return func(c *config) { c.jwtAlg = alg } }

// fastRotation is a rotation schedule short enough to walk through with a fake clock.
func fastRotation(c *config) {
	c.keyRotation = 10 * time.Minute
	c.keyPublishAhead = 2 * time.Minute
}

// newKeyEnvOn is newTestEnvOn with its signing keys loaded, as run loads them at start.
func newKeyEnvOn(tb testing.TB, db *mongo.Database, opts ...func(*config)) *testEnv {
	tb.Helper()
	e := newTestEnvOn(tb, db, opts...)
	if err := e.deps.keys.load(tb.Context()); err != nil {
		tb.Fatal(err)
	}
	return e
}

func newKeyEnv(tb testing.TB, opts ...func(*config)) *testEnv {
	tb.Helper()
	return newKeyEnvOn(tb, newTestDB(tb), opts...)
}

// syncKeys is one poll of e's signing keys.
func (e *testEnv) syncKeys(tb testing.TB) {
	tb.Helper()
	if err := e.deps.keys.sync(context.Background(), false); err != nil {
		tb.Fatal(err)
	}
}

// jwtPart decodes part i (0 the header, 1 the claims) of a token.
func jwtPart(tb testing.TB, token string, i int) map[string]any {
	tb.Helper()
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		tb.Fatalf("not a JWS: %q", token)
	}
	b, err := base64.RawURLEncoding.DecodeString(parts[i])
	if err != nil {
		tb.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		tb.Fatal(err)
	}
	return m
}

func kidOf(tb testing.TB, token string) string {
	tb.Helper()
	kid, _ := jwtPart(tb, token, 0)["kid"].(string)
	return kid
}

// jwks fetches e's key set and returns its kids.
func (e *testEnv) jwks(tb testing.TB) (kids []string, r response) {
	tb.Helper()
	r = e.do(tb, "GET", "/.well-known/jwks.json", nil).want(tb, 200, "")
	keys, ok := r.body["keys"].([]any)
	if !ok {
		tb.Fatalf("no keys array: %s", r.raw)
	}
	for _, k := range keys {
		kid, _ := k.(map[string]any)["kid"].(string)
		kids = append(kids, kid)
	}
	return kids, r
}

// signing is the key e signs with now.
func (e *testEnv) signing(tb testing.TB) *signKey {
	tb.Helper()
	k := e.deps.keys.current().signer(e.clock.Now())
	if k == nil {
		tb.Fatal("no signing key")
	}
	return k
}

func TestTokensOfEveryAlgorithmVerify(t *testing.T) {
	t.Parallel()
	for _, alg := range allAlgs {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			e := newKeyEnv(t, withAlg(alg))
			_, access, refresh := e.user(t)
			for _, tok := range []string{access, refresh} {
				h := jwtPart(t, tok, 0)
				if h["alg"] != alg || h["kid"] == "" || h["kid"] == nil {
					t.Fatalf("header %v, want alg %s and a kid", h, alg)
				}
			}
			e.page(t, access).want(t, 200, "")
			if c := e.claimsOf(t, refresh); c["token_use"] != "refresh" {
				t.Fatalf("claims %v", c)
			}
			next := e.refresh(t, refresh).want(t, 200, "")
			e.page(t, next.str("access_token")).want(t, 200, "")

			kids, r := e.jwks(t)
			if cc := r.header.Get("Cache-Control"); cc != "public, max-age=300" {
				t.Fatalf("Cache-Control %q", cc)
			}
			if alg == algHS256 {
				if len(kids) != 0 {
					t.Fatalf("HS256 published %d keys; secrets are never published", len(kids))
				}
				return
			}
			// The key signing now and the next one, published ahead.
			if len(kids) != 2 || !slices.Contains(kids, kidOf(t, access)) {
				t.Fatalf("JWKS kids %v, token kid %s", kids, kidOf(t, access))
			}
			for _, k := range r.body["keys"].([]any) {
				k := k.(map[string]any)
				if k["alg"] != alg || k["use"] != "sig" || k["d"] != nil {
					t.Fatalf("JWK %v", k)
				}
			}
		})
	}
}

// Refresh re-signs a recorded successor when the same refresh token comes again within the reuse
// interval. HS256 and EdDSA signatures are deterministic, so that is the very same token; ES256
// ones are not, so there it is the same claims (and jti) in other bytes.
func TestARepeatedRefreshGetsTheSameSuccessorWithEveryAlgorithm(t *testing.T) {
	t.Parallel()
	for _, alg := range allAlgs {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			e := newKeyEnv(t, withAlg(alg))
			_, _, refresh := e.user(t)
			first := e.refresh(t, refresh).want(t, 200, "")
			e.clock.Advance(2 * time.Second)
			second := e.refresh(t, refresh).want(t, 200, "")
			a, b := first.str("refresh_token"), second.str("refresh_token")
			if ca, cb := jwtPart(t, a, 1), jwtPart(t, b, 1); fmt.Sprint(ca) != fmt.Sprint(cb) {
				t.Fatalf("claims differ:\n%v\n%v", ca, cb)
			}
			if alg != algES256 && a != b {
				t.Fatalf("%s signs deterministically, but the re-issued token differs", alg)
			}
			e.refresh(t, b).want(t, 200, "")
		})
	}
}

// forge signs claims with method and key, with the given header fields set (nil deletes one).
func forge(tb testing.TB, method jwt.SigningMethod, key any, c jwt.MapClaims, header map[string]any) string {
	tb.Helper()
	tok := jwt.NewWithClaims(method, c)
	for k, v := range header {
		if v == nil {
			delete(tok.Header, k)
		} else {
			tok.Header[k] = v
		}
	}
	s, err := tok.SignedString(key)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

func TestTheParserRefusesKeyAndAlgorithmConfusion(t *testing.T) {
	t.Parallel()
	e := newKeyEnv(t, withAlg(algEdDSA))
	now := e.clock.Now()
	full := jwt.MapClaims{"iss": "auth", "sub": "u1", "email": "a@example.com", "jti": "j1", "sid": "s1",
		"token_use": "access", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix()}
	k := e.signing(t)
	kid := k.rec.KID
	pub := k.private.(ed25519.PrivateKey).Public().(ed25519.PublicKey)
	pubDER, _ := x509.MarshalPKIXPublicKey(pub)
	jwkJSON, _ := json.Marshal(publicJWK(&verifyKey{kid: kid, alg: algEdDSA, key: pub}))
	_, attacker, _ := ed25519.GenerateKey(rand.Reader)
	attackerJWK := publicJWK(&verifyKey{key: attacker.Public()})
	attackerKID := thumbprint(attackerJWK)
	ecKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)

	// A key server that a token points to: it must never be asked.
	var asked atomic.Int32
	keyServer := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		json.NewEncoder(w).Encode(map[string]any{"keys": []any{attackerJWK}})
	}))

	if _, err := e.deps.tokens.parse(forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": kid}), useAccess); err != nil {
		t.Fatalf("a token of the service's own key is refused: %v", err)
	}
	for _, tt := range []struct {
		name, token string
	}{
		{"an HS256 token keyed with the public key (DER)", forge(t, jwt.SigningMethodHS256, pubDER, full, map[string]any{"kid": kid})},
		{"an HS256 token keyed with the public key (raw)", forge(t, jwt.SigningMethodHS256, []byte(pub), full, map[string]any{"kid": kid})},
		{"an HS256 token keyed with the public JWK", forge(t, jwt.SigningMethodHS256, jwkJSON, full, map[string]any{"kid": kid})},
		{"an HS256 token keyed with JWT_SECRET", forge(t, jwt.SigningMethodHS256, e.secret, full, map[string]any{"kid": hmacKID(e.secret)})},
		{"alg none", forge(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, full, map[string]any{"kid": kid})},
		{"alg none without a kid", forge(t, jwt.SigningMethodNone, jwt.UnsafeAllowNoneSignatureType, full, nil)},
		{"an unknown kid", forge(t, jwt.SigningMethodEdDSA, attacker, full, map[string]any{"kid": attackerKID})},
		{"the service's kid on another key", forge(t, jwt.SigningMethodEdDSA, attacker, full, map[string]any{"kid": kid})},
		{"an embedded jwk", forge(t, jwt.SigningMethodEdDSA, attacker, full, map[string]any{"kid": attackerKID, "jwk": attackerJWK})},
		{"an embedded jwk with the service's kid", forge(t, jwt.SigningMethodEdDSA, attacker, full, map[string]any{"kid": kid, "jwk": attackerJWK})},
		{"a jku", forge(t, jwt.SigningMethodEdDSA, attacker, full, map[string]any{"kid": attackerKID, "jku": keyServer.URL})},
		{"a jku beside the service's own key", forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": kid, "jku": keyServer.URL})},
		{"an x5u", forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": kid, "x5u": keyServer.URL})},
		{"an x5c", forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": kid, "x5c": []string{"MIIB"}})},
		{"a crit header", forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": kid, "crit": []string{"exp"}})},
		{"the service's key without a kid", forge(t, jwt.SigningMethodEdDSA, k.private, full, nil)},
		{"a kid that is not a string", forge(t, jwt.SigningMethodEdDSA, k.private, full, map[string]any{"kid": 1})},
		{"ES256 under the service's kid", forge(t, jwt.SigningMethodES256, ecKey, full, map[string]any{"kid": kid})},
	} {
		t.Run("refuses "+tt.name, func(t *testing.T) {
			if _, err := e.deps.tokens.parse(tt.token, useAccess); err != errTokenInvalid {
				t.Fatalf("got %v, want token_invalid", err)
			}
			e.page(t, tt.token).want(t, 401, "token_invalid")
		})
	}
	if n := asked.Load(); n != 0 {
		t.Fatalf("the key server named in a token was asked %d times", n)
	}
}

// serveWithSecret is serveTestEnv with another JWT_SECRET than the tests' own.
func serveWithSecret(tb testing.TB, db *mongo.Database, secret string, opts ...func(*config)) *testEnv {
	tb.Helper()
	cfg := testConfig(tb)
	for _, o := range opts {
		o(&cfg)
	}
	m := newMetrics()
	store, err := newMongoStore(context.Background(), db, &m.dbErrors)
	if err != nil {
		tb.Fatal(err)
	}
	e := &testEnv{cfg: cfg, clock: newClock(), store: store, logs: &syncBuffer{}, secret: []byte(secret)}
	log := newLogger(e.logs, cfg)
	e.deps = newDeps(cfg, store, m, e.secret, e.clock.Now, log)
	e.srv = httptest.NewUnstartedServer(nil)
	e.srv.Config = newHTTPServer(cfg, newHandler(e.deps, cfg), log)
	e.srv.Start()
	tb.Cleanup(e.srv.Close)
	return e
}

func previous(secrets ...string) func(*config) {
	return func(c *config) {
		for _, s := range secrets {
			c.previousSecrets = append(c.previousSecrets, []byte(s))
		}
	}
}

func TestHS256SecretRotation(t *testing.T) {
	t.Parallel()
	const oldSecret, newSecret = testSecret, "a-new-secret-that-is-at-least-32-bytes-long"
	db := newTestDB(t)
	before := newTestEnvOn(t, db)
	_, access, refresh := before.user(t)
	_, kidless, _ := before.user(t)
	// A token of the version before kids, signed with the same secret.
	c := jwtPart(t, kidless, 1)
	kidless = forge(t, jwt.SigningMethodHS256, []byte(oldSecret), jwt.MapClaims(c), map[string]any{"kid": nil})

	after := serveWithSecret(t, db, newSecret, previous(oldSecret))
	bare := serveWithSecret(t, db, newSecret)

	t.Run("a kid-less token is accepted by the secret it was signed with while that is JWT_SECRET", func(t *testing.T) {
		before.page(t, kidless).want(t, 200, "")
	})
	t.Run("the previous secret's tokens are accepted and refreshed into the new secret's", func(t *testing.T) {
		after.page(t, access).want(t, 200, "")
		r := after.refresh(t, refresh).want(t, 200, "")
		if kid := kidOf(t, r.str("access_token")); kid != hmacKID([]byte(newSecret)) {
			t.Fatalf("kid %s, want the new secret's", kid)
		}
		after.page(t, r.str("access_token")).want(t, 200, "")
		// The old instance, still on the old secret alone, refuses the new secret's tokens.
		before.page(t, r.str("access_token")).want(t, 401, "token_invalid")
	})
	t.Run("a previous secret never checks a token without a kid", func(t *testing.T) {
		after.page(t, kidless).want(t, 401, "token_invalid")
	})
	t.Run("a previous secret never signs", func(t *testing.T) {
		_, a, _ := after.user(t)
		if kidOf(t, a) != hmacKID([]byte(newSecret)) {
			t.Fatal("signed with a previous secret")
		}
	})
	t.Run("a token that names one secret and is signed with another is refused", func(t *testing.T) {
		forged := forge(t, jwt.SigningMethodHS256, []byte(oldSecret), jwt.MapClaims(jwtPart(t, access, 1)),
			map[string]any{"kid": hmacKID([]byte(newSecret))})
		after.page(t, forged).want(t, 401, "token_invalid")
	})
	t.Run("without JWT_SECRET_PREVIOUS the old secret's tokens are refused", func(t *testing.T) {
		bare.page(t, access).want(t, 401, "token_invalid")
	})
	t.Run("the kid tells nothing of the secret", func(t *testing.T) {
		if kid := hmacKID([]byte(oldSecret)); strings.Contains(oldSecret, kid) || len(kid) != 16 {
			t.Fatalf("kid %q", kid)
		}
	})
}

func TestAudience(t *testing.T) {
	t.Parallel()
	aud := func(a string) func(*config) { return func(c *config) { c.audience = a } }
	db := newTestDB(t)
	e := newTestEnvOn(t, db, aud("https://api.example.com"))
	_, access, _ := e.user(t)
	if got := jwtPart(t, access, 1)["aud"]; got != "https://api.example.com" {
		t.Fatalf("aud %v", got)
	}
	e.page(t, access).want(t, 200, "")

	other := newTestEnvOn(t, db, aud("https://other.example.com"))
	other.page(t, access).want(t, 401, "token_invalid")
	none := newTestEnvOn(t, db)
	_, unaudienced, _ := none.user(t)
	e.page(t, unaudienced).want(t, 401, "token_invalid")
	// Without JWT_AUDIENCE the audience is not checked: unsetting it logs nobody out.
	none.page(t, access).want(t, 200, "")
}

// TestKeyRotationUnderTwoInstances walks two instances of one deployment, one clock a few
// seconds ahead of the other, through several rotations of their EdDSA keys, with users
// refreshing on both all the while. At every step, every live token must pass on both
// instances, and every token must be signed with a key that both had published at least
// publish-ahead before.
func TestKeyRotationUnderTwoInstances(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{algEdDSA, algES256} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			db := newTestDB(t)
			a := newKeyEnvOn(t, db, withAlg(alg), fastRotation)
			b := newKeyEnvOn(t, db, withAlg(alg), fastRotation)
			const skew = 3 * time.Second
			b.clock.Advance(skew)
			envs := []*testEnv{a, b}
			publishAhead := a.cfg.keyPublishAhead
			rotate := handleKeyRotate(a.deps.log, a.deps.keys)

			type issued struct {
				token, use string
				exp        time.Time
			}
			var live []issued
			published := map[string]time.Time{} // kid -> when both instances first served it (a's clock)
			bootstrap := a.signing(t).rec.KID   // the first key signs at once: nothing signed before it
			note := func(r response) {
				t.Helper()
				for _, f := range []struct{ field, use string }{{"access_token", useAccess}, {"refresh_token", useRefresh}} {
					tok := r.str(f.field)
					kid := kidOf(t, tok)
					since, ok := published[kid]
					if kid != bootstrap && (!ok || a.clock.Now().Sub(since) < publishAhead-skew) {
						t.Fatalf("signed with %s, published by both since %v, at %v: less than publish-ahead",
							kid, since, a.clock.Now())
					}
					live = append(live, issued{tok, f.use, time.Unix(int64(jwtPart(t, tok, 1)["exp"].(float64)), 0)})
				}
			}
			var sessions []string
			for range 3 {
				_, _, refresh := a.user(t)
				sessions = append(sessions, refresh)
			}
			used := map[string]bool{}
			const step = 30 * time.Second
			for i := range 100 {
				for _, e := range envs {
					e.clock.Advance(step)
					e.syncKeys(t)
				}
				aKids, _ := a.jwks(t)
				bKids, _ := b.jwks(t)
				for _, kid := range aKids {
					if _, ok := published[kid]; !ok && slices.Contains(bKids, kid) {
						published[kid] = a.clock.Now()
					}
				}
				if i == 35 || i == 40 {
					// An operator rotates now: the next key takes over as soon as it has been
					// published for publish-ahead, which note checks.
					w := httptest.NewRecorder()
					rotate.ServeHTTP(w, httptest.NewRequest("POST", "/admin/keys/rotate", nil))
					if w.Code != 200 {
						t.Fatalf("rotation: %d %s", w.Code, w.Body)
					}
				}
				for j, refresh := range sessions {
					r := envs[(i+j)%2].refresh(t, refresh).want(t, 200, "")
					note(r)
					sessions[j] = r.str("refresh_token")
					used[kidOf(t, r.str("access_token"))] = true
				}
				kept := live[:0]
				for _, tok := range live {
					if a.clock.Now().After(tok.exp) {
						continue
					}
					kept = append(kept, tok)
					for _, e := range envs {
						if !slices.Contains(aKids, kidOf(t, tok.token)) || !slices.Contains(bKids, kidOf(t, tok.token)) {
							t.Fatalf("step %d: a live token's key %s is not published", i, kidOf(t, tok.token))
						}
						if tok.use == useAccess {
							e.page(t, tok.token).want(t, 200, "")
						} else {
							e.do(t, "POST", "/auth/verify", map[string]string{"token": tok.token}).want(t, 200, "")
						}
					}
				}
				live = kept
				if len(aKids) > 4 {
					t.Fatalf("step %d: %d keys published; retired keys must leave", i, len(aKids))
				}
			}
			// 50 minutes of 10-minute rotations, two of them early.
			if len(used) < 6 {
				t.Fatalf("signed with %d keys, want at least 6", len(used))
			}
			n, err := a.store.signingKeys.CountDocuments(context.Background(), bson.D{})
			if err != nil || n > 4 {
				t.Fatalf("%d key records (%v): retired keys must be purged", n, err)
			}
		})
	}
}

// Many instances starting together on an empty database, then reaching the next key's time
// together: exactly one key is made for each generation, and they all sign with it.
func TestExactlyOneNextKeyAcrossInstancesStartingTogether(t *testing.T) {
	t.Parallel()
	const n = 16
	db := newTestDB(t)
	store, err := newMongoStore(context.Background(), db, nil)
	if err != nil {
		t.Fatal(err)
	}
	clk := newClock()
	cfg := testConfig(t)
	fastRotation(&cfg)
	cfg.jwtAlg = algEdDSA
	rings := make([]*keyring, n)
	for i := range rings {
		d := newDeps(cfg, mongoCollections(db, nil), nil, []byte(testSecret), clk.Now, newLogger(&syncBuffer{}, cfg))
		rings[i] = d.keys
	}
	all := func(f func(*keyring) error) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make([]error, n)
		start := make(chan struct{})
		for i, r := range rings {
			wg.Go(func() {
				<-start
				errs[i] = f(r)
			})
		}
		close(start)
		wg.Wait()
		if err := errors.Join(errs...); err != nil {
			t.Fatal(err)
		}
	}
	// Generations are _ids, so two keys of one generation cannot both exist: one key too many
	// shows as a generation too many.
	check := func(wantLatest int64) {
		t.Helper()
		all(func(r *keyring) error { return r.sync(context.Background(), false) })
		recs, err := store.SigningKeys(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if latest := recs[len(recs)-1].Gen; latest != wantLatest {
			t.Fatalf("latest generation %d, want %d", latest, wantLatest)
		}
		signer := rings[0].current().signer(clk.Now()).rec.KID
		for _, r := range rings {
			if s := r.current().signer(clk.Now()); s.rec.KID != signer || s.private == nil {
				t.Fatal("the instances sign with different keys")
			}
		}
	}
	all(func(r *keyring) error { return r.load(context.Background()) })
	check(2) // the first key and the next
	for gen := int64(3); gen <= 5; gen++ {
		clk.Advance(cfg.keyRotation)
		check(gen) // the next took over, and the one after it was made
	}
}

func TestRevokingAKey(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	a := newKeyEnvOn(t, db, withAlg(algEdDSA), fastRotation)
	b := newKeyEnvOn(t, db, withAlg(algEdDSA), fastRotation)
	mux := http.NewServeMux()
	mux.Handle("DELETE /admin/keys/{kid}", handleKeyRevoke(a.deps.log, a.deps.keys))
	admin := httptestServer(t, mux)

	_, access, refresh := a.user(t)
	compromised := kidOf(t, access)
	kidsBefore, _ := a.jwks(t)
	a.page(t, access).want(t, 200, "") // now in the verified-token cache
	b.page(t, access).want(t, 200, "")

	r := send(t, admin.Client(), "DELETE", admin.URL+"/admin/keys/"+compromised, nil).want(t, 200, "")
	next := r.str("signing_kid")
	if r.str("kid") != compromised || r.str("revoked_at") == "" || next == "" || next == compromised {
		t.Fatalf("answer %s", r.raw)
	}
	if !slices.Contains(kidsBefore, next) {
		t.Fatal("the key taking over was not published before")
	}

	t.Run("the instance that revoked it refuses its tokens at once, cached or not", func(t *testing.T) {
		a.page(t, access).want(t, 401, "token_invalid")
		a.refresh(t, refresh).want(t, 401, "token_invalid")
	})
	t.Run("the next key signs at once", func(t *testing.T) {
		_, fresh, _ := a.user(t)
		if kidOf(t, fresh) != next {
			t.Fatalf("signed with %s, want %s", kidOf(t, fresh), next)
		}
		b.page(t, fresh).want(t, 200, "") // b knew the next key all along
	})
	t.Run("another instance drops it at its next poll", func(t *testing.T) {
		b.syncKeys(t)
		b.page(t, access).want(t, 401, "token_invalid")
		_, fresh, _ := b.user(t)
		if kidOf(t, fresh) != next {
			t.Fatalf("b signs with %s, want %s", kidOf(t, fresh), next)
		}
	})
	t.Run("it leaves the JWKS and a new next key is published", func(t *testing.T) {
		for _, e := range []*testEnv{a, b} {
			kids, _ := e.jwks(t)
			if slices.Contains(kids, compromised) || !slices.Contains(kids, next) || len(kids) != 2 {
				t.Fatalf("JWKS %v", kids)
			}
		}
	})
	t.Run("a new instance never trusts it", func(t *testing.T) {
		newKeyEnvOn(t, db, withAlg(algEdDSA), fastRotation).page(t, access).want(t, 401, "token_invalid")
	})
	t.Run("revoking it again changes nothing", func(t *testing.T) {
		again := send(t, admin.Client(), "DELETE", admin.URL+"/admin/keys/"+compromised, nil).want(t, 200, "")
		if again.str("revoked_at") != r.str("revoked_at") {
			t.Fatalf("revoked_at moved from %s to %s", r.str("revoked_at"), again.str("revoked_at"))
		}
	})
	t.Run("an unknown kid is 404", func(t *testing.T) {
		send(t, admin.Client(), "DELETE", admin.URL+"/admin/keys/nope", nil).want(t, 404, "not_found")
	})
	t.Run("with every key revoked a brand-new one signs at once", func(t *testing.T) {
		kids, _ := a.jwks(t)
		for _, kid := range kids {
			if err := a.store.RevokeSigningKey(context.Background(), kid, a.clock.Now()); err != nil {
				t.Fatal(err)
			}
		}
		a.syncKeys(t)
		_, fresh, _ := a.user(t)
		if slices.Contains(kids, kidOf(t, fresh)) {
			t.Fatal("signed with a revoked key")
		}
		a.page(t, fresh).want(t, 200, "")
		kids, _ = a.jwks(t)
		if !slices.Contains(kids, kidOf(t, fresh)) || len(kids) != 2 {
			t.Fatalf("JWKS %v", kids)
		}
	})
}

func TestRotatingNow(t *testing.T) {
	t.Parallel()
	e := newKeyEnv(t, withAlg(algES256), fastRotation)
	srv := httptestServer(t, handleKeyRotate(e.deps.log, e.deps.keys))
	first := e.signing(t).rec.KID

	// The next key was made a moment ago: it must be published for publish-ahead first.
	r := send(t, srv.Client(), "POST", srv.URL, nil).want(t, 200, "")
	at, err := time.Parse(time.RFC3339Nano, r.str("activates_at"))
	if err != nil || at.Sub(e.clock.Now()) < e.cfg.keyPublishAhead-time.Second || r.str("signing_kid") != first {
		t.Fatalf("answer %s at %v", r.raw, e.clock.Now())
	}
	next := r.str("kid")
	kids, _ := e.jwks(t)
	if !slices.Contains(kids, next) {
		t.Fatal("the next key is not published")
	}
	e.clock.Advance(e.cfg.keyPublishAhead)
	e.syncKeys(t)
	if got := e.signing(t).rec.KID; got != next {
		t.Fatalf("signing with %s after publish-ahead, want %s", got, next)
	}
	_, access, _ := e.user(t)
	if kidOf(t, access) != next {
		t.Fatal("tokens are not signed with the new key")
	}
}

func TestAdminKeyOperationsNeedManagedKeys(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	mux := http.NewServeMux()
	mux.Handle("POST /admin/keys/rotate", handleKeyRotate(e.deps.log, e.deps.keys))
	mux.Handle("DELETE /admin/keys/{kid}", handleKeyRevoke(e.deps.log, e.deps.keys))
	srv := httptestServer(t, mux)
	send(t, srv.Client(), "POST", srv.URL+"/admin/keys/rotate", nil).want(t, 409, "keys_not_managed")
	send(t, srv.Client(), "DELETE", srv.URL+"/admin/keys/"+hmacKID(e.secret), nil).want(t, 409, "keys_not_managed")
}

func TestPrivateKeysAreStoredSealed(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	e := newKeyEnvOn(t, db, withAlg(algEdDSA))
	k := e.signing(t)
	der, _ := x509.MarshalPKCS8PrivateKey(k.private)
	seed := k.private.(ed25519.PrivateKey).Seed()
	var raw bson.Raw
	if err := e.store.signingKeys.FindOne(context.Background(), bson.D{{Key: "kid", Value: k.rec.KID}}).Decode(&raw); err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(raw, der) || bytes.Contains(raw, seed) || bytes.Contains(raw, der[len(der)-32:]) {
		t.Fatal("the private key is stored in clear")
	}

	t.Run("an instance with another JWT_SECRET does not start", func(t *testing.T) {
		other := serveWithSecret(t, db, "another-secret-that-is-at-least-32-bytes-long", withAlg(algEdDSA))
		err := other.deps.keys.load(context.Background())
		if err == nil || !strings.Contains(err.Error(), "cannot be unsealed") {
			t.Fatalf("load: %v", err)
		}
	})
	t.Run("a new JWT_SECRET with the old one in JWT_SECRET_PREVIOUS unseals the keys and seals new ones", func(t *testing.T) {
		const newSecret = "a-new-secret-that-is-at-least-32-bytes-long"
		rotated := serveWithSecret(t, db, newSecret, withAlg(algEdDSA), previous(testSecret))
		if err := rotated.deps.keys.load(context.Background()); err != nil {
			t.Fatal(err)
		}
		if rotated.signing(t).rec.KID != k.rec.KID {
			t.Fatal("the instances disagree on the signing key")
		}
		rec, err := newSigningKey(algEdDSA, newSealer([]byte(newSecret), "signing key"), 99, time.Now(), time.Now())
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unseal(algEdDSA, []*sealer{newSealer([]byte(testSecret), "signing key")}, *rec); err == nil {
			t.Fatal("a key sealed with the new secret opens with the old")
		}
	})
	t.Run("a sealed key moved to another record does not open", func(t *testing.T) {
		rec := k.rec
		rec.KID = "another"
		if _, err := unseal(algEdDSA, e.deps.keys.keks, rec); err == nil {
			t.Fatal("it opened")
		}
	})
}

func TestKeyConfiguration(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		env  map[string]string
		want string // "" for valid
	}{
		{map[string]string{}, ""},
		{map[string]string{"JWT_ALG": "eddsa"}, ""},
		{map[string]string{"JWT_ALG": "RS256"}, "JWT_ALG"},
		{map[string]string{"JWT_ALG": "none"}, "JWT_ALG"},
		{map[string]string{"JWT_SECRET_PREVIOUS": "short"}, "JWT_SECRET_PREVIOUS"},
		{map[string]string{"JWT_SECRET_PREVIOUS": testSecret + ", " + testSecret + "2"}, ""},
		{map[string]string{"JWT_KEY_PUBLISH_AHEAD": "5m"}, "JWT_KEY_PUBLISH_AHEAD"},
		{map[string]string{"JWT_KEY_ROTATION": "1h"}, "JWT_KEY_ROTATION"},
		{map[string]string{"JWT_KEY_ROTATION": "24h", "JWT_KEY_PUBLISH_AHEAD": "10m"}, ""},
	} {
		c, err := loadConfig(func(k string) string { return tt.env[k] })
		if tt.want == "" && err != nil || tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)) {
			t.Errorf("%v: got %v, want an error naming %q", tt.env, err, tt.want)
		}
		if tt.env["JWT_ALG"] == "eddsa" && c.jwtAlg != algEdDSA {
			t.Errorf("JWT_ALG=eddsa gave %q", c.jwtAlg)
		}
	}
}

// Without the portal (and so without the OpenID provider) the discovery document names the JWKS
// of JWT_ISSUER when it is a URL; with it, the document is the provider's (oidc_test.go).
func TestOpenIDConfiguration(t *testing.T) {
	t.Parallel()
	noPortal := func(c *config) { c.portalCfg.publicURL = "" }
	e := newTestEnv(t, noPortal)
	e.do(t, "GET", "/.well-known/openid-configuration", nil).want(t, 404, "not_found")

	u := newTestEnv(t, noPortal, func(c *config) { c.issuer = "https://auth.example.com/" })
	r := u.do(t, "GET", "/.well-known/openid-configuration", nil).want(t, 200, "")
	if r.str("issuer") != "https://auth.example.com/" || r.str("jwks_uri") != "https://auth.example.com/.well-known/jwks.json" {
		t.Fatalf("document %s", r.raw)
	}
}

func TestKeysAreLoadedAtStartAndPolled(t *testing.T) {
	t.Parallel()

	t.Run("go run . signs with EdDSA on the development secret, and a restart keeps the keys", func(t *testing.T) {
		t.Parallel()
		dataDir := newDataDir(t)
		s, _, stop := startRun(t, dataDir, "JWT_ALG", "EdDSA")
		const email, password = "ada@example.com", "correct horse battery"
		s.do(t, "POST", "/auth/signup", credentials{email, password}).want(t, 201, "")
		access := s.do(t, "POST", "/auth/login", credentials{email, password}).want(t, 200, "").str("access_token")
		if h := jwtPart(t, access, 0); h["alg"] != "EdDSA" {
			t.Fatalf("header %v", h)
		}
		if err := stop(); err != nil {
			t.Fatal(err)
		}
		s, _, _ = startRun(t, dataDir, "JWT_ALG", "EdDSA")
		s.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access).want(t, 200, "")
	})

	t.Run("start fails, naming the cause, when the keys cannot be opened", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t)
		newKeyEnvOn(t, db, withAlg(algEdDSA))
		env := map[string]string{"MONGODB_URI": testMongoURI, "MONGODB_DATABASE": db.Name(), "JWT_ALG": "EdDSA",
			"JWT_SECRET": "another-secret-that-is-at-least-32-bytes-long", "HOST": "127.0.0.1", "PORT": "0",
			"METRICS_ADDR": "127.0.0.1:0", "DATA_DIR": t.TempDir()}
		err := run(t.Context(), nil, func(k string) string { return env[k] }, io.Discard, io.Discard)
		if err == nil || !strings.Contains(err.Error(), "loading the signing keys") || !strings.Contains(err.Error(), "cannot be unsealed") {
			t.Fatalf("run: %v", err)
		}
	})

	t.Run("another instance's revocation arrives within the poll interval", func(t *testing.T) {
		t.Parallel()
		db := newTestDB(t)
		a := newKeyEnvOn(t, db, withAlg(algEdDSA))
		b := newKeyEnvOn(t, db, withAlg(algEdDSA))
		const interval = 100 * time.Millisecond
		go b.deps.keys.follow(t.Context(), interval)
		_, access, _ := a.user(t)
		b.page(t, access).want(t, 200, "")
		if _, err := a.deps.keys.revoke(t.Context(), kidOf(t, access)); err != nil {
			t.Fatal(err)
		}
		// A generous bound that only catches a poll that never comes.
		deadline := time.Now().Add(50 * interval)
		for b.page(t, access).status == 200 {
			if time.Now().After(deadline) {
				t.Fatalf("instance b still accepts a token of a key revoked %v ago", 50*interval)
			}
			time.Sleep(interval / 4)
		}
		b.page(t, access).want(t, 401, "token_invalid")
	})
}
