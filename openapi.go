package main

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
