package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

// Errors a Store returns; handlers map them to HTTP answers and never see the driver's own.
var (
	ErrNotFound    = errors.New("not found")
	ErrDuplicate   = errors.New("duplicate")
	ErrUnavailable = errors.New("database unavailable")
)

// User is an account. PasswordHash is a PHC string (argon2id) or, for accounts moved over from
// the Node service, a bcrypt hash.
type User struct {
	ID           string    `bson:"_id"`
	Email        string    `bson:"email"`
	PasswordHash string    `bson:"password_hash"`
	CreatedAt    time.Time `bson:"created_at"`
}

// Revocation is one blacklist entry: a token id ("jti:...") or a whole login session ("sid:...").
// It means nothing after ExpiresAt, because every token it could match has expired by then.
type Revocation struct {
	ID        string    `bson:"_id"`
	ExpiresAt time.Time `bson:"expires_at"`
	CreatedAt time.Time `bson:"created_at"`
}

// Attempt is one try of something throttled, recorded under one key before its outcome is known.
type Attempt struct {
	ID        string    `bson:"_id"`
	Key       string    `bson:"key"`
	At        time.Time `bson:"at"`
	ExpiresAt time.Time `bson:"expires_at"`
}

// Store is everything the service keeps. Every method takes the request's context and answers
// ErrUnavailable when the database cannot be reached in time.
type Store interface {
	// CreateUser inserts u; ErrDuplicate when its email is taken.
	CreateUser(ctx context.Context, u *User) error
	// UserByEmail finds the account with a normalised email; ErrNotFound when there is none.
	UserByEmail(ctx context.Context, email string) (*User, error)
	// SetPasswordHash replaces the hash of user id; ErrNotFound when there is no such user.
	SetPasswordHash(ctx context.Context, id, hash string) error

	// ClaimRefresh records the first use of the refresh token jti. won is true for exactly one
	// caller per jti, even under concurrency; the others get the time of that first use.
	ClaimRefresh(ctx context.Context, jti string, at, expires time.Time) (won bool, firstUse time.Time, err error)

	// Revoke records revocations; recording one that exists already is not an error.
	Revoke(ctx context.Context, revs ...Revocation) error
	// Revoked reports whether any of ids is revoked and not yet expired at now.
	Revoked(ctx context.Context, now time.Time, ids ...string) (bool, error)
	// RevocationsSince lists revocations created at or after since that are still in force at now.
	RevocationsSince(ctx context.Context, since, now time.Time) ([]Revocation, error)

	// AddAttempts records attempts, whose ids the caller makes unique.
	AddAttempts(ctx context.Context, as ...Attempt) error
	// Attempts lists, newest first and at most limit of them, the times of the attempts of key
	// after since, but for the one whose id is except.
	Attempts(ctx context.Context, key string, since time.Time, except string, limit int) ([]time.Time, error)
	// ForgetAttempts deletes the attempts with these ids and every attempt of these keys.
	ForgetAttempts(ctx context.Context, ids []string, keys ...string) error

	// Purge deletes everything that expired before now.
	Purge(ctx context.Context, now time.Time) error
	Ping(ctx context.Context) error
}

// mongoStore is the Store on MongoDB (or anything that speaks its wire protocol, such as the
// embedded FerretDB). Atomicity comes only from unique-key inserts and single-document deletes:
// FerretDB, unlike MongoDB, lets two guarded findOneAndUpdate calls both win and loses concurrent
// $inc updates, so nothing here relies on either.
type mongoStore struct {
	users, blacklist, refreshUses, attempts *mongo.Collection
	metrics                                 *metrics // counts the database's failures; may be nil
}

// connectMongo makes a client for uri. The driver waits 30s for a server by default, far too long
// for a user waiting on a login, so shorter defaults come first and the URI's own
// serverSelectionTimeoutMS, connectTimeoutMS or timeoutMS, when it has them, win.
func connectMongo(uri string) (*mongo.Client, error) {
	client, err := mongo.Connect(mongoOptions(uri))
	if err != nil {
		return nil, fmt.Errorf("mongodb: %w", err)
	}
	return client, nil
}

func mongoOptions(uri string) *options.ClientOptions {
	return options.Client().
		SetServerSelectionTimeout(2 * time.Second).
		SetConnectTimeout(2 * time.Second).
		SetTimeout(5 * time.Second).
		ApplyURI(uri)
}

// mongoCollections is the store on db's collections, as they are; m, when not nil, counts the
// database's failures.
func mongoCollections(db *mongo.Database, m *metrics) *mongoStore {
	return &mongoStore{
		users:       db.Collection("users"),
		blacklist:   db.Collection("blacklist"),
		refreshUses: db.Collection("refresh_tokens"),
		attempts:    db.Collection("attempts"),
		metrics:     m,
	}
}

// newMongoStore opens the collections of db and makes sure their indexes exist.
func newMongoStore(ctx context.Context, db *mongo.Database, m *metrics) (*mongoStore, error) {
	s := mongoCollections(db, m)
	indexes := []struct {
		coll   *mongo.Collection
		keys   bson.D
		unique bool
		ttl    bool
	}{
		{s.users, bson.D{{Key: "email", Value: 1}}, true, false},
		{s.blacklist, bson.D{{Key: "created_at", Value: 1}}, false, false},
		{s.blacklist, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.refreshUses, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.attempts, bson.D{{Key: "key", Value: 1}, {Key: "at", Value: -1}}, false, false},
		{s.attempts, bson.D{{Key: "expires_at", Value: 1}}, false, true},
	}
	for _, ix := range indexes {
		opts := options.Index().SetUnique(ix.unique)
		if ix.ttl {
			opts.SetExpireAfterSeconds(0)
		}
		_, err := ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys, Options: opts})
		if ix.ttl && isNotImplemented(err) {
			// FerretDB refuses TTL indexes; Purge deletes expired documents on every server anyway.
			_, err = ix.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: ix.keys})
		}
		if err != nil {
			return nil, fmt.Errorf("create index on %s: %w", ix.coll.Name(), s.err(err))
		}
	}
	return s, nil
}

func isNotImplemented(err error) bool {
	var se mongo.ServerError
	return errors.As(err, &se) && se.HasErrorCode(238)
}

// storeErr turns a driver error into one of the Store's sentinels. Anything that is not an
// answer from the server (a timeout, a refused connection, no server selectable) means the
// database is unreachable; an error the server did answer with is a bug and stays internal.
func storeErr(err error) error {
	var se mongo.ServerError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, mongo.ErrNoDocuments):
		return ErrNotFound
	case mongo.IsDuplicateKeyError(err):
		return ErrDuplicate
	case errors.Is(err, context.Canceled):
		return err
	case errors.As(err, &se) && !mongo.IsTimeout(err) && !mongo.IsNetworkError(err):
		return err
	}
	return fmt.Errorf("%w: %v", ErrUnavailable, err)
}

// err is storeErr that also counts the failures that are the database's: anything but a missing
// or duplicate record, or a caller that gave up.
func (s *mongoStore) err(err error) error {
	err = storeErr(err)
	if err != nil && s.metrics != nil && !errors.Is(err, ErrNotFound) && !errors.Is(err, ErrDuplicate) &&
		!errors.Is(err, context.Canceled) {
		s.metrics.dbErrors.Add(1)
	}
	return err
}

func (s *mongoStore) CreateUser(ctx context.Context, u *User) error {
	_, err := s.users.InsertOne(ctx, u)
	return s.err(err)
}

func (s *mongoStore) UserByEmail(ctx context.Context, email string) (*User, error) {
	var u User
	if err := s.users.FindOne(ctx, bson.D{{Key: "email", Value: email}}).Decode(&u); err != nil {
		return nil, s.err(err)
	}
	return &u, nil
}

func (s *mongoStore) SetPasswordHash(ctx context.Context, id, hash string) error {
	res, err := s.users.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "password_hash", Value: hash}}}})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

type refreshUse struct {
	JTI       string    `bson:"_id"`
	UsedAt    time.Time `bson:"used_at"`
	ExpiresAt time.Time `bson:"expires_at"`
}

func (s *mongoStore) ClaimRefresh(ctx context.Context, jti string, at, expires time.Time) (bool, time.Time, error) {
	_, err := s.refreshUses.InsertOne(ctx, refreshUse{JTI: jti, UsedAt: at, ExpiresAt: expires})
	if err = s.err(err); !errors.Is(err, ErrDuplicate) {
		return err == nil, at, err
	}
	var first refreshUse
	if err := s.refreshUses.FindOne(ctx, bson.D{{Key: "_id", Value: jti}}).Decode(&first); err != nil {
		return false, time.Time{}, s.err(err)
	}
	return false, first.UsedAt, nil
}

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

func (s *mongoStore) Revoked(ctx context.Context, now time.Time, ids ...string) (bool, error) {
	err := s.blacklist.FindOne(ctx, bson.D{
		{Key: "_id", Value: bson.D{{Key: "$in", Value: ids}}},
		{Key: "expires_at", Value: bson.D{{Key: "$gt", Value: now}}},
	}).Err()
	switch err = s.err(err); {
	case err == nil:
		return true, nil
	case errors.Is(err, ErrNotFound):
		return false, nil
	}
	return false, err
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

func (s *mongoStore) AddAttempts(ctx context.Context, as ...Attempt) error {
	// One document per attempt rather than a counter: $inc loses updates on FerretDB.
	docs := make([]any, len(as))
	for i, a := range as {
		docs[i] = a
	}
	_, err := s.attempts.InsertMany(ctx, docs)
	return s.err(err)
}

func (s *mongoStore) Attempts(ctx context.Context, key string, since time.Time, except string, limit int) ([]time.Time, error) {
	cur, err := s.attempts.Find(ctx,
		bson.D{
			{Key: "key", Value: key},
			{Key: "at", Value: bson.D{{Key: "$gt", Value: since}}},
			{Key: "_id", Value: bson.D{{Key: "$ne", Value: except}}},
		},
		options.Find().SetSort(bson.D{{Key: "at", Value: -1}}).SetLimit(int64(limit)).
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

func (s *mongoStore) ForgetAttempts(ctx context.Context, ids []string, keys ...string) error {
	_, err := s.attempts.DeleteMany(ctx, bson.D{{Key: "$or", Value: bson.A{
		bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: append([]string{}, ids...)}}}},
		bson.D{{Key: "key", Value: bson.D{{Key: "$in", Value: append([]string{}, keys...)}}}},
	}}})
	return s.err(err)
}

func (s *mongoStore) Purge(ctx context.Context, now time.Time) error {
	expired := bson.D{{Key: "expires_at", Value: bson.D{{Key: "$lte", Value: now}}}}
	for _, c := range []*mongo.Collection{s.blacklist, s.refreshUses, s.attempts} {
		if _, err := c.DeleteMany(ctx, expired); err != nil {
			return s.err(err)
		}
	}
	return nil
}

func (s *mongoStore) Ping(ctx context.Context) error {
	return s.err(s.users.Database().Client().Ping(ctx, nil))
}
