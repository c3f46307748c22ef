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

func TestTheOwnerIsMailedWhenTheSecondFactorLimitIsHit(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, trustLoopback)
	const email = "locked@example.com"
	e.signupMailed(t, srv, email)
	access, _ := e.login(t, email, "correct horse battery")
	secret, _ := e.enrolTOTP(t, access)
	srv.next(t, email, nil) // the notice of the new factor
	check := func(t *testing.T, m parsedMail, who string) {
		t.Helper()
		if m.subject != "Your Example App second factor is locked for 5 minutes" {
			t.Fatalf("subject %q", m.subject)
		}
		for _, body := range []string{m.text, m.html} {
			if !strings.Contains(body, who) || !strings.Contains(body, "5 times") || !strings.Contains(body, "for the next 5 minutes") {
				t.Fatalf("the mail does not say who (%q), how often and for how long:\n%s", who, body)
			}
		}
	}

	t.Run("after step-ups in a session", func(t *testing.T) {
		for range e.cfg.mfaMaxFailures {
			e.verifyMFA(t, map[string]string{"code": wrongCode(t, secret, e.clock.Now())}, "Authorization", "Bearer "+access).
				want(t, 401, "invalid_code")
		}
		check(t, srv.next(t, email, nil), "Someone signed in to your Example App account, "+email)
	})
	t.Run("after logins with the password", func(t *testing.T) {
		e.clock.Advance(e.cfg.failureWindow)
		for i := range e.cfg.mfaMaxFailures + 2 {
			r := e.verifyMFA(t, map[string]string{"mfa_token": e.challengeFrom(t, clientNo(i), email), "code": wrongCode(t, secret, e.clock.Now())},
				"X-Forwarded-For", clientNo(i))
			if i < e.cfg.mfaMaxFailures {
				r.want(t, 401, "invalid_code")
			}
			if i == e.cfg.mfaMaxFailures-1 {
				check(t, srv.next(t, email, nil), "Someone who knows the password of your Example App account, "+email)
			}
			if i >= e.cfg.mfaMaxFailures {
				e.lockedOut(t, r)
			}
		}
		e.outboxEmpty(t)
		if n := len(srv.mailsTo(email)); n != 4 {
			t.Fatalf("%d mails to %s, want the verification, the new factor's notice and two lock notices", n, email)
		}
	})
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
