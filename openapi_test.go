package main

import (
	"bufio"
	"bytes"
	"fmt"
	"net/http"
	"regexp"
	"strings"
	"testing"
)

// patternList records what addRoutes registers.
type patternList []string

func (p *patternList) Handle(pattern string, _ http.Handler) { *p = append(*p, pattern) }

var (
	docPath      = regexp.MustCompile(`^  (/\S*):$`)
	docOperation = regexp.MustCompile(`^    (get|put|post|delete|options|head|patch|trace):$`)
)

// documentedOperations reads the operations under paths: in an OpenAPI document, as path ->
// upper-case methods. A line scanner is enough for the document's two-space block style, and
// spares the product a YAML dependency.
func documentedOperations(tb testing.TB, doc []byte) map[string]map[string]bool {
	tb.Helper()
	ops := make(map[string]map[string]bool)
	var inPaths bool
	var path string
	sc := bufio.NewScanner(bytes.NewReader(doc))
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "paths:":
			inPaths = true
		case line != "" && line[0] != ' ' && line[0] != '#':
			inPaths = false
		case !inPaths:
		case docPath.MatchString(line):
			path = docPath.FindStringSubmatch(line)[1]
			ops[path] = make(map[string]bool)
		case docOperation.MatchString(line) && path != "":
			ops[path][strings.ToUpper(docOperation.FindStringSubmatch(line)[1])] = true
		}
	}
	if len(ops) == 0 {
		tb.Fatal("found no paths in the document")
	}
	return ops
}

func TestOpenAPIDescribesEveryRouteAndNoOther(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	var patterns patternList
	addRoutes(&patterns, e.deps)
	addAdminRoutes(&patterns, e.deps)
	addMetricsRoutes(&patterns, e.deps)
	documented := documentedOperations(t, openAPI)

	// registered is path -> methods; "" stands for a pattern without a method, which ServeMux
	// matches for every method.
	registered := make(map[string]map[string]bool)
	for _, p := range patterns {
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			method, path = "", p
		}
		if registered[path] == nil {
			registered[path] = make(map[string]bool)
		}
		registered[path][method] = true
	}

	for path, methods := range registered {
		for method := range methods {
			want := []string{method}
			if method == "" {
				want = []string{"GET", "HEAD", "POST"} // "any method works", shown by the common ones
			}
			for _, m := range want {
				if !documented[path][m] {
					t.Errorf("%s %s is registered but openapi.yaml does not describe it", m, path)
				}
			}
		}
	}
	for path, methods := range documented {
		for m := range methods {
			r := registered[path]
			if !r[m] && !r[""] && !(m == "HEAD" && r["GET"]) {
				t.Errorf("openapi.yaml describes %s %s, which addRoutes does not register", m, path)
			}
		}
		if len(methods) == 0 {
			t.Errorf("openapi.yaml names %s without an operation", path)
		}
	}
}

func TestOpenAPIDocumentsEveryErrorCodeWithItsStatus(t *testing.T) {
	t.Parallel()
	for _, e := range []*apiError{errInvalidRequest, errInvalidEmail, errWeakPassword, errEmailTaken,
		errInvalidCredentials, errTokenMissing, errTokenInvalid, errTokenExpired, errTokenRevoked,
		errTokenReused, errSessionExpired, errAccountDisabled, errCodeInvalid, errMFARequired,
		errMFAAlreadyEnabled, errMFANotEnrolled, errStepUpRace, errKeysNotManaged, errTooManyAttempts, errPayloadTooLarge, errUnsupportedMedia, errNotFound, errMethodNotAllowed,
		errUnavailable, errInternal, errSignupDisabled, errNotAllowed, errAllowHeader, errPasskeysOff, errCeremonyInvalid,
		errRegistrationInvalid, errPasskeyInvalid, errPasskeyTaken, errTooManyPasskeys, errNoPasskey} {
		row := fmt.Sprintf("| `%s` | %d |", e.code, e.status)
		if !bytes.Contains(openAPI, []byte(row)) {
			t.Errorf("openapi.yaml has no row %q", row)
		}
		if !bytes.Contains(openAPI, []byte("            - "+e.code+"\n")) {
			t.Errorf("the Error schema does not list %s", e.code)
		}
	}
}

func TestOpenAPIDocumentIsServed(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	r := e.do(t, "GET", "/openapi.yaml", nil)
	if r.status != 200 || r.header.Get("Content-Type") != "application/yaml" {
		t.Fatalf("got %d %q", r.status, r.header.Get("Content-Type"))
	}
	if r.raw != string(openAPI) || !strings.HasPrefix(r.raw, "openapi: 3.1.") {
		t.Fatalf("the answer is not the OpenAPI 3.1 document:\n%.200s", r.raw)
	}
}
