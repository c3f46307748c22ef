package main

// datadir.go guards DATA_DIR, where the development database and its generated JWT secret live.

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// devDB is the development default: FerretDB embedded in this process, storing in SQLite files
// under DATA_DIR and speaking the MongoDB wire protocol, so that `go run .` and `go test ./...` use
// the very same driver and store code as production with nothing installed.
type devDB struct {
	uri    string
	socket string // the Unix socket it listens on, its only way in
	stop   func()
}

// privateDataDir returns dataDir as an absolute path once it is sure that only the user the service
// runs as can reach it, creating it 0700 when it does not exist: it holds the development database
// and the JWT secret. One that others can reach is refused rather than repaired, as what is in it
// may have been read or planted already. A symlink is followed and the directory it leads to is
// checked: that is where the files are, and a symlink's own mode means nothing on Linux.
func privateDataDir(dataDir string) (string, error) {
	abs, err := filepath.Abs(dataDir)
	if err != nil {
		return "", fmt.Errorf("DATA_DIR %s: %w", dataDir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("DATA_DIR %s: %w", dataDir, err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("DATA_DIR %s: %w", dataDir, err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("DATA_DIR %s: not a directory", dataDir)
	}
	const why = "it holds the development database and JWT secret, which must be the service user's alone"
	if uid, guarded := fileOwner(fi); guarded {
		if euid := os.Geteuid(); uid != euid {
			return "", fmt.Errorf("DATA_DIR %s: owned by uid %d, but the service runs as uid %d; %s: set DATA_DIR to a directory of that user's", dataDir, uid, euid, why)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			return "", fmt.Errorf("DATA_DIR %s: mode %#o lets group or others in; %s: chmod 700 %s", dataDir, mode, why, dataDir)
		}
	}
	return abs, nil
}

// devSecret returns the development JWT secret kept in dataDir, creating it (0600) the first time,
// so that tokens survive a restart. dataDir has passed privateDataDir. A secret file that another
// user owns, or that group or others can read or write, is refused: with it anyone could forge
// tokens, or may already have planted their own.
func devSecret(dataDir string) ([]byte, error) {
	path := filepath.Join(dataDir, "jwt_secret")
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return newDevSecret(path)
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	// Checked on the open file, so that what is read is what was checked.
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	const fix = "delete it to have a new one made (tokens signed with it stop working), or set JWT_SECRET"
	if uid, guarded := fileOwner(fi); guarded {
		if euid := os.Geteuid(); uid != euid {
			return nil, fmt.Errorf("JWT secret %s: owned by uid %d, not by uid %d that the service runs as, so it may have been planted to forge tokens: %s", path, uid, euid, fix)
		}
		if mode := fi.Mode().Perm(); mode&0o077 != 0 {
			return nil, fmt.Errorf("JWT secret %s: mode %#o lets group or others read or replace the key that signs every token: %s", path, mode, fix)
		}
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("%s: not a regular file", path)
	}
	b, err := io.ReadAll(f)
	if err != nil {
		return nil, err
	}
	if s := strings.TrimSpace(string(b)); len(s) >= 32 {
		return []byte(s), nil
	}
	return nil, fmt.Errorf("%s: holds fewer than 32 bytes; delete it to have a new one made", path)
}

// newDevSecret writes a fresh secret to path, which must not exist yet.
func newDevSecret(path string) ([]byte, error) {
	raw := make([]byte, 48)
	rand.Read(raw)
	s := base64.RawURLEncoding.EncodeToString(raw)
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, err
	}
	_, err = f.WriteString(s + "\n")
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return nil, err
	}
	return []byte(s), nil
}
