// Command atomicity races goroutines on the single-document operations that code could take
// "exactly one wins" from, on a MongoDB wire-protocol server, and prints what each round gave:
//
//   - insert:  n InsertOne with the same _id; winners are the inserts that succeeded
//   - delete:  n DeleteOne of one document; winners are the calls that deleted it
//   - guarded: n FindOneAndUpdate({_id, used: false}, {$set: {used: true}}); winners are the
//     calls that got a document back
//   - upsert:  n UpdateOne({_id}, {$inc: {n: 1}}, upsert) on a new _id; lost are the increments
//     the server acknowledged that the final count lacks
//   - $inc:    the same on a document that exists already, so that no call meets a duplicate key
//   - $set:    n UpdateOne({_id}, {$set: {f<i>: true}}), each call a field of its own; lost are
//     the fields the server acknowledged that the final document lacks
//
// It races on the server at -uri, or starts FerretDB embedded in this process, listening on
// 127.0.0.1 only, on SQLite (-sqlite) or on a PostgreSQL database (-postgresql URL). It creates
// and drops a database of its own, and refuses servers that are not on this machine: it is for
// test servers, not for anyone's data. Every run is bounded by -timeout.
// scripts/atomicity/run.sh starts a throwaway PostgreSQL and runs both backends in one command.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	"github.com/FerretDB/FerretDB/ferretdb"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
	"go.mongodb.org/mongo-driver/v2/x/mongo/driver/connstring"
)

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "atomicity:", err)
		os.Exit(1)
	}
}

func run(args []string, stdout io.Writer) error {
	fs := flag.NewFlagSet("atomicity", flag.ContinueOnError)
	uri := fs.String("uri", "", "race on the MongoDB wire-protocol server at this URI (loopback only)")
	sqlite := fs.Bool("sqlite", false, "race on an embedded FerretDB on SQLite in a temporary directory")
	pgURL := fs.String("postgresql", "", "race on an embedded FerretDB on the PostgreSQL database at this postgres:// URL")
	n := fs.Int("n", 32, "goroutines racing on each operation")
	rounds := fs.Int("rounds", 30, "rounds of each operation")
	timeout := fs.Duration("timeout", 5*time.Minute, "give up after this long")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *uri == "" && !*sqlite && *pgURL == "" {
		return errors.New("give -uri, -sqlite or -postgresql (or several)")
	}
	if *n < 2 || *rounds < 1 {
		return errors.New("-n must be at least 2 and -rounds at least 1")
	}
	if *uri != "" {
		if err := loopbackOnly(*uri); err != nil {
			return err
		}
	}
	if *pgURL != "" {
		u, err := url.Parse(*pgURL)
		if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
			return errors.New("-postgresql: want a postgres:// URL")
		}
		h := u.Hostname()
		if h == "" {
			h = u.Query().Get("host") // postgres:///db?host=/socket/dir
		}
		if h != "" && !loopback(h) {
			return fmt.Errorf("-postgresql: %s is not a loopback address", h)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), *timeout)
	defer cancel()

	fmt.Fprintf(stdout, "%d goroutines, %d rounds, %d CPUs, %s, FerretDB %s, driver %s\n",
		*n, *rounds, runtime.NumCPU(), runtime.Version(),
		moduleVersion("github.com/FerretDB/FerretDB"), moduleVersion("go.mongodb.org/mongo-driver/v2"))
	var summaries []string
	raceServer := func(name, uri string) error {
		fmt.Fprintf(stdout, "\n%s\n", name)
		s, err := raceOn(ctx, uri, *n, *rounds, stdout)
		if err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
		summaries = append(summaries, name+"\n"+s)
		return nil
	}
	if *uri != "" {
		if err := raceServer("server at -uri", *uri); err != nil {
			return err
		}
	}
	if *sqlite {
		dir, err := os.MkdirTemp("", "atomicity-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		uri, stop, err := startFerretDB(&ferretdb.Config{Handler: "sqlite", SQLiteURL: "file:" + dir + "/"})
		if err != nil {
			return err
		}
		defer stop()
		if err := raceServer("FerretDB on SQLite", uri); err != nil {
			return err
		}
	}
	if *pgURL != "" {
		uri, stop, err := startFerretDB(&ferretdb.Config{Handler: "postgresql", PostgreSQLURL: *pgURL})
		if err != nil {
			return err
		}
		defer stop()
		if err := raceServer("FerretDB on PostgreSQL", uri); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "\nsummary, %d goroutines racing in each of %d rounds\n", *n, *rounds)
	for _, s := range summaries {
		fmt.Fprintln(stdout, s)
	}
	return nil
}

// startFerretDB starts FerretDB in this process on 127.0.0.1 with a free port.
func startFerretDB(c *ferretdb.Config) (uri string, stop func(), err error) {
	c.Listener = ferretdb.ListenerConfig{TCP: "127.0.0.1:0"}
	// FerretDB logs every duplicate key as an error on PostgreSQL; the races cause hundreds.
	c.Logger = slog.New(slog.DiscardHandler)
	f, err := ferretdb.New(c)
	if err != nil {
		return "", nil, fmt.Errorf("embedded FerretDB: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	return f.MongoDBURI(), func() { cancel(); <-done }, nil
}

// loopbackOnly refuses a URI that names a host other than this machine: the program writes to
// the server and drops what it wrote, and is meant for test servers, not for anyone's data.
func loopbackOnly(uri string) error {
	// Before parsing, which would look the name up in DNS.
	if strings.HasPrefix(uri, connstring.SchemeMongoDBSRV+"://") {
		return errors.New("-uri: mongodb+srv names remote hosts; give a loopback address")
	}
	cs, err := connstring.Parse(uri)
	if err != nil {
		return err
	}
	for _, h := range cs.Hosts {
		if strings.HasSuffix(h, ".sock") {
			continue // a Unix socket is on this machine
		}
		host, _, err := net.SplitHostPort(h)
		if err != nil {
			host = h
		}
		if !loopback(host) {
			return fmt.Errorf("-uri: %s is not a loopback address", host)
		}
	}
	return nil
}

// loopback reports whether host is this machine: localhost, a loopback address, or a Unix
// socket's directory (which is how PostgreSQL URLs name one).
func loopback(host string) bool {
	ip := net.ParseIP(host)
	return host == "localhost" || strings.HasPrefix(host, "/") || (ip != nil && ip.IsLoopback())
}

// tally is what one operation gave over all rounds.
type tally struct {
	name    string
	counter bool   // an $inc or $set race: lost updates, not winners
	unit    string // what counter races lose: "increments" unless set
	rounds  int
	one     int // rounds with exactly one winner
	most    int // the most winners in one round
	acked   int // counter: updates acknowledged
	lost    int // counter: acknowledged updates missing from the final document
	errs    int // errors other than the expected duplicate key or no document
	errMsg  string
}

func (t *tally) err(err error) {
	t.errs++
	if t.errMsg == "" {
		t.errMsg = err.Error()
	}
}

func (t *tally) winners(w int) {
	t.rounds++
	if w == 1 {
		t.one++
	}
	t.most = max(t.most, w)
}

func (t *tally) String() string {
	var s string
	if t.counter {
		unit := t.unit
		if unit == "" {
			unit = "increments"
		}
		s = fmt.Sprintf("  %-8s %d of %d acknowledged %s lost (%.1f%%)", t.name, t.lost, t.acked, unit,
			100*float64(t.lost)/float64(max(t.acked, 1)))
	} else {
		s = fmt.Sprintf("  %-8s exactly one winner in %d of %d rounds", t.name, t.one, t.rounds)
		if t.one < t.rounds {
			s += fmt.Sprintf(" (more than one in %d, up to %d)", t.rounds-t.one, t.most)
		}
	}
	if t.errs > 0 {
		s += fmt.Sprintf("; %d other errors, first: %s", t.errs, t.errMsg)
	}
	return s
}

// raceOn runs the rounds on the server at uri, in a database of its own that it drops at the end,
// prints a line per round and returns a summary.
func raceOn(ctx context.Context, uri string, n, rounds int, stdout io.Writer) (string, error) {
	client, err := mongo.Connect(options.Client().ApplyURI(uri).
		SetServerSelectionTimeout(5 * time.Second).SetTimeout(30 * time.Second).
		SetMaxPoolSize(uint64(n)))
	if err != nil {
		return "", err
	}
	defer client.Disconnect(context.Background())
	var b [6]byte
	rand.Read(b[:])
	db := client.Database("atomicity_" + hex.EncodeToString(b[:]))
	defer db.Drop(context.Background())
	// Connect every pooled connection first, so that no goroutine starts late dialling.
	race(n, func(int) { client.Ping(ctx, nil) })

	insert, del, guarded := &tally{name: "insert"}, &tally{name: "delete"}, &tally{name: "guarded"}
	upsert, inc := &tally{name: "upsert", counter: true}, &tally{name: "$inc", counter: true}
	set := &tally{name: "$set", counter: true, unit: "fields"}
	start := time.Now()
	fmt.Fprintf(stdout, "%5s %7s %7s %8s %16s %16s %16s\n", "round", "insert", "delete", "guarded", "upsert ack/final", "$inc ack/final", "$set ack/final")
	for r := range rounds {
		id := fmt.Sprintf("r%d", r)
		wi, err := raceInsert(ctx, db.Collection("insert"), id, n, insert)
		var wd, wg, upAcked, upFinal, incAcked, incFinal, setAcked, setFinal int
		if err == nil {
			wd, err = raceDelete(ctx, db.Collection("delete"), id, n, del)
		}
		if err == nil {
			wg, err = raceGuarded(ctx, db.Collection("guarded"), id, n, guarded)
		}
		if err == nil {
			upAcked, upFinal, err = raceInc(ctx, db.Collection("upsert"), id, n, false, upsert)
		}
		if err == nil {
			incAcked, incFinal, err = raceInc(ctx, db.Collection("inc"), id, n, true, inc)
		}
		if err == nil {
			setAcked, setFinal, err = raceSet(ctx, db.Collection("set"), id, n, set)
		}
		if err != nil {
			return "", fmt.Errorf("round %d: %w", r+1, err)
		}
		insert.winners(wi)
		del.winners(wd)
		guarded.winners(wg)
		upsert.acked, upsert.lost = upsert.acked+upAcked, upsert.lost+upAcked-upFinal
		inc.acked, inc.lost = inc.acked+incAcked, inc.lost+incAcked-incFinal
		set.acked, set.lost = set.acked+setAcked, set.lost+setAcked-setFinal
		fmt.Fprintf(stdout, "%5d %7d %7d %8d %16s %16s %16s\n", r+1, wi, wd, wg,
			fmt.Sprintf("%d/%d", upAcked, upFinal), fmt.Sprintf("%d/%d", incAcked, incFinal),
			fmt.Sprintf("%d/%d", setAcked, setFinal))
	}
	summary := strings.Join([]string{insert.String(), del.String(), guarded.String(), upsert.String(), inc.String(), set.String()}, "\n")
	fmt.Fprintf(stdout, "%s\n  (%d rounds in %s)\n", summary, rounds, time.Since(start).Round(time.Millisecond))
	return summary, nil
}

// race runs f(0) ... f(n-1) at once, released by one signal, and returns when all have returned.
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

// count runs f on n goroutines at once and counts the calls that won; a call's error, unless
// expected says it is how losing looks, goes into t.
func count(n int, t *tally, expected func(error) bool, f func(i int) (bool, error)) int {
	var mu sync.Mutex
	won := 0
	race(n, func(i int) {
		w, err := f(i)
		mu.Lock()
		defer mu.Unlock()
		switch {
		case err != nil && !expected(err):
			t.err(err)
		case w:
			won++
		}
	})
	return won
}

func raceInsert(ctx context.Context, c *mongo.Collection, id string, n int, t *tally) (int, error) {
	return count(n, t, mongo.IsDuplicateKeyError, func(i int) (bool, error) {
		_, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "by", Value: i}})
		return err == nil, err
	}), ctx.Err()
}

func raceDelete(ctx context.Context, c *mongo.Collection, id string, n int, t *tally) (int, error) {
	if _, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return 0, err
	}
	return count(n, t, never, func(int) (bool, error) {
		res, err := c.DeleteOne(ctx, bson.D{{Key: "_id", Value: id}})
		return err == nil && res.DeletedCount == 1, err
	}), ctx.Err()
}

func raceGuarded(ctx context.Context, c *mongo.Collection, id string, n int, t *tally) (int, error) {
	if _, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "used", Value: false}}); err != nil {
		return 0, err
	}
	noDocument := func(err error) bool { return errors.Is(err, mongo.ErrNoDocuments) }
	return count(n, t, noDocument, func(i int) (bool, error) {
		err := c.FindOneAndUpdate(ctx,
			bson.D{{Key: "_id", Value: id}, {Key: "used", Value: false}},
			bson.D{{Key: "$set", Value: bson.D{{Key: "used", Value: true}, {Key: "by", Value: i}}}}).Err()
		return err == nil, err
	}), ctx.Err()
}

// raceInc returns how many increments the server acknowledged and the count it ended with. On a
// new _id (exists false) racing upserts may answer a duplicate key, as MongoDB's do: those were
// not acknowledged, so they are not counted as lost.
func raceInc(ctx context.Context, c *mongo.Collection, id string, n int, exists bool, t *tally) (acked, final int, err error) {
	if exists {
		if _, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: id}, {Key: "n", Value: 0}}); err != nil {
			return 0, 0, err
		}
	}
	acked = count(n, t, mongo.IsDuplicateKeyError, func(int) (bool, error) {
		_, err := c.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
			bson.D{{Key: "$inc", Value: bson.D{{Key: "n", Value: 1}}}}, options.UpdateOne().SetUpsert(true))
		return err == nil, err
	})
	var doc struct {
		N int `bson:"n"`
	}
	if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
		return 0, 0, err
	}
	return acked, doc.N, ctx.Err()
}

// raceSet returns how many $set calls, each of a field of its own on one document, the server
// acknowledged and how many of those fields the document ended with: an update that reads the
// whole document and writes it back loses the fields set meanwhile.
func raceSet(ctx context.Context, c *mongo.Collection, id string, n int, t *tally) (acked, final int, err error) {
	if _, err := c.InsertOne(ctx, bson.D{{Key: "_id", Value: id}}); err != nil {
		return 0, 0, err
	}
	acked = count(n, t, never, func(i int) (bool, error) {
		_, err := c.UpdateOne(ctx, bson.D{{Key: "_id", Value: id}},
			bson.D{{Key: "$set", Value: bson.D{{Key: fmt.Sprintf("f%d", i), Value: true}}}})
		return err == nil, err
	})
	var doc bson.M
	if err := c.FindOne(ctx, bson.D{{Key: "_id", Value: id}}).Decode(&doc); err != nil {
		return 0, 0, err
	}
	return acked, len(doc) - 1, ctx.Err() // every field but _id
}

func never(error) bool { return false }

// moduleVersion is the version of module path this program was built with.
func moduleVersion(path string) string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, m := range bi.Deps {
			if m.Path == path {
				return m.Version
			}
		}
	}
	return "(unknown)"
}
