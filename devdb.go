//go:build !nodevdb

package main

// devdb.go runs the development database: FerretDB embedded in this process, on DATA_DIR.

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
)

// ferretStart serialises ferretdb.New; see startDevDB.
var ferretStart sync.Mutex

// startDevDB starts FerretDB embedded in this process on DATA_DIR. This file is left out of a
// production build (go build -tags nodevdb), which is then about a third of the size: FerretDB
// brings its SQLite engine and the drivers of other databases along. A DATA_DIR that others can
// reach is refused (see privateDataDir).
//
// FerretDB asks no password, so it listens on a Unix socket in a 0700 directory and nowhere else:
// only the service's own user can connect. On a loopback TCP port any local user or process could
// read the password hashes and edit the users and the blacklist.
func startDevDB(dataDir string, log *slog.Logger) (*devDB, error) {
	root, err := privateDataDir(dataDir)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(root, "mongo")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("DATA_DIR: %w", err)
	}
	sock, removeSockDir, err := devSocket(dataDir, root)
	if err != nil {
		return nil, err
	}
	// ferretdb.New sets package variables of FerretDB's own: two embedded databases starting at
	// once (tests do) race on them unless their starts take turns.
	ferretStart.Lock()
	defer ferretStart.Unlock()
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{Unix: sock}, // and no TCP address: no TCP listener
		Handler:   "sqlite",
		SQLiteURL: "file:" + dir + "/",
		// FerretDB logs every connection at info and every refused command at warn, with a dump
		// of the wire message; only its own failures interest us.
		Logger: slog.New(levelFloor{log.Handler(), slog.LevelError}),
	})
	if err != nil {
		removeSockDir()
		return nil, fmt.Errorf("embedded FerretDB: %w", err)
	}
	// Its own context, not the server's: the database must outlive the HTTP server's shutdown.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	// The driver takes a socket's path, percent-encoded, as the host, and unescapes it as a query
	// value; FerretDB's own MongoDBURI leaves a "+" that would come back as a space.
	uri := "mongodb://" + url.QueryEscape(sock) + "/"
	return &devDB{uri: uri, socket: sock, stop: func() { cancel(); <-done; removeSockDir() }}, nil
}

// maxSocketPath is the longest Unix socket path that binds everywhere: the address holds 108
// bytes on Linux and 104 on macOS and the BSDs, the final NUL included.
const maxSocketPath = 103

// devSocket chooses where the database socket goes: DATA_DIR/mongo.sock, inside the 0700 DATA_DIR,
// or, when that path is too long to bind or holds a ":" (which the driver would read as a port), a
// fresh 0700 directory under the system's temporary directory, which the returned func removes.
func devSocket(dataDir, root string) (sock string, remove func(), err error) {
	usable := func(p string) bool { return len(p) <= maxSocketPath && !strings.Contains(p, ":") }
	if sock := filepath.Join(root, "mongo.sock"); usable(sock) {
		return sock, func() {}, clearStaleSocket(dataDir, sock)
	}
	tmp, err := os.MkdirTemp("", "auth-devdb-") // 0700, a new name
	if err != nil {
		return "", nil, fmt.Errorf("a directory for the database socket: %w", err)
	}
	remove = func() { os.RemoveAll(tmp) }
	if sock = filepath.Join(tmp, "mongo.sock"); !usable(sock) {
		remove()
		return "", nil, fmt.Errorf("DATA_DIR %s: no socket path for the development database that binds (at most %d bytes, no \":\") there or under the temporary directory %s; choose a shorter DATA_DIR or TMPDIR",
			dataDir, maxSocketPath, os.TempDir())
	}
	return sock, remove, nil
}

// clearStaleSocket removes the socket that a killed instance left at sock, which would keep
// FerretDB from listening there. A socket that answers belongs to an instance still running on
// DATA_DIR: it is left alone and the start refused, since taking it would cut that instance off
// from its database while both kept writing the same files.
func clearStaleSocket(dataDir, sock string) error {
	fi, err := os.Lstat(sock)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s: in the way of the development database's socket and not a socket; remove it", sock)
	}
	c, err := net.DialTimeout("unix", sock, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("DATA_DIR %s: already in use, its database answers on %s; stop the instance running on it or choose another DATA_DIR", dataDir, sock)
	}
	if !errors.Is(err, syscall.ECONNREFUSED) {
		return fmt.Errorf("the development database's socket: %w", err)
	}
	return os.Remove(sock)
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
