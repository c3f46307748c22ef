package main

import (
	"bufio"
	"context"
	"crypto"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lestrrat-go/httprc/v3"
	"github.com/lestrrat-go/jwx/v3/jwk"
	jwxjwt "github.com/lestrrat-go/jwx/v3/jwt"
)

// rotationStory is what an outside consumer of the JWKS sees: a token of the first key, then a
// rotation, a token of the next key, the next key revoked, and a token of the key after it.
type rotationStory struct {
	e      *testEnv
	jwks   string       // the JWKS address; fetches counts the requests for it
	fetch  atomic.Int32 // JWKS requests
	tokens [3]string
}

func newRotationStory(t *testing.T, alg string) *rotationStory {
	t.Helper()
	s := &rotationStory{e: newKeyEnv(t, withAlg(alg), fastRotation)}
	h := s.e.srv.Config.Handler
	srv := httptestServer(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/.well-known/jwks.json" {
			s.fetch.Add(1)
		}
		h.ServeHTTP(w, r)
	}))
	s.jwks = srv.URL + "/.well-known/jwks.json"
	return s
}

// login returns the access token of a fresh user.
func (s *rotationStory) login(t *testing.T) string {
	t.Helper()
	_, access, _ := s.e.user(t)
	return access
}

// rotate starts a rotation and lets it take effect.
func (s *rotationStory) rotate(t *testing.T) {
	t.Helper()
	w := httptest.NewRecorder()
	handleKeyRotate(s.e.deps.log, s.e.deps.keys).ServeHTTP(w, httptest.NewRequest("POST", "/admin/keys/rotate", nil))
	if w.Code != 200 {
		t.Fatalf("rotate: %d %s", w.Code, w.Body)
	}
	s.e.clock.Advance(s.e.cfg.keyPublishAhead)
	s.e.syncKeys(t)
}

// revoke revokes the key of token.
func (s *rotationStory) revoke(t *testing.T, token string) {
	t.Helper()
	w := httptest.NewRecorder()
	mux := http.NewServeMux()
	mux.Handle("DELETE /admin/keys/{kid}", handleKeyRevoke(s.e.deps.log, s.e.deps.keys))
	mux.ServeHTTP(w, httptest.NewRequest("DELETE", "/admin/keys/"+kidOf(t, token), nil))
	if w.Code != 200 {
		t.Fatalf("revoke: %d %s", w.Code, w.Body)
	}
}

// newJWKSVerifier is the README's Go example (under "Verifying tokens in your own services"),
// but for opts, with which the test sets the clock.
func newJWKSVerifier(ctx context.Context, jwksURL string, opts ...jwxjwt.ParseOption) (func(token string) (jwxjwt.Token, error), error) {
	// The key set, fetched now and again in the background at least every 5 minutes.
	cache, err := jwk.NewCache(ctx, httprc.NewClient())
	if err != nil {
		return nil, err
	}
	if err := cache.Register(ctx, jwksURL, jwk.WithMaxInterval(5*time.Minute)); err != nil {
		return nil, err
	}
	keys, err := cache.CachedSet(jwksURL)
	if err != nil {
		return nil, err
	}
	return func(token string) (jwxjwt.Token, error) {
		return jwxjwt.ParseString(token, append([]jwxjwt.ParseOption{jwxjwt.WithKeySet(keys),
			jwxjwt.WithIssuer("auth"), jwxjwt.WithClaimValue("token_use", "access")}, opts...)...)
	}, nil
}

// A Go JWKS client that nobody here wrote (lestrrat-go/jwx, a test-only dependency) checks the
// service's tokens across a rotation, knowing only the JWKS address.
func TestAGoJWKSClientChecksTokensAcrossARotation(t *testing.T) {
	t.Parallel()
	for _, alg := range []string{algEdDSA, algES256} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			s := newRotationStory(t, alg)
			check := func(set jwk.Set, token string) error {
				_, err := jwxjwt.ParseString(token, jwxjwt.WithKeySet(set), jwxjwt.WithIssuer("auth"),
					jwxjwt.WithClock(jwxjwt.ClockFunc(s.e.clock.Now)))
				return err
			}
			cached, err := jwk.Fetch(t.Context(), s.jwks)
			if err != nil {
				t.Fatal(err)
			}
			for i := range cached.Len() {
				k, _ := cached.Key(i)
				kid, _ := k.KeyID()
				tp, err := k.Thumbprint(crypto.SHA256)
				if err != nil || base64.RawURLEncoding.EncodeToString(tp) != kid {
					t.Fatalf("kid %s is not the key's RFC 7638 thumbprint (%v)", kid, err)
				}
			}
			verify, err := newJWKSVerifier(t.Context(), s.jwks, jwxjwt.WithClock(jwxjwt.ClockFunc(s.e.clock.Now)))
			if err != nil {
				t.Fatal(err)
			}
			first := s.login(t)
			if err := check(cached, first); err != nil {
				t.Fatalf("the first key's token: %v", err)
			}
			if _, err := verify(first); err != nil {
				t.Fatalf("the README's verifier, the first key's token: %v", err)
			}
			s.rotate(t)
			second := s.login(t)
			if kidOf(t, second) == kidOf(t, first) {
				t.Fatal("no rotation")
			}
			// Published ahead: the copy fetched before the rotation already holds the new key.
			if err := check(cached, second); err != nil {
				t.Fatalf("the next key's token against the set cached before the rotation: %v", err)
			}
			if _, err := verify(second); err != nil {
				t.Fatalf("the README's verifier, the next key's token: %v", err)
			}
			if n := s.fetch.Load(); n != 2 {
				t.Fatalf("%d JWKS fetches, want one for each of the two copies", n)
			}
			s.revoke(t, second)
			third := s.login(t)
			fresh, err := jwk.Fetch(t.Context(), s.jwks)
			if err != nil {
				t.Fatal(err)
			}
			if err := check(fresh, first); err != nil {
				t.Fatalf("the retired key's live token: %v", err)
			}
			if err := check(fresh, second); err == nil {
				t.Fatal("a fresh copy of the set still checks the revoked key's token")
			}
			if err := check(fresh, third); err != nil {
				t.Fatalf("the token of the key that took over: %v", err)
			}
		})
	}
}

// jwksNodeDir holds a Node resource server's check (jose); `npm ci` there installs it.
var jwksNodeDir = filepath.Join("testdata", "jwks-node")

// nodeConsumer is one running Node process that checks tokens against the service's JWKS with
// jose, keeping the key set it fetched as a long-running server would.
type nodeConsumer struct {
	in  io.WriteCloser
	out *bufio.Scanner
}

func startNodeConsumer(t *testing.T, jwksURL string) *nodeConsumer {
	t.Helper()
	cmd := exec.Command("node", "verify.mjs", jwksURL, "auth")
	cmd.Dir = jwksNodeDir
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in.Close()
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	return &nodeConsumer{in: in, out: bufio.NewScanner(out)}
}

type nodeVerdict struct {
	OK    bool   `json:"ok"`
	KID   string `json:"kid"`
	Error string `json:"error"`
}

// The same story told to jose, the JWKS library of Node resource servers, in a Node process that
// the test starts (skipped without node, or before `npm ci` in testdata/jwks-node).
func TestANodeJWKSClientChecksTokensAcrossARotation(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("node"); err != nil {
		t.Skip("node is not installed")
	}
	if _, err := os.Stat(filepath.Join(jwksNodeDir, "node_modules", "jose")); err != nil {
		t.Skip("jose is not installed: run npm ci in " + jwksNodeDir)
	}
	for _, alg := range []string{algEdDSA, algES256} {
		t.Run(alg, func(t *testing.T) {
			t.Parallel()
			s := newRotationStory(t, alg)
			ask := func(n *nodeConsumer, token string) nodeVerdict {
				t.Helper()
				if _, err := io.WriteString(n.in, strconv.FormatInt(s.e.clock.Now().Unix(), 10)+" "+token+"\n"); err != nil {
					t.Fatal(err)
				}
				if !n.out.Scan() {
					t.Fatalf("node answered nothing: %v", n.out.Err())
				}
				var v nodeVerdict
				if err := json.Unmarshal(n.out.Bytes(), &v); err != nil {
					t.Fatalf("node answered %q", n.out.Text())
				}
				t.Logf("jose: %s", n.out.Text())
				return v
			}
			server := startNodeConsumer(t, s.jwks)
			first := s.login(t)
			if v := ask(server, first); !v.OK || v.KID != kidOf(t, first) {
				t.Fatalf("the first key's token: %+v", v)
			}
			s.rotate(t)
			second := s.login(t)
			if v := ask(server, second); !v.OK || v.KID == kidOf(t, first) {
				t.Fatalf("the next key's token: %+v", v)
			}
			if n := s.fetch.Load(); n != 1 {
				t.Fatalf("jose fetched the JWKS %d times; the next key was in its first copy", n)
			}
			s.revoke(t, second)
			third := s.login(t)
			// A cached copy trusts a revoked key until it is fetched again (at most the
			// Cache-Control max-age, when the consumer keeps to it): the README says so.
			if v := ask(server, second); !v.OK {
				t.Fatalf("the cached copy: %+v", v)
			}
			fresh := startNodeConsumer(t, s.jwks)
			if v := ask(fresh, first); !v.OK {
				t.Fatalf("the retired key's live token: %+v", v)
			}
			if v := ask(fresh, second); v.OK {
				t.Fatal("a fresh copy of the set still checks the revoked key's token")
			}
			if v := ask(fresh, third); !v.OK {
				t.Fatalf("the token of the key that took over: %+v", v)
			}
		})
	}
}
