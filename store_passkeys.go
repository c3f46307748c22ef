package main

// store_passkeys.go is the MongoDB code of the passkeys and of the ceremonies in flight.

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) passkeyIndexes(ctx context.Context) error {
	for _, ix := range []struct {
		coll *mongo.Collection
		keys bson.D
		ttl  bool
	}{
		{s.passkeyDocs, bson.D{{Key: "user_id", Value: 1}}, false},
		{s.ceremonies, bson.D{{Key: "expires_at", Value: 1}}, true},
	} {
		opts := options.Index()
		if ix.ttl {
			opts.SetExpireAfterSeconds(0)
		}
		_, err := ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys, Options: opts})
		if ix.ttl && isNotImplemented(err) {
			_, err = ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys})
		}
		if err != nil {
			return s.err(err)
		}
	}
	return nil
}

func (s *mongoStore) AddPasskey(ctx context.Context, p *Passkey) error {
	_, err := s.passkeyDocs.InsertOne(ctx, p)
	return s.err(err)
}

func (s *mongoStore) PasskeysOf(ctx context.Context, user string) ([]Passkey, error) {
	cur, err := s.passkeyDocs.Find(ctx, bson.D{{Key: "user_id", Value: user}}, options.Find().SetSort(bson.D{{Key: "created_at", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var ps []Passkey
	if err := cur.All(ctx, &ps); err != nil {
		return nil, s.err(err)
	}
	return ps, nil
}

func (s *mongoStore) PasskeyByID(ctx context.Context, id string) (*Passkey, error) {
	var p Passkey
	if err := s.passkeyDocs.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&p); err != nil {
		return nil, s.err(err)
	}
	return &p, nil
}

func (s *mongoStore) RenamePasskey(ctx context.Context, user, id, name string) error {
	res, err := s.passkeyDocs.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "user_id", Value: user}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "name", Value: name}}}})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) UsePasskey(ctx context.Context, id string, credential []byte, at time.Time) error {
	_, err := s.passkeyDocs.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "credential", Value: credential}, {Key: "last_used_at", Value: at}}}})
	return s.err(err)
}

func (s *mongoStore) RemovePasskey(ctx context.Context, user, id string) error {
	return s.deleteOne(ctx, s.passkeyDocs, bson.D{{Key: "_id", Value: id}, {Key: "user_id", Value: user}})
}

func (s *mongoStore) CreateCeremony(ctx context.Context, c *Ceremony) error {
	_, err := s.ceremonies.InsertOne(ctx, c)
	return s.err(err)
}

func (s *mongoStore) TakeCeremony(ctx context.Context, id string) (*Ceremony, error) {
	var c Ceremony
	if err := s.ceremonies.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&c); err != nil {
		return nil, s.err(err)
	}
	// The read found it; the delete decides which of simultaneous takers has it.
	if err := s.deleteOne(ctx, s.ceremonies, bson.D{{Key: "_id", Value: id}}); err != nil {
		return nil, err
	}
	return &c, nil
}
