package main

// accept.go holds the one rule for accepting a token, which every endpoint that takes one uses.

// accept returns the claims of raw when it is a token of use ("" for either kind) signed by a key
// of the service's, unexpired, and not revoked as far as this instance's copy of the blacklist
// knows; otherwise the error to answer: token_invalid, token_expired, token_revoked, or
// token_reused for a session that a reused refresh token ended. It never waits on the database:
// endpoints that change an account ask the database again (sessionKeeper.alive).
func accept(t *tokens, revs *revocations, raw, use string) (*claims, error) {
	if raw == "" {
		return nil, errTokenMissing
	}
	c, err := t.parse(raw, use)
	if err != nil {
		return nil, err
	}
	if !revs.vouches() {
		return nil, errCannotVouch
	}
	if err := revs.refusal(c.ID, c.Session); err != nil {
		return nil, err
	}
	return c, nil
}
