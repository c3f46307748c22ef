package main

// store_revocations.go is the MongoDB code of the blacklist of ended sessions and revoked tokens.

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) Revoke(ctx context.Context, revs ...Revocation) error {
	if len(revs) == 0 {
		return nil
	}
	docs := make([]any, len(revs))
	for i, r := range revs {
		docs[i] = r
	}
	// One unordered insert: every new entry lands even when others exist already.
	_, err := s.blacklist.InsertMany(ctx, docs, options.InsertMany().SetOrdered(false))
	var bwe mongo.BulkWriteException
	if errors.As(err, &bwe) && bwe.WriteConcernError == nil {
		for _, we := range bwe.WriteErrors {
			if !mongo.IsDuplicateKeyError(we.WriteError) {
				return s.err(err)
			}
		}
		return nil
	}
	return s.err(err)
}

// ExtendRevocation's $max is not atomic on FerretDB, but every ender of a session extends its entry
// to an expiry read from the session's record after writing the entry, which covers every token
// the session issued (see sessionKeeper.end): whichever of two simultaneous extensions lands is
// enough.
func (s *mongoStore) ExtendRevocation(ctx context.Context, id string, expires, now time.Time) error {
	_, err := s.blacklist.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$max", Value: bson.D{{Key: "expires_at", Value: expires}}},
		{Key: "$set", Value: bson.D{{Key: "created_at", Value: now}}},
	})
	return s.err(err)
}

func (s *mongoStore) Revoked(ctx context.Context, now time.Time, ids ...string) (bool, string, error) {
	var found Revocation
	err := s.blacklist.FindOne(ctx, bson.D{
		{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
		{Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now}}},
	}, options.FindOne().SetSort(bson.D{{Key: "reason", Value: -1}})).Decode(&found)
	switch err = s.err(err); {
	case err == nil:
		return true, found.Reason, nil
	case errors.Is(err, ErrNotFound):
		return false, "", nil
	}
	return false, "", err
}

func (s *mongoStore) RevokedAmong(ctx context.Context, now time.Time, ids ...string) (map[string]bool, error) {
	out := make(map[string]bool, len(ids))
	if len(ids) == 0 {
		return out, nil
	}
	cur, err := s.blacklist.Find(ctx, bson.D{
		{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
		{Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now}}},
	}, options.Find().SetProjection(bson.D{{Key: "_id", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var found []Revocation
	if err := cur.All(ctx, &found); err != nil {
		return nil, s.err(err)
	}
	for _, r := range found {
		out[r.ID] = true
	}
	return out, nil
}

func (s *mongoStore) RevocationsSince(ctx context.Context, since, now time.Time) ([]Revocation, error) {
	cur, err := s.blacklist.Find(ctx, bson.D{
		{Key: "created_at", Value: bson.D{{Key: "$gte", Value: since}}},
		{Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now}}},
	})
	if err != nil {
		return nil, s.err(err)
	}
	var revs []Revocation
	if err := cur.All(ctx, &revs); err != nil {
		return nil, s.err(err)
	}
	return revs, nil
}
