package main

// admin_oauth.go is the operators' API for the OpenID provider's clients: register, list, change,
// delete, and rotate a confidential client's secret.

import (
	"log/slog"
	"net/http"
)

// logClient writes the line every change of a client leaves behind.
func logClient(log *slog.Logger, r *http.Request, action, client string) {
	log.LogAttrs(r.Context(), slog.LevelInfo, "admin action", slog.String("action", action),
		slog.String("client_id", client), slog.String("request_id", requestID(r.Context())))
}

func handleAdminCreateClient(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeStrict[clientRequest](w, r)
		if err != nil {
			return err
		}
		c, secret, err := cs.create(r.Context(), req)
		if err != nil {
			return err
		}
		logClient(log, r, "client_create", c.ID)
		encode(w, http.StatusCreated, clientView{*c, secret})
		return nil
	})
}

func handleAdminClients(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		list, err := cs.list(r.Context())
		if err != nil {
			return err
		}
		if list == nil {
			list = []OAuthClient{}
		}
		encode(w, http.StatusOK, map[string]any{"clients": list})
		return nil
	})
}

func handleAdminClient(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c, err := cs.byID(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, c)
		return nil
	})
}

func handleAdminUpdateClient(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decodeStrict[clientRequest](w, r)
		if err != nil {
			return err
		}
		c, err := cs.update(r.Context(), r.PathValue("id"), req)
		if err != nil {
			return err
		}
		logClient(log, r, "client_update", c.ID)
		encode(w, http.StatusOK, c)
		return nil
	})
}

func handleAdminDeleteClient(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		id := r.PathValue("id")
		if err := cs.remove(r.Context(), id); err != nil {
			return err
		}
		logClient(log, r, "client_delete", id)
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}

func handleAdminClientSecret(log *slog.Logger, cs *oauthClients) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c, secret, err := cs.rotateSecret(r.Context(), r.PathValue("id"))
		if err != nil {
			return err
		}
		logClient(log, r, "client_secret_rotate", c.ID)
		encode(w, http.StatusOK, clientView{*c, secret})
		return nil
	})
}
