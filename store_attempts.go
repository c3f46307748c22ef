package main

// store_attempts.go is the MongoDB code of the throttles' attempts.

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) AddAttempts(ctx context.Context, as ...Attempt) error {
	// One document per attempt rather than a counter: $inc loses updates on FerretDB.
	docs := make([]any, len(as))
	for i, a := range as {
		docs[i] = a
	}
	_, err := s.attempts.InsertMany(ctx, docs)
	return s.err(err)
}

func (s *mongoStore) Attempts(ctx context.Context, key string, since time.Time, except string, most int) ([]time.Time, error) {
	cur, err := s.attempts.Find(ctx,
		bson.D{
			{Key: "key", Value: key},
			{Key: "at", Value: bson.D{{Key: "$gt", Value: since}}},
			{Key: "_id", Value: bson.D{{Key: "$ne", Value: except}}},
		},
		options.Find().SetSort(bson.D{{Key: "at", Value: -1}}).SetLimit(int64(most)).
			SetProjection(bson.D{{Key: "at", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var found []Attempt
	if err := cur.All(ctx, &found); err != nil {
		return nil, s.err(err)
	}
	times := make([]time.Time, len(found))
	for i, f := range found {
		times[i] = f.At
	}
	return times, nil
}

func (s *mongoStore) ForgetAttempts(ctx context.Context, attemptIDs []string, keys ...string) error {
	_, err := s.attempts.DeleteMany(ctx, bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: append([]string{}, attemptIDs...)}}}},
		bson.D{{Key: "key", Value: bson.D{{Key: "$in", Value: append([]string{}, keys...)}}}},
	}}})
	return s.err(err)
}
