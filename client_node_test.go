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
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed; skipping the test of client.js outside a browser")
	}
	e := newTestEnv(t)
	dir := t.TempDir()
	module := e.do(t, "GET", "/auth/client.js", nil)
	if module.status != 200 {
		t.Fatalf("GET /auth/client.js: %d", module.status)
	}
	script, err := os.ReadFile("testdata/client-node/run.mjs")
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"client.mjs": []byte(module.raw), "run.mjs": script} {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	email := newEmail()
	out, err := exec.Command(node, filepath.Join(dir, "run.mjs"), e.srv.URL, email).CombinedOutput()
	if err != nil {
		t.Fatalf("node: %v\n%s", err, out)
	}
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
