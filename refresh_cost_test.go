package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// commandLog records the database commands a service sends, as "name collection", counted by the
// driver's own command monitor.
type commandLog struct {
	mu       sync.Mutex
	counting bool
	last     time.Time
	sent     []string
}

func (l *commandLog) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{Started: func(_ context.Context, ev *event.CommandStartedEvent) {
		coll, _ := ev.Command.Index(0).Value().StringValueOK()
		l.mu.Lock()
		defer l.mu.Unlock()
		l.last = time.Now()
		if l.counting {
			l.sent = append(l.sent, ev.CommandName+" "+coll)
		}
	}}
}

// during returns the commands sent while f runs, once the service has been quiet for a while: a
// login's last writes go on after its answer.
func (l *commandLog) during(tb testing.TB, f func()) []string {
	tb.Helper()
	waitFor(tb, "the service to send no command for 300ms", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return time.Since(l.last) > 300*time.Millisecond
	})
	l.mu.Lock()
	l.counting, l.sent = true, nil
	l.mu.Unlock()
	f()
	l.mu.Lock()
	defer l.mu.Unlock()
	l.counting = false
	return l.sent
}

// newMonitoredEnv is a service whose database commands l sees.
func newMonitoredEnv(tb testing.TB, l *commandLog) *testEnv {
	tb.Helper()
	client, err := mongo.Connect(mongoOptions(testMongoURI).SetMonitor(l.monitor()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Disconnect(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := newMetrics()
	store, err := newMongoStore(ctx, client.Database(newTestDB(tb).Name()), m)
	if err != nil {
		tb.Fatal(err)
	}
	return serveTestEnv(tb, testConfig(tb), store, m)
}

// A refresh that rotates its token sends four commands: the claim of the token and the read of
// the account's address side by side, then the session's record and the blacklist.
func TestARefreshSendsFourDatabaseCommands(t *testing.T) {
	t.Parallel()
	var l commandLog
	e := newMonitoredEnv(t, &l)
	_, _, refresh := e.user(t)
	var next string
	sent := l.during(t, func() { next = e.refresh(t, refresh).want(t, 200, "").str("refresh_token") })
	if len(sent) > 4 {
		t.Fatalf("a refresh sent %d commands, want at most 4: %q", len(sent), sent)
	}
	t.Logf("a refresh sent %d commands: %q", len(sent), sent)
	// The chain goes on: the successor rotates too, as cheaply.
	if sent := l.during(t, func() { e.refresh(t, next).want(t, 200, "") }); len(sent) > 4 {
		t.Fatalf("the next refresh sent %d commands: %q", len(sent), sent)
	}
}
