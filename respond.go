package main

// respond.go is JSON in and out: strict decoding, encoding, and the one error writer.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"reflect"
	"strings"
	"time"
)

// apiError is an answer to the client: a status and the {"error","message"} body. retryAfter, when
// set, becomes a Retry-After header.
type apiError struct {
	status     int
	code       string
	message    string
	retryAfter time.Duration
	// oauth marks an error of the OpenID provider's back-channel endpoints, whose clients read
	// error_description (RFC 6749 section 5.2): the message goes there too.
	oauth bool
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

// Is lets errors.Is match a copy made by after against the value it was copied from.
func (e *apiError) Is(target error) bool {
	t, ok := target.(*apiError)
	return ok && t.code == e.code && t.status == e.status
}

// after is e with a Retry-After of d (at least a second).
func (e *apiError) after(d time.Duration) *apiError {
	c := *e
	c.retryAfter = max(d, time.Second)
	return &c
}

var (
	errInvalidRequest     = &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the request body must be a JSON object with the documented fields"}
	errInvalidEmail       = &apiError{status: http.StatusBadRequest, code: "invalid_email", message: "email must be a mailbox address such as name@example.com: no quotes, spaces, address literals or IP addresses, and the name and each part of the domain in one script (not Latin mixed with Cyrillic, for example)"}
	errWeakPassword       = &apiError{status: http.StatusBadRequest, code: "weak_password", message: "password must be between 8 and 1024 bytes long"}
	errEmailTaken         = &apiError{status: http.StatusConflict, code: "email_taken", message: "an account with this email already exists"}
	errInvalidCredentials = &apiError{status: http.StatusUnauthorized, code: "invalid_credentials", message: "email or password is incorrect"}
	errTokenMissing       = &apiError{status: http.StatusUnauthorized, code: "token_missing", message: "no token was sent"}
	errTokenInvalid       = &apiError{status: http.StatusUnauthorized, code: "token_invalid", message: "the token is not valid"}
	errTokenExpired       = &apiError{status: http.StatusUnauthorized, code: "token_expired", message: "the token has expired; call /auth/refresh"}
	errTokenRevoked       = &apiError{status: http.StatusUnauthorized, code: "token_revoked", message: "the token's session has ended; log in again"}
	errTokenRetired       = &apiError{status: http.StatusUnauthorized, code: "token_invalid", message: "this refresh token was exchanged already; only the newest may end other sessions"}
	errTokenReused        = &apiError{status: http.StatusUnauthorized, code: "token_reused", message: "this refresh token was already used, so the session was ended; log in again"}
	errSessionExpired     = &apiError{status: http.StatusUnauthorized, code: "session_expired", message: "the session reached its maximum age; log in again"}
	errAccountDisabled    = &apiError{status: http.StatusForbidden, code: "account_disabled", message: "this account is disabled; contact the service's operator"}
	errNoSuchSession      = &apiError{status: http.StatusNotFound, code: "not_found", message: "no such session"}
	errNoSuchUser         = &apiError{status: http.StatusNotFound, code: "not_found", message: "no such user"}
	errTooManyAttempts    = &apiError{status: http.StatusTooManyRequests, code: "too_many_attempts", message: "too many attempts; wait before trying again"}
	errPayloadTooLarge    = &apiError{status: http.StatusRequestEntityTooLarge, code: "payload_too_large", message: "the request body is too large"}
	errUnsupportedMedia   = &apiError{status: http.StatusUnsupportedMediaType, code: "unsupported_media_type", message: "send the request body as JSON, with Content-Type: application/json"}
	errNotFound           = &apiError{status: http.StatusNotFound, code: "not_found", message: "no such endpoint"}
	errMethodNotAllowed   = &apiError{status: http.StatusMethodNotAllowed, code: "method_not_allowed", message: "this endpoint does not allow that method"}
	errUnavailable        = &apiError{status: http.StatusServiceUnavailable, code: "unavailable", message: "the service is temporarily unavailable; try again shortly"}
	errCannotVouch        = &apiError{status: http.StatusServiceUnavailable, code: "unavailable", message: "this instance cannot check a token against recent logouts; try again shortly"}
	errKeysNotManaged     = &apiError{status: http.StatusConflict, code: "keys_not_managed",
		message: "with JWT_ALG=HS256 the keys are JWT_SECRET and JWT_SECRET_PREVIOUS; change those instead"}
	errKeyNotFound = &apiError{status: http.StatusNotFound, code: "not_found", message: "no signing key has that kid"}
	errMFARequired = &apiError{status: http.StatusUnauthorized, code: "mfa_required", message: "this needs a second factor: verify a code at /auth/mfa/verify"}
	// errPHRRequired is errMFARequired for a route that asks for a phishing-resistant login.
	errPHRRequired = &apiError{status: http.StatusUnauthorized, code: "mfa_required", message: "this needs a passkey: sign in or step up with one at /auth/passkeys/login/begin"}
	errStepUpRace  = &apiError{status: http.StatusConflict, code: "conflict", message: "the session was refreshed meanwhile; refresh, then step up with a new code"}
	errInternal    = &apiError{status: http.StatusInternalServerError, code: "internal", message: "an internal error occurred"}
)

// busyError says that password hashing is at capacity: the caller should come back after
// retryAfter, when the backlog will have drained enough.
type busyError struct{ retryAfter time.Duration }

func (e *busyError) Error() string { return "password hashing at capacity" }

// Is makes every busyError match errBusy.
func (e *busyError) Is(target error) bool { _, ok := target.(*busyError); return ok }

// errBusy matches any busyError with errors.Is.
var errBusy = &busyError{}

// handle adapts a handler that returns its error, so that every error is written in one place.
func handle(log *slog.Logger, f func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			writeError(w, r, log, err)
		}
	})
}

// apiErrorOf is the answer err maps to: its own apiError, or errUnavailable (after the wait, when
// hashing is busy; as it is, when the store is unreachable); nil for an error not the client's.
func apiErrorOf(err error) *apiError {
	var e *apiError
	var busy *busyError
	switch {
	case errors.As(err, &e):
		return e
	case errors.As(err, &busy):
		return errUnavailable.after(busy.retryAfter)
	case errors.As(err, new(interface{ unavailable() })): // ErrUnavailable
		return errUnavailable
	}
	return nil
}

// writeError is the one error writer: it maps err to a status and code; errors that are not the
// client's are logged with the request id and never shown.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	e := apiErrorOf(err)
	switch {
	case e == errUnavailable:
		log.LogAttrs(r.Context(), slog.LevelWarn, "unavailable",
			slog.String("request_id", w.Header().Get("X-Request-Id")), slog.String("err", err.Error()))
	case e != nil:
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return // the client went away; nobody reads an answer
	default:
		log.LogAttrs(r.Context(), slog.LevelError, "internal error",
			slog.String("request_id", w.Header().Get("X-Request-Id")), slog.String("err", err.Error()))
		e = errInternal
	}
	h := w.Header()
	if e.retryAfter > 0 {
		h.Set("Retry-After", retryAfter(e.retryAfter))
	} else if e.status == http.StatusServiceUnavailable && h.Get("Retry-After") == "" {
		h.Set("Retry-After", "1")
	}
	switch code := e.code; {
	case e.status != http.StatusUnauthorized:
		// Only a 401 challenges: a 400 token_invalid (a reset link used twice) is no bearer token.
	case code == errTokenMissing.code:
		h.Set("WWW-Authenticate", `Bearer`)
	case code == "invalid_request":
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="invalid_request", error_description=%q`, e.message))
	case e.oauth && code == "invalid_client":
		h.Set("WWW-Authenticate", `Basic realm="oauth"`)
	case e.oauth:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error=%q, error_description=%q`, code, e.message))
	case code == errMFARequired.code:
		acr := "aal2"
		if e == errPHRRequired {
			acr = "phr"
		}
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="insufficient_user_authentication", error_description=%q, acr_values=%q`, e.message, acr))
	case code == errTokenInvalid.code, code == errTokenExpired.code, code == errTokenRevoked.code,
		code == errTokenReused.code, code == errSessionExpired.code:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, e.message))
	}
	body := errorBody{Error: e.code, Message: e.message}
	if e.oauth {
		body.Description = e.message
	}
	encode(w, e.status, body)
}

// retryAfter formats d as whole seconds, rounded up, for a Retry-After header.
func retryAfter(d time.Duration) string {
	return fmt.Sprint(int64((d + time.Second - 1) / time.Second))
}

type errorBody struct {
	Error       string `json:"error"`
	Message     string `json:"message"`
	Description string `json:"error_description,omitempty"`
}

func encode(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

// maxBody bounds every request body; the largest legitimate one is a 1024-byte password.
const maxBody = 8 << 10

// decode reads exactly one JSON value of type T from a size-limited body. Unknown fields are
// ignored, so that clients of the original service may send what they always sent.
func decode[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	return decodeUpTo[T](w, r, maxBody)
}

// decodeUpTo is decode with a body of up to maxBytes bytes: an authenticator's answer, with its
// attestation, may be larger than any other body.
func decodeUpTo[T any](w http.ResponseWriter, r *http.Request, maxBytes int64) (T, error) {
	return decodeInto[T](w, r, maxBytes, false)
}

// decodeStrict is decode that refuses unknown fields: for the admin API's settings, where a field
// the service does not know is one the operator believes set.
func decodeStrict[T any](w http.ResponseWriter, r *http.Request) (T, error) {
	return decodeInto[T](w, r, maxBody, true)
}

func decodeInto[T any](w http.ResponseWriter, r *http.Request, maxBytes int64, strict bool) (T, error) {
	var v T
	err := decodeLimited(w, r, &v, maxBytes, strict)
	if errors.Is(err, io.EOF) {
		return v, &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the request body is empty; send a JSON object"}
	}
	return v, err
}

// decodeOptional is decode for endpoints where the body is optional: an empty body leaves v as
// it is and returns io.EOF. A body not declared as JSON is refused with 415 before it is read: an
// HTML form on another site can post text/plain without a preflight, and spread login guesses
// over its visitors' browsers; a JSON body it cannot send.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	return decodeLimited(w, r, v, maxBody, false)
}

func decodeLimited(w http.ResponseWriter, r *http.Request, v any, maxBytes int64, strict bool) error {
	if r.ContentLength == 0 || r.Body == nil || r.Body == http.NoBody {
		return io.EOF
	}
	if !isJSON(r.Header.Get("Content-Type")) {
		if r.ContentLength < 0 { // a chunked body may still turn out empty
			var one [1]byte
			if n, _ := io.ReadFull(r.Body, one[:]); n == 0 {
				return io.EOF
			}
		}
		return errUnsupportedMedia
	}
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBytes))
	if strict {
		dec.DisallowUnknownFields()
	}
	err := dec.Decode(v)
	if err == io.EOF {
		return io.EOF
	}
	if err == nil {
		if _, err = dec.Token(); err == io.EOF {
			return nil
		} else if err == nil {
			return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the request body must hold exactly one JSON value"}
		}
	}
	var (
		tooBig  *http.MaxBytesError
		typeErr *json.UnmarshalTypeError
	)
	switch {
	case errors.As(err, &tooBig):
		return errPayloadTooLarge
	case errors.As(err, &typeErr) && typeErr.Field != "":
		return &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: fmt.Sprintf("field %q must be a JSON %s", typeErr.Field, jsonKind(typeErr.Type.Kind()))}
	case strict && strings.HasPrefix(err.Error(), "json: unknown field "):
		return &apiError{status: http.StatusBadRequest, code: "invalid_request",
			message: strings.TrimPrefix(err.Error(), "json: ") + ": the service has no such setting"}
	}
	return &apiError{status: http.StatusBadRequest, code: "invalid_request", message: "the request body is not a valid JSON object"}
}

// isJSON accepts application/json, with no charset or UTF-8, the one JSON has.
func isJSON(contentType string) bool {
	mt, params, err := mime.ParseMediaType(contentType)
	if err != nil || mt != "application/json" {
		return false
	}
	cs, ok := params["charset"]
	return !ok || strings.EqualFold(cs, "utf-8")
}

func jsonKind(k reflect.Kind) string {
	switch k {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return "value of the documented type"
}

// The original service's header names, as net/http stores them: it upper-cases only the first
// letter of a name with an underscore. r.Header.Get("authorization_access") would canonicalise the
// name, allocating, on every call; the forward-auth check looks it up under the stored form.
const (
	hdrAccess  = "Authorization_access"
	hdrRefresh = "Authorization_refresh"
)

// header is the one value of the request header stored under canonical, "" when absent. Every
// header a security decision reads goes through it. Sent more than once, it is refused rather
// than one copy believed: a proxy that appends where it should replace, or a client adding a
// copy of its own, must not get to choose which one counts. The refusal is a 401, which a
// forward-auth proxy passes on (nginx turns a 400 into a 500).
func header(r *http.Request, canonical string) (string, error) {
	switch v := r.Header[canonical]; len(v) {
	case 0:
		return "", nil
	case 1:
		return v[0], nil
	}
	return "", errRepeated(canonical)
}

// errRepeated refuses a request that sent the header name more than once, or sent a list where
// one value belongs.
func errRepeated(name string) *apiError {
	return &apiError{status: http.StatusUnauthorized, code: "invalid_request",
		message: "the " + name + " header was sent more than once; send it once"}
}

// accessToken takes the access token from the original service's header or the standard one.
// Both may carry it, but not two different tokens: an application behind the proxy that reads
// the other one would take the request for someone the check never saw. Authorization in another
// scheme (Basic, for a proxy's own login) carries no token of ours and is left alone.
func accessToken(r *http.Request) (string, error) {
	own, err := header(r, hdrAccess)
	if err != nil {
		return "", err
	}
	std, err := header(r, "Authorization")
	if err != nil {
		return "", err
	}
	if own = bearer(own); own == "" {
		return bearer(std), nil
	}
	if t := bearer(std); t != "" && t != own && !strings.Contains(t, " ") {
		return "", errTwoTokens
	}
	return own, nil
}

var errTwoTokens = &apiError{status: http.StatusUnauthorized, code: "invalid_request",
	message: "authorization_access and Authorization carry different tokens; send one"}

// bearer strips an optional "Bearer " prefix, which clients send in either header form.
func bearer(v string) string {
	if len(v) > 7 && strings.EqualFold(v[:7], "bearer ") {
		v = v[7:]
	}
	return strings.TrimSpace(v)
}
