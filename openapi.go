package main

// openapi.go embeds openapi.yaml, the description of the HTTP API.

import (
	_ "embed"
	"net/http"
)

// openAPI describes the HTTP API; a test holds it to the routes addRoutes registers.
//
//go:embed openapi.yaml
var openAPI []byte

func handleOpenAPI() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/yaml")
		w.Write(openAPI)
	})
}
