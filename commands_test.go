package main

import (
	"context"
	"slices"
	"sync"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/event"
	"go.mongodb.org/mongo-driver/v2/mongo"
)

// commandLog records the database commands a service sends, by name and collection, and the
// documents they wrote, as the driver's own command monitor reports them.
type commandLog struct {
	mu      sync.Mutex
	started map[int64]string
	done    []string
	written int64
	last    time.Time
}

func (l *commandLog) monitor() *event.CommandMonitor {
	return &event.CommandMonitor{
		Started: func(_ context.Context, e *event.CommandStartedEvent) {
			coll, _ := e.Command.Lookup(e.CommandName).StringValueOK()
			l.mu.Lock()
			defer l.mu.Unlock()
			if l.started == nil {
				l.started = map[int64]string{}
			}
			l.started[e.RequestID] = e.CommandName + " " + coll
			l.last = time.Now()
		},
		Succeeded: func(_ context.Context, e *event.CommandSucceededEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.done = append(l.done, l.started[e.RequestID])
			switch e.CommandName {
			case "insert", "delete":
				n, _ := e.Reply.Lookup("n").AsInt64OK()
				l.written += n
			case "update":
				n, _ := e.Reply.Lookup("nModified").AsInt64OK()
				l.written += n
			}
		},
		Failed: func(_ context.Context, e *event.CommandFailedEvent) {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.done = append(l.done, l.started[e.RequestID]+" (failed)")
		},
	}
}

// take returns what was recorded since the last take, the commands sorted.
func (l *commandLog) take() (commands []string, written int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	commands, written = l.done, l.written
	l.done, l.written = nil, 0
	slices.Sort(commands)
	return commands, written
}

// afterLogin waits until a login's last write, which goes on after its answer, is done: the
// removal of its attempt record. Then it waits until the service has sent no command for a while.
// Silence alone is not enough: on a busy machine the removal can start later than any pause.
func (l *commandLog) afterLogin(tb testing.TB) {
	tb.Helper()
	waitFor(tb, "the login's attempt record to be removed", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return slices.Contains(l.done, "delete attempts")
	})
	l.quiet(tb)
}

// quiet waits until the service has sent no command for 300ms.
func (l *commandLog) quiet(tb testing.TB) {
	tb.Helper()
	waitFor(tb, "the service to send no command for 300ms", func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return time.Since(l.last) > 300*time.Millisecond
	})
}

// newMonitoredEnv is a service with cfg, on a database of its own, whose commands l sees.
func newMonitoredEnv(tb testing.TB, l *commandLog, cfg config) *testEnv {
	tb.Helper()
	client, err := mongo.Connect(mongoOptions(testMongoURI).SetMonitor(l.monitor()))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { client.Disconnect(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	m := newMetrics()
	store, err := newMongoStore(ctx, client.Database(newTestDB(tb).Name()), &m.dbErrors) // dropped when the test ends
	if err != nil {
		tb.Fatal(err)
	}
	return serveTestEnv(tb, cfg, store, m)
}

// A refresh that rotates its token sends four commands: the claim of the token and the read of
// the account's address side by side, then the session's record and the blacklist.
func TestARefreshSendsFourDatabaseCommands(t *testing.T) {
	t.Parallel()
	var l commandLog
	e := newMonitoredEnv(t, &l, testConfig(t))
	_, _, refresh := e.user(t)
	l.afterLogin(t)
	for range 2 { // the successor rotates as cheaply
		l.take()
		refresh = e.refresh(t, refresh).want(t, 200, "").str("refresh_token")
		l.quiet(t) // anything it left running counts too
		if sent, _ := l.take(); len(sent) > 4 {
			t.Fatalf("a refresh sent %d commands, want at most 4: %q", len(sent), sent)
		} else {
			t.Logf("a refresh sent %d commands: %q", len(sent), sent)
		}
	}
}
