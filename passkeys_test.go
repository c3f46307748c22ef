package main

// Passkeys over HTTP, with a software authenticator built on go-webauthn's own CBOR and COSE
// packages (no software authenticator module is served here): registration, the three kinds of
// sign-in, counters, replays, other origins and stamps.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncbor"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"
)

// testOrigin and testRPID are where the tests' default configuration puts passkeys: PUBLIC_URL
// defaults to http://localhost:7878 in development.
const (
	testOrigin = "http://localhost:7878"
	testRPID   = "localhost"
)

// softKey is a software authenticator holding one P-256 credential: what a browser and an
// authenticator would answer, made with the library's CBOR and COSE encoders.
type softKey struct {
	id         []byte
	key        *ecdsa.PrivateKey
	aaguid     [16]byte
	userHandle []byte
	count      uint32
	synced     bool   // BE and BS: a passkey a platform syncs
	origin     string // clientDataJSON's origin; testOrigin when empty
	rpID       string // hashed into the authenticator data; testRPID when empty
}

func newSoftKey(tb testing.TB) *softKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	s := &softKey{id: make([]byte, 32), key: k}
	rand.Read(s.id)
	copy(s.aaguid[:], "soft authenticat")
	return s
}

func b64u(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func unb64(tb testing.TB, s string) []byte {
	tb.Helper()
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil {
		tb.Fatalf("%q is not base64url: %v", s, err)
	}
	return b
}

func (s *softKey) clientData(tb testing.TB, kind, challenge string) []byte {
	tb.Helper()
	origin := s.origin
	if origin == "" {
		origin = testOrigin
	}
	b, err := json.Marshal(map[string]any{"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false})
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

func (s *softKey) authData(attested []byte) []byte {
	rpID := s.rpID
	if rpID == "" {
		rpID = testRPID
	}
	h := sha256.Sum256([]byte(rpID))
	flags := protocol.FlagUserPresent | protocol.FlagUserVerified
	if s.synced {
		flags |= protocol.FlagBackupEligible | protocol.FlagBackupState
	}
	if attested != nil {
		flags |= protocol.FlagAttestedCredentialData
	}
	d := append(h[:], byte(flags))
	d = binary.BigEndian.AppendUint32(d, s.count)
	return append(d, attested...)
}

// create answers creation options (the body of register/begin) as navigator.credentials.create
// would, with "none" attestation.
func (s *softKey) create(tb testing.TB, opts map[string]any) map[string]any {
	tb.Helper()
	user, _ := opts["user"].(map[string]any)
	s.userHandle = unb64(tb, fmt.Sprint(user["id"]))
	cose, err := webauthncbor.Marshal(map[int64]any{
		1:  int64(webauthncose.EllipticKey),
		3:  int64(webauthncose.AlgES256),
		-1: int64(webauthncose.P256),
		-2: s.key.X.FillBytes(make([]byte, 32)),
		-3: s.key.Y.FillBytes(make([]byte, 32)),
	})
	if err != nil {
		tb.Fatal(err)
	}
	attested := append(s.aaguid[:], byte(len(s.id)>>8), byte(len(s.id)))
	attested = append(append(attested, s.id...), cose...)
	obj, err := webauthncbor.Marshal(map[string]any{"fmt": "none", "attStmt": map[string]any{}, "authData": s.authData(attested)})
	if err != nil {
		tb.Fatal(err)
	}
	return map[string]any{"id": b64u(s.id), "rawId": b64u(s.id), "type": "public-key",
		"response": map[string]any{
			"attestationObject": b64u(obj),
			"clientDataJSON":    b64u(s.clientData(tb, "webauthn.create", fmt.Sprint(opts["challenge"]))),
			"transports":        []string{"internal"},
		},
		"clientExtensionResults": map[string]any{}}
}

// get answers request options (the body of login/begin) as navigator.credentials.get would: the
// counter goes up by one, as a device-bound authenticator's does.
func (s *softKey) get(tb testing.TB, opts map[string]any) map[string]any {
	tb.Helper()
	s.count++
	data := s.authData(nil)
	cdj := s.clientData(tb, "webauthn.get", fmt.Sprint(opts["challenge"]))
	h := sha256.Sum256(cdj)
	sum := sha256.Sum256(append(append([]byte{}, data...), h[:]...))
	sig, err := ecdsa.SignASN1(rand.Reader, s.key, sum[:])
	if err != nil {
		tb.Fatal(err)
	}
	return map[string]any{"id": b64u(s.id), "rawId": b64u(s.id), "type": "public-key",
		"response": map[string]any{
			"authenticatorData": b64u(data),
			"clientDataJSON":    b64u(cdj),
			"signature":         b64u(sig),
			"userHandle":        b64u(s.userHandle),
		},
		"clientExtensionResults": map[string]any{}}
}

func bearerOf(access string) []string { return []string{"Authorization", "Bearer " + access} }

// addPasskey registers key to the account of access, and answers register/finish's answer.
func (e *testEnv) addPasskey(tb testing.TB, access string, key *softKey) response {
	tb.Helper()
	opts := e.do(tb, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(access)...).want(tb, http.StatusOK, "")
	return e.do(tb, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": key.create(tb, opts.body), "name": "laptop"},
		bearerOf(access)...).want(tb, http.StatusCreated, "")
}

// passkeySignIn signs in with key alone, discoverably, and answers login/finish's answer.
func (e *testEnv) passkeySignIn(tb testing.TB, key *softKey) response {
	tb.Helper()
	opts := e.do(tb, "POST", "/auth/passkeys/login/begin", nil).want(tb, http.StatusOK, "")
	return e.do(tb, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(tb, opts.body)})
}

// levelOf is the acr and amr of access, as /auth/verify reports them.
func (e *testEnv) levelOf(tb testing.TB, access string) string {
	tb.Helper()
	c := e.claimsOf(tb, access)
	return fmt.Sprint(c["acr"], " ", c["amr"])
}

func TestPasskeyRegistrationAnswersTheInnerCreationOptionsAndTheFirstFactorsRecoveryCodes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	opts := e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(access)...).want(t, http.StatusOK, "")
	sel, _ := opts.body["authenticatorSelection"].(map[string]any)
	rp, _ := opts.body["rp"].(map[string]any)
	if opts.body["publicKey"] != nil || opts.str("challenge") == "" || rp["id"] != testRPID ||
		sel["residentKey"] != "preferred" || sel["userVerification"] != "required" {
		t.Fatalf("creation options: %s", opts.raw)
	}
	key := newSoftKey(t)
	r := e.do(t, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": key.create(t, opts.body), "name": "laptop"},
		bearerOf(access)...).want(t, http.StatusCreated, "")
	if codes, _ := r.body["recovery_codes"].([]any); len(codes) != 10 {
		t.Fatalf("the first second factor comes with ten recovery codes: %s", r.raw)
	}
	list := e.do(t, "GET", "/auth/passkeys", nil, bearerOf(access)...).want(t, http.StatusOK, "")
	ps, _ := list.body["passkeys"].([]any)
	if len(ps) != 1 {
		t.Fatalf("list: %s", list.raw)
	}
	p := ps[0].(map[string]any)
	if p["id"] != b64u(key.id) || p["name"] != "laptop" || p["backup_eligible"] != false || p["last_used_at"] != nil ||
		p["aaguid"] != "736f6674-2061-7574-6865-6e7469636174" {
		t.Fatalf("passkey: %s", list.raw)
	}
	second := newSoftKey(t)
	second.synced = true
	if r := e.addPasskey(t, access, second); r.body["recovery_codes"] != nil {
		t.Fatalf("a second passkey comes without new recovery codes: %s", r.raw)
	}
	// Control and format characters (a right-to-left override) are dropped from a name.
	e.do(t, "PATCH", "/auth/passkeys/"+b64u(second.id), map[string]string{"name": "\u202ephone\x00\n"}, bearerOf(access)...).want(t, http.StatusNoContent, "")
	list = e.do(t, "GET", "/auth/passkeys", nil, bearerOf(access)...).want(t, http.StatusOK, "")
	if !strings.Contains(list.raw, `"name":"phone","created_at"`) || !strings.Contains(list.raw, `"backup_eligible":true,"backed_up":true`) {
		t.Fatalf("renamed, synced: %s", list.raw)
	}
}

func TestAddingAPasskeyNeedsThePassword(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{}, bearerOf(access)...).want(t, http.StatusBadRequest, "invalid_request")
	e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "wrong horse battery"},
		bearerOf(access)...).want(t, http.StatusUnauthorized, "invalid_credentials")
	e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"}).
		want(t, http.StatusUnauthorized, "token_missing")
}

func TestAddingAPasskeyEndsTheOtherSessionsAndMailsTheOwner(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	email := "owner-" + strings.ToLower(newID()[:6]) + "@example.com"
	e.signup(t, email, "correct horse battery")
	access, _ := e.login(t, email, "correct horse battery")
	_, otherRefresh := e.login(t, email, "correct horse battery")
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	e.refresh(t, otherRefresh).want(t, http.StatusUnauthorized, "token_revoked")
	waitFor(t, "the notice of the passkey added", func() bool { return count(srv.subjectsTo(t, email), "A passkey was added") == 1 })
	e.do(t, "DELETE", "/auth/passkeys/"+b64u(key.id), map[string]string{"password": "correct horse battery"},
		bearerOf(access)...).want(t, http.StatusNoContent, "")
	waitFor(t, "the notice of the passkey removed", func() bool { return count(srv.subjectsTo(t, email), "A passkey was removed") == 1 })
}

func TestAPasskeyAloneSignsInAtAal2(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	bound, synced := newSoftKey(t), newSoftKey(t)
	synced.synced = true
	e.addPasskey(t, access, bound)
	e.addPasskey(t, access, synced)
	opts := e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "")
	if allow, _ := opts.body["allowCredentials"].([]any); len(allow) != 0 || opts.body["userVerification"] != "required" ||
		opts.body["rpId"] != testRPID || opts.body["publicKey"] != nil {
		t.Fatalf("discoverable request options: %s", opts.raw)
	}
	r := e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": bound.get(t, opts.body)}).want(t, http.StatusOK, "")
	if got := e.levelOf(t, r.str("access_token")); got != "aal2 [hwk mfa]" {
		t.Fatalf("a device-bound passkey's session: %s", got)
	}
	r = e.passkeySignIn(t, synced).want(t, http.StatusOK, "")
	if got := e.levelOf(t, r.str("access_token")); got != "aal2 [swk mfa]" {
		t.Fatalf("a synced passkey's session: %s", got)
	}
	list := e.do(t, "GET", "/auth/passkeys", nil, bearerOf(r.str("access_token"))...).want(t, http.StatusOK, "")
	if strings.Contains(list.raw, `"last_used_at":null`) {
		t.Fatalf("both were used: %s", list.raw)
	}
}

func TestSignInWithAnEmailListsItsPasskeysAndAnUnknownAddressLooksTheSame(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	known := e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": email}).want(t, http.StatusOK, "")
	allow, _ := known.body["allowCredentials"].([]any)
	if len(allow) != 1 || allow[0].(map[string]any)["id"] != b64u(key.id) {
		t.Fatalf("known address: %s", known.raw)
	}
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, known.body)}).want(t, http.StatusOK, "")

	unknown := e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": "nobody@example.com"}).want(t, http.StatusOK, "")
	again := e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": "nobody@example.com"}).want(t, http.StatusOK, "")
	decoys, _ := unknown.body["allowCredentials"].([]any)
	if len(decoys) == 0 || fmt.Sprint(decoys) != fmt.Sprint(again.body["allowCredentials"]) ||
		strings.Join(keysOf(unknown.body), ",") != strings.Join(keysOf(known.body), ",") {
		t.Fatalf("unknown address: %s, known: %s", unknown.raw, known.raw)
	}
	// Each entry has the same fields, the transports named by neither.
	for _, d := range append(decoys, allow...) {
		if keys := strings.Join(keysOf(d.(map[string]any)), ","); keys != "id,type" {
			t.Fatalf("a listed credential with %s: known %s, unknown %s", keys, known.raw, unknown.raw)
		}
	}
	// Another account's passkey does not finish a ceremony begun for this address.
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, unknown.body)}).
		want(t, http.StatusUnauthorized, "passkey_invalid")
}

func keysOf(m map[string]any) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestAReplayedAssertionIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	opts := e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "")
	assertion := key.get(t, opts.body)
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": assertion}).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": assertion}).want(t, http.StatusUnauthorized, "ceremony_invalid")
	// A fresh answer to the used challenge, with a higher counter, is refused all the same.
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, opts.body)}).
		want(t, http.StatusUnauthorized, "ceremony_invalid")
}

func TestAnAssertionForAnotherOriginOrRPIDIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	for _, c := range []struct{ name, origin, rpID string }{
		{"another origin", "https://evil.example", ""},
		{"an origin under another port", "http://localhost:9999", ""},
		{"another RP ID", "", "evil.example"},
	} {
		t.Run(c.name, func(t *testing.T) {
			key.origin, key.rpID = c.origin, c.rpID
			defer func() { key.origin, key.rpID = "", "" }()
			e.passkeySignIn(t, key).want(t, http.StatusUnauthorized, "passkey_invalid")
		})
	}
	e.passkeySignIn(t, key).want(t, http.StatusOK, "")
}

func TestARegistrationForAnotherOriginIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	key.origin = "https://evil.example"
	opts := e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(access)...).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": key.create(t, opts.body)},
		bearerOf(access)...).want(t, http.StatusBadRequest, "registration_invalid")
}

func TestACeremonyBegunBeforeTheStampMovedIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	opts := e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(access)...).want(t, http.StatusOK, "")
	e.addPasskey(t, access, newSoftKey(t)) // a factor added: the stamp moves
	e.do(t, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": key.create(t, opts.body)},
		bearerOf(access)...).want(t, http.StatusUnauthorized, "ceremony_invalid")

	e.addPasskey(t, access, key)
	signIn := e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": email}).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/password", map[string]string{"current_password": "correct horse battery",
		"new_password": "correct horse battery staple"}, bearerOf(access)...).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, signIn.body)}).
		want(t, http.StatusUnauthorized, "ceremony_invalid")
}

func TestACounterNotAboveTheStoredOneIsRefused(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	e.passkeySignIn(t, key).want(t, http.StatusOK, "") // counter 1
	e.passkeySignIn(t, key).want(t, http.StatusOK, "") // counter 2
	key.count = 1                                      // a clone, one use behind: it answers 2 again
	e.passkeySignIn(t, key).want(t, http.StatusUnauthorized, "passkey_invalid")
	if !strings.Contains(e.logs.String(), "cloned authenticator") {
		t.Fatal("the refusal is not logged")
	}
	key.count = 5
	e.passkeySignIn(t, key).want(t, http.StatusOK, "")
}

// A clone and its original answering with one counter at once both pass the comparison with
// the stored counter, read before either wrote: the claim of the counter lets one through.
func TestTwoAssertionsWithOneCounterAtOnceLetOneThrough(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	for round := range 3 {
		var answers [2]map[string]any
		for i := range answers {
			opts := e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "")
			answers[i] = key.get(t, opts.body)
			key.count-- // the clone answers with the same counter
		}
		key.count++
		var got [2]response
		var wg sync.WaitGroup
		for i := range answers {
			wg.Go(func() {
				got[i] = e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": answers[i]})
			})
		}
		wg.Wait()
		if got[0].status == http.StatusServiceUnavailable || got[1].status == http.StatusServiceUnavailable {
			t.Skipf("round %d: the store did not answer a racer in time; its outcome is unknown", round)
		}
		if ok := (got[0].status == 200) != (got[1].status == 200); !ok {
			t.Fatalf("round %d: %d %s and %d %s, want one 200", round, got[0].status, got[0].raw, got[1].status, got[1].raw)
		}
		for _, r := range got {
			if r.status != 200 {
				r.want(t, http.StatusUnauthorized, "passkey_invalid")
			}
		}
	}
}

// A discoverable sign-in's begin keeps nothing (the portal's page asks for one at every view);
// every other begin keeps a ceremony until its answer, and counts toward the client's limit of
// unfinished ones, those that end well being forgotten.
func TestUnfinishedPasskeyCeremoniesAreLimitedPerClient(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.maxClientFails = 3 })
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	for range 10 { // discoverable, whether answered or not
		e.passkeySignIn(t, key).want(t, http.StatusOK, "")
		e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "")
	}
	withEmail := func() response {
		return e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": email})
	}
	for range 5 { // with an email, answered
		opts := withEmail().want(t, http.StatusOK, "")
		e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, opts.body)}).want(t, http.StatusOK, "")
	}
	withEmail().want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"email": "nobody@example.com"}).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/login/begin", nil, bearerOf(access)...).want(t, http.StatusOK, "") // a step-up
	r := withEmail().want(t, http.StatusTooManyRequests, "too_many_attempts")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "")
}

// A discoverable sign-in's challenge, of which nothing is kept at its begin, is taken once
// (TestAReplayedAssertionIsRefused); one the service did not make, or one past its five minutes,
// is refused.
func TestAnUnkeptChallengeIsOnlyTheServicesAndOnlyAlive(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	made := e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusOK, "").body
	forged := maps.Clone(made)
	raw := unb64(t, made["challenge"].(string))
	raw[9] ^= 1 // another random part under the same MAC
	forged["challenge"] = b64u(raw)
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, forged)}).want(t, http.StatusUnauthorized, "ceremony_invalid")
	e.clock.Advance(ceremonyTTL)
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, made)}).want(t, http.StatusUnauthorized, "ceremony_invalid")
}

func TestACredentialOfOneAccountCannotBeAddedToAnother(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, first, _ := e.user(t)
	_, second, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, first, key)
	opts := e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(second)...).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": key.create(t, opts.body)},
		bearerOf(second)...).want(t, http.StatusConflict, "passkey_taken")
	// Nor does the first account's ceremony finish in the second's session.
	opts = e.do(t, "POST", "/auth/passkeys/register/begin", map[string]string{"password": "correct horse battery"},
		bearerOf(first)...).want(t, http.StatusOK, "")
	e.do(t, "POST", "/auth/passkeys/register/finish", map[string]any{"credential": newSoftKey(t).create(t, opts.body)},
		bearerOf(second)...).want(t, http.StatusUnauthorized, "ceremony_invalid")
}

func TestRemovingAPasskeyNeedsThePasswordOrASecondFactor(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	recovery := e.addPasskey(t, access, key).body["recovery_codes"].([]any)
	path := "/auth/passkeys/" + b64u(key.id)
	e.do(t, "DELETE", path, map[string]string{}, bearerOf(access)...).want(t, http.StatusBadRequest, "invalid_request")
	e.do(t, "DELETE", path, map[string]string{"password": "wrong horse battery"}, bearerOf(access)...).
		want(t, http.StatusUnauthorized, "invalid_credentials")
	e.do(t, "DELETE", path, map[string]string{"recovery_code": "aaaaa-bbbbb"}, bearerOf(access)...).
		want(t, http.StatusUnauthorized, "invalid_code")
	_, other, _ := e.user(t)
	e.do(t, "DELETE", path, map[string]string{"password": "correct horse battery"}, bearerOf(other)...).
		want(t, http.StatusNotFound, "not_found")
	e.do(t, "DELETE", path, map[string]string{"recovery_code": recovery[0].(string)}, bearerOf(access)...).
		want(t, http.StatusNoContent, "")
	e.passkeySignIn(t, key).want(t, http.StatusUnauthorized, "passkey_invalid")
	// The last second factor gone, the password alone signs in again.
	e.login(t, email, "correct horse battery")
}

func TestAPasswordLoginOfAnAccountWithAPasskeyIsFinishedWithIt(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	login := e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, http.StatusOK, "")
	if fmt.Sprint(login.body["methods"]) != "[passkey recovery_code]" || login.str("access_token") != "" {
		t.Fatalf("login: %s", login.raw)
	}
	token := login.str("mfa_token")
	opts := e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"mfa_token": token}).want(t, http.StatusOK, "")
	if allow, _ := opts.body["allowCredentials"].([]any); len(allow) != 1 {
		t.Fatalf("second factor's request options: %s", opts.raw)
	}
	// The ceremony belongs to its challenge: without it, it is no sign-in.
	e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, opts.body)}).
		want(t, http.StatusUnauthorized, "ceremony_invalid")
	opts = e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"mfa_token": token}).want(t, http.StatusOK, "")
	r := e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"mfa_token": token, "credential": key.get(t, opts.body)}).
		want(t, http.StatusOK, "")
	if got := e.levelOf(t, r.str("access_token")); got != "aal2 [pwd hwk]" {
		t.Fatalf("level: %s", got)
	}
	e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"mfa_token": token}).want(t, http.StatusUnauthorized, "token_invalid")

	// An account with both factors offers both.
	e.enrolTOTP(t, r.str("access_token"))
	login = e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, http.StatusOK, "")
	if fmt.Sprint(login.body["methods"]) != "[totp passkey recovery_code]" {
		t.Fatalf("login: %s", login.raw)
	}
}

func TestPhishingResistantStepUpNeedsAPasskey(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	secret, _ := e.enrolTOTP(t, access)
	require := func(access, level string) response {
		return e.do(t, "GET", forwardAuthPath, nil, "Authorization", "Bearer "+access, "X-Auth-Require", level)
	}
	r := require(access, "phr").want(t, http.StatusUnauthorized, "mfa_required")
	if h := r.header.Get("WWW-Authenticate"); !strings.Contains(h, `acr_values="phr"`) {
		t.Fatalf("WWW-Authenticate: %s", h)
	}
	// aal2 by a code is not phishing-resistant.
	byCode := e.verifyMFA(t, map[string]string{"code": oathtool(t, secret, e.clock.Now())}, bearerOf(access)...).want(t, http.StatusOK, "")
	require(byCode.str("access_token"), "aal2").want(t, http.StatusOK, "")
	require(byCode.str("access_token"), "phr").want(t, http.StatusUnauthorized, "mfa_required")
	// Step-up with the passkey.
	opts := e.do(t, "POST", "/auth/passkeys/login/begin", nil, bearerOf(byCode.str("access_token"))...).want(t, http.StatusOK, "")
	up := e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": key.get(t, opts.body)},
		bearerOf(byCode.str("access_token"))...).want(t, http.StatusOK, "")
	ok := require(up.str("access_token"), "phr").want(t, http.StatusOK, "")
	if ok.header.Get("X-User-Amr") != "pwd,hwk" || ok.header.Get("X-User-Acr") != "aal2" {
		t.Fatalf("headers: %v", ok.header)
	}
	// A passwordless session meets it too.
	require(e.passkeySignIn(t, key).want(t, http.StatusOK, "").str("access_token"), "phr").want(t, http.StatusOK, "")
}

func TestPasskeysAreOffWithoutARelyingParty(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.passkeys = passkeyConfig{} })
	_, access, _ := e.user(t)
	e.do(t, "GET", "/auth/passkeys", nil, bearerOf(access)...).want(t, http.StatusNotImplemented, "passkeys_off")
	e.do(t, "POST", "/auth/passkeys/login/begin", nil).want(t, http.StatusNotImplemented, "passkeys_off")
}

func TestPasskeySettings(t *testing.T) {
	t.Parallel()
	base := map[string]string{"MONGODB_URI": "mongodb://db", "JWT_SECRET": testSecret}
	load := func(env map[string]string) (config, error) {
		return loadConfig(func(k string) string {
			if v, ok := env[k]; ok {
				return v
			}
			return base[k]
		})
	}
	for _, c := range []struct {
		name    string
		env     map[string]string
		rpID    string
		origins string
		bad     string
	}{
		{"development: localhost", map[string]string{"MONGODB_URI": "", "JWT_SECRET": ""}, "localhost", "[http://localhost:7878]", ""},
		{"the host of PUBLIC_URL", map[string]string{"PUBLIC_URL": "https://auth.example.com"}, "auth.example.com", "[https://auth.example.com]", ""},
		{"COOKIE_DOMAIN, with the CORS origins under it",
			map[string]string{"PUBLIC_URL": "https://auth.example.com", "COOKIE_DOMAIN": "example.com", "CORS_ALLOWED_ORIGINS": "https://app.example.com,https://other.org"},
			"example.com", "[https://auth.example.com https://app.example.com]", ""},
		{"neither: off", map[string]string{}, "", "[]", ""},
		{"an IP address: off", map[string]string{"PUBLIC_URL": "https://10.0.0.1"}, "", "[]", ""},
		{"WEBAUTHN_RP_ID and WEBAUTHN_ORIGINS", map[string]string{"WEBAUTHN_RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://a.example.com, https://example.com:8443"},
			"example.com", "[https://a.example.com https://example.com:8443]", ""},
		{"an origin outside the RP ID", map[string]string{"WEBAUTHN_RP_ID": "example.com", "WEBAUTHN_ORIGINS": "https://example.org"}, "", "", "WEBAUTHN_ORIGINS"},
		{"an origin in clear", map[string]string{"WEBAUTHN_RP_ID": "example.com", "WEBAUTHN_ORIGINS": "http://a.example.com"}, "", "", "WEBAUTHN_ORIGINS"},
		{"an IP address as RP ID", map[string]string{"WEBAUTHN_RP_ID": "10.0.0.1", "WEBAUTHN_ORIGINS": "https://10.0.0.1"}, "", "", "WEBAUTHN_RP_ID"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := load(c.env)
			if c.bad != "" {
				if err == nil || !strings.Contains(err.Error(), c.bad) {
					t.Fatalf("want an error naming %s, got %v", c.bad, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if cfg.passkeys.rpID != c.rpID || fmt.Sprint(cfg.passkeys.origins) != c.origins {
				t.Fatalf("got %q %v, want %q %s", cfg.passkeys.rpID, cfg.passkeys.origins, c.rpID, c.origins)
			}
			if c.rpID == "" && len(cfg.passkeys.warnings) == 0 {
				t.Fatal("passkeys off without a warning")
			}
		})
	}
}

// Wrong answers to a sign-in without a password count against the client, never the account:
// the passkey's id is no secret, and whoever forges answers for it, from however many addresses,
// does not lock its owner out; the owner's own passkey signs in meanwhile. After a password they
// count against the account, as any second factor's (TestWrongCodesFromManyClientsAreLimitedPerAccount).
func TestWrongPasskeyAnswersWithoutAPasswordCountAgainstTheClientOnly(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback, func(c *config) { c.mfaMaxFailures, c.maxClientFails = 3, 3 })
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	e.addPasskey(t, access, key)
	forged := *key // the credential's id and user handle, another private key
	forged.key = newSoftKey(t).key
	signIn := func(k *softKey, client string) response {
		opts := e.do(t, "POST", "/auth/passkeys/login/begin", nil, "X-Forwarded-For", client).want(t, http.StatusOK, "")
		return e.do(t, "POST", "/auth/passkeys/login/finish", map[string]any{"credential": k.get(t, opts.body)}, "X-Forwarded-For", client)
	}
	for i := range 6 {
		signIn(&forged, clientNo(i)).want(t, http.StatusUnauthorized, "passkey_invalid")
	}
	for range 2 {
		signIn(&forged, clientNo(0)).want(t, http.StatusUnauthorized, "passkey_invalid")
	}
	r := signIn(&forged, clientNo(0)).want(t, http.StatusTooManyRequests, "too_many_attempts")
	if r.header.Get("Retry-After") == "" {
		t.Fatal("no Retry-After")
	}
	signIn(key, clientNo(7)).want(t, http.StatusOK, "")
}

func TestPasskeysOfNobodyCountAgainstTheClient(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.maxClientFails = 3 })
	email, access, _ := e.user(t)
	nobodys := newSoftKey(t)
	nobodys.userHandle = []byte("nobody")
	for range 3 {
		e.passkeySignIn(t, nobodys).want(t, http.StatusUnauthorized, "passkey_invalid")
	}
	e.passkeySignIn(t, nobodys).want(t, http.StatusTooManyRequests, "too_many_attempts")
	// They count as the client's failed logins: a password login waits too.
	e.do(t, "POST", "/auth/login", map[string]string{"email": email, "password": "correct horse battery"}).
		want(t, http.StatusTooManyRequests, "too_many_attempts")
	_ = access
}

// withPortalPasskeys is the portal of the tests, with passkeys on its cookie domain.
func withPortalPasskeys(c *config) {
	withPortal(c)
	c.passkeys = passkeyConfig{rpID: "example.test", rpName: "Example", origins: []string{testPortalURL}}
}

func TestThePortalSignsInWithAPasskeyAlone(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortalPasskeys)
	_, access, _ := e.user(t)
	key := newSoftKey(t)
	key.origin, key.rpID = testPortalURL, "example.test"
	e.addPasskey(t, access, key)

	b := newBrowser(e)
	page := b.send(t, "GET", "/login", nil)
	if !strings.Contains(page.body, `autocomplete="username webauthn"`) || !strings.Contains(page.body, `id="passkey-form"`) ||
		!strings.Contains(page.header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("the login page offers no passkey: %v\n%s", page.header, page.body)
	}
	csrf := csrfField.FindStringSubmatch(page.body)[1]
	if js := b.send(t, "GET", "/login/passkeys.js", nil); js.status != http.StatusOK || !strings.Contains(js.body, "conditional") {
		t.Fatalf("script: %d", js.status)
	}
	// The options only to the page's own script: with its CSRF token, from its origin.
	if r := b.send(t, "POST", "/login/passkey/begin", url.Values{"csrf": {"forged"}}); r.status != http.StatusForbidden {
		t.Fatalf("begin without the page's token: %d %s", r.status, r.body)
	}
	begin := b.send(t, "POST", "/login/passkey/begin", url.Values{"csrf": {csrf}})
	var opts map[string]any
	if err := json.Unmarshal([]byte(begin.body), &opts); err != nil || begin.status != http.StatusOK || opts["rpId"] != "example.test" {
		t.Fatalf("begin: %d %s", begin.status, begin.body)
	}
	assertion, _ := json.Marshal(key.get(t, opts))
	done := b.send(t, "POST", "/login/passkey", url.Values{"csrf": {csrf}, "credential": {string(assertion)}, "rd": {"https://app.example.test/x"}})
	if done.status != http.StatusSeeOther || done.header.Get("Location") != "https://app.example.test/x" {
		t.Fatalf("sign-in: %d %v %s", done.status, done.header, done.body)
	}
	phr := b.forward(t, forwardAuthPath, "X-Auth-Require", "phr")
	if phr.status != http.StatusOK || phr.header.Get("X-User-Amr") != "hwk,mfa" {
		t.Fatalf("the cookie session: %d %v", phr.status, phr.header)
	}
	// A browser signed in with a password is sent to the step-up page for a passkey, which says
	// that the account has none: its codes would never meet phr.
	other, _, _ := e.user(t)
	pw := newBrowser(e)
	pw.signIn(t, other, "")
	to := pw.forward(t, "/auth/forward", "X-Auth-Require", "phr", "Sec-Fetch-Mode", "navigate", "X-Forwarded-Host", "app.example.test",
		"X-Forwarded-Proto", "https", "X-Forwarded-Uri", "/x")
	if to.status != http.StatusFound || to.header.Get("Location") != testPortalURL+"/step-up?level=phr&rd=https%3A%2F%2Fapp.example.test%2Fx" {
		t.Fatalf("phr for a password's cookie session: %d %s", to.status, to.header.Get("Location"))
	}
	if page := pw.send(t, "GET", "/step-up?level=phr&rd=https%3A%2F%2Fapp.example.test%2Fx", nil); page.status != http.StatusForbidden ||
		!strings.Contains(page.body, "needs a passkey") {
		t.Fatalf("the step-up page for phr without a passkey: %d %s", page.status, page.body)
	}
	// The same answer again is a used ceremony.
	b2 := newBrowser(e)
	csrf2 := csrfField.FindStringSubmatch(b2.send(t, "GET", "/login", nil).body)[1]
	again := b2.send(t, "POST", "/login/passkey", url.Values{"csrf": {csrf2}, "credential": {string(assertion)}})
	if again.status != http.StatusUnauthorized || !strings.Contains(again.body, "ceremony") {
		t.Fatalf("a replay: %d %s", again.status, again.body)
	}
}

func TestThePortalsSecondFactorPageTakesAPasskey(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortalPasskeys)
	email, access, _ := e.user(t)
	key := newSoftKey(t)
	key.origin, key.rpID = testPortalURL, "example.test"
	e.addPasskey(t, access, key)

	b := newBrowser(e)
	page := b.signIn(t, email, "https://app.example.test/y")
	m := mfaTokenField.FindStringSubmatch(page.body)
	if page.status != http.StatusOK || m == nil || !strings.Contains(page.body, "Use a passkey instead") ||
		strings.Contains(page.body, "webauthn") {
		t.Fatalf("the code page: %d %s", page.status, page.body)
	}
	csrf := csrfField.FindStringSubmatch(page.body)[1]
	// The API's way with this challenge is closed: it opens cookie sessions only.
	e.do(t, "POST", "/auth/passkeys/login/begin", map[string]string{"mfa_token": m[1]}).want(t, http.StatusUnauthorized, "token_invalid")
	begin := b.send(t, "POST", "/login/passkey/begin", url.Values{"csrf": {csrf}, "mfa_token": {m[1]}})
	var opts map[string]any
	if err := json.Unmarshal([]byte(begin.body), &opts); err != nil || begin.status != http.StatusOK {
		t.Fatalf("begin: %d %s", begin.status, begin.body)
	}
	if allow, _ := opts["allowCredentials"].([]any); len(allow) != 1 {
		t.Fatalf("begin: %s", begin.body)
	}
	assertion, _ := json.Marshal(key.get(t, opts))
	done := b.send(t, "POST", "/login/passkey", url.Values{"csrf": {csrf}, "mfa_token": {m[1]}, "credential": {string(assertion)},
		"rd": {"https://app.example.test/y"}})
	if done.status != http.StatusSeeOther || done.header.Get("Location") != "https://app.example.test/y" {
		t.Fatalf("sign-in: %d %v %s", done.status, done.header, done.body)
	}
	phr := b.forward(t, forwardAuthPath, "X-Auth-Require", "phr")
	if phr.status != http.StatusOK || phr.header.Get("X-User-Amr") != "pwd,hwk" {
		t.Fatalf("the cookie session: %d %v", phr.status, phr.header)
	}
}

// A cookie session signed in with a password and a code meets aal2 but not phr: the step-up page
// for phr offers the account's passkey and no code, and the passkey replaces the session with one
// that meets phr.
func TestThePortalsStepUpPageRaisesACookieSessionWithAPasskey(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortalPasskeys)
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	key := newSoftKey(t)
	key.origin, key.rpID = testPortalURL, "example.test"
	e.addPasskey(t, access, key)

	b := newBrowser(e)
	page := b.signIn(t, email, "")
	b.post(t, "/login/code", url.Values{"mfa_token": {mfaTokenField.FindStringSubmatch(page.body)[1]},
		"code": {codeAt(t, secret, stepAt(e.clock.Now()))}})
	first := b.cookies[cookieName]
	nav := []string{"X-Auth-Require", "phr", "Sec-Fetch-Mode", "navigate", "X-Forwarded-Host", "app.example.test",
		"X-Forwarded-Proto", "https", "X-Forwarded-Uri", "/keys"}
	to := b.forward(t, "/auth/forward", nav...)
	stepUp := local(t, to.header.Get("Location"))
	if to.status != http.StatusFound || !strings.HasPrefix(stepUp, "/step-up?level=phr&") {
		t.Fatalf("phr for a code's cookie session: %d %s", to.status, to.header.Get("Location"))
	}
	page = b.send(t, "GET", stepUp, nil)
	if page.status != http.StatusOK || !strings.Contains(page.body, `name="step_up"`) || strings.Contains(page.body, `name="code"`) {
		t.Fatalf("the step-up page for phr: %d %s", page.status, page.body)
	}
	csrf := csrfField.FindStringSubmatch(page.body)[1]
	begin := b.send(t, "POST", "/login/passkey/begin", url.Values{"csrf": {csrf}, "step_up": {"1"}})
	var opts map[string]any
	if err := json.Unmarshal([]byte(begin.body), &opts); err != nil || begin.status != http.StatusOK {
		t.Fatalf("begin: %d %s", begin.status, begin.body)
	}
	assertion, _ := json.Marshal(key.get(t, opts))
	done := b.send(t, "POST", "/login/passkey", url.Values{"csrf": {csrf}, "step_up": {"1"}, "level": {"phr"},
		"credential": {string(assertion)}, "rd": {"https://app.example.test/keys"}})
	if done.status != http.StatusSeeOther || done.header.Get("Location") != "https://app.example.test/keys" {
		t.Fatalf("the step-up: %d %v %s", done.status, done.header, done.body)
	}
	if b.cookies[cookieName] == first {
		t.Fatal("the step-up kept the session's cookie: it must open a new session")
	}
	if f := b.forward(t, "/auth/forward", nav...); f.status != http.StatusOK || f.header.Get("X-User-Amr") != "pwd,hwk" {
		t.Fatalf("after the step-up: %d %v", f.status, f.header)
	}
	old := newBrowserWith(e, first)
	if f := old.forward(t, forwardAuthPath); f.status != http.StatusUnauthorized {
		t.Fatalf("the replaced session: %d, want it ended", f.status)
	}
}

func TestThePortalsAccountPageAddsRenamesAndRemovesPasskeys(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortalPasskeys)
	email, access, _ := e.user(t)
	b := newBrowser(e)
	b.signIn(t, email, "")
	page := b.send(t, "GET", "/account", nil)
	if !strings.Contains(page.body, `id="passkey-add-form"`) || !strings.Contains(page.header.Get("Content-Security-Policy"), "script-src 'self'") {
		t.Fatalf("the account page: %v %s", page.header, page.body)
	}
	csrf := csrfField.FindStringSubmatch(page.body)[1]
	if r := b.send(t, "POST", "/account/passkeys/begin", url.Values{"csrf": {csrf}, "password": {"wrong horse battery"}}); r.status != http.StatusUnauthorized ||
		!strings.Contains(r.body, "invalid_credentials") {
		t.Fatalf("begin with a wrong password: %d %s", r.status, r.body)
	}
	begin := b.send(t, "POST", "/account/passkeys/begin", url.Values{"csrf": {csrf}, "password": {"correct horse battery"}})
	var opts map[string]any
	if err := json.Unmarshal([]byte(begin.body), &opts); err != nil || begin.status != http.StatusOK {
		t.Fatalf("begin: %d %s", begin.status, begin.body)
	}
	key := newSoftKey(t)
	key.origin, key.rpID = testPortalURL, "example.test"
	created, _ := json.Marshal(key.create(t, opts))
	added := b.send(t, "POST", "/account/passkeys", url.Values{"csrf": {csrf}, "credential": {string(created)}, "name": {"laptop"}})
	if added.status != http.StatusOK || strings.Count(added.body, "<li><code>") != 10 {
		t.Fatalf("added: %d %s", added.status, added.body)
	}
	page = b.send(t, "GET", "/account", nil)
	if !strings.Contains(page.body, "<td>laptop</td>") {
		t.Fatalf("the list: %s", page.body)
	}
	b.post(t, "/account/passkeys/rename", url.Values{"id": {b64u(key.id)}, "name": {"work laptop"}})
	page = b.send(t, "GET", "/account", nil)
	if !strings.Contains(page.body, "<td>work laptop</td>") {
		t.Fatalf("renamed: %s", page.body)
	}
	wantPage(t, b.post(t, "/account/passkeys/remove", url.Values{"id": {b64u(key.id)}, "password": {"wrong horse battery"}}),
		http.StatusUnauthorized, "the passkey is still there")
	b.send(t, "GET", "/account", nil)
	if r := b.post(t, "/account/passkeys/remove", url.Values{"id": {b64u(key.id)}, "password": {"correct horse battery"}}); r.status != http.StatusSeeOther {
		t.Fatalf("remove: %d %s", r.status, r.body)
	}
	_ = access
	list := e.do(t, "GET", "/auth/passkeys", nil, bearerOf(e.passkeyFreeAccess(t, email))...).want(t, http.StatusOK, "")
	if ps, _ := list.body["passkeys"].([]any); len(ps) != 0 {
		t.Fatalf("left: %s", list.raw)
	}
}

// passkeyFreeAccess logs email in with the password, an account without a second factor.
func (e *testEnv) passkeyFreeAccess(tb testing.TB, email string) string {
	tb.Helper()
	access, _ := e.login(tb, email, "correct horse battery")
	return access
}
