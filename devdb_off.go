//go:build nodevdb

package main

// devdb_off.go stands in for the development database in a production build (-tags nodevdb).

import (
	"errors"
	"log/slog"
)

// startDevDB in a production build: there is no embedded database to start.
func startDevDB(dataDir string, log *slog.Logger) (*devDB, error) {
	return nil, errors.New("MONGODB_URI: required; this binary was built without the embedded development database (-tags nodevdb)")
}
