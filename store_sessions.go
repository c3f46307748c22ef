package main

// store_sessions.go is the MongoDB code of the sessions and the first uses of refresh tokens.

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) CreateSession(ctx context.Context, sess *Session) error {
	_, err := s.sessions.InsertOne(ctx, sess)
	return s.err(err)
}

func (s *mongoStore) DeleteSession(ctx context.Context, id string) error {
	_, err := s.sessions.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return s.err(err)
}

func (s *mongoStore) SessionByID(ctx context.Context, id string) (*Session, error) {
	var sess Session
	if err := s.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&sess); err != nil {
		return nil, s.err(err)
	}
	return &sess, nil
}

func (s *mongoStore) SessionsOfUser(ctx context.Context, user string, now time.Time) ([]Session, error) {
	cur, err := s.sessions.Find(ctx, bson.D{
		{Key: "user_id", Value: user},
		{Key: "tokens_expire_at", Value: bson.D{{Key: "$gt", Value: now}}},
	}, options.Find().SetSort(bson.D{{Key: "created_at", Value: -1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var out []Session
	if err := cur.All(ctx, &out); err != nil {
		return nil, s.err(err)
	}
	return out, nil
}

func (s *mongoStore) TouchSession(ctx context.Context, id string, usedAt, tokensExpire time.Time, head string) error {
	res, err := s.sessions.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$set", Value: bson.D{{Key: "last_used_at", Value: usedAt}, {Key: "head", Value: head}}},
		{Key: "$max", Value: bson.D{{Key: "tokens_expire_at", Value: tokensExpire}}},
	})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) ClaimRefresh(ctx context.Context, use RefreshUse) (RefreshUse, bool, error) {
	_, err := s.refreshUses.InsertOne(ctx, use)
	if err = s.err(err); !errors.Is(err, ErrDuplicate) {
		return use, err == nil, err
	}
	var first RefreshUse
	if err := s.refreshUses.FindOne(ctx, bson.D{{Key: "_id", Value: use.JTI}}).Decode(&first); err != nil {
		return RefreshUse{}, false, s.err(err)
	}
	return first, false, nil
}
