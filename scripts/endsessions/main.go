// Command endsessions writes n session-end entries into a service's blacklist, as n users whose
// sessions ended (logouts, password changes, an operator's logout) would leave them: the service
// polls them into memory within a second, and scripts/loadtest.sh then measures the forward-auth
// check with them there. Loopback databases only.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"
)

func main() {
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintln(os.Stderr, "endsessions:", err)
		os.Exit(1)
	}
}

func run(args []string) error {
	fs := flag.NewFlagSet("endsessions", flag.ContinueOnError)
	uri := fs.String("uri", "", "the service's database: mongodb://... (a development DATA_DIR's socket: mongodb://%2Fpath%2Fto%2Fmongo.sock/)")
	db := fs.String("db", "auth", "MONGODB_DATABASE")
	n := fs.Int("n", 10000, "how many ended sessions")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// A Unix socket's path stands percent-encoded where the host would be, which url.Parse
	// refuses; anything else must name a loopback host.
	if !strings.HasPrefix(*uri, "mongodb://%2F") {
		u, err := url.Parse(*uri)
		if err != nil || u.Scheme != "mongodb" || u.Hostname() != "127.0.0.1" && u.Hostname() != "localhost" {
			return errors.New("-uri: want mongodb:// with a loopback address or a Unix socket")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	client, err := mongo.Connect(options.Client().ApplyURI(*uri))
	if err != nil {
		return err
	}
	defer client.Disconnect(context.Background())
	blacklist := client.Database(*db).Collection("blacklist")
	now := time.Now().UTC().Truncate(time.Millisecond)
	docs := make([]any, 0, 1000)
	for i := range *n {
		docs = append(docs, bson.D{
			{Key: "_id", Value: fmt.Sprintf("sid:ended-%d-%d", now.UnixNano(), i)},
			{Key: "expires_at", Value: now.Add(time.Hour)},
			{Key: "created_at", Value: now},
			{Key: "reason", Value: "logout"},
		})
		if len(docs) == cap(docs) || i == *n-1 {
			if _, err := blacklist.InsertMany(ctx, docs); err != nil {
				return err
			}
			docs = docs[:0]
		}
	}
	fmt.Printf("%d ended sessions written\n", *n)
	return nil
}
