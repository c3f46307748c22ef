package main

// throttle.go limits guessing, with counts in the database that hold across instances and restarts.

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// throttle limits guessing, in the manner of Authelia's regulation, with the counts in the
// database so that they hold across instances and restarts. Every attempt is recorded, and only
// then are the other attempts under its key counted; the work it asks for (a password hash, a
// sign-up) is used only when fewer than max are found. Of any attempts that all go ahead, the
// last to count saw every other one, as each recorded itself before it counted: so however many
// requests arrive at once, on however many instances, at most max go ahead within the window.
// (Under a burst, fewer may: attempts that are refused count while they are being refused.) An
// attempt that turns out well is forgotten again; one that fails stays, and is the failure that
// counts.
type throttle struct {
	store  attemptStore
	now    func() time.Time
	window time.Duration
}

// limit is at most max attempts under key within the throttle's window; 0 means no limit, and
// then nothing is recorded.
type limit struct {
	key string
	max int
	// A success forgets every attempt under key (see succeeded).
	forgive bool
	// The window of this limit when not zero, instead of the throttle's.
	window time.Duration
	// What a refused attempt is answered when this limit is reached; errTooManyAttempts with its
	// Retry-After when nil.
	refuse error
}

// attempt is one try, recorded under the key of each of its limits.
type attempt struct {
	t         *throttle
	docs      []Attempt
	limits    []limit
	others    []int         // how many other attempts check found under each doc's key, up to its limit
	recorded  chan struct{} // closed when the record has landed, or failed with recordErr
	recordErr error
}

// begin counts the other attempts and answers errTooManyAttempts when the limits were reached
// already, recording nothing, so that a throttled client costs reads only. Otherwise it records the
// attempt and returns without waiting for the record to land, so that the work asked for can
// start meanwhile; check, which waits for the record and counts after, decides.
func (t *throttle) begin(ctx context.Context, limits ...limit) (*attempt, error) {
	a, err := t.attemptOf(ctx, limits)
	if err != nil {
		return nil, err
	}
	if len(a.docs) == 0 {
		close(a.recorded)
		return a, nil
	}
	go func() {
		defer close(a.recorded)
		a.recordErr = t.store.AddAttempts(ctx, a.docs...)
	}()
	return a, nil
}

// attemptOf is an attempt under limits, not recorded yet, or the refusal when the limits were
// reached already (see ahead).
func (t *throttle) attemptOf(ctx context.Context, limits []limit) (*attempt, error) {
	at := t.now().Truncate(time.Millisecond)
	a := &attempt{t: t, recorded: make(chan struct{})}
	for _, l := range limits {
		if l.max > 0 {
			if l.window == 0 {
				l.window = t.window
			}
			a.docs = append(a.docs, Attempt{ID: newID(), Key: l.key, At: at, ExpiresAt: at.Add(l.window)})
			a.limits = append(a.limits, l)
		}
	}
	if len(a.docs) == 0 {
		return a, nil
	}
	refused, err := a.ahead(ctx)
	if err == nil {
		err = refused
	}
	if err != nil {
		return nil, err
	}
	return a, nil
}

// ifFailed is an attempt recorded only once it has failed (recordFailure), for work that costs
// little and guards no guessable secret: a busy client's successes in flight would otherwise
// count, and refuse its burst. It answers errTooManyAttempts when the limits are reached already.
// Failures at the same time may pass a limit by as many as run at once.
func (t *throttle) ifFailed(ctx context.Context, limits ...limit) (*attempt, error) {
	a, err := t.attemptOf(ctx, limits)
	if err != nil {
		return nil, err
	}
	close(a.recorded)
	return a, nil
}

// recordFailure records an ifFailed attempt under the keys given, or all of its keys when none are.
func (a *attempt) recordFailure(ctx context.Context, keys ...string) error {
	var docs []Attempt
	for _, d := range a.docs {
		if len(keys) == 0 || slices.Contains(keys, d.Key) {
			docs = append(docs, d)
		}
	}
	if len(docs) == 0 {
		return nil
	}
	return a.t.store.AddAttempts(context.WithoutCancel(ctx), docs...)
}

// passed ends an ifFailed attempt that succeeded: the failures it found under the keys of its
// limits that forgive are forgotten.
func (a *attempt) passed(ctx context.Context) error {
	var clear []string
	for i, doc := range a.docs {
		if a.limits[i].forgive && a.others != nil && a.others[i] > 0 {
			clear = append(clear, doc.Key)
		}
	}
	if len(clear) == 0 {
		return nil
	}
	return a.t.store.ForgetAttempts(context.WithoutCancel(ctx), nil, clear...)
}

// written waits for the attempt's record to land.
func (a *attempt) written() error {
	<-a.recorded
	return a.recordErr
}

// check answers errTooManyAttempts, and forgets the attempt, when a limit's worth of other
// attempts are recorded within the window.
func (a *attempt) check(ctx context.Context) error {
	if len(a.docs) == 0 {
		return nil
	}
	if err := a.written(); err != nil {
		return err
	}
	refused, err := a.ahead(ctx)
	if err != nil {
		return err
	}
	if refused != nil {
		a.forget(ctx)
		return refused
	}
	return nil
}

// ahead answers nil when fewer than each limit's worth of other attempts are recorded within its
// window. Otherwise it answers the refusal: the refuse error of the first limit reached that has
// one, or errTooManyAttempts after the time until the oldest of the newest max leaves the window.
// It notes how many others it found under each key.
func (a *attempt) ahead(ctx context.Context) (refused error, err error) {
	waits := make([]time.Duration, len(a.docs))
	errs := make([]error, len(a.docs))
	a.others = make([]int, len(a.docs))
	var wg sync.WaitGroup
	for i, doc := range a.docs {
		wg.Go(func() {
			l, window := a.limits[i], doc.ExpiresAt.Sub(doc.At)
			var others []time.Time
			others, errs[i] = a.t.store.Attempts(ctx, doc.Key, doc.At.Add(-window), doc.ID, l.max)
			a.others[i] = len(others)
			if len(others) >= l.max {
				waits[i] = max(others[l.max-1].Add(window).Sub(doc.At), time.Millisecond)
			}
		})
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	for i, l := range a.limits {
		if waits[i] > 0 && l.refuse != nil {
			return l.refuse, nil
		}
	}
	if wait := slices.Max(waits); wait > 0 {
		return errTooManyAttempts.after(wait), nil
	}
	return nil, nil
}

// failures is how many attempts under key check found within the window, this one included.
func (a *attempt) failures(key string) int {
	for i, doc := range a.docs {
		if doc.Key == key && a.others != nil {
			return a.others[i] + 1
		}
	}
	return 0
}

// forget removes the attempt, and with it every attempt under the keys in clear: it was refused
// before it did anything, could not go ahead, or succeeded. A failure to remove it leaves it
// counted, which errs on the safe side. Its removal is bounded by the driver's timeout, whatever
// ctx.
func (a *attempt) forget(ctx context.Context, clear ...string) error {
	if len(a.docs) == 0 {
		return nil
	}
	a.written()
	return a.t.store.ForgetAttempts(context.WithoutCancel(ctx), a.ids(), clear...)
}

// succeeded forgets the attempt, and every attempt under the keys of its limits that forgive. It
// returns when the attempts that check found under those keys are gone, so that the client's next
// try counts from zero; when check found none, at once, and only the attempt's own record is
// removed after: a removal that ran late must not take failures that came after the success.
// Until then it counts as one more attempt, which errs on the safe side.
func (a *attempt) succeeded(ctx context.Context) error {
	var clear []string
	wait := false
	for i, doc := range a.docs {
		if a.limits[i].forgive {
			clear = append(clear, doc.Key)
			wait = wait || a.others == nil || a.others[i] > 0
		}
	}
	if wait {
		return a.forget(ctx, clear...)
	}
	go a.forget(ctx)
	return nil
}

func (a *attempt) ids() []string {
	ids := make([]string, len(a.docs))
	for i, d := range a.docs {
		ids[i] = d.ID
	}
	return ids
}

// loginLimits is the one home of the limits on guessing an account's secrets: which keys a
// password or a second factor counts under, and how many failures each allows.
type loginLimits struct {
	throttle *throttle
	// Wrong passwords within the throttle's window: for one account from one client, so that an
	// attacker cannot lock a user out of their own client, and from one client for any accounts.
	maxAccount, maxClient int
	// Wrong second factors within the window, for one account from every client: who sends them
	// knows the password or holds a session, so the account itself is what is guarded.
	maxFactor int
	// Wrong answers to one login's challenge within challengeWindow, after which it is dead.
	maxChallenge    int
	challengeWindow time.Duration
}

// loginKeys are the throttle's keys for a login as email from client.
func loginKeys(client netip.Addr, email string) (account, clientKey string) {
	c := clientPrefix(client)
	return "login|" + c + "|" + email, "login|" + c
}

// factorKey is the key of the wrong second factors of account user; challengeKey of the wrong
// answers to one login's challenge.
func factorKey(user string) string  { return "factor|" + user }
func challengeKey(id string) string { return "challenge|" + id }

// password begins a try at email's password from client (see throttle.begin). Its success forgets
// the account's failures from that client.
func (g *loginLimits) password(ctx context.Context, client netip.Addr, email string) (*attempt, error) {
	account, clientKey := loginKeys(client, email)
	return g.throttle.begin(ctx, limit{key: account, max: g.maxAccount, forgive: true}, limit{key: clientKey, max: g.maxClient})
}

// factor begins a try at user's second factor from client, any kind of factor: it counts toward
// the account's limit, which a right password does not clear, and the client's login limit. With
// a challenge (the id of a login's, "" in a session), also toward the challenge's own limit: a
// challenge that reached it is dead, and answered errTokenInvalid. Its success forgets the
// account's factor failures: they are there to stop someone without the factor, who never
// succeeds, and the factor's owner has just shown it.
func (g *loginLimits) factor(ctx context.Context, client netip.Addr, user, challenge string) (*attempt, error) {
	_, clientKey := loginKeys(client, "")
	limits := []limit{{key: factorKey(user), max: g.maxFactor, forgive: true}, {key: clientKey, max: g.maxClient}}
	if challenge != "" {
		limits = append(limits, limit{key: challengeKey(challenge), max: g.maxChallenge, window: g.challengeWindow,
			refuse: errTokenInvalid})
	}
	return g.throttle.begin(ctx, limits...)
}

// ceremony begins a passkey sign-in from client that names no session (discoverable, or with an
// address): its begin writes the ceremony. Begins count toward the client's limit of unfinished
// ceremonies, LOGIN_MAX_CLIENT_FAILURES within the window; one that signs in is forgotten
// (forgetCeremony).
func (g *loginLimits) ceremony(ctx context.Context, client netip.Addr) (*attempt, error) {
	try, err := g.throttle.begin(ctx, limit{key: "ceremony|" + clientPrefix(client), max: g.maxClient})
	if err == nil {
		err = try.check(ctx)
	}
	if err != nil {
		return nil, err
	}
	return try, nil
}

// forgetCeremony forgets the begin of a ceremony that signed in: the attempt id ceremony noted.
func (g *loginLimits) forgetCeremony(ctx context.Context, id string) error {
	if id == "" {
		return nil
	}
	return g.throttle.store.ForgetAttempts(context.WithoutCancel(ctx), []string{id})
}

// client begins a try from client that names no account (a passkey that is nobody's, or not the
// account's it was asked for): it counts toward the client's login limit only.
func (g *loginLimits) client(ctx context.Context, client netip.Addr) (*attempt, error) {
	_, clientKey := loginKeys(client, "")
	return g.throttle.begin(ctx, limit{key: clientKey, max: g.maxClient})
}
