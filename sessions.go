package main

// sessions.go keeps login sessions: their start, refresh rotation, step-up, logout and end.

import (
	"context"
	"errors"
	"log/slog"
	"net/http"
	"net/netip"
	"time"
)

// sessionKeeper starts, refreshes and ends login sessions. A session is a record in the database
// (see Session) and the sid inside every token of one login; it ends with a blacklist entry for
// the sid, which the token check reads from memory and refresh from the database.
type sessionKeeper struct {
	store interface {
		sessionStore
		revocationStore
		userStore
	}
	tokens  *tokens
	revs    *revocations
	metrics *metrics
	log     *slog.Logger
	maxAge  time.Duration // SESSION_MAX_AGE; 0 for no limit
	reuse   time.Duration // REFRESH_REUSE_INTERVAL
	// answerBy bounds a refresh's database work: the first use of a refresh token is answered
	// (with tokens or with 503) by the time of its claim plus answerBy. The longest one database
	// call may take: the driver's timeout.
	answerBy time.Duration
	// cookieTTL is how long a cookie session lasts (PORTAL_SESSION_TTL), its cookie with it.
	cookieTTL time.Duration
}

// start begins a session for u, logging in from ip with userAgent at level lvl, and issues its
// first tokens.
func (k *sessionKeeper) start(ctx context.Context, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error) {
	return k.open(ctx, u, ip, userAgent, lvl).keep()
}

// startAs is start for a session of kind (Session.Kind).
func (k *sessionKeeper) startAs(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (tokenPair, error) {
	return k.openAs(ctx, kind, u, ip, userAgent, lvl).keep()
}

// opening is a session started before its caller knows whether it is to be kept: a login opens
// its session while the password hashes, so that its answer waits on no database write after the
// hash, and a failed login's answer waits on none at all. Its record carries no token until keep
// hands the tokens out; drop removes it.
type opening struct {
	done chan struct{} // closed when the record is written and the account read again
	id   string
	pair tokenPair
	err  error
}

// open writes the record of a session for u and makes its first tokens, without waiting; see
// start. The work goes on if ctx ends, so that a record is either written before drop removes it
// or not at all.
func (k *sessionKeeper) open(ctx context.Context, u *User, ip netip.Addr, userAgent string, lvl level) *opening {
	return k.openAs(ctx, "", u, ip, userAgent, lvl)
}

// openAs is open for a session of kind (Session.Kind): a cookie session ends cookieTTL after it
// began, and its one credential is the cookie.
func (k *sessionKeeper) openAs(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) *opening {
	now := k.tokens.now().UTC().Truncate(time.Millisecond)
	s := &Session{ID: newID(), UserID: u.ID, CreatedAt: now, LastUsedAt: now, IP: ip.String(),
		UserAgent: cut(userAgent, 256), Kind: kind}
	if k.maxAge > 0 {
		s.ExpiresAt = now.Add(k.maxAge)
	}
	if kind == sessionCookie {
		s.ExpiresAt = now.Add(k.cookieTTL)
	}
	o := &opening{done: make(chan struct{}), id: s.ID}
	ctx = context.WithoutCancel(ctx)
	read := *u // the account as the caller read it, whatever the caller changes later (a rehash)
	u = &read
	go func() {
		defer close(o.done)
		o.pair, o.err = k.write(ctx, u, s, lvl)
	}()
	return o
}

// write is open's work: the record of s, then the account read again.
func (k *sessionKeeper) write(ctx context.Context, u *User, s *Session, lvl level) (tokenPair, error) {
	var pair tokenPair
	var err error
	if s.Kind == sessionCookie {
		pair, err = k.cookieOf(u, s, lvl)
	} else {
		first := k.tokens.successor(s.ExpiresAt, lvl)
		s.TokensExpireAt, s.Head = k.tokens.bound(first, s.ExpiresAt), first.ID
		pair, err = k.tokens.pair(u.ID, u.Email, u.EmailVerified, s.ID, first, s.ExpiresAt, s.ExpiresAt, s.client())
	}
	if err != nil {
		return tokenPair{}, err
	}
	if err := k.store.CreateSession(ctx, s); err != nil {
		return tokenPair{}, err
	}
	// The account is read again after the session is written: an operator's disable, a deletion
	// or a password change that came before this read shows here, and one that comes after it
	// lists this session when it ends the user's sessions (see endAll).
	again, err := k.store.UserByID(ctx, u.ID)
	reason, refusal := "", error(nil)
	switch {
	case errors.Is(err, ErrNotFound):
		reason, refusal = endAccountDeleted, errInvalidCredentials
	case err != nil:
		return tokenPair{}, err
	case again.Disabled:
		reason, refusal = endDisabled, errAccountDisabled
	case again.PasswordHash != u.PasswordHash && again.UpgradedFrom != digest(u.PasswordHash):
		// Another hash than the one checked, and not a login's rehash of it: a password change.
		reason, refusal = endPasswordChange, errInvalidCredentials
	}
	if refusal != nil {
		if err := k.end(ctx, s.ID, reason); err != nil {
			return tokenPair{}, err
		}
		return tokenPair{}, refusal
	}
	return pair, nil
}

// startClient begins session sid of client for u at level lvl, as a code's redemption chose its id
// (so that a replay of the code, racing this, ends it), and issues its first tokens.
func (k *sessionKeeper) startClient(ctx context.Context, sid string, u *User, ip netip.Addr, userAgent string, lvl level, client tokenClient) (tokenPair, error) {
	now := k.tokens.now().UTC().Truncate(time.Millisecond)
	s := &Session{ID: sid, UserID: u.ID, CreatedAt: now, LastUsedAt: now, IP: ip.String(),
		UserAgent: cut(userAgent, 256), Kind: sessionOAuth, Client: client.id, Scope: client.scope}
	if k.maxAge > 0 {
		s.ExpiresAt = now.Add(k.maxAge)
	}
	return k.write(ctx, u, s, lvl)
}

// endClient ends every session of user that client holds, for reason; client "" ends those of
// every client.
func (k *sessionKeeper) endClient(ctx context.Context, user, client, reason string) error {
	sessions, err := k.live(ctx, user)
	if err != nil {
		return err
	}
	for _, s := range sessions {
		if s.Kind == sessionOAuth && (client == "" || s.Client == client) {
			if err := k.end(ctx, s.ID, reason); err != nil {
				return err
			}
		}
	}
	return nil
}

// begin is open for a caller that names no type of this file: keep hands the tokens out, drop
// removes the record.
func (k *sessionKeeper) begin(ctx context.Context, kind string, u *User, ip netip.Addr, userAgent string, lvl level) (keep func() (tokenPair, error), drop func()) {
	o := k.openAs(ctx, kind, u, ip, userAgent, lvl)
	return o.keep, func() { k.drop(o) }
}

// keep hands out the session's tokens, or tells why there are none.
func (o *opening) keep() (tokenPair, error) {
	<-o.done
	return o.pair, o.err
}

// drop removes the record of a session whose tokens are not to be handed out, without waiting:
// the login that opened it was refused. A record that cannot be removed names no token, and is
// purged with the ended ones once its tokens would have expired.
func (k *sessionKeeper) drop(o *opening) {
	if o == nil {
		return
	}
	go func() {
		<-o.done
		// Bounded by the driver's timeout, as every call.
		if err := k.store.DeleteSession(context.Background(), o.id); err != nil {
			k.log.Warn("removing the session of a refused login failed", "session_id", o.id, "err", err)
		}
	}()
}

// live lists the sessions of user that have not ended, newest first.
func (k *sessionKeeper) live(ctx context.Context, user string) ([]Session, error) {
	now := k.tokens.now()
	all, err := k.store.SessionsOfUser(ctx, user, now)
	if err != nil || len(all) == 0 {
		return nil, err
	}
	ids := make([]string, len(all))
	for i, s := range all {
		ids[i] = sidPrefix + s.ID
	}
	ended, err := k.store.RevokedAmong(ctx, now, ids...)
	if err != nil {
		return nil, err
	}
	var out []Session
	for _, s := range all {
		if !ended[sidPrefix+s.ID] && !k.revs.revoked("", s.ID) &&
			(s.ExpiresAt.IsZero() || now.Before(s.ExpiresAt)) {
			out = append(out, s)
		}
	}
	return out, nil
}

// endAll ends every session of user but except ("" for none), and tells how many it ended.
func (k *sessionKeeper) endAll(ctx context.Context, user, except, reason string) (int, error) {
	sessions, err := k.live(ctx, user)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, s := range sessions {
		if s.ID == except {
			continue
		}
		if err := k.end(ctx, s.ID, reason); err != nil {
			return n, err
		}
		n++
	}
	return n, nil
}

// endCookies ends every cookie session of user, for reason: a cookie's claims are signed once
// and never refreshed, so a change they carry (the address) needs a new sign-in.
func (k *sessionKeeper) endCookies(ctx context.Context, user, reason string) error {
	sessions, err := k.live(ctx, user)
	if err != nil {
		return err
	}
	for _, s := range sessions {
		if s.Kind != sessionCookie {
			continue
		}
		if err := k.end(ctx, s.ID, reason); err != nil {
			return err
		}
	}
	return nil
}

// alive checks with the database, not this instance's copy of the blacklist, that the session of
// the access token c has not ended: for the requests that change an account.
func (k *sessionKeeper) alive(ctx context.Context, c *claims) error {
	return k.checkNotRevoked(ctx, c, k.tokens.now())
}

// current is alive, and for a refresh token also that it is its session's newest, not one
// exchanged already: only a token the session's holder still has may end the user's other
// sessions. A leaked copy of a retired one may not.
func (k *sessionKeeper) current(ctx context.Context, c *claims) error {
	if err := k.alive(ctx, c); err != nil || (c.Use != useRefresh && c.Use != useOAuthRefresh) {
		return err
	}
	s, err := k.store.SessionByID(ctx, c.Session)
	switch {
	case errors.Is(err, ErrNotFound):
		return errTokenRevoked
	case err != nil:
		return err
	case s.Head != c.ID:
		return errTokenRetired
	}
	return nil
}

// refresh exchanges the refresh token c, of a session that ends at end (zero for never), for the
// next pair of its session. The first use of a token gets a new successor; the same token
// presented again within the reuse interval (another tab, or a client retrying) gets that very
// successor again, so that a session is only ever one chain; presented after it, the token is a
// stolen copy or was stolen, and the session ends.
//
// It reads, decides, then writes: four commands, the claim and the read of the address side by
// side, then the session's record and the blacklist.
func (k *sessionKeeper) refresh(ctx context.Context, c *claims, end time.Time) (tokenPair, refreshOutcome, error) {
	ctx, cancel := context.WithTimeout(ctx, k.answerBy)
	defer cancel()
	now := k.tokens.now()
	if !end.IsZero() && !now.Before(end) {
		return tokenPair{}, 0, errSessionExpired
	}
	next := k.tokens.successor(end, c.level())
	bound := k.tokens.bound(next, end) // the latest this refresh can make any token of the session live

	// Read the claim of c, and beside it the address the new tokens carry: a verified or changed
	// one shows from the next refresh on, and should the read fail they keep what c says.
	email, verified, read := c.Email, c.EmailVerified, make(chan struct{})
	go func() {
		defer close(read)
		if e, v, err := k.store.EmailOf(ctx, c.Subject); err == nil {
			email, verified = e, v
		}
	}()
	first, won, err := k.store.ClaimRefresh(ctx, RefreshUse{JTI: c.ID, UsedAt: now,
		ExpiresAt: k.tokens.until(c.expiresAt()), Next: next, Bound: bound})
	if err != nil {
		return tokenPair{}, 0, err
	}

	outcome, tokensEnd := k.judge(first, won, now), end
	if outcome == refreshReuseGrace {
		// The first use's successor again, and an access token that lives no longer than the
		// first use's tokens, whose expiry that use wrote: a repeat writes nothing.
		next, tokensEnd = first.Next, earliest(end, first.Bound.Add(-k.tokens.leeway))
	}

	// Only the claim's winner writes the session's record: its tokens' expiry (raised to bound)
	// and its newest refresh token, which step-up starts from. A session's winners come one after
	// another (each needs the token the one before answered), so the record never sees two writes
	// at once: FerretDB applies neither $max nor two concurrent $set of one document atomically.
	// It is written before the blacklist is read: a session ended meanwhile either shows there, or
	// its ender reads the new expiry and makes its entry outlast these tokens (see end).
	if won {
		err := k.store.TouchSession(ctx, c.Session, now, bound, next.ID)
		if errors.Is(err, ErrNotFound) {
			return tokenPair{}, 0, errTokenRevoked
		} else if err != nil {
			return tokenPair{}, 0, err
		}
	}
	// The blacklist as the database has it, not this instance's copy. A session ended for another
	// reason first says so, and is not ended again for a reuse.
	revoked, reason, err := k.store.Revoked(ctx, now, jtiPrefix+c.ID, sidPrefix+c.Session)
	if err := notRevoked(revoked, reason, err); err != nil {
		return tokenPair{}, 0, err
	}
	if outcome == refreshReused {
		if err := k.end(ctx, c.Session, endReused); err != nil {
			return tokenPair{}, 0, err
		}
		k.log.LogAttrs(ctx, slog.LevelWarn, "refresh token reused; session revoked",
			slog.String("request_id", requestID(ctx)), slog.String("user_id", c.Subject))
		return tokenPair{}, refreshReused, errTokenReused
	}
	var client *tokenClient
	if c.isOAuth() {
		client = &tokenClient{c.Client, c.Scope}
	}
	<-read
	pair, err := k.tokens.pair(c.Subject, email, verified, c.Session, next, tokensEnd, end, client)
	return pair, outcome, err
}

// judge tells from the claim of a refresh token used at now what this use is: the first (won),
// a repeat within the reuse interval, or a reuse. The interval runs from when the first use's
// answer was due (a lost reply's retry must get the successor), and time the database was out of
// reach does not count: no refresh could be answered then anywhere, and every retry in it was
// answered 503.
func (k *sessionKeeper) judge(first RefreshUse, won bool, now time.Time) refreshOutcome {
	switch {
	case won:
		return refreshRotated
	case now.Before(first.UsedAt.Add(k.answerBy + k.reuse + k.revs.downtime(first.UsedAt, now))):
		return refreshReuseGrace
	}
	return refreshReused
}

// earliest of two session ends, zero meaning none.
func earliest(a, b time.Time) time.Time {
	if a.IsZero() || !b.IsZero() && b.Before(a) {
		return b
	}
	return a
}

// commit finishes step-up's won claim of the session's newest refresh token as refresh finishes
// a won claim: it writes the session's record (next is the new head), then reads the blacklist
// again.
func (k *sessionKeeper) commit(ctx context.Context, c *claims, next string, bound, now time.Time) error {
	if err := k.store.TouchSession(ctx, c.Session, now, bound, next); errors.Is(err, ErrNotFound) {
		return errTokenRevoked
	} else if err != nil {
		return err
	}
	return k.checkNotRevoked(ctx, c, now)
}

// raise moves the session of the access token c to level lvl (step-up). It uses the session's
// newest refresh token as a refresh would, for a successor of level lvl, so that the session stays
// one chain: the client's refresh token then gets that successor within the reuse interval, as
// any used one does.
func (k *sessionKeeper) raise(ctx context.Context, c *claims, lvl level) (tokenPair, error) {
	ctx, cancel := context.WithTimeout(ctx, k.answerBy)
	defer cancel()
	now := k.tokens.now()
	s, err := k.store.SessionByID(ctx, c.Session)
	switch {
	case errors.Is(err, ErrNotFound):
		return tokenPair{}, errTokenRevoked
	case err != nil:
		return tokenPair{}, err
	case s.UserID != c.Subject:
		return tokenPair{}, errTokenInvalid
	case !s.ExpiresAt.IsZero() && !now.Before(s.ExpiresAt):
		return tokenPair{}, errSessionExpired
	case s.Head == "":
		return tokenPair{}, errStepUpRace
	}
	next := k.tokens.successor(s.ExpiresAt, lvl)
	bound := k.tokens.bound(next, s.ExpiresAt)
	// The head's claim lasts as long as any token of the session, the head included.
	_, won, err := k.store.ClaimRefresh(ctx, RefreshUse{JTI: s.Head, UsedAt: now, ExpiresAt: s.TokensExpireAt,
		Next: next, Bound: bound})
	if err != nil {
		return tokenPair{}, err
	}
	if !won {
		return tokenPair{}, errStepUpRace // a refresh used the head meanwhile
	}
	if err := k.commit(ctx, c, next.ID, bound, now); err != nil {
		return tokenPair{}, err
	}
	return k.tokens.pair(c.Subject, c.Email, c.EmailVerified, c.Session, next, s.ExpiresAt, s.ExpiresAt, s.client())
}

// checkNotRevoked asks the database whether c's token or its session was revoked.
func (k *sessionKeeper) checkNotRevoked(ctx context.Context, c *claims, now time.Time) error {
	return notRevoked(k.store.Revoked(ctx, now, jtiPrefix+c.ID, sidPrefix+c.Session))
}

// notRevoked is the refusal for the blacklist's answer about a token and its session: as refusal
// does, it says token_reused for a session ended by a reused token.
func notRevoked(revoked bool, reason string, err error) error {
	switch {
	case err != nil:
		return err
	case revoked && reason == endReused:
		return errTokenReused
	case revoked:
		return errTokenRevoked
	}
	return nil
}

// end ends session sid for reason: its tokens are refused at once here, by every other instance
// within one sync interval, and by refresh everywhere at once. The blacklist entry is written
// first and lasts as long as any token the session issued, whatever token lifetimes the instances
// that issued them had.
func (k *sessionKeeper) end(ctx context.Context, sid, reason string) error {
	now := k.tokens.now()
	rev := Revocation{ID: sidPrefix + sid, ExpiresAt: now.Add(k.tokens.maxTTL()), CreatedAt: now, Reason: reason}
	if err := k.revs.revoke(ctx, rev); err != nil {
		return err
	}
	k.metrics.revoked(rev)
	k.metrics.sessionEnded(reason)
	// Read after the entry is written, so that a refresh's tokens that this read misses were issued
	// by a refresh that sees the entry (and issued nothing after all).
	s, err := k.store.SessionByID(ctx, sid)
	if errors.Is(err, ErrNotFound) {
		return nil
	} else if err != nil {
		return err
	}
	if s.TokensExpireAt.After(rev.ExpiresAt) {
		rev.ExpiresAt = s.TokensExpireAt
		k.revs.add(rev)
		return k.store.ExtendRevocation(ctx, rev.ID, rev.ExpiresAt, now)
	}
	return nil
}

// rotate exchanges the refresh token raw for the next pair of its session (see refresh), and
// counts the outcome. The session's end is learnt first (see sessionEnd).
func (k *sessionKeeper) rotate(ctx context.Context, raw string) (tokenPair, error) {
	c, err := accept(k.tokens, k.revs, raw, useRefresh)
	if err != nil {
		return tokenPair{}, err
	}
	return k.rotateAccepted(ctx, c)
}

// rotateAccepted is rotate for the refresh token c, accepted already: a client's, whose client
// the caller checked.
func (k *sessionKeeper) rotateAccepted(ctx context.Context, c *claims) (tokenPair, error) {
	noteUser(ctx, c.Subject)
	end, err := k.sessionEnd(ctx, c)
	if err != nil {
		return tokenPair{}, err
	}
	pair, outcome, err := k.refresh(ctx, c, end)
	if err == nil || errors.Is(err, errTokenReused) {
		k.metrics.refresh(outcome)
	}
	return pair, err
}

// sessionEnd is when the session of the refresh token c ends (zero for never): as c says, or for
// a token signed before tokens carried it, as the session's record says.
func (k *sessionKeeper) sessionEnd(ctx context.Context, c *claims) (time.Time, error) {
	if end, known := c.sessionEnd(); known {
		return end, nil
	}
	ctx, cancel := context.WithTimeout(ctx, k.answerBy)
	defer cancel()
	s, err := k.store.SessionByID(ctx, c.Session)
	switch {
	case errors.Is(err, ErrNotFound):
		return time.Time{}, errTokenRevoked // ended long ago, and purged
	case err != nil:
		return time.Time{}, err
	}
	return s.ExpiresAt, nil
}

// logout ends the session of the tokens access and refresh (either may be "") for scope "local"
// (or ""), or every other session of their user too ("global"), or every session but theirs
// ("others"). An expired or ended session's token still ends its own session, but only a live one
// ends others: a token that outlived its session (an old copy, a thief's) must not log the user
// out everywhere. That liveness is asked of the database, as refresh does.
func (k *sessionKeeper) logout(ctx context.Context, scope, access, refresh string) error {
	t := k.tokens
	now := t.now()
	var (
		tokensEnded []Revocation
		user        string
	)
	sids := map[string]bool{}
	for _, tok := range []struct{ raw, use string }{{access, useAccess}, {refresh, useRefresh}} {
		if tok.raw == "" {
			continue
		}
		// An expired token is still proof of its session, and logging it out must work.
		c, err := t.parse(tok.raw, tok.use)
		if err != nil && (!errors.Is(err, errTokenExpired) || scope == "others" || scope == "global") {
			return err
		}
		if user != "" && c.Subject != user {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the two tokens are of different users"}
		}
		user = c.Subject
		noteUser(ctx, c.Subject)
		tokensEnded = append(tokensEnded, Revocation{ID: jtiPrefix + c.ID, ExpiresAt: t.until(c.expiresAt()), CreatedAt: now})
		sids[c.Session] = true
		if scope == "others" || scope == "global" {
			if err := k.current(ctx, c); err != nil {
				return err
			}
		}
	}
	if scope != "others" {
		if err := k.revs.revoke(ctx, tokensEnded...); err != nil {
			return err
		}
		k.metrics.revoked(tokensEnded...)
		for sid := range sids {
			if err := k.end(ctx, sid, endLogout); err != nil {
				return err
			}
		}
	}
	if scope == "others" || scope == "global" {
		reason := endLogoutGlobal
		if scope == "others" {
			reason = endLogoutOthers
		}
		live, err := k.live(ctx, user)
		if err != nil {
			return err
		}
		for _, sess := range live {
			if !sids[sess.ID] {
				if err := k.end(ctx, sess.ID, reason); err != nil {
					return err
				}
			}
		}
	}
	return nil
}

// endOwn ends the session id of the user of the access token c, whose own session must be alive.
// Another user's session id is answered as if it did not exist.
func (k *sessionKeeper) endOwn(ctx context.Context, c *claims, id string) error {
	if err := k.alive(ctx, c); err != nil {
		return err
	}
	live, err := k.live(ctx, c.Subject)
	if err != nil {
		return err
	}
	for _, s := range live {
		if s.ID == id {
			return k.end(ctx, id, endByUser)
		}
	}
	return errNoSuchSession
}

// sessionView is what a session looks like from outside.
type sessionView struct {
	ID         string    `json:"id"`
	CreatedAt  time.Time `json:"created_at"`
	LastUsedAt time.Time `json:"last_used_at"`
	IP         string    `json:"ip"`
	UserAgent  string    `json:"user_agent"`
	// Kind is "cookie" for a portal sign-in, "api" for a session of access and refresh tokens,
	// "oauth" for a session of an OpenID client's tokens, whose client Client names.
	Kind   string `json:"kind"`
	Client string `json:"client_id,omitempty"`
}

func viewOf(s Session) sessionView {
	kind := s.Kind
	if kind == "" {
		kind = "api"
	}
	return sessionView{s.ID, s.CreatedAt.UTC(), s.LastUsedAt.UTC(), s.IP, s.UserAgent, kind, s.Client}
}

// cookieOf signs the credential of the cookie session s of u at level lvl: a JWT signed as access
// tokens are, of token_use "cookie", which lives as long as the session (PORTAL_SESSION_TTL). It
// is never renewed: ending the session blacklists its sid until the credential has expired
// (TokensExpireAt, which end reads), so the check needs no database.
func (k *sessionKeeper) cookieOf(u *User, s *Session, lvl level) (tokenPair, error) {
	now := k.tokens.now()
	s.TokensExpireAt = k.tokens.until(s.ExpiresAt)
	raw, err := k.tokens.sign(claims{Subject: u.ID, Email: u.Email, EmailVerified: u.EmailVerified, Session: s.ID,
		Use: useCookie, ID: newID(), IssuedAt: now.Unix(), Expiry: s.ExpiresAt.Unix(), AMR: lvl.AMR, ACR: lvl.ACR})
	if err != nil {
		return tokenPair{}, err
	}
	return tokenPair{cookie: &cookieCredential{value: raw, expires: s.ExpiresAt}}, nil
}
