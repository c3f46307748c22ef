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
//
// CreatedAt is when the entry was written or last extended: instances poll for entries by it.
// Reason says why a session ended ("logout", "reused", ...), for the people who read the database.
type Revocation struct {
	ID        string    `bson:"_id"`
	ExpiresAt time.Time `bson:"expires_at"`
	CreatedAt time.Time `bson:"created_at"`
	Reason    string    `bson:"reason,omitempty"`
}

// Session is one login and every token refreshed from it, all of which carry its ID as sid. It
// ends when a blacklist entry "sid:<ID>" is written, at ExpiresAt (SESSION_MAX_AGE after login;
// zero for no limit), or when its last refresh token expires unused. TokensExpireAt is the latest
// expiry of any token issued in it: its blacklist entry must last that long, and after it the
// record can match no token and is purged.
type Session struct {
	ID             string    `bson:"_id"`
	UserID         string    `bson:"user_id"`
	CreatedAt      time.Time `bson:"created_at"`
	LastUsedAt     time.Time `bson:"last_used_at"`
	IP             string    `bson:"ip"`
	UserAgent      string    `bson:"user_agent"`
	ExpiresAt      time.Time `bson:"expires_at"`
	TokensExpireAt time.Time `bson:"tokens_expire_at"`
}

// RefreshUse is the first use of a refresh token, and the successor it was exchanged for, so that
// the same token presented again within the reuse interval gets that very successor. It means
// nothing after ExpiresAt, when the token it records has expired.
type RefreshUse struct {
	JTI       string    `bson:"_id"`
	UsedAt    time.Time `bson:"used_at"`
	ExpiresAt time.Time `bson:"expires_at"`
	Next      Successor `bson:"next"`
}

// Successor is what a refresh token is signed from, besides what its session says.
type Successor struct {
	ID       string `bson:"jti"`
	IssuedAt int64  `bson:"iat"`
	Expiry   int64  `bson:"exp"`
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
	// BcryptHash returns the bcrypt hash of some account that still has one (accounts imported
	// from the Node service keep theirs until they log in); ErrNotFound when none does.
	BcryptHash(ctx context.Context) (string, error)
	// SetPasswordHash replaces the hash of user id; ErrNotFound when there is no such user.
	SetPasswordHash(ctx context.Context, id, hash string) error

	// CreateSession records a new session.
	CreateSession(ctx context.Context, s *Session) error
	// SessionByID finds a session; ErrNotFound when there is none.
	SessionByID(ctx context.Context, id string) (*Session, error)
	// TouchSession notes a use of session id at usedAt that issued tokens expiring up to
	// tokensExpire; the record's TokensExpireAt never goes back. ErrNotFound when there is none.
	TouchSession(ctx context.Context, id string, usedAt, tokensExpire time.Time) error

	// ClaimRefresh records the first use of a refresh token. won is true for exactly one caller
	// per token, even under concurrency; the others get the record that caller wrote.
	ClaimRefresh(ctx context.Context, use RefreshUse) (first RefreshUse, won bool, err error)

	// Revoke records revocations; recording one that exists already is not an error.
	Revoke(ctx context.Context, revs ...Revocation) error
	// ExtendRevocation makes revocation id last until at least expires, and marks it changed at
	// now so that the other instances read it again.
	ExtendRevocation(ctx context.Context, id string, expires, now time.Time) error
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

	// SigningKeys lists every signing key record, oldest generation first.
	SigningKeys(ctx context.Context) ([]SigningKey, error)
	// AddSigningKey inserts k; ErrDuplicate when a key of its generation exists already, which
	// means that another instance made that key first.
	AddSigningKey(ctx context.Context, k *SigningKey) error
	// AdvanceSigningKey moves the activation of the key of generation gen to at, unless it is
	// earlier already; ErrNotFound when there is no such key.
	AdvanceSigningKey(ctx context.Context, gen int64, at time.Time) error
	// RevokeSigningKey marks the key kid revoked at at, unless it was revoked earlier; ErrNotFound
	// when there is no such key.
	RevokeSigningKey(ctx context.Context, kid string, at time.Time) error
	// DeleteSigningKey removes the key of generation gen; deleting one that is gone is not an
	// error.
	DeleteSigningKey(ctx context.Context, gen int64) error
}

// mongoStore is the Store on MongoDB (or anything that speaks its wire protocol, such as the
// embedded FerretDB). Atomicity comes only from unique-key inserts and single-document deletes:
// FerretDB, unlike MongoDB, lets two guarded findOneAndUpdate calls both win and loses concurrent
// $inc updates, so nothing here relies on either.
type mongoStore struct {
	users, sessions, blacklist, refreshUses, attempts, signingKeys *mongo.Collection
	metrics                                                        *metrics // counts the database's failures; may be nil
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
		sessions:    db.Collection("sessions"),
		blacklist:   db.Collection("blacklist"),
		refreshUses: db.Collection("refresh_tokens"),
		attempts:    db.Collection("attempts"),
		signingKeys: db.Collection("signing_keys"),
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
		{s.sessions, bson.D{{Key: "user_id", Value: 1}}, false, false},
		{s.sessions, bson.D{{Key: "tokens_expire_at", Value: 1}}, false, true},
		{s.attempts, bson.D{{Key: "key", Value: 1}, {Key: "at", Value: -1}}, false, false},
		{s.attempts, bson.D{{Key: "expires_at", Value: 1}}, false, true},
		{s.signingKeys, bson.D{{Key: "kid", Value: 1}}, true, false},
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

func (s *mongoStore) BcryptHash(ctx context.Context) (string, error) {
	var u User
	err := s.users.FindOne(ctx, bson.D{{Key: "password_hash", Value: bson.D{{Key: "$regex", Value: `^\$2[aby]\$`}}}},
		options.FindOne().SetProjection(bson.D{{Key: "password_hash", Value: 1}})).Decode(&u)
	return u.PasswordHash, s.err(err)
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

func (s *mongoStore) CreateSession(ctx context.Context, sess *Session) error {
	_, err := s.sessions.InsertOne(ctx, sess)
	return s.err(err)
}

func (s *mongoStore) SessionByID(ctx context.Context, id string) (*Session, error) {
	var sess Session
	if err := s.sessions.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&sess); err != nil {
		return nil, s.err(err)
	}
	return &sess, nil
}

func (s *mongoStore) TouchSession(ctx context.Context, id string, usedAt, tokensExpire time.Time) error {
	// Only the session's own refreshes write here, one step of its chain after another; $max
	// keeps the later expiry should two tabs' refreshes within the reuse interval cross.
	res, err := s.sessions.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$set", Value: bson.D{{Key: "last_used_at", Value: usedAt}}},
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

func (s *mongoStore) ExtendRevocation(ctx context.Context, id string, expires, now time.Time) error {
	_, err := s.blacklist.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$max", Value: bson.D{{Key: "expires_at", Value: expires}}},
		{Key: "$set", Value: bson.D{{Key: "created_at", Value: now}}},
	})
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
	expired := func(field string) bson.D { return bson.D{{Key: field, Value: bson.D{{Key: "$lte", Value: now}}}} }
	for _, p := range []struct {
		c     *mongo.Collection
		field string
	}{{s.blacklist, "expires_at"}, {s.refreshUses, "expires_at"}, {s.attempts, "expires_at"}, {s.sessions, "tokens_expire_at"}} {
		if _, err := p.c.DeleteMany(ctx, expired(p.field)); err != nil {
			return s.err(err)
		}
	}
	return nil
}

func (s *mongoStore) Ping(ctx context.Context) error {
	return s.err(s.users.Database().Client().Ping(ctx, nil))
}

// SigningKey is one key pair of JWT_ALG EdDSA or ES256, shared by every instance. Gen numbers the
// keys in the order they take over; a new key is claimed by inserting the next number as _id, so
// that among instances racing to make it exactly one succeeds. The schedule is in the record
// itself (ActivateAt, RevokedAt), so every instance reads the same one; see keys.go.
//
// Private is the PKCS #8 private key sealed with AES-256-GCM under a key derived from JWT_SECRET;
// the clear private key never reaches the database.
type SigningKey struct {
	Gen        int64     `bson:"_id"`
	KID        string    `bson:"kid"`
	Alg        string    `bson:"alg"`
	Public     []byte    `bson:"public"`  // PKIX, DER
	Private    []byte    `bson:"private"` // sealed: nonce, then ciphertext and tag
	CreatedAt  time.Time `bson:"created_at"`
	ActivateAt time.Time `bson:"activate_at"`
	RevokedAt  time.Time `bson:"revoked_at,omitempty"` // zero: not revoked
}

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
