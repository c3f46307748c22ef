package main

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
)

// Every "exactly one wins" and "none lost" in the store, raced by many goroutines over many
// rounds. A store built on a guarded update or an $inc would pass some rounds and fail others,
// and more often on one of FerretDB's backends than the other (BENCHMARKS.md): CI runs this file
// on both, SQLite and PostgreSQL.
const racers = 32

// rounds is how many times each race is run. Under the race detector every call is several
// times slower (FerretDB runs in this process, instrumented too), and what the detector looks
// for, unsynchronised memory in this process, shows in a few rounds; the full count, which
// catches a race the database loses now and then, runs without it on both backends.
func rounds() int {
	if raceDetector {
		return 5
	}
	return 20
}

// race runs f(0) ... f(n-1) at once, each in its own goroutine released by one signal, and
// returns when all have returned.
func race(n int, f func(i int)) {
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			f(i)
		}()
	}
	close(start)
	wg.Wait()
}

func TestRacingStoreCalls(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		round func(t *testing.T, s *mongoStore, round int)
	}{
		{"exactly one of many simultaneous first uses of a refresh token wins, and the rest see its time", raceClaimRefresh},
		{"exactly one of many simultaneous accounts with one email is created, and the rest are duplicates", raceCreateUser},
		{"simultaneous revocations of the same entries all succeed and record each entry once", raceRevoke},
		{"simultaneous attempts are all counted", raceAddAttempts},
		{"exactly one of many simultaneous uses of one TOTP step wins", raceClaimStep},
		{"exactly one of many simultaneous uses of one recovery code wins", raceUseRecoveryCode},
		{"exactly one of many simultaneous uses of one login challenge wins", raceConsumeMFAChallenge},
		{"exactly one of many simultaneous activations of a second factor wins", raceActivateTOTP},
		{"a disable or enable holds against simultaneous writes to the same account", raceDisable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := newMongoStore(t.Context(), newTestDB(t), nil)
			if err != nil {
				t.Fatal(err)
			}
			n := rounds()
			for r := range n {
				tt.round(t, s, r)
				if t.Failed() {
					t.Fatalf("round %d of %d failed", r+1, n)
				}
			}
		})
	}
}

func raceClaimRefresh(t *testing.T, s *mongoStore, round int) {
	ctx := t.Context()
	jti := fmt.Sprintf("jti-%d-%s", round, newID())
	base := time.Now().Truncate(time.Millisecond)
	var (
		won   [racers]bool
		first [racers]RefreshUse
		errs  [racers]error
	)
	// Each racer claims with a successor of its own, so a loser's answer tells which claim it
	// lost to.
	race(racers, func(i int) {
		at := base.Add(time.Duration(i) * time.Millisecond)
		first[i], won[i], errs[i] = s.ClaimRefresh(ctx, RefreshUse{JTI: jti, UsedAt: at, ExpiresAt: at.Add(time.Hour),
			Next: Successor{ID: fmt.Sprintf("next-%d", i)}})
	})
	winner := -1
	for i := range racers {
		switch {
		case unknownOutcome(t, i, errs[i]):
			continue
		case errs[i] != nil:
			t.Errorf("racer %d: %v", i, errs[i])
		}
		if won[i] {
			if winner >= 0 {
				t.Fatalf("racers %d and %d both won the first use of one refresh token", winner, i)
			}
			winner = i
		}
	}
	if winner < 0 {
		for i := range racers {
			if errs[i] != nil {
				return // the winner may be the racer the store did not answer
			}
		}
		t.Fatal("no racer won the first use of a refresh token")
	}
	for i := range racers {
		if errs[i] == nil && !won[i] && (first[i].Next.ID != first[winner].Next.ID || !first[i].UsedAt.Equal(first[winner].UsedAt)) {
			t.Errorf("racer %d lost to a use for %s at %v, but the winner recorded %s at %v", i,
				first[i].Next.ID, first[i].UsedAt, first[winner].Next.ID, first[winner].UsedAt)
		}
	}
}

func raceCreateUser(t *testing.T, s *mongoStore, round int) {
	ctx := t.Context()
	email := fmt.Sprintf("race-%d-%s@example.com", round, newID()[:8])
	var (
		ids  [racers]string
		errs [racers]error
	)
	race(racers, func(i int) {
		ids[i] = newID()
		errs[i] = s.CreateUser(ctx, &User{ID: ids[i], Email: email, PasswordHash: "x", CreatedAt: time.Now()})
	})
	created, unanswered := []string{}, false
	for i, err := range errs {
		switch {
		case unknownOutcome(t, i, err):
			unanswered = true
		case err == nil:
			created = append(created, ids[i])
		case !errors.Is(err, ErrDuplicate):
			t.Errorf("racer %d: %v, want nil or ErrDuplicate", i, err)
		}
	}
	if unanswered && len(created) == 0 {
		return // the one created may be the unanswered racer's
	}
	if len(created) != 1 {
		t.Fatalf("%d accounts created with one email, want 1", len(created))
	}
	u, err := s.UserByEmail(ctx, email)
	if err != nil {
		t.Fatal(err)
	}
	if u.ID != created[0] {
		t.Fatalf("the stored account is %s, but the one whose creation succeeded is %s", u.ID, created[0])
	}
	if n, err := s.users.CountDocuments(ctx, bson.D{{Key: "email", Value: email}}); err != nil || n != 1 {
		t.Fatalf("%d accounts stored with one email (%v), want 1", n, err)
	}
}

func raceRevoke(t *testing.T, s *mongoStore, round int) {
	ctx := t.Context()
	now := time.Now().Truncate(time.Millisecond)
	prefix := fmt.Sprintf("r%d-%s-", round, newID()[:8])
	shared := []Revocation{
		{ID: "jti:" + prefix + "access", ExpiresAt: now.Add(time.Hour), CreatedAt: now},
		{ID: "sid:" + prefix + "session", ExpiresAt: now.Add(time.Hour), CreatedAt: now},
	}
	own := make([]string, racers)
	for i := range own {
		own[i] = fmt.Sprintf("jti:%sown-%d", prefix, i)
	}
	var errs [racers]error
	// Every racer revokes the shared entries and one of its own: the entries already taken
	// must neither fail the call nor keep its own entry out.
	race(racers, func(i int) {
		mine := Revocation{ID: own[i], ExpiresAt: now.Add(time.Hour), CreatedAt: now}
		errs[i] = s.Revoke(ctx, append([]Revocation{mine}, shared...)...)
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("racer %d: %v", i, err)
		}
	}
	for _, r := range shared {
		if n, err := s.blacklist.CountDocuments(ctx, bson.D{{Key: "_id", Value: r.ID}}); err != nil || n != 1 {
			t.Fatalf("%s recorded %d times (%v), want once", r.ID, n, err)
		}
	}
	filter := bson.D{{Key: "_id", Value: bson.D{{Key: "$in", Value: own}}}}
	if n, err := s.blacklist.CountDocuments(ctx, filter); err != nil || n != racers {
		t.Fatalf("%d of the racers' own entries recorded (%v), want %d", n, err, racers)
	}
	for _, id := range []string{shared[0].ID, shared[1].ID, own[racers-1]} {
		if revoked, _, err := s.Revoked(ctx, now, id); err != nil || !revoked {
			t.Fatalf("Revoked(%s) = %v, %v; want true", id, revoked, err)
		}
	}
}

func raceAddAttempts(t *testing.T, s *mongoStore, round int) {
	ctx := t.Context()
	now := time.Now().Truncate(time.Millisecond)
	key := fmt.Sprintf("key-%d-%s", round, newID()[:8])
	var errs [racers]error
	race(racers, func(i int) {
		errs[i] = s.AddAttempts(ctx, Attempt{ID: newID(), Key: key, At: now, ExpiresAt: now.Add(time.Hour)})
	})
	for i, err := range errs {
		if err != nil {
			t.Errorf("racer %d: %v", i, err)
		}
	}
	got, err := s.Attempts(ctx, key, now.Add(-time.Second), "", racers+1)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != racers {
		t.Fatalf("%d attempts counted for %s, want %d", len(got), key, racers)
	}
}

// exactlyOne fails unless exactly one of errs is nil and every other is lost. A racer the store
// did not answer in time may have been the winner, so with one of those, none winning passes.
func exactlyOne(t *testing.T, errs []error, lost error) {
	t.Helper()
	won, unanswered := 0, false
	for i, err := range errs {
		switch {
		case unknownOutcome(t, i, err):
			unanswered = true
		case err == nil:
			won++
		case !errors.Is(err, lost):
			t.Errorf("racer %d: %v, want nil or %v", i, err, lost)
		}
	}
	if won > 1 || won == 0 && !unanswered {
		t.Fatalf("%d racers won, want 1", won)
	}
}

// unknownOutcome says whether racer i's call ended without the store's answer (ErrUnavailable:
// FerretDB on PostgreSQL under the race detector, at a checkpoint), and logs it. Such a racer is
// no witness either way: its write may or may not have happened. The other racers still are.
func unknownOutcome(t *testing.T, i int, err error) bool {
	t.Helper()
	if !errors.Is(err, ErrUnavailable) {
		return false
	}
	t.Logf("racer %d: %v", i, err)
	return true
}

func raceClaimStep(t *testing.T, s *mongoStore, round int) {
	user, step := newID(), int64(round)
	errs := make([]error, racers)
	race(racers, func(i int) { errs[i] = s.ClaimStep(t.Context(), user, step, time.Now().Add(time.Hour)) })
	exactlyOne(t, errs, ErrDuplicate)
}

func raceUseRecoveryCode(t *testing.T, s *mongoStore, round int) {
	user := newID()
	if err := s.SetRecoveryCodes(t.Context(), user, []string{"code-" + user, "other-" + user}); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, racers)
	race(racers, func(i int) { errs[i] = s.UseRecoveryCode(t.Context(), user, "code-"+user) })
	exactlyOne(t, errs, ErrNotFound)
	if err := s.UseRecoveryCode(t.Context(), user, "other-"+user); err != nil {
		t.Fatalf("the other code: %v", err)
	}
}

func raceConsumeMFAChallenge(t *testing.T, s *mongoStore, round int) {
	id := newID()
	if err := s.CreateMFAChallenge(t.Context(), MFAChallenge{ID: id, UserID: "u", ExpiresAt: time.Now().Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	errs := make([]error, racers)
	race(racers, func(i int) { errs[i] = s.ConsumeMFAChallenge(t.Context(), id) })
	exactlyOne(t, errs, ErrNotFound)
}

func raceActivateTOTP(t *testing.T, s *mongoStore, round int) {
	user := newID()
	errs := make([]error, racers)
	race(racers, func(i int) {
		errs[i] = s.ActivateTOTP(t.Context(), TOTPFactor{ID: user, UserID: user, Secret: []byte{byte(i)}, CreatedAt: time.Now()})
	})
	exactlyOne(t, errs, ErrDuplicate)
}

// raceDisable disables (even rounds) or enables (odd) an account while the account's other fields
// are written at the same moment: a password change or a login's hash upgrade, an email
// verification. On FerretDB, which writes a whole document back for each update, a flag kept in
// the account's document would be lost to them in about every round.
func raceDisable(t *testing.T, s *mongoStore, round int) {
	ctx := t.Context()
	u := &User{ID: newID(), Email: fmt.Sprintf("disable-%d-%s@example.com", round, newID()[:8]), PasswordHash: "h", CreatedAt: time.Now()}
	if err := s.CreateUser(ctx, u); err != nil {
		t.Fatal(err)
	}
	want := round%2 == 0
	if !want {
		if err := s.SetDisabled(ctx, u.ID, true); err != nil {
			t.Fatal(err)
		}
	}
	errs := make([]error, racers)
	race(racers, func(i int) {
		switch i % 4 {
		case 0:
			errs[i] = s.SetDisabled(ctx, u.ID, want)
		case 1:
			errs[i] = s.SetPasswordHash(ctx, u.ID, fmt.Sprintf("h%d", i))
		case 2:
			errs[i] = s.SetEmailVerified(ctx, u.ID, u.Email)
		case 3:
			if err := s.UpgradePasswordHash(ctx, u.ID, "h", fmt.Sprintf("u%d", i)); !errors.Is(err, ErrNotFound) {
				errs[i] = err
			}
		}
	})
	set := false // whether a racer that set the flag was answered
	for i, err := range errs {
		switch {
		case unknownOutcome(t, i, err):
		case err != nil:
			t.Errorf("racer %d: %v", i, err)
		case i%4 == 0:
			set = true
		}
	}
	if !set {
		return
	}
	for _, read := range []func() (*User, error){
		func() (*User, error) { return s.UserByID(ctx, u.ID) },
		func() (*User, error) { return s.UserByEmail(ctx, u.Email) },
	} {
		got, err := read()
		if err != nil {
			t.Fatal(err)
		}
		if got.Disabled != want {
			t.Fatalf("disabled %v after setting it to %v while the account was written", got.Disabled, want)
		}
	}
}
