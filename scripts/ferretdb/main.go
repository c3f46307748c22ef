// Command ferretdb serves a FerretDB (SQLite files in -dir) on a loopback TCP port and prints its
// MongoDB connection string on the first line of stdout, so that several processes can share one
// database: the soak runs two instances of the service on it. It stops on SIGINT or SIGTERM.
//
// FerretDB asks no password, so any local user can reach what it serves. That is why the service's
// own development database listens on a Unix socket instead; this one is for throwaway data in a
// temporary directory, for as long as a script runs.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/FerretDB/FerretDB/ferretdb"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "ferretdb:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("ferretdb", flag.ContinueOnError)
	dir := fs.String("dir", "", "directory for the SQLite files (required)")
	addr := fs.String("addr", "127.0.0.1:0", "loopback address to listen on; port 0 for any free one")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *dir == "" {
		return errors.New("-dir is required")
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return err
	}
	f, err := ferretdb.New(&ferretdb.Config{
		Listener:  ferretdb.ListenerConfig{TCP: *addr},
		Handler:   "sqlite",
		SQLiteURL: "file:" + abs + "/",
		// FerretDB logs every connection at info; only its own failures interest us.
		Logger: slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelError})),
	})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- f.Run(ctx) }()
	// MongoDBURI waits until the listener is bound, so the port it names is the real one.
	fmt.Fprintln(stdout, f.MongoDBURI())
	return <-done
}
