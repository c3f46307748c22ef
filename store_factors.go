package main

// store_factors.go is the MongoDB code of the second factors: TOTP secrets, used steps, recovery codes and login challenges.

import (
	"context"
	"errors"
	"strconv"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) SavePendingTOTP(ctx context.Context, f TOTPFactor) error {
	_, err := s.totp.ReplaceOne(ctx, bson.D{{Key: "_id", Value: f.ID}}, f, options.Replace().SetUpsert(true))
	return s.err(err)
}

func (s *mongoStore) TOTP(ctx context.Context, id string) (*TOTPFactor, error) {
	var f TOTPFactor
	if err := s.totp.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&f); err != nil {
		return nil, s.err(err)
	}
	return &f, nil
}

func (s *mongoStore) ActivateTOTP(ctx context.Context, f TOTPFactor) error {
	if _, err := s.totp.InsertOne(ctx, f); err != nil {
		return s.err(err)
	}
	_, err := s.totp.DeleteOne(ctx, bson.D{{Key: "_id", Value: "pending:" + f.UserID}})
	return s.err(err)
}

func (s *mongoStore) RemoveTOTP(ctx context.Context, user string) error {
	return s.deleteOne(ctx, s.totp, bson.D{{Key: "_id", Value: user}})
}

func (s *mongoStore) ClearRecoveryCodes(ctx context.Context, user string) error {
	_, err := s.recoveryCodes.DeleteMany(ctx, bson.D{{Key: "user_id", Value: user}})
	return s.err(err)
}

func (s *mongoStore) ClaimStep(ctx context.Context, key string, step int64, expires time.Time) error {
	// The unique insert decides between uses of one step. Then any claim of a step as late or
	// later refuses this one: each claim is written before it looks, so of two racing the one
	// that looks last sees the other, and only the earlier step can be refused.
	id := key + ":" + strconv.FormatInt(step, 10)
	if _, err := s.totpSteps.InsertOne(ctx, bson.D{
		{Key: "_id", Value: id}, {Key: "user_id", Value: key}, {Key: "step", Value: step},
		{Key: "expires_at", Value: expires},
	}); err != nil {
		return s.err(err)
	}
	err := s.totpSteps.FindOne(ctx, bson.D{
		{Key: "user_id", Value: key}, {Key: "step", Value: bson.D{{Key: "$gte", Value: step}}},
		{Key: "_id", Value: bson.D{{Key: "$ne", Value: id}}},
	}, options.FindOne().SetProjection(bson.D{{Key: "_id", Value: 1}})).Err()
	switch {
	case err == nil:
		return ErrDuplicate
	case errors.Is(err, mongo.ErrNoDocuments):
		return nil
	}
	return s.err(err)
}

func (s *mongoStore) SetRecoveryCodes(ctx context.Context, user string, digests []string) error {
	if _, err := s.recoveryCodes.DeleteMany(ctx, bson.D{{Key: "user_id", Value: user}}); err != nil {
		return s.err(err)
	}
	docs := make([]any, len(digests))
	for i, d := range digests {
		docs[i] = bson.D{{Key: "_id", Value: d}, {Key: "user_id", Value: user}}
	}
	_, err := s.recoveryCodes.InsertMany(ctx, docs)
	return s.err(err)
}

func (s *mongoStore) RecoveryCodesLeft(ctx context.Context, user string) (int64, error) {
	n, err := s.recoveryCodes.CountDocuments(ctx, bson.D{{Key: "user_id", Value: user}})
	return n, s.err(err)
}

func (s *mongoStore) UseRecoveryCode(ctx context.Context, user, sum string) error {
	return s.deleteOne(ctx, s.recoveryCodes, bson.D{{Key: "_id", Value: sum}, {Key: "user_id", Value: user}})
}

func (s *mongoStore) CreateMFAChallenge(ctx context.Context, ch MFAChallenge) error {
	_, err := s.mfaChallenges.InsertOne(ctx, ch)
	return s.err(err)
}

func (s *mongoStore) MFAChallenge(ctx context.Context, id string) (*MFAChallenge, error) {
	var ch MFAChallenge
	if err := s.mfaChallenges.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&ch); err != nil {
		return nil, s.err(err)
	}
	return &ch, nil
}

func (s *mongoStore) ConsumeMFAChallenge(ctx context.Context, id string) error {
	return s.deleteOne(ctx, s.mfaChallenges, bson.D{{Key: "_id", Value: id}})
}
