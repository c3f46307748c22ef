package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// devDB is the development default: FerretDB embedded in this process, storing in SQLite files
// under a directory and speaking the MongoDB wire protocol on a loopback port, so that `go run .`
// and `go test ./...` use the very same driver and store code as production with nothing installed.
type devDB struct {
	uri  string
	stop func()
}

func startDevDB(dataDir string, log *slog.Logger) (*devDB, error) {
	dir, err := filepath.Abs(filepath.Join(dataDir, "mongo"))
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("DATA_DIR: %w", err)
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: "127.0.0.1:0"},
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
		// FerretDB logs every connection at info and every refused command at warn, with a dump
		// of the wire message; only its own failures interest us.
		Logger: slog.New(levelFloor{log.Handler(), slog.LevelError}),
	})
	if err != nil {
		return nil, fmt.Errorf("embedded FerretDB: %w", err)
	}
	// Its own context, not the server's: the database must outlive the HTTP server's shutdown.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	return &devDB{uri: f.MongoDBURI(), stop: func() { cancel(); <-done }}, nil
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

// levelFloor passes on only records at or above its level.
type levelFloor struct {
	slog.Handler
	floor slog.Level
}

func (h levelFloor) Enabled(ctx context.Context, l slog.Level) bool {
	return l >= h.floor && h.Handler.Enabled(ctx, l)
}
func (h levelFloor) WithAttrs(a []slog.Attr) slog.Handler {
	return levelFloor{h.Handler.WithAttrs(a), h.floor}
}
func (h levelFloor) WithGroup(n string) slog.Handler {
	return levelFloor{h.Handler.WithGroup(n), h.floor}
}
