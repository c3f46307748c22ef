package main

// store_passkeys.go is the passkeys' storage: their interface and records, and the MongoDB code of
// the passkeys and of the ceremonies in flight.

import (
	"context"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// passkeyStore keeps the passkeys (WebAuthn credentials) and the ceremonies begun and not yet
// finished.
type passkeyStore interface {
	// AddPasskey inserts p; ErrDuplicate when its credential is registered already, to any
	// account.
	AddPasskey(ctx context.Context, p *Passkey) error
	// PasskeysOf lists user's passkeys, oldest first.
	PasskeysOf(ctx context.Context, user string) ([]Passkey, error)
	// PasskeyByID finds a passkey by its credential id; ErrNotFound when there is none.
	PasskeyByID(ctx context.Context, id string) (*Passkey, error)
	// RenamePasskey names user's passkey id; ErrNotFound when user has no such passkey.
	RenamePasskey(ctx context.Context, user, id, name string) error
	// UsePasskey records a use of passkey id at at, and its credential record after it.
	UsePasskey(ctx context.Context, id string, credential []byte, at time.Time) error
	// RemovePasskey deletes user's passkey id; ErrNotFound when user has no such passkey (also for
	// all but one of simultaneous removals).
	RemovePasskey(ctx context.Context, user, id string) error
	// CreateCeremony records a ceremony begun.
	CreateCeremony(ctx context.Context, c *Ceremony) error
	// TakeCeremony deletes ceremony id and answers it: exactly one caller gets it, however many
	// try at once; ErrNotFound for the others, and when there is none.
	TakeCeremony(ctx context.Context, id string) (*Ceremony, error)
}

// Passkey is one WebAuthn credential of an account. Its ID, the credential id in base64url, is
// unique: a credential registered to one account cannot be added to another.
type Passkey struct {
	ID         string    `bson:"_id"`
	UserID     string    `bson:"user_id"`
	Name       string    `bson:"name"`
	Credential []byte    `bson:"credential"` // the library's credential record, as JSON
	CreatedAt  time.Time `bson:"created_at"`
	LastUsedAt time.Time `bson:"last_used_at,omitempty"`
}

// Ceremony is a WebAuthn registration or assertion begun, found by the digest of its challenge.
// It is single-use (TakeCeremony), lives until ExpiresAt, and is bound to what it was begun for:
// its kind, its account and that account's security stamp, the session of the access token that
// began it, or the login challenge it answers.
type Ceremony struct {
	ID     string `bson:"_id"`
	Kind   string `bson:"kind"`
	UserID string `bson:"user_id,omitempty"` // "" for a discoverable login, which names no account
	// ForEmail: a login begun with an email address, which only UserID's passkeys may finish
	// (none, when the address has no account).
	ForEmail  bool      `bson:"for_email,omitempty"`
	Stamp     int64     `bson:"stamp"`
	Session   string    `bson:"session,omitempty"`   // the sid that began a registration or step-up
	Challenge string    `bson:"challenge,omitempty"` // the MFAChallenge a second factor answers
	Data      []byte    `bson:"data"`                // the library's session data, as JSON
	ExpiresAt time.Time `bson:"expires_at"`
}

func (s *mongoStore) passkeyIndexes(ctx context.Context) error {
	for _, ix := range []struct {
		coll *mongo.Collection
		keys bson.D
		ttl  bool
	}{
		{s.passkeys, bson.D{{Key: "user_id", Value: 1}}, false},
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
	_, err := s.passkeys.InsertOne(ctx, p)
	return s.err(err)
}

func (s *mongoStore) PasskeysOf(ctx context.Context, user string) ([]Passkey, error) {
	cur, err := s.passkeys.Find(ctx, bson.D{{Key: "user_id", Value: user}}, options.Find().SetSort(bson.D{{Key: "created_at", Value: 1}}))
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
	if err := s.passkeys.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&p); err != nil {
		return nil, s.err(err)
	}
	return &p, nil
}

func (s *mongoStore) RenamePasskey(ctx context.Context, user, id, name string) error {
	res, err := s.passkeys.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "user_id", Value: user}},
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
	_, err := s.passkeys.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "credential", Value: credential}, {Key: "last_used_at", Value: at}}}})
	return s.err(err)
}

func (s *mongoStore) RemovePasskey(ctx context.Context, user, id string) error {
	return s.deleteOne(ctx, s.passkeys, bson.D{{Key: "_id", Value: id}, {Key: "user_id", Value: user}})
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
