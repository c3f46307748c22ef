package main

// throttle.go limits guessing, with counts in the database that hold across instances and restarts.

import (
	"context"
	"errors"
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
	store  Store
	now    func() time.Time
	window time.Duration
}

// limit is at most max attempts under key within the throttle's window; 0 means no limit, and
// then nothing is recorded.
type limit struct {
	key string
	max int
}

// attempt is one try, recorded under the key of each of its limits.
type attempt struct {
	t         *throttle
	docs      []Attempt
	limits    []int
	others    []int         // how many other attempts check found under each doc's key, up to its limit
	recorded  chan struct{} // closed when the record has landed, or failed with recordErr
	recordErr error
}

// begin counts the other attempts and answers errTooManyAttempts when the limits were reached
// already, recording nothing, so that a throttled client costs reads only. Otherwise it records the
// attempt and returns without waiting for the record to land, so that the work asked for can
// start meanwhile; check, which waits for the record and counts after, decides.
func (t *throttle) begin(ctx context.Context, limits ...limit) (*attempt, error) {
	at := t.now().Truncate(time.Millisecond)
	a := &attempt{t: t, recorded: make(chan struct{})}
	for _, l := range limits {
		if l.max > 0 {
			a.docs = append(a.docs, Attempt{ID: newID(), Key: l.key, At: at, ExpiresAt: at.Add(t.window)})
			a.limits = append(a.limits, l.max)
		}
	}
	if len(a.docs) == 0 {
		close(a.recorded)
		return a, nil
	}
	wait, err := a.ahead(ctx)
	if err != nil {
		return nil, err
	}
	if wait > 0 {
		return nil, errTooManyAttempts.after(wait)
	}
	go func() {
		defer close(a.recorded)
		a.recordErr = t.store.AddAttempts(ctx, a.docs...)
	}()
	return a, nil
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
	wait, err := a.ahead(ctx)
	if err != nil {
		return err
	}
	if wait > 0 {
		a.forget(ctx)
		return errTooManyAttempts.after(wait)
	}
	return nil
}

// ahead is how long until fewer than each limit's worth of other attempts are recorded: until the
// oldest of the newest max leaves the window. Zero when that is so already. It notes how many
// others it found under each key.
func (a *attempt) ahead(ctx context.Context) (time.Duration, error) {
	since := a.docs[0].At.Add(-a.t.window)
	waits := make([]time.Duration, len(a.docs))
	errs := make([]error, len(a.docs))
	a.others = make([]int, len(a.docs))
	var wg sync.WaitGroup
	for i, doc := range a.docs {
		wg.Go(func() {
			var others []time.Time
			others, errs[i] = a.t.store.Attempts(ctx, doc.Key, since, doc.ID, a.limits[i])
			a.others[i] = len(others)
			if len(others) >= a.limits[i] {
				waits[i] = others[a.limits[i]-1].Add(a.t.window).Sub(doc.At)
			}
		})
	}
	wg.Wait()
	return slices.Max(waits), errors.Join(errs...)
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

// succeeded forgets the attempt, and every attempt under the keys in clear. It returns when the
// attempts that check found under those keys are gone, so that the client's next try counts from
// zero; when check found none, at once, and the attempt's own record is removed after. Until then
// it counts as one more attempt, which errs on the safe side.
func (a *attempt) succeeded(ctx context.Context, clear ...string) error {
	for i, doc := range a.docs {
		if slices.Contains(clear, doc.Key) && (a.others == nil || a.others[i] > 0) {
			return a.forget(ctx, clear...)
		}
	}
	go a.forget(ctx, clear...)
	return nil
}

func (a *attempt) ids() []string {
	ids := make([]string, len(a.docs))
	for i, d := range a.docs {
		ids[i] = d.ID
	}
	return ids
}
