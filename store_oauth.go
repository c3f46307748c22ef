package main

// store_oauth.go is the MongoDB code of what the OpenID provider issues and knows: its clients,
// authorization codes and their redemptions, and the consents users gave.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

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
func (s *mongoStore) clientSecrets() *mongo.Collection {
	return s.users.Database().Collection("oauth_client_secrets")
}

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
	if err := s.deleteOne(ctx, s.oauthClients(), bson.D{{Key: "_id", Value: id}}); err != nil {
		return err
	}
	_, err := s.clientSecrets().DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return s.err(err)
}

func (s *mongoStore) SetClientSecret(ctx context.Context, id, sum string) error {
	_, err := s.clientSecrets().ReplaceOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "_id", Value: id}, {Key: "digest", Value: sum}}, options.Replace().SetUpsert(true))
	return s.err(err)
}

func (s *mongoStore) ClientSecret(ctx context.Context, id string) (string, error) {
	var doc struct {
		Digest string `bson:"digest"`
	}
	if err := s.clientSecrets().FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
		return "", s.err(err)
	}
	return doc.Digest, nil
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

func (s *mongoStore) CodeRedemptionOf(ctx context.Context, sum string) (*CodeRedemption, error) {
	var r CodeRedemption
	if err := s.codeRedemptions().FindOne(ctx, bson.D{{Key: "_id", Value: sum}}).Decode(&r); err != nil {
		return nil, s.err(err)
	}
	return &r, nil
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
