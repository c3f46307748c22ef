package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// client.js, as served, runs where fetch exists but no browser does (Node 20+, server-side
// rendering): createAuth with defaults keeps the tokens in memory, with no cross-tab wiring.
func TestClientModuleRunsInNodeWithMemoryStorage(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email := newEmail()
	out := runNode(t, e, "run.mjs", e.srv.URL, email)
	var got struct {
		SignedOutAtStart bool     `json:"signedOutAtStart"`
		SignUp           int      `json:"signUp"`
		SignIn           string   `json:"signIn"`
		Email            string   `json:"email"`
		Page             int      `json:"page"`
		Token            bool     `json:"token"`
		SignOut          int      `json:"signOut"`
		AfterSignOut     int      `json:"afterSignOut"`
		Events           []string `json:"events"`
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	if !got.SignedOutAtStart || got.SignUp != 201 || got.SignIn != "signed_in" || got.Email != email ||
		got.Page != 200 || !got.Token || got.SignOut != 200 || got.AfterSignOut != 401 ||
		!slices.Equal(got.Events, []string{"signed_in", "signed_out"}) {
		t.Fatalf("client.js in Node: %+v", got)
	}
}

// runNode runs a script of testdata/client-node with node, beside client.js as e serves it, and
// returns what it printed; the test skips without node.
func runNode(t *testing.T, e *testEnv, script string, args ...string) []byte {
	t.Helper()
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed; skipping the test of client.js outside a browser")
	}
	dir := t.TempDir()
	module := e.do(t, "GET", "/auth/client.js", nil)
	if module.status != 200 {
		t.Fatalf("GET /auth/client.js: %d", module.status)
	}
	text, err := os.ReadFile(filepath.Join("testdata/client-node", script))
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"client.mjs": []byte(module.raw), script: text} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	out, err := exec.Command(node, append([]string{filepath.Join(dir, script)}, args...)...).CombinedOutput()
	if err != nil {
		t.Fatalf("node %s: %v\n%s", script, err, out)
	}
	return out
}

// An app's mistakes with client.js come to a clear error at once, or to what the documentation
// promises: never to a module that breaks later.
func TestClientModuleAnswersMistakesClearly(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	out := runNode(t, e, "misuse.mjs", e.srv.URL, newEmail())
	var got struct {
		Options                          map[string]string
		VerifyFirst, StepUpSignedOut     string
		SignUp                           int
		TrailingSlash, NoMethods, Throws string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("node printed %s: %v", out, err)
	}
	if got.SignUp != 201 {
		t.Fatalf("sign-up: %d", got.SignUp)
	}
	t.Run("createAuth with a nonsense option throws a TypeError naming it", func(t *testing.T) {
		for option, outcome := range got.Options {
			name := option[:strings.Index(option, ":")]
			if !strings.HasPrefix(outcome, "TypeError: createAuth: ") || !strings.Contains(outcome, name) {
				t.Errorf("createAuth({%s}): %q, want a TypeError naming %s", option, outcome, name)
			}
		}
	})
	t.Run("verifySecondFactor with no sign-in waiting rejects, saying to call signIn", func(t *testing.T) {
		if !strings.HasPrefix(got.VerifyFirst, "Error: ") || !strings.Contains(got.VerifyFirst, "signIn") {
			t.Fatalf("verifySecondFactor first: %q", got.VerifyFirst)
		}
	})
	t.Run("stepUp while signed out answers 401 token_missing", func(t *testing.T) {
		if got.StepUpSignedOut != "401 token_missing" {
			t.Fatalf("stepUp signed out: %q", got.StepUpSignedOut)
		}
	})
	t.Run("a baseURL with a trailing slash signs in", func(t *testing.T) {
		if got.TrailingSlash != "signed_in" {
			t.Fatalf("signIn: %q", got.TrailingSlash)
		}
	})
	t.Run("createAuth with defaults keeps to memory where localStorage is unusable", func(t *testing.T) {
		for name, outcome := range map[string]string{"without methods": got.NoMethods, "throwing when read": got.Throws} {
			if outcome != "signed_in" {
				t.Errorf("a localStorage %s: signIn came to %q, want signed_in", name, outcome)
			}
		}
	})
}

// tsc checks a small typed app (testdata/client-types) against client.d.ts, with the TypeScript
// that .ci/run installs there from npm.
func TestClientTypesCheckATypedApp(t *testing.T) {
	t.Parallel()
	dir := "testdata/client-types"
	tsc := filepath.Join(dir, "node_modules", ".bin", "tsc")
	if _, err := os.Stat(tsc); err != nil {
		t.Skip("TypeScript is not installed (cd testdata/client-types && npm ci); skipping the check of client.d.ts")
	}
	cmd := exec.Command("npx", "tsc", "--noEmit", "-p", ".")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tsc --noEmit: %v\n%s", err, out)
	}
}

func TestClientModuleNamesItsTypesAndTheyAreServed(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	if !strings.HasPrefix(string(clientJS), `/// <reference types="./client.d.ts" />`) {
		t.Fatal("client.js does not open with the reference to client.d.ts")
	}
	r := e.do(t, "GET", "/auth/client.d.ts", nil)
	if r.status != 200 || r.raw != string(clientDTS) || r.header.Get("ETag") == "" ||
		r.header.Get("Content-Type") != "application/typescript; charset=utf-8" {
		t.Fatalf("GET /auth/client.d.ts: %d %q, %d bytes", r.status, r.header.Get("Content-Type"), len(r.raw))
	}
}
