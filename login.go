package main

// login.go is the login: the password, then a session, or the second factor's challenge.

import (
	"context"
	"errors"
	"net/netip"
)

// logins check an email and password and open what follows: a session, or, for a user with an
// active second factor, a challenge for it.
type logins struct {
	passwords *passwordCheck
	sessions  interface { // opens a session while the password hashes: see sessionKeeper.open
		begin(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (keep func() (tokenPair, error), drop func())
	}
	second interface { // the second factor's challenge, for a user who has one
		challengeAs(ctx context.Context, kind string, u *User, client netip.Addr, userAgent string) (string, error)
	}
	metrics *metrics
	// EMAIL_VERIFICATION=required: the right password for an address not verified yet gets
	// errEmailNotVerified and no session; a wrong one gets errInvalidCredentials as ever, so that
	// the refusal tells nothing to someone without the password.
	requireVerified bool
}

// loginAnswer is what a login opened: the tokens of its session, or, when a second factor is to
// follow, the mfa_token of its challenge and no session yet.
type loginAnswer struct {
	pair     tokenPair
	mfaToken string
	methods  []string // what the second step may take
}

// login checks email and password, sent from client with userAgent.
func (l *logins) login(ctx context.Context, client netip.Addr, userAgent, email, password string) (loginAnswer, error) {
	return l.loginAs(ctx, "", client, userAgent, email, password)
}

// loginAs is login for a session of kind (Session.Kind): the portal's sign-in opens a cookie
// session, and its challenge, if any, opens one of that kind too.
func (l *logins) loginAs(ctx context.Context, kind string, client netip.Addr, userAgent, email, password string) (loginAnswer, error) {
	var keep func() (tokenPair, error)
	drop := func() {}
	u, err := l.passwords.check(ctx, client, email, password, func(u *User) {
		if len(u.secondFactors()) == 0 && !u.Disabled && (!l.requireVerified || u.EmailVerified) {
			keep, drop = l.sessions.begin(ctx, kind, u, client, userAgent, levelPassword)
		}
	})
	if err != nil {
		drop()
	}
	m := l.metrics
	switch {
	case errors.Is(err, errInvalidCredentials):
		m.login(loginInvalidCredentials)
		return loginAnswer{}, err
	case errors.Is(err, errTooManyAttempts):
		m.login(loginThrottled)
		return loginAnswer{}, err
	case errors.Is(err, errAccountDisabled):
		m.login(loginDisabled)
		return loginAnswer{}, err
	case err != nil:
		return loginAnswer{}, err
	}
	if l.requireVerified && !u.EmailVerified {
		m.login(loginUnverified)
		return loginAnswer{}, errEmailNotVerified
	}
	if methods := u.secondFactors(); len(methods) > 0 {
		token, err := l.second.challengeAs(ctx, kind, u, client, userAgent)
		if err != nil {
			return loginAnswer{}, err
		}
		noteUser(ctx, u.ID)
		return loginAnswer{mfaToken: token, methods: methods}, nil
	}
	pair, err := keep() // opened while the password hashed: check calls meanwhile for every success
	if errors.Is(err, errAccountDisabled) {
		m.login(loginDisabled)
	}
	if err != nil {
		return loginAnswer{}, err
	}
	m.login(loginSuccess)
	noteUser(ctx, u.ID)
	return loginAnswer{pair: pair}, nil
}
