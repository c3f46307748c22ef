package main

// store_mail.go is the MongoDB code of the outbox, its leases and the tokens mailed in links.

import (
	"context"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// The mail collections are looked up by name, not kept in mongoStore's fields, so that mail
// stays in these few functions.
func (s *mongoStore) outboxColl() *mongo.Collection {
	return s.users.Database().Collection("mail_outbox")
}

func (s *mongoStore) mailLeases() *mongo.Collection {
	return s.users.Database().Collection("mail_leases")
}

func (s *mongoStore) mailTokens() *mongo.Collection {
	return s.users.Database().Collection("mail_tokens")
}

func (s *mongoStore) mailIndexes(ctx context.Context) error {
	for _, ix := range []struct {
		coll *mongo.Collection
		keys bson.D
		ttl  bool
	}{
		{s.outboxColl(), bson.D{{Key: "next_at", Value: 1}}, false},
		{s.outboxColl(), bson.D{{Key: "created_at", Value: 1}}, false},
		{s.mailLeases(), bson.D{{Key: "message_id", Value: 1}}, false},
		{s.mailLeases(), bson.D{{Key: "expires_at", Value: 1}}, true},
		{s.mailTokens(), bson.D{{Key: "expires_at", Value: 1}}, true},
	} {
		opts := options.Index()
		if ix.ttl {
			opts.SetExpireAfterSeconds(0)
		}
		_, err := ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys, Options: opts})
		if ix.ttl && isNotImplemented(err) {
			// FerretDB refuses TTL indexes; PurgeMail deletes expired documents on every server.
			_, err = ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys})
		}
		if err != nil {
			return fmt.Errorf("create index on %s: %w", ix.coll.Name(), s.err(err))
		}
	}
	return nil
}

// PurgeMail: the outbox itself is emptied by the sender, which gives up on a message and says so.
func (s *mongoStore) PurgeMail(ctx context.Context, now time.Time) error {
	for _, c := range []*mongo.Collection{s.mailTokens(), s.mailLeases()} {
		if _, err := c.DeleteMany(ctx, bson.D{{Key: "expires_at", Value: bson.D{{Key: "$lte", Value: now}}}}); err != nil {
			return s.err(err)
		}
	}
	return nil
}

func (s *mongoStore) QueueMail(ctx context.Context, m *MailMessage) error {
	_, err := s.outboxColl().InsertOne(ctx, m)
	return s.err(err)
}

func (s *mongoStore) DueMail(ctx context.Context, now time.Time, most int) ([]MailMessage, error) {
	cur, err := s.outboxColl().Find(ctx, bson.D{{Key: "next_at", Value: bson.D{{Key: "$lte", Value: now}}}},
		options.Find().SetSort(bson.D{{Key: "next_at", Value: 1}}).SetLimit(int64(most)))
	if err != nil {
		return nil, s.err(err)
	}
	var out []MailMessage
	if err := cur.All(ctx, &out); err != nil {
		return nil, s.err(err)
	}
	return out, nil
}

func (s *mongoStore) OldestMail(ctx context.Context) (time.Time, error) {
	var m MailMessage
	err := s.outboxColl().FindOne(ctx, bson.D{}, options.FindOne().SetSort(bson.D{{Key: "created_at", Value: 1}}).
		SetProjection(bson.D{{Key: "created_at", Value: 1}})).Decode(&m)
	return m.CreatedAt, s.err(err)
}

func (s *mongoStore) LeaseMail(ctx context.Context, l *MailLease) error {
	_, err := s.mailLeases().InsertOne(ctx, l)
	return s.err(err)
}

func (s *mongoStore) MailLeaseByID(ctx context.Context, id string) (*MailLease, error) {
	var l MailLease
	if err := s.mailLeases().FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&l); err != nil {
		return nil, s.err(err)
	}
	return &l, nil
}

func (s *mongoStore) RescheduleMail(ctx context.Context, id string, attempts int, next time.Time, lastErr string) error {
	// A plain $set, not a guarded update: only the holder of the current attempt's lease writes.
	_, err := s.outboxColl().UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{{Key: "$set", Value: bson.D{
		{Key: "attempts", Value: attempts}, {Key: "next_at", Value: next}, {Key: "last_error", Value: lastErr},
	}}})
	return s.err(err)
}

func (s *mongoStore) MailByID(ctx context.Context, id string) (*MailMessage, error) {
	var m MailMessage
	if err := s.outboxColl().FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&m); err != nil {
		return nil, s.err(err)
	}
	return &m, nil
}

func (s *mongoStore) ReleaseMailLease(ctx context.Context, id string) error {
	_, err := s.mailLeases().DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
	return s.err(err)
}

func (s *mongoStore) DeleteMail(ctx context.Context, id string) error {
	if _, err := s.outboxColl().DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return s.err(err)
	}
	_, err := s.mailLeases().DeleteMany(ctx, bson.D{{Key: "message_id", Value: id}})
	return s.err(err)
}

func (s *mongoStore) CreateMailToken(ctx context.Context, t *MailToken) error {
	_, err := s.mailTokens().InsertOne(ctx, t)
	return s.err(err)
}

func (s *mongoStore) MailTokenByDigest(ctx context.Context, sum string) (*MailToken, error) {
	var t MailToken
	if err := s.mailTokens().FindOne(ctx, bson.D{{Key: "_id", Value: sum}}).Decode(&t); err != nil {
		return nil, s.err(err)
	}
	return &t, nil
}

func (s *mongoStore) DeleteMailToken(ctx context.Context, sum string) error {
	// A single-document delete is atomic on MongoDB and FerretDB alike: of any number of callers,
	// one sees a document deleted.
	res, err := s.mailTokens().DeleteOne(ctx, bson.D{{Key: "_id", Value: sum}})
	if err != nil {
		return s.err(err)
	}
	if res.DeletedCount == 0 {
		return ErrNotFound
	}
	return nil
}
