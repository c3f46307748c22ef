package main

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"strings"
	"testing"
)

// Mail links, second-factor challenges and recovery codes are looked up by the hex SHA-256 of what
// the client holds, worked out here apart from the service's code: were that digest to change, every
// link, challenge and code stored before it would stop working.
func TestStoredTokensAreFoundByTheHexSHA256OfWhatTheClientHolds(t *testing.T) {
	t.Parallel()
	hexSHA256 := func(s string) string {
		sum := sha256.Sum256([]byte(s))
		return hex.EncodeToString(sum[:])
	}
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	ctx := context.Background()
	const email = "digests@example.com"
	_, link := e.signupMailed(t, srv, email).link(t)
	access, _ := e.login(t, email, "correct horse battery")
	user, _ := e.claimsOf(t, access)["sub"].(string)
	_, recovery := e.enrolTOTP(t, access)
	challenge := e.loginMFA(t, email)
	for what, lookUp := range map[string]func() error{
		"the mailed link's token": func() error {
			_, err := e.store.MailTokenByDigest(ctx, hexSHA256(link))
			return err
		},
		"the second-factor challenge": func() error {
			_, err := e.store.MFAChallenge(ctx, hexSHA256(challenge))
			return err
		},
		"a recovery code": func() error {
			return e.store.UseRecoveryCode(ctx, user, hexSHA256("recovery:"+strings.ReplaceAll(recovery[0], "-", "")))
		},
	} {
		if err := lookUp(); err != nil {
			t.Errorf("%s is not found by the hex SHA-256 of its text: %v", what, err)
		}
	}
}
