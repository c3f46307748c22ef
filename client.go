package main

// client.go serves client.js, the browser module that signs in and calls the API, and its types.

import (
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/base64"
	"net/http"
	"time"
)

// clientJS is the browser module that single-page apps import to sign in and call their API; the
// binary serves the version it was built with, so the module and the service never disagree.
//
//go:embed client.js
var clientJS []byte

// clientDTS is client.js's types, for editors and TypeScript projects; client.js names it.
//
//go:embed client.d.ts
var clientDTS []byte

// handleClientJS serves client.js. Browsers keep it five minutes and then ask again with its ETag,
// so a new release reaches every page within minutes and costs a 304 otherwise. It carries no
// secret, so any origin may load it; a cross-origin import still needs the origin listed in
// CORS_ALLOWED_ORIGINS, as module scripts are fetched under CORS.
func handleClientJS() http.Handler { return serveModule("client.js", "text/javascript", clientJS) }

// handleClientDTS serves client.d.ts, as handleClientJS serves the module.
func handleClientDTS() http.Handler {
	return serveModule("client.d.ts", "application/typescript", clientDTS)
}

func serveModule(name, mediaType string, content []byte) http.Handler {
	sum := sha256.Sum256(content)
	etag := `"` + base64.RawURLEncoding.EncodeToString(sum[:12]) + `"`
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Type", mediaType+"; charset=utf-8")
		h.Set("Cache-Control", "public, max-age=300")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("ETag", etag)
		// ServeContent answers If-None-Match with 304, and HEAD and ranges as the standard says.
		http.ServeContent(w, r, name, time.Time{}, bytes.NewReader(content))
	})
}
