package main

import (
	"testing"
	"time"
)

// codeAt is the code of the base32 secret for step.
func codeAt(tb testing.TB, secret string, step int64) string {
	tb.Helper()
	raw, err := b32.DecodeString(secret)
	if err != nil {
		tb.Fatal(err)
	}
	return totpCode(raw, step, totpDigits)
}

func stepAt(t time.Time) int64 { return t.Unix() / int64(totpStep/time.Second) }

// RFC 6238 section 5.2: once a code is accepted, no code of its step or an earlier one is.
func TestAnEarlierCodeIsRefusedAfterALaterOneWasAccepted(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	e.clock.Advance(3 * totpStep) // steps no code was used in
	s := stepAt(e.clock.Now())
	e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": codeAt(t, secret, s)}).want(t, 200, "")
	e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": codeAt(t, secret, s-1)}).want(t, 401, "invalid_code")
	e.verifyMFA(t, map[string]string{"code": codeAt(t, secret, s-1)}, "Authorization", "Bearer "+access).want(t, 401, "invalid_code")
	e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": codeAt(t, secret, s+1)}).want(t, 200, "")
}
