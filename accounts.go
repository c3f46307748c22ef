package main

// accounts.go holds the operations that change an account's security state: its password, its
// disabling and deletion, and the security stamp that every credential in flight obeys.

import (
	"context"
	"errors"
	"time"
)

// What moves an account's security stamp (docs/security-model.md): every change of its
// credentials or of its means of recovery. Each is recorded as a SecurityEvent with this reason; a
// password change or reset with the reason its sessions end for (endPasswordChange,
// endPasswordReset).
const (
	stampFactorAdded    = "factor_added"
	stampFactorRemoved  = "factor_removed"
	stampRecoveryUsedUp = "recovery_codes_used_up"
	stampEmailChanged   = "email_changed"
	stampDisabled       = "account_disabled"
)

// accounts are the operations on an account that move its stamp or end its sessions, shared by its
// owner's and the operator's endpoints.
type accounts struct {
	store    userStore
	sessions *sessionKeeper
}

// moveStamp records event on user's account: from then on, every link, challenge or code issued
// for it before is refused.
func (a *accounts) moveStamp(ctx context.Context, user, event string) error {
	return a.store.MoveStamp(ctx, SecurityEvent{ID: newID(), UserID: user, Reason: event, At: a.sessions.tokens.now().UTC()})
}

// setPassword gives user the password hashed as hash, for reason (a change or a reset): the stamp
// moves, so that no link or challenge issued under the old password works, and every session of
// the account ends, so that no copy of an old token outlives it.
func (a *accounts) setPassword(ctx context.Context, user, hash, reason string) error {
	if err := a.store.SetPasswordHash(ctx, user, hash); err != nil {
		return err
	}
	if err := a.moveStamp(ctx, user, reason); err != nil {
		return err
	}
	_, err := a.sessions.endAll(ctx, user, "", reason)
	return err
}

// remove ends every session of user, then deletes the account.
func (a *accounts) remove(ctx context.Context, user, reason string) error {
	if _, err := a.sessions.endAll(ctx, user, "", reason); err != nil {
		return err
	}
	if err := a.store.DeleteUser(ctx, user); errors.Is(err, ErrNotFound) {
		return errNoSuchUser
	} else if err != nil {
		return err
	}
	return nil
}

// setDisabled bars user from logging in, moves the stamp and ends every session; or lets them log
// in again.
func (a *accounts) setDisabled(ctx context.Context, user string, disabled bool) error {
	if err := a.store.SetDisabled(ctx, user, disabled); errors.Is(err, ErrNotFound) {
		return errNoSuchUser
	} else if err != nil {
		return err
	}
	if !disabled {
		return nil
	}
	if err := a.moveStamp(ctx, user, stampDisabled); err != nil {
		return err
	}
	_, err := a.sessions.endAll(ctx, user, "", endDisabled)
	return err
}

// createAccount inserts u, and tells whether its address was taken. A new account's insert
// commits, and a taken address's fails without a commit, about half a millisecond sooner. With
// even (when a taken address must look new), each outcome also makes the other's twin write:
// a taken address inserts a record that commits, a new account the twin's standing record, which
// its unique _id refuses. Either way, one insert into users and one into attempts, and one
// document written. The first new account of a database writes the standing record.
func createAccount(ctx context.Context, store interface {
	userStore
	attemptStore
}, u *User, even bool) (taken bool, err error) {
	err = store.CreateUser(ctx, u)
	if taken = errors.Is(err, ErrDuplicate); err != nil && !taken {
		return false, err
	}
	if !even {
		return taken, nil
	}
	twin := Attempt{ID: "signup-twin", Key: "signup-twin", ExpiresAt: time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)}
	if taken {
		twin.ID, twin.At, twin.ExpiresAt = newID(), u.CreatedAt, u.CreatedAt.Add(time.Minute) // purged as attempts are
	}
	if err := store.AddAttempts(ctx, twin); err != nil && !errors.Is(err, ErrDuplicate) {
		return false, err
	}
	return taken, nil
}
