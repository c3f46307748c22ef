//go:build !nodevdb

package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// startDevDB starts FerretDB embedded in this process on DATA_DIR. This file is left out of a
// production build (go build -tags nodevdb), which is then about a third of the size: FerretDB
// brings its SQLite engine and the drivers of other databases along. A DATA_DIR that others can
// reach is refused (see privateDataDir).
func startDevDB(dataDir string, log *slog.Logger) (*devDB, error) {
	root, err := privateDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "mongo")
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
