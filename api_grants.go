package main

// api_grants.go lets a user see and revoke the consents they gave the OpenID provider's
// third-party clients.

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"time"
)

var errNoSuchGrant = &apiError{status: http.StatusNotFound, code: "not_found", message: "you gave this client no consent"}

// grantView is a consent as its user sees it.
type grantView struct {
	ClientID   string    `json:"client_id"`
	ClientName string    `json:"client_name"`
	Scopes     []string  `json:"scopes"`
	CreatedAt  time.Time `json:"created_at"`
}

// grantsOf lists user's consents, with the names of their clients (a client deleted since shows
// without one).
func (o *provider) grantsOf(ctx context.Context, user string) ([]grantView, error) {
	gs, err := o.store.GrantsOfUser(ctx, user)
	if err != nil {
		return nil, err
	}
	out := []grantView{}
	for _, g := range gs {
		v := grantView{ClientID: g.ClientID, Scopes: g.Scopes, CreatedAt: g.CreatedAt.UTC()}
		if c, err := o.clients.byID(ctx, g.ClientID); err == nil {
			v.ClientName = c.Name
		} else if !errors.Is(err, errNoSuchClient) {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// revokeGrant withdraws user's consent to client and ends the sessions that client holds: its
// refresh tokens and access tokens die with them.
func (o *provider) revokeGrant(ctx context.Context, user, client string) error {
	if err := o.store.DeleteGrant(ctx, user, client); errors.Is(err, ErrNotFound) {
		return errNoSuchGrant
	} else if err != nil {
		return err
	}
	return o.sessions.endClient(ctx, user, client, endGrantRevoked)
}

func handleGrants(log *slog.Logger, o *provider) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		gs, err := o.grantsOf(r.Context(), c.Subject)
		if err != nil {
			return err
		}
		encode(w, http.StatusOK, map[string]any{"grants": gs})
		return nil
	})
}

func handleRevokeGrant(log *slog.Logger, o *provider) http.Handler {
	return handle(log, func(w http.ResponseWriter, r *http.Request) error {
		c := claimsFrom(r.Context())
		if err := o.sessions.alive(r.Context(), c); err != nil {
			return err
		}
		if err := o.revokeGrant(r.Context(), c.Subject, r.PathValue("client_id")); err != nil {
			return err
		}
		w.WriteHeader(http.StatusNoContent)
		return nil
	})
}
