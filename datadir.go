package main

import (
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// devDB is the development default: FerretDB embedded in this process, storing in SQLite files
// under DATA_DIR and speaking the MongoDB wire protocol, so that `go run .` and `go test ./...` use
// the very same driver and store code as production with nothing installed.
type devDB struct {
	uri  string
	stop func()
}

// devSecret returns the development JWT secret kept in dataDir, creating it (0600) the first time,
// so that tokens survive a restart.
func devSecret(dataDir string) ([]byte, error) {
	path := filepath.Join(dataDir, "jwt_secret")
	b, err := os.ReadFile(path)
	if err == nil {
		if s := strings.TrimSpace(string(b)); len(s) >= 32 {
			return []byte(s), nil
		}
		return nil, fmt.Errorf("%s: holds fewer than 32 bytes; delete it to have a new one made", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, err
	}
	raw := make([]byte, 48)
	rand.Read(raw)
	s := base64.RawURLEncoding.EncodeToString(raw)
	if err := os.MkdirAll(dataDir, 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, []byte(s+"\n"), 0o600); err != nil {
		return nil, err
	}
	return []byte(s), nil
}
