package main

// store_keys.go is the MongoDB code of the signing keys.

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) SigningKeys(ctx context.Context) ([]SigningKey, error) {
	cur, err := s.signingKeys.Find(ctx, bson.D{}, options.Find().SetSort(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var keys []SigningKey
	if err := cur.All(ctx, &keys); err != nil {
		return nil, s.err(err)
	}
	return keys, nil
}

func (s *mongoStore) AddSigningKey(ctx context.Context, k *SigningKey) error {
	_, err := s.signingKeys.InsertOne(ctx, k)
	return s.err(err)
}

func (s *mongoStore) AdvanceSigningKey(ctx context.Context, gen int64, at time.Time) error {
	// $min rather than a guarded update: racing callers all move the activation to about now, so
	// whichever write lands last changes nothing that matters.
	res, err := s.signingKeys.UpdateOne(ctx, bson.D{{Key: "_id", Value: gen}},
		bson.D{{Key: "$min", Value: bson.D{{Key: "activate_at", Value: at}}}})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) RevokeSigningKey(ctx context.Context, kid string, at time.Time) error {
	// A key is revoked once for good; a second revocation keeps the first time (a missing field
	// counts as unset here, and $min writes it).
	res, err := s.signingKeys.UpdateOne(ctx, bson.D{{Key: "kid", Value: kid}},
		bson.D{{Key: "$min", Value: bson.D{{Key: "revoked_at", Value: at}}}})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) DeleteSigningKey(ctx context.Context, gen int64) error {
	_, err := s.signingKeys.DeleteOne(ctx, bson.D{{Key: "_id", Value: gen}})
	return s.err(err)
}
