package main

// store_users.go is the MongoDB code of the accounts: their documents, disabling, security stamps.

import (
	"context"
	"errors"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func (s *mongoStore) CreateUser(ctx context.Context, u *User) error {
	_, err := s.users.InsertOne(ctx, u)
	return s.err(err)
}

func (s *mongoStore) UserByEmail(ctx context.Context, email string) (*User, error) {
	var u User
	if err := s.users.FindOne(ctx, bson.D{{Key: "email", Value: email}}).Decode(&u); err != nil {
		return nil, s.err(err)
	}
	disabled, err := s.isDisabled(ctx, u.ID)
	if err != nil {
		return nil, err
	}
	u.Disabled = u.Disabled || disabled
	return &u, nil
}

func (s *mongoStore) UserByID(ctx context.Context, id string) (*User, error) {
	var (
		disabled bool
		disErr   error
		read     = make(chan struct{})
	)
	go func() {
		defer close(read)
		disabled, disErr = s.isDisabled(ctx, id)
	}()
	var u User
	err := s.users.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&u)
	<-read
	if err != nil {
		return nil, s.err(err)
	}
	if disErr != nil {
		return nil, disErr
	}
	u.Disabled = u.Disabled || disabled
	return &u, nil
}

func (s *mongoStore) EmailOf(ctx context.Context, id string) (string, bool, error) {
	var u User
	err := s.users.FindOne(ctx, bson.D{{Key: "_id", Value: id}},
		options.FindOne().SetProjection(bson.D{{Key: "email", Value: 1}, {Key: "email_verified", Value: 1}})).Decode(&u)
	return u.Email, u.EmailVerified, s.err(err)
}

// isDisabled reports whether account id has a record in disabled_accounts.
func (s *mongoStore) isDisabled(ctx context.Context, id string) (bool, error) {
	err := s.disabled.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Err()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return false, nil
	}
	return err == nil, s.err(err)
}

// SetDisabled records a disable as a document of its own, inserted, and an enable as its
// deletion: the account's document has other writers (password changes, a login's hash upgrade,
// email verification), and FerretDB writes a whole document back for each update, so a flag kept
// there could be lost to one of them landing at the same moment (FerretDB keeps one of two
// simultaneous updates of one document). Inserts and deletes of one _id are never lost.
func (s *mongoStore) SetDisabled(ctx context.Context, id string, disabled bool) error {
	if err := s.users.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Err(); err != nil {
		return s.err(err)
	}
	if disabled {
		_, err := s.disabled.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "at", Value: time.Now().UTC()}})
		if mongo.IsDuplicateKeyError(err) {
			return nil
		}
		return s.err(err)
	}
	if _, err := s.disabled.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return s.err(err)
	}
	// An account disabled before disabled_accounts existed has the flag in its document; the
	// filter leaves every other account's document alone.
	_, err := s.users.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "disabled", Value: true}},
		bson.D{{Key: "$unset", Value: bson.D{{Key: "disabled", Value: ""}}}})
	return s.err(err)
}

func (s *mongoStore) DeleteUser(ctx context.Context, id string) error {
	if err := s.deleteOne(ctx, s.users, bson.D{{Key: "_id", Value: id}}); err != nil {
		return err
	}
	if _, err := s.disabled.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return s.err(err)
	}
	if _, err := s.grants().DeleteMany(ctx, bson.D{{Key: "user_id", Value: id}}); err != nil {
		return s.err(err)
	}
	_, err := s.securityEvents.DeleteMany(ctx, bson.D{{Key: "user_id", Value: id}})
	return s.err(err)
}

func (s *mongoStore) Stamp(ctx context.Context, user string) (int64, error) {
	n, err := s.securityEvents.CountDocuments(ctx, bson.D{{Key: "user_id", Value: user}})
	return n, s.err(err)
}

func (s *mongoStore) MoveStamp(ctx context.Context, e SecurityEvent) error {
	_, err := s.securityEvents.InsertOne(ctx, e)
	return s.err(err)
}

func (s *mongoStore) BcryptHash(ctx context.Context) (string, error) {
	var u User
	err := s.users.FindOne(ctx, bson.D{{Key: "password_hash", Value: bson.D{{Key: "$regex", Value: `^\$2[aby]\$`}}}},
		options.FindOne().SetProjection(bson.D{{Key: "password_hash", Value: 1}})).Decode(&u)
	return u.PasswordHash, s.err(err)
}

func (s *mongoStore) SetPasswordHash(ctx context.Context, id, hash string) error {
	return s.setPasswordHash(ctx, bson.D{{Key: "_id", Value: id}}, bson.D{
		{Key: "$set", Value: bson.D{{Key: "password_hash", Value: hash}}},
		{Key: "$unset", Value: bson.D{{Key: "upgraded_from", Value: ""}}},
	})
}

func (s *mongoStore) UpgradePasswordHash(ctx context.Context, id, old, fresh string) error {
	return s.setPasswordHash(ctx, bson.D{{Key: "_id", Value: id}, {Key: "password_hash", Value: old}}, bson.D{
		{Key: "$set", Value: bson.D{{Key: "password_hash", Value: fresh}, {Key: "upgraded_from", Value: digest(old)}}},
	})
}

func (s *mongoStore) setPasswordHash(ctx context.Context, filter, update bson.D) error {
	res, err := s.users.UpdateOne(ctx, filter, update)
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) SetEmailVerified(ctx context.Context, id, email string) error {
	res, err := s.users.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "email", Value: email}},
		bson.D{{Key: "$set", Value: bson.D{{Key: "email_verified", Value: true}}}})
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}

func (s *mongoStore) SetEmail(ctx context.Context, id, email string) error {
	return s.updateEmail(ctx, bson.D{{Key: "_id", Value: id}}, id, email,
		bson.D{{Key: "email", Value: email}, {Key: "email_verified", Value: true}})
}

func (s *mongoStore) UsersWithUnicodeEmail(ctx context.Context) ([]User, error) {
	cur, err := s.users.Find(ctx, bson.D{{Key: "email", Value: bson.D{{Key: "$regex", Value: `[^\x00-\x7f]`}}}},
		options.Find().SetProjection(bson.D{{Key: "email", Value: 1}}))
	if err != nil {
		return nil, s.err(err)
	}
	var users []User
	if err := cur.All(ctx, &users); err != nil {
		return nil, s.err(err)
	}
	return users, nil
}

func (s *mongoStore) RewriteEmail(ctx context.Context, id, from, to string) error {
	return s.updateEmail(ctx, bson.D{{Key: "_id", Value: id}, {Key: "email", Value: from}}, id, to,
		bson.D{{Key: "email", Value: to}})
}

// updateEmail sets fields, email among them, on the account id that filter matches.
func (s *mongoStore) updateEmail(ctx context.Context, filter bson.D, id, email string, fields bson.D) error {
	// The unique index on email decides between two accounts that want one address, on MongoDB
	// and FerretDB alike. FerretDB 1.24, though, reports an update that breaks it as an
	// InternalError (code 1, "UNIQUE constraint failed"), not as E11000 as it does an insert: so a
	// failed update is a duplicate when another account has the address now.
	res, err := s.users.UpdateOne(ctx, filter, bson.D{{Key: "$set", Value: fields}})
	var se mongo.ServerError
	if err != nil && errors.As(err, &se) && !mongo.IsDuplicateKeyError(err) {
		if other, ferr := s.UserByEmail(ctx, email); ferr == nil && other.ID != id {
			return ErrDuplicate
		}
	}
	if err != nil {
		return s.err(err)
	}
	if res.MatchedCount == 0 {
		return ErrNotFound
	}
	return nil
}
