package main

// grants.go holds the consents users gave the OpenID provider's third-party clients, as the
// account page and the API list and withdraw them.

import (
	"context"
	"net/http"
	"time"
)

// grantKeeper is what the account page shows and withdraws of the consents given to the OpenID
// provider's third-party clients; the provider is one (nil when it is off).
type grantKeeper interface {
	grantsOf(ctx context.Context, user string) ([]grantView, error)
	revokeGrant(ctx context.Context, user, client string) error
}

// errNoSuchGrant is revokeGrant's answer for a client the user gave no consent.
var errNoSuchGrant = &apiError{status: http.StatusNotFound, code: "not_found", message: "you gave this client no consent"}

// grantView is a consent as its user sees it.
type grantView struct {
	ClientID   string    `json:"client_id"`
	ClientName string    `json:"client_name"`
	Scopes     []string  `json:"scopes"`
	CreatedAt  time.Time `json:"created_at"`
}
