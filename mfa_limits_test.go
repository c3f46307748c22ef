package main

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The limits on guessing a second factor: per account from every client, per challenge, and the
// order of the steps accepted. Many clients are X-Forwarded-For addresses, from a trusted loopback.

// challengeFrom logs email in from client with the right password and returns the challenge's
// mfa_token.
func (e *testEnv) challengeFrom(tb testing.TB, client, email string) string {
	tb.Helper()
	r := e.loginFrom(tb, client, email, "correct horse battery").want(tb, 200, "")
	if r.str("mfa_token") == "" {
		tb.Fatalf("login of a user with a second factor: %s", r.raw)
	}
	return r.str("mfa_token")
}

// wrongCode is a code of none of the steps accepted at now.
func wrongCode(tb testing.TB, secret string, now time.Time) string {
	tb.Helper()
	raw, err := b32.DecodeString(secret)
	if err != nil {
		tb.Fatal(err)
	}
	for i := 0; ; i++ {
		if c := fmt.Sprintf("%06d", i); func() bool { _, ok := totpMatch(raw, c, now); return !ok }() {
			return c
		}
	}
}

// lockedOut checks that r is the 429 of a locked factor, with a Retry-After within the window.
func (e *testEnv) lockedOut(tb testing.TB, r response) {
	tb.Helper()
	r.want(tb, 429, "too_many_attempts")
	if s, _ := strconv.Atoi(r.header.Get("Retry-After")); s <= 0 || s > int(e.cfg.failureWindow/time.Second) {
		tb.Fatalf("Retry-After %q, want 1..%d seconds", r.header.Get("Retry-After"), int(e.cfg.failureWindow/time.Second))
	}
}

func clientNo(i int) string { return "198.51.100." + strconv.Itoa(i+1) }

func TestWrongCodesFromManyClientsAreLimitedPerAccount(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback)
	email, access, _ := e.user(t)
	secret, recovery := e.enrolTOTP(t, access)
	for i := range 40 {
		client := clientNo(i)
		r := e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, client, email), "code": wrongCode(t, secret, e.clock.Now())},
			"X-Forwarded-For", client)
		if i < e.cfg.mfaMaxFailures {
			r.want(t, 401, "invalid_code")
		} else {
			e.lockedOut(t, r)
		}
	}
	client := clientNo(40)
	e.lockedOut(t, e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, client, email),
		"code": codeAt(t, secret, stepAt(e.clock.Now()))}, "X-Forwarded-For", client))
	e.lockedOut(t, e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, client, email),
		"recovery_code": recovery[0]}, "X-Forwarded-For", client))

	t.Run("until the window passes", func(t *testing.T) {
		e.clock.Advance(e.cfg.failureWindow)
		e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, client, email),
			"code": codeAt(t, secret, stepAt(e.clock.Now()))}, "X-Forwarded-For", client).want(t, 200, "")
	})
}

func TestACorrectPasswordDoesNotClearSecondFactorFailures(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback)
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	const client = "203.0.113.7"
	for range e.cfg.mfaMaxFailures {
		token := e.challengeFrom(t, client, email) // a right password, each time
		e.verifyMFA(t, map[string]string{"mfa_token": token, "code": wrongCode(t, secret, e.clock.Now())},
			"X-Forwarded-For", client).want(t, 401, "invalid_code")
	}
	token := e.challengeFrom(t, client, email) // the password still works
	e.lockedOut(t, e.verifyMFA(t, map[string]string{"mfa_token": token, "code": codeAt(t, secret, stepAt(e.clock.Now()))},
		"X-Forwarded-For", client))
}

func TestAChallengeDiesAfterThreeWrongCodes(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	secret, recovery := e.enrolTOTP(t, access)
	token := e.loginMFA(t, email)
	for range 3 {
		e.verifyMFA(t, map[string]string{"mfa_token": token, "code": wrongCode(t, secret, e.clock.Now())}).want(t, 401, "invalid_code")
	}
	if _, err := e.store.MFAChallenge(t.Context(), digest(token)); !errors.Is(err, ErrNotFound) {
		t.Fatalf("the challenge after its third wrong code: %v, want it deleted", err)
	}
	e.verifyMFA(t, map[string]string{"mfa_token": token, "code": codeAt(t, secret, stepAt(e.clock.Now()))}).want(t, 401, "token_invalid")
	e.verifyMFA(t, map[string]string{"mfa_token": token, "recovery_code": recovery[0]}).want(t, 401, "token_invalid")

	t.Run("a new challenge works: three wrong codes do not lock the account", func(t *testing.T) {
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": codeAt(t, secret, stepAt(e.clock.Now()))}).
			want(t, 200, "")
	})
}

// A session's step-up and the factor's removal are ways to guess the factor too, and recovery codes
// another kind of it: their wrong answers, from as many clients, count in the one limit.
func TestStepUpAndRemovalCountInTheSameLimit(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback)
	email, access, _ := e.user(t)
	secret, recovery := e.enrolTOTP(t, access)
	bearer := "Bearer " + access
	wrong := func() string { return wrongCode(t, secret, e.clock.Now()) }
	e.verifyMFA(t, map[string]string{"code": wrong()}, "Authorization", bearer, "X-Forwarded-For", clientNo(0)).
		want(t, 401, "invalid_code")
	e.verifyMFA(t, map[string]string{"recovery_code": "aaaaa-bbbbb"}, "Authorization", bearer, "X-Forwarded-For", clientNo(1)).
		want(t, 401, "invalid_code")
	for i := range 2 {
		e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"code": wrong()}, "Authorization", bearer,
			"X-Forwarded-For", clientNo(2+i)).want(t, 401, "invalid_code")
	}
	e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, clientNo(4), email), "code": wrong()},
		"X-Forwarded-For", clientNo(4)).want(t, 401, "invalid_code")

	right := codeAt(t, secret, stepAt(e.clock.Now()))
	e.lockedOut(t, e.verifyMFA(t, map[string]string{"code": right}, "Authorization", bearer, "X-Forwarded-For", clientNo(5)))
	e.lockedOut(t, e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"recovery_code": recovery[0]}, "Authorization", bearer,
		"X-Forwarded-For", clientNo(6)))
	e.lockedOut(t, e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, clientNo(7), email), "code": right},
		"X-Forwarded-For", clientNo(7)))
}

func TestMFAMaxFailuresZeroTurnsTheLimitOff(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback, func(c *config) { c.mfaMaxFailures = 0 })
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	for i := range 12 {
		e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, clientNo(i), email), "code": wrongCode(t, secret, e.clock.Now())},
			"X-Forwarded-For", clientNo(i)).want(t, 401, "invalid_code")
	}
	e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, clientNo(12), email), "code": codeAt(t, secret, stepAt(e.clock.Now()))},
		"X-Forwarded-For", clientNo(12)).want(t, 200, "")

	t.Run("and loadConfig reads it, 5 by default", func(t *testing.T) {
		for env, want := range map[string]int{"": 5, "0": 0, "12": 12} {
			c, err := loadConfig(func(k string) string {
				if k == "MFA_MAX_FAILURES" {
					return env
				}
				return ""
			})
			if err != nil || c.mfaMaxFailures != want {
				t.Fatalf("MFA_MAX_FAILURES=%q: %d, %v; want %d", env, c.mfaMaxFailures, err, want)
			}
		}
		if _, err := loadConfig(func(k string) string {
			if k == "MFA_MAX_FAILURES" {
				return "-1"
			}
			return ""
		}); err == nil || !strings.Contains(err.Error(), "MFA_MAX_FAILURES") {
			t.Fatalf("MFA_MAX_FAILURES=-1: %v, want an error naming it", err)
		}
	})
}

// Wrong codes count toward their client's login limit too, whatever account they are for.
func TestWrongCodesCountTowardTheClientsLoginLimit(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback, func(c *config) { c.maxClientFails, c.mfaMaxFailures = 3, 0 })
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	const attacker = "203.0.113.8"
	for range 3 {
		token := e.challengeFrom(t, clientNo(0), email)
		e.verifyMFA(t, map[string]string{"mfa_token": token, "code": wrongCode(t, secret, e.clock.Now())},
			"X-Forwarded-For", attacker).want(t, 401, "invalid_code")
	}
	other, _, _ := e.user(t)
	e.loginFrom(t, attacker, other, "correct horse battery").want(t, 429, "too_many_attempts")
	e.loginFrom(t, clientNo(1), other, "correct horse battery").want(t, 200, "")
}
