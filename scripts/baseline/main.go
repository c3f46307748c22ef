// Command baseline is the ceiling scripts/loadtest.sh measures the service against: a bare
// net/http handler that answers every request with a JSON body of the size /auth/page answers.
package main

import (
	"fmt"
	"net/http"
	"os"
)

func main() {
	body := []byte(`{"user":{"id":"0123456789abcdefghijkl","email":"load@example.com"},"expires_in":179}` + "\n")
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Write(body)
	})
	if err := http.ListenAndServe(os.Args[1], h); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}
