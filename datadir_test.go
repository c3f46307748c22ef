package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// newDataDir returns a DATA_DIR of the test's own that does not exist yet, so that the service
// creates it as on a fresh clone. t.TempDir() itself is 0755 under the usual umask, which the
// service refuses.
func newDataDir(tb testing.TB) string {
	tb.Helper()
	return filepath.Join(tb.TempDir(), "data")
}

// runUntilListening runs the service on env and returns what run returned if it stopped before it
// listened, or nil once it listens (and then stops it).
func runUntilListening(tb testing.TB, env map[string]string) error {
	tb.Helper()
	// One start at a time: each starts an embedded database and calibrates the hasher, and five
	// at once under -race on a busy machine ran past run's 30-second budget for the start.
	serialStarts <- struct{}{}
	defer func() { <-serialStarts }()
	logs := &syncBuffer{}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	exited := make(chan error, 1)
	go func() { exited <- run(ctx, nil, func(k string) string { return env[k] }, logs, logs) }()
	deadline := time.Now().Add(2 * time.Minute)
	for !strings.Contains(logs.String(), `"msg":"listening"`) {
		select {
		case err := <-exited:
			return err
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			tb.Fatalf("run neither listened nor returned; logs:\n%s", logs)
		}
	}
	cancel()
	if err := <-exited; err != nil {
		tb.Fatalf("run, stopped after it listened: %v", err)
	}
	return nil
}

// serialStarts lets one runUntilListening start the service at a time.
var serialStarts = make(chan struct{}, 1)

// otherUID is the uid that tests give files to when they must belong to someone else: nobody.
const otherUID = 65534

func TestTheDevelopmentDataDirMustBeTheServiceUsersAlone(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("Windows guards files with access control lists, which these checks do not read")
	}
	secret := []byte(strings.Repeat("s", 48) + "\n")
	mkdir := func(mode os.FileMode) func(testing.TB, string) {
		return func(tb testing.TB, dir string) {
			if err := os.Mkdir(dir, 0o700); err != nil {
				tb.Fatal(err)
			}
			if err := os.Chmod(dir, mode); err != nil { // not left to the umask
				tb.Fatal(err)
			}
		}
	}
	plant := func(mode os.FileMode, uid int) func(testing.TB, string) {
		return func(tb testing.TB, dir string) {
			mkdir(0o700)(tb, dir)
			path := filepath.Join(dir, "jwt_secret")
			if err := os.WriteFile(path, secret, mode); err != nil {
				tb.Fatal(err)
			}
			if err := os.Chmod(path, mode); err != nil {
				tb.Fatal(err)
			}
			if err := os.Chown(path, uid, -1); err != nil {
				tb.Fatal(err)
			}
		}
	}
	linkTo := func(mode os.FileMode) func(testing.TB, string) {
		return func(tb testing.TB, dir string) {
			target := dir + "-target"
			mkdir(mode)(tb, target)
			if err := os.Symlink(target, dir); err != nil {
				tb.Fatal(err)
			}
		}
	}
	for _, tt := range []struct {
		name      string
		needsRoot bool // to give a file to another user
		setup     func(tb testing.TB, dataDir string)
		env       []string // beyond DATA_DIR, HOST and PORT
		refused   string   // what the error names; "" when the start must succeed
	}{
		{name: "a missing DATA_DIR is created and accepted", setup: func(testing.TB, string) {}},
		{name: "a 0700 DATA_DIR with a 0600 secret is accepted", setup: plant(0o600, os.Geteuid())},
		{name: "a world-writable DATA_DIR is refused", setup: mkdir(0o777), refused: "mode 0777 lets group or others in"},
		{name: "a group-readable DATA_DIR is refused", setup: mkdir(0o750), refused: "mode 0750 lets group or others in"},
		{name: "a DATA_DIR others can search is refused", setup: mkdir(0o701), refused: "mode 0701"},
		{name: "a DATA_DIR of another user is refused", needsRoot: true, refused: "owned by uid 65534",
			setup: func(tb testing.TB, dir string) {
				mkdir(0o700)(tb, dir)
				if err := os.Chown(dir, otherUID, -1); err != nil {
					tb.Fatal(err)
				}
			}},
		{name: "a DATA_DIR that is a file is refused", refused: "not a directory",
			setup: func(tb testing.TB, dir string) { os.WriteFile(dir, nil, 0o600) }},
		{name: "a symlink to a 0700 directory is followed and accepted", setup: linkTo(0o700)},
		{name: "a symlink to a directory others can reach is refused", setup: linkTo(0o755), refused: "mode 0755"},
		{name: "a planted 0644 secret is refused", setup: plant(0o644, os.Geteuid()), refused: "jwt_secret: mode 0644"},
		{name: "a group-writable secret is refused", setup: plant(0o620, os.Geteuid()), refused: "jwt_secret: mode 0620"},
		{name: "a secret of another user is refused", needsRoot: true, setup: plant(0o600, otherUID), refused: "jwt_secret: owned by uid 65534"},
		{name: "the secret file is not read when JWT_SECRET is set", setup: plant(0o644, os.Geteuid()),
			env: []string{"JWT_SECRET", testSecret}},
		{name: "a DATA_DIR others can reach is refused even with JWT_SECRET, for the database in it",
			setup: mkdir(0o755), env: []string{"JWT_SECRET", testSecret}, refused: "chmod 700"},
		{name: "DATA_DIR is not used, so not checked, with MONGODB_URI", setup: mkdir(0o777),
			env: []string{"MONGODB_URI", testMongoURI, "JWT_SECRET", testSecret}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			if tt.needsRoot && os.Geteuid() != 0 {
				t.Skipf("needs root to give a file to uid %d; running as uid %d", otherUID, os.Geteuid())
			}
			dataDir := newDataDir(t)
			tt.setup(t, dataDir)
			env := map[string]string{"DATA_DIR": dataDir, "HOST": "127.0.0.1", "PORT": "0",
				"METRICS_ADDR": "127.0.0.1:0", "MONGODB_DATABASE": newTestDB(t).Name()}
			for i := 0; i+1 < len(tt.env); i += 2 {
				env[tt.env[i]] = tt.env[i+1]
			}
			err := runUntilListening(t, env)
			switch {
			case tt.refused == "" && errors.Is(err, ErrUnavailable):
				// Past every check of DATA_DIR, the start then ran out of time on the database
				// (under -race on a busy machine): the directory was accepted.
				t.Logf("accepted; then the database did not answer in time: %v", err)
			case tt.refused == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.refused == "" && err == nil:
			case err == nil:
				t.Fatalf("started; want a refusal naming %q", tt.refused)
			case !strings.Contains(err.Error(), tt.refused) || !strings.Contains(err.Error(), dataDir):
				t.Fatalf("refused with %q; want it to name %s and %q", err, dataDir, tt.refused)
			default:
				t.Log(err)
			}
		})
	}
}

func TestAFreshDataDirIsCreatedPrivateAndKeepsItsSecret(t *testing.T) {
	t.Parallel()
	if runtime.GOOS == "windows" {
		t.Skip("Windows guards files with access control lists, which a file's mode does not show")
	}
	dataDir := filepath.Join(newDataDir(t), "nested")
	abs, err := privateDataDir(dataDir)
	if err != nil {
		t.Fatal(err)
	}
	first, err := devSecret(abs)
	if err != nil {
		t.Fatal(err)
	}
	again, err := devSecret(abs)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(first, again) || len(first) < 32 {
		t.Fatalf("secret %q, then %q: want one secret of 32 bytes or more", first, again)
	}
	for path, want := range map[string]os.FileMode{
		filepath.Dir(dataDir):                0o700,
		dataDir:                              0o700,
		filepath.Join(dataDir, "jwt_secret"): 0o600,
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %#o, want %#o", path, fi.Mode().Perm(), want)
		}
	}
}
