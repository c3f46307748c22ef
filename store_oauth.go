package main

// store_oauth.go keeps what the OpenID provider issues and knows: its clients, authorization codes
// and their redemptions, and the consents users gave; the interfaces, records and MongoDB code.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// clientStore keeps the provider's registered clients (relying parties).
type clientStore interface {
	// CreateClient inserts c; ErrDuplicate when its id is taken.
	CreateClient(ctx context.Context, c *OAuthClient) error
	// ClientByID finds a client; ErrNotFound when there is none.
	ClientByID(ctx context.Context, id string) (*OAuthClient, error)
	// Clients lists every client, oldest first.
	Clients(ctx context.Context) ([]OAuthClient, error)
	// ReplaceClient writes c over the client of its id; ErrNotFound when there is none.
	ReplaceClient(ctx context.Context, c *OAuthClient) error
	// DeleteClient removes client id; ErrNotFound when there is none.
	DeleteClient(ctx context.Context, id string) error
}

// codeStore keeps authorization codes and their single use.
type codeStore interface {
	// CreateAuthCode records an authorization code by its digest.
	CreateAuthCode(ctx context.Context, c *AuthCode) error
	// AuthCodeByDigest finds a code, used or not; ErrNotFound when there is none.
	AuthCodeByDigest(ctx context.Context, sum string) (*AuthCode, error)
	// RedeemAuthCode records the one use of a code. won is true for exactly one caller per code,
	// even under concurrency; the others get the record that caller wrote, which names the
	// session it started, so that a replay can end it.
	RedeemAuthCode(ctx context.Context, r CodeRedemption) (first CodeRedemption, won bool, err error)
}

// grantStore keeps the consents users gave to third-party clients.
type grantStore interface {
	// SaveGrant records g, in place of the user's earlier grant to the same client.
	SaveGrant(ctx context.Context, g ConsentGrant) error
	// GrantOf finds user's grant to client; ErrNotFound when there is none.
	GrantOf(ctx context.Context, user, client string) (*ConsentGrant, error)
	// GrantsOfUser lists user's grants, oldest first.
	GrantsOfUser(ctx context.Context, user string) ([]ConsentGrant, error)
	// DeleteGrant removes user's grant to client; ErrNotFound when there is none.
	DeleteGrant(ctx context.Context, user, client string) error
}

// OAuthClient is a relying party. A confidential client authenticates at the token endpoint with
// its secret, kept as its SHA-256 digest (32 random bytes are not guessable: no slow hash); a
// public one (a single-page or mobile app) has none and must use PKCE.
type OAuthClient struct {
	ID                     string    `bson:"_id" json:"client_id"`
	Name                   string    `bson:"name" json:"name"`
	Type                   string    `bson:"type" json:"type"` // clientPublic or clientConfidential
	SecretDigest           string    `bson:"secret_digest,omitempty" json:"-"`
	RedirectURIs           []string  `bson:"redirect_uris" json:"redirect_uris"`
	PostLogoutRedirectURIs []string  `bson:"post_logout_redirect_uris,omitempty" json:"post_logout_redirect_uris"`
	Scopes                 []string  `bson:"scopes" json:"scopes"` // what it may ask for
	FirstParty             bool      `bson:"first_party" json:"first_party"`
	IDTokenAlg             string    `bson:"id_token_alg,omitempty" json:"id_token_signed_response_alg"`
	CreatedAt              time.Time `bson:"created_at" json:"created_at"`
}

// AuthCode is an authorization code, found by the SHA-256 digest of the code, bound to the client,
// the redirect URI, the PKCE challenge and the account's security stamp. It is not deleted when
// used: its CodeRedemption says it was, and what it issued.
type AuthCode struct {
	Digest      string `bson:"_id"`
	ClientID    string `bson:"client_id"`
	RedirectURI string `bson:"redirect_uri"`
	Challenge   string `bson:"challenge,omitempty"` // S256 of the verifier; "" for none
	UserID      string `bson:"user_id"`
	Stamp       int64  `bson:"stamp"`
	Scope       string `bson:"scope"`
	Nonce       string `bson:"nonce,omitempty"`
	// The portal session the user signed in with: auth_time, its level, and sid.
	AuthTime      time.Time `bson:"auth_time"`
	Level         level     `bson:",inline"`
	PortalSession string    `bson:"portal_session"`
	ExpiresAt     time.Time `bson:"expires_at"`
}

// CodeRedemption is the one use of an authorization code, inserted under the code's digest, and
// the session its tokens belong to.
type CodeRedemption struct {
	Digest    string    `bson:"_id"`
	Session   string    `bson:"session"`
	ExpiresAt time.Time `bson:"expires_at"`
}

// ConsentGrant is a user's consent to a third-party client for scopes. It is no credential: it
// survives a password reset, and revoking it ends the client's sessions.
type ConsentGrant struct {
	ID        string    `bson:"_id"` // user id, "|", client id
	UserID    string    `bson:"user_id"`
	ClientID  string    `bson:"client_id"`
	Scopes    []string  `bson:"scopes"`
	CreatedAt time.Time `bson:"created_at"`
}

func grantID(user, client string) string { return user + "|" + client }

// The OpenID collections are looked up by name, as the mail ones are.
func (s *mongoStore) oauthClients() *mongo.Collection {
	return s.users.Database().Collection("oauth_clients")
}
func (s *mongoStore) authCodes() *mongo.Collection {
	return s.users.Database().Collection("oauth_codes")
}
func (s *mongoStore) codeRedemptions() *mongo.Collection {
	return s.users.Database().Collection("oauth_code_uses")
}
func (s *mongoStore) grants() *mongo.Collection { return s.users.Database().Collection("oauth_grants") }

func (s *mongoStore) oauthIndexes(ctx context.Context) error {
	for _, ix := range []struct {
		coll *mongo.Collection
		keys bson.D
		ttl  bool
	}{
		{s.authCodes(), bson.D{{Key: "expires_at", Value: 1}}, true},
		{s.codeRedemptions(), bson.D{{Key: "expires_at", Value: 1}}, true},
		{s.grants(), bson.D{{Key: "user_id", Value: 1}}, false},
	} {
		opts := options.Index()
		if ix.ttl {
			opts.SetExpireAfterSeconds(0)
		}
		_, err := ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys, Options: opts})
		if ix.ttl && isNotImplemented(err) {
			// FerretDB refuses TTL indexes; purgeOAuth deletes expired documents on every server.
			_, err = ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys})
		}
		if err != nil {
			return fmt.Errorf("create index on %s: %w", ix.coll.Name(), s.err(err))
		}
	}
	return nil
}

// purgeOAuth deletes the codes and redemptions that expired before now.
func (s *mongoStore) purgeOAuth(ctx context.Context, now time.Time) error {
	for _, c := range []*mongo.Collection{s.authCodes(), s.codeRedemptions()} {
		if _, err := c.DeleteMany(ctx, bson.D{{Key: "expires_at", Value: bson.D{{Key: "$lte", Value: now}}}}); err != nil {
			return s.err(err)
		}
	}
	return nil
}

func (s *mongoStore) CreateClient(ctx context.Context, c *OAuthClient) error {
	_, err := s.oauthClients().InsertOne(ctx, c)
	return s.err(err)
}

func (s *mongoStore) ClientByID(ctx context.Context, id string) (*OAuthClient, error) {
	var c OAuthClient
	if err := s.oauthClients().FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&c); err != nil {
		return nil, s.err(err)
	}
	return &c, nil
}

func (s *mongoStore) Clients(ctx context.Context) ([]OAuthClient, error) {
	cur, err := s.oauthClients().Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "created_at", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var out []OAuthClient
	if err := cur.All(ctx, &out); err != nil {
		return nil, s.err(err)
	}
	return out, nil
}

func (s *mongoStore) ReplaceClient(ctx context.Context, c *OAuthClient) error {
	res, err := s.oauthClients().ReplaceOne(ctx, bson.D{{Key: "_id", Value: c.ID}}, c)
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) DeleteClient(ctx context.Context, id string) error {
	return s.deleteOne(ctx, s.oauthClients(), bson.D{{Key: "_id", Value: id}})
}

func (s *mongoStore) CreateAuthCode(ctx context.Context, c *AuthCode) error {
	_, err := s.authCodes().InsertOne(ctx, c)
	return s.err(err)
}

func (s *mongoStore) AuthCodeByDigest(ctx context.Context, sum string) (*AuthCode, error) {
	var c AuthCode
	if err := s.authCodes().FindOne(ctx, bson.D{{Key: "_id", Value: sum}}).Decode(&c); err != nil {
		return nil, s.err(err)
	}
	return &c, nil
}

func (s *mongoStore) RedeemAuthCode(ctx context.Context, r CodeRedemption) (CodeRedemption, bool, error) {
	_, err := s.codeRedemptions().InsertOne(ctx, r)
	if err = s.err(err); !errors.Is(err, ErrDuplicate) {
		return r, err == nil, err
	}
	var first CodeRedemption
	if err := s.codeRedemptions().FindOne(ctx, bson.D{{Key: "_id", Value: r.Digest}}).Decode(&first); err != nil {
		return CodeRedemption{}, false, s.err(err)
	}
	return first, false, nil
}

func (s *mongoStore) SaveGrant(ctx context.Context, g ConsentGrant) error {
	g.ID = grantID(g.UserID, g.ClientID)
	_, err := s.grants().ReplaceOne(ctx, bson.D{{Key: "_id", Value: g.ID}}, g, options.Replace().SetUpsert(true))
	return s.err(err)
}

func (s *mongoStore) GrantOf(ctx context.Context, user, client string) (*ConsentGrant, error) {
	var g ConsentGrant
	if err := s.grants().FindOne(ctx, bson.D{{Key: "_id", Value: grantID(user, client)}}).Decode(&g); err != nil {
		return nil, s.err(err)
	}
	return &g, nil
}

func (s *mongoStore) GrantsOfUser(ctx context.Context, user string) ([]ConsentGrant, error) {
	cur, err := s.grants().Find(ctx, bson.D{{Key: "user_id", Value: user}}, options.Find().SetSort(bson.D{{Key: "created_at", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var out []ConsentGrant
	if err := cur.All(ctx, &out); err != nil {
		return nil, s.err(err)
	}
	return out, nil
}

func (s *mongoStore) DeleteGrant(ctx context.Context, user, client string) error {
	return s.deleteOne(ctx, s.grants(), bson.D{{Key: "_id", Value: grantID(user, client)}})
}
