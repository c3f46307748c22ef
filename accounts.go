package main

// accounts.go holds the operations on an account: its sign-up, its password, its address, its
// disabling and deletion, and the security stamp that every credential in flight obeys.

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"
)

var (
	errSignupDisabled = &apiError{status: http.StatusForbidden, code: "signup_disabled",
		message: "sign-up is closed on this service: an operator creates accounts (SIGNUP_ENABLED=false)"}
	errInviteNeedsMail = &apiError{status: http.StatusBadRequest, code: "invalid_request",
		message: "give a password: this service sends no mail (no SMTP_URL), so it cannot mail an invitation"}
)

// accounts are the operations on an account: its creation, and those that move its stamp or end
// its sessions, shared by its owner's and the operator's endpoints.
type accounts struct {
	store interface {
		userStore
		attemptStore
	}
	sessions interface { // see sessionKeeper
		alive(ctx context.Context, c *claims) error
		start(ctx context.Context, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error)
		startAs(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error)
		live(ctx context.Context, user string) ([]Session, error)
		endAll(ctx context.Context, user, except, reason string) (int, error)
		endCookies(ctx context.Context, user, reason string) error
	}
	passwords *passwordCheck
	hasher    *hasher
	mail      *mailFlows
	// Sign-ups per client within the throttle's window.
	signups          *throttle
	signupsPerClient int
	signupsClosed    bool // SIGNUP_ENABLED=false: only the admin API creates accounts
	now              func() time.Time
	log              *slog.Logger
}

// moveStamp records event on user's account: from then on, every link, challenge or code issued
// for it before is refused.
func (a *accounts) moveStamp(ctx context.Context, user, event string) error {
	return a.store.MoveStamp(ctx, SecurityEvent{ID: newID(), UserID: user, Reason: event, At: a.now().UTC()})
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

// signup creates the account of email (normalised and valid) with password, for client. Every
// sign-up that gets as far as hashing counts toward its client's limit, whatever its outcome: an
// answer of email_taken tells whether an address has an account, and each sign-up costs a hash.
// With email verification on, a taken address is answered as a new one, and mailed (see
// signupMail). The user answered is the one to show.
func (a *accounts) signup(ctx context.Context, client netip.Addr, email, password string) (*User, error) {
	if a.signupsClosed {
		return nil, errSignupDisabled // before the throttle: a closed door costs no database work
	}
	att, err := a.signups.begin(ctx, limit{key: "signup|" + clientPrefix(client), max: a.signupsPerClient})
	if err != nil {
		return nil, err
	}
	if err := att.check(ctx); err != nil {
		return nil, err
	}
	hash, err := a.hasher.hashSignup(ctx, password)
	if err != nil {
		return nil, err
	}
	u := &User{ID: newID(), Email: email, PasswordHash: hash, CreatedAt: a.now().UTC().Truncate(time.Millisecond)}
	taken, err := createAccount(ctx, a.store, u, a.mail.cfg.verification != verificationOff)
	if err != nil {
		return nil, err
	}
	return a.mail.signupMail(ctx, client, u, taken)
}

// create makes the account of email (normalised and valid) for an operator, with the hashing
// budget of a sign-up. With password, it can log in at once, its address taken as verified: the
// operator vouches for it. Without, its password is one nobody knows, and an invitation goes to
// the address with a link that sets one (a reset link, under the account's stamp), which proves
// the address. A taken address is errEmailTaken: the operator is trusted with that answer.
func (a *accounts) create(ctx context.Context, email, password string) (*User, error) {
	invite := password == ""
	if invite {
		if !a.mail.cfg.enabled() {
			return nil, errInviteNeedsMail
		}
		var b [32]byte
		rand.Read(b[:])
		password = base64.RawURLEncoding.EncodeToString(b[:])
	}
	hash, err := a.hasher.hashSignup(ctx, password)
	if err != nil {
		return nil, err
	}
	u := &User{ID: newID(), Email: email, PasswordHash: hash, EmailVerified: !invite,
		CreatedAt: a.now().UTC().Truncate(time.Millisecond)}
	if taken, err := createAccount(ctx, a.store, u, false); err != nil {
		return nil, err
	} else if taken {
		return nil, errEmailTaken
	}
	noteUser(ctx, u.ID)
	if invite {
		if err := a.mail.invite(ctx, u); err != nil {
			// An account whose invitation is not on its way is taken back: the operator's retry
			// would otherwise meet email_taken.
			if err := a.store.DeleteUser(context.WithoutCancel(ctx), u.ID); err != nil {
				a.log.LogAttrs(ctx, slog.LevelWarn, "an invited account whose mail failed to queue is left without a password",
					slog.String("user_id", u.ID), slog.String("err", err.Error()))
			}
			return nil, err
		}
	}
	return u, nil
}

// changePassword replaces the password of the user of the access token c, after the current one,
// sent from client with userAgent. The tokens answered belong to a new session, at the level the
// user proved in the session that asked; every earlier session of the user ends, the one of c
// included, so that no copy of an old token outlives the old password.
func (a *accounts) changePassword(ctx context.Context, c *claims, client netip.Addr, userAgent, current, next string) (tokenPair, error) {
	return a.changePasswordAs(ctx, "", c, client, userAgent, current, next)
}

// changePasswordAs is changePassword whose new session is of kind (Session.Kind): the portal's
// password change keeps its browser signed in with a new cookie session.
func (a *accounts) changePasswordAs(ctx context.Context, kind string, c *claims, client netip.Addr, userAgent, current, next string) (tokenPair, error) {
	u, err := a.passwords.checkUser(ctx, client, c.Subject, current)
	if err != nil {
		return tokenPair{}, err
	}
	if err := a.sessions.alive(ctx, c); err != nil {
		return tokenPair{}, err
	}
	hash, err := a.hasher.hash(ctx, next)
	if err != nil {
		return tokenPair{}, err
	}
	if err := a.setPassword(ctx, u.ID, hash, endPasswordChange); err != nil {
		return tokenPair{}, err
	}
	u.PasswordHash = hash
	pair, err := a.sessions.startAs(ctx, kind, u, client, userAgent, c.level())
	if err != nil {
		return tokenPair{}, err
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "password changed", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID))
	return pair, nil
}

// removeOwn deletes the account of the access token c, after its password sent from client.
func (a *accounts) removeOwn(ctx context.Context, c *claims, client netip.Addr, password string) error {
	if _, err := a.passwords.checkUser(ctx, client, c.Subject, password); err != nil {
		return err
	}
	if err := a.remove(ctx, c.Subject, endAccountDeleted); err != nil {
		return err
	}
	a.log.LogAttrs(ctx, slog.LevelInfo, "account deleted", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", c.Subject))
	return nil
}

// resetPassword gives the account a reset link token was mailed for the password password, and
// ends every session of it: whoever knew the old password is out.
func (a *accounts) resetPassword(ctx context.Context, token, password string) error {
	t, err := a.mail.take(ctx, token, purposeReset)
	if err != nil {
		return err
	}
	u, err := a.store.UserByID(ctx, t.UserID)
	if errors.Is(err, ErrNotFound) || (err == nil && u.Email != t.Email) {
		return errMailTokenInvalid // the account is gone, or has another address now
	} else if err != nil {
		return err
	}
	hash, err := a.hasher.hash(ctx, password)
	if err != nil {
		return err
	}
	// The account's other links die with the stamp; the link proved the mailbox.
	if err := a.setPassword(ctx, u.ID, hash, endPasswordReset); err != nil {
		return err
	}
	if err := a.store.SetEmailVerified(ctx, u.ID, u.Email); err != nil && !errors.Is(err, ErrNotFound) {
		return err
	}
	noteUser(ctx, u.ID)
	a.log.LogAttrs(ctx, slog.LevelInfo, "password reset", slog.String("request_id", requestID(ctx)),
		slog.String("user_id", u.ID))
	return nil
}

// verifyEmail follows a verification link, or an address change's confirmation link, which then
// makes the new address the account's: still unique at that moment, or errEmailTaken. It answers
// the address verified.
func (a *accounts) verifyEmail(ctx context.Context, token string) (string, error) {
	t, err := a.mail.take(ctx, token, purposeVerify, purposeEmailChange)
	if err != nil {
		return "", err
	}
	if t.Purpose == purposeVerify {
		err = a.store.SetEmailVerified(ctx, t.UserID, t.Email)
	} else {
		err = a.store.SetEmail(ctx, t.UserID, t.Email)
	}
	switch {
	case errors.Is(err, ErrNotFound):
		return "", errMailTokenInvalid // the account is gone, or its address changed since
	case errors.Is(err, ErrDuplicate):
		return "", errEmailTaken
	case err != nil:
		return "", err
	}
	noteUser(ctx, t.UserID)
	if t.Purpose == purposeEmailChange {
		// The means of recovery changed: links and challenges issued before are void.
		if err := a.moveStamp(ctx, t.UserID, stampEmailChanged); err != nil {
			return "", err
		}
		// The browsers sign in again with the new address; tokens carry it from their next refresh.
		if err := a.sessions.endCookies(ctx, t.UserID, endEmailChanged); err != nil {
			return "", err
		}
		a.log.LogAttrs(ctx, slog.LevelInfo, "email changed", slog.String("request_id", requestID(ctx)),
			slog.String("user_id", t.UserID))
	}
	return t.Email, nil
}

// changeEmail starts an address change to email (normalised and valid) for the user of the access
// token c, after their password sent from client: a link to the new address, which changes it
// when followed, and a notice to the old one, never one without the other (see
// mailFlows.addressChange). No session ends until the link is followed (see verifyEmail).
func (a *accounts) changeEmail(ctx context.Context, c *claims, client netip.Addr, email, password string) error {
	u, err := a.passwords.checkUser(ctx, client, c.Subject, password)
	if err != nil {
		return err
	}
	if err := a.sessions.alive(ctx, c); err != nil {
		return err
	}
	if email == u.Email {
		return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "new_email is the account's address already"}
	}
	// The link holds under the stamp of now: a password reset before it is followed voids it.
	stamp, err := a.store.Stamp(ctx, u.ID)
	if err != nil {
		return err
	}
	return a.mail.addressChange(ctx, client, u, email, stamp)
}

// byID is the account with id, or errNoSuchUser.
func (a *accounts) byID(ctx context.Context, id string) (*User, error) {
	u, err := a.store.UserByID(ctx, id)
	if errors.Is(err, ErrNotFound) {
		return nil, errNoSuchUser
	}
	if err == nil {
		noteUser(ctx, u.ID)
	}
	return u, err
}

// byEmail is the account with email (normalised), or errNoSuchUser.
func (a *accounts) byEmail(ctx context.Context, email string) (*User, error) {
	u, err := a.store.UserByEmail(ctx, email)
	if errors.Is(err, ErrNotFound) {
		return nil, errNoSuchUser
	} else if err != nil {
		return nil, err
	}
	noteUser(ctx, u.ID)
	return u, nil
}

// sessionsOf lists the live sessions of the account with id, newest first.
func (a *accounts) sessionsOf(ctx context.Context, id string) ([]Session, error) {
	u, err := a.byID(ctx, id)
	if err != nil {
		return nil, err
	}
	return a.sessions.live(ctx, u.ID)
}

// logOut ends every session of the account with id, for reason, and tells how many it ended.
func (a *accounts) logOut(ctx context.Context, id, reason string) (int, error) {
	u, err := a.byID(ctx, id)
	if err != nil {
		return 0, err
	}
	return a.sessions.endAll(ctx, u.ID, "", reason)
}

// credentials is the body of sign-up, login and an operator's account creation.
type credentials struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}
