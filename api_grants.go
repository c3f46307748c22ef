package main

// api_grants.go lets a user see and withdraw the consents they gave the OpenID provider's
// third-party clients (the provider's grantsOf and revokeGrant).

import (
	"log/slog"
	"net/http"
)

func handleGrants(log *slog.Logger, g grantKeeper) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		gs, err := g.grantsOf(r.Context(), c.Subject)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string]any{"grants": gs})
		return nil
	})
}

func handleRevokeGrant(log *slog.Logger, sessions *sessionKeeper, g grantKeeper) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		if err := sessions.alive(r.Context(), c); err != nil {
			return err
		}
		if err := g.revokeGrant(r.Context(), c.Subject, r.PathValue("client_id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}
