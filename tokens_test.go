package main

// tokens_test.go makes tokens without the service around them, for tests that need only tokens.

import "time"

// newTokens issues and checks HS256 tokens signed with secret and no audience.
func newTokens(secret []byte, issuer string, accessTTL, refreshTTL, leeway time.Duration, now func() time.Time) *tokens {
	return newTokensWith(newHMACKeyring(secret, nil), issuer, "", accessTTL, refreshTTL, leeway, now)
}

// issue signs an access and a refresh token for user in login session sid, with no session end.
func (t *tokens) issue(userID, email, sid string) (tokenPair, error) {
	return t.pair(userID, email, false, sid, t.successor(time.Time{}, levelPassword), time.Time{}, time.Time{}, nil)
}
