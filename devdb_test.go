package main

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// startTestDevDB starts an embedded FerretDB of the test's own on dataDir, stopped at cleanup.
func startTestDevDB(tb testing.TB, dataDir string) *devDB {
	tb.Helper()
	dev, err := startDevDB(dataDir, slog.New(slog.DiscardHandler))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(dev.stop)
	return dev
}

// roundTrip writes a document through uri and reads it back, failing tb unless both work.
func roundTrip(tb testing.TB, uri string) {
	tb.Helper()
	client, err := connectMongo(uri)
	if err != nil {
		tb.Fatal(err)
	}
	defer client.Disconnect(context.Background())
	c := client.Database("roundtrip").Collection("c")
	ctx := context.Background()
	if _, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: newID()}}); err != nil {
		tb.Fatalf("insert through %s: %v", uri, err)
	}
	if n, err := c.CountDocuments(ctx, bson.D{}); err != nil || n < 1 {
		tb.Fatalf("count through %s: %d, %v", uri, n, err)
	}
}

func TestTheDevelopmentDatabaseListensOnASocketInAPrivateDirectory(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("d", 100)
	for _, tt := range []struct {
		name     string
		dataDir  func(base string) string
		inDatDir bool // the socket is DATA_DIR/mongo.sock, not in a directory of its own
	}{
		{"in DATA_DIR", func(b string) string { return filepath.Join(b, "data") }, true},
		{"in DATA_DIR, whose path has a space and a plus, which a URI's host escapes",
			func(b string) string { return filepath.Join(b, "my data+1") }, true},
		{"in a temporary directory when DATA_DIR's path is too long for a socket",
			func(b string) string { return filepath.Join(b, long) }, false},
		{"in a temporary directory when DATA_DIR's path holds a colon, which the driver takes for a port",
			func(b string) string { return filepath.Join(b, "data:1") }, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			dataDir := tt.dataDir(t.TempDir())
			dev := startTestDevDB(t, dataDir)

			// Not url.Parse, which refuses an escaped "/" in a host.
			host, ok := strings.CutPrefix(dev.uri, "mongodb://")
			host, ok2 := strings.CutSuffix(host, "/")
			if host, err := url.QueryUnescape(host); !ok || !ok2 || err != nil || host != dev.socket {
				t.Fatalf("URI %s: the host is not the socket %s", dev.uri, dev.socket)
			}
			if !filepath.IsAbs(dev.socket) || !strings.HasSuffix(dev.socket, ".sock") {
				t.Fatalf("socket %s: want an absolute path ending in .sock, as the driver needs", dev.socket)
			}
			sockDir := filepath.Dir(dev.socket)
			if abs, _ := filepath.Abs(dataDir); (sockDir == abs) != tt.inDatDir {
				t.Fatalf("socket %s, DATA_DIR %s", dev.socket, abs)
			}
			fi, err := os.Lstat(dev.socket)
			if err != nil || fi.Mode().Type() != fs.ModeSocket {
				t.Fatalf("%s: %v, %v; want a socket", dev.socket, fi, err)
			}
			if fi, err := os.Stat(sockDir); err != nil || fi.Mode().Perm() != 0o700 {
				t.Fatalf("the socket's directory %s: %v, %v; want mode 0700", sockDir, fi.Mode(), err)
			}
			roundTrip(t, dev.uri)

			dev.stop()
			if _, err := os.Lstat(dev.socket); !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after stop, the socket is still there: %v", err)
			}
			if _, err := os.Stat(sockDir); !tt.inDatDir && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("after stop, the temporary directory %s is still there: %v", sockDir, err)
			}
		})
	}
}

func TestTheDevelopmentDatabaseSocketOfAKilledInstanceIsReplaced(t *testing.T) {
	t.Parallel()
	dataDir := newDataDir(t)
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	// A process killed with SIGKILL leaves its socket behind, answering nobody.
	ln, err := net.Listen("unix", filepath.Join(dataDir, "mongo.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()

	roundTrip(t, startTestDevDB(t, dataDir).uri)
}

func TestASecondInstanceOnOneDataDirIsRefused(t *testing.T) {
	t.Parallel()
	dataDir := newDataDir(t)
	first := startTestDevDB(t, dataDir)
	second, err := startDevDB(dataDir, slog.New(slog.DiscardHandler))
	if err == nil {
		second.stop()
		t.Fatal("a second database started on the same DATA_DIR")
	}
	if !strings.Contains(err.Error(), "already in use") || !strings.Contains(err.Error(), dataDir) {
		t.Fatalf("refused with %q; want it to say that %s is already in use", err, dataDir)
	}
	roundTrip(t, first.uri) // the first one keeps its socket
}

func TestAFileInTheWayOfTheDatabaseSocketIsLeftAlone(t *testing.T) {
	t.Parallel()
	dataDir := newDataDir(t)
	if err := os.Mkdir(dataDir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dataDir, "mongo.sock")
	if err := os.WriteFile(path, []byte("mine"), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := startDevDB(dataDir, slog.New(slog.DiscardHandler))
	if err == nil {
		dev.stop()
		t.Fatal("started over a file in the way of the socket")
	}
	if !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("refused with %q; want it to say the file is not a socket", err)
	}
	if b, _ := os.ReadFile(path); string(b) != "mine" {
		t.Fatalf("the file in the way now holds %q", b)
	}
}
