package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"time"
)

// routeAdder is what addRoutes registers on: a *http.ServeMux, or a test listing the patterns.
type routeAdder interface {
	Handle(pattern string, handler http.Handler)
}

// addRoutes lists the whole API; openapi.yaml describes it.
func addRoutes(mux routeAdder, d *deps) {
	mux.Handle("POST /auth/signup", handleSignup(d))
	mux.Handle("POST /auth/login", handleLogin(d))
	mux.Handle("POST /auth/refresh", handleRefresh(d))
	mux.Handle("POST /auth/logout", handleLogout(d))
	mux.Handle("POST /auth/verify", handleVerify(d))
	mux.Handle("GET /auth/verify", handleVerify(d))
	// Forward-auth proxies ask with the method of the request they guard (nginx's auth_request
	// does), so the protected route answers every method.
	mux.Handle("/auth/page", requireAccess(d)(handlePage(d)))
	mux.Handle("GET /healthz", handleHealthz())
	mux.Handle("GET /readyz", handleReadyz(d))
	mux.Handle("GET /openapi.yaml", handleOpenAPI())
	if d.metricsEnabled {
		mux.Handle("GET /metrics", handleMetrics(d))
	}
}

// deps are what the handlers share; each handler uses the few it needs.
type deps struct {
	log            *slog.Logger
	now            func() time.Time
	store          Store
	tokens         *tokens
	revocations    *revocations
	throttle       *throttle
	hasher         *hasher
	clients        clientIPs
	reuseInterval  time.Duration
	metricsEnabled bool
	metrics        *metrics
}

// apiError is an answer to the client: a status and the {"error","message"} body.
type apiError struct {
	status  int
	code    string
	message string
}

func (e *apiError) Error() string { return e.code + ": " + e.message }

var (
	errInvalidRequest     = &apiError{http.StatusBadRequest, "invalid_request", "the request body must be a JSON object with the documented fields"}
	errInvalidEmail       = &apiError{http.StatusBadRequest, "invalid_email", "email must be a valid address such as name@example.com"}
	errWeakPassword       = &apiError{http.StatusBadRequest, "weak_password", "password must be between 8 and 1024 bytes long"}
	errEmailTaken         = &apiError{http.StatusConflict, "email_taken", "an account with this email already exists"}
	errInvalidCredentials = &apiError{http.StatusUnauthorized, "invalid_credentials", "email or password is incorrect"}
	errTokenMissing       = &apiError{http.StatusUnauthorized, "token_missing", "no token was sent"}
	errTokenInvalid       = &apiError{http.StatusUnauthorized, "token_invalid", "the token is not valid"}
	errTokenExpired       = &apiError{http.StatusUnauthorized, "token_expired", "the token has expired; call /auth/refresh"}
	errTokenRevoked       = &apiError{http.StatusUnauthorized, "token_revoked", "the token's session has ended; log in again"}
	errTokenReused        = &apiError{http.StatusUnauthorized, "token_reused", "this refresh token was already used, so the session was ended; log in again"}
	errTooManyAttempts    = &apiError{http.StatusTooManyRequests, "too_many_attempts", "too many failed logins; wait before trying again"}
	errPayloadTooLarge    = &apiError{http.StatusRequestEntityTooLarge, "payload_too_large", "the request body is too large"}
	errNotFound           = &apiError{http.StatusNotFound, "not_found", "no such endpoint"}
	errMethodNotAllowed   = &apiError{http.StatusMethodNotAllowed, "method_not_allowed", "this endpoint does not accept that method"}
	errUnavailable        = &apiError{http.StatusServiceUnavailable, "unavailable", "the service is temporarily unavailable; try again shortly"}
	errInternal           = &apiError{http.StatusInternalServerError, "internal", "an internal error occurred"}
)

// handle adapts a handler that returns its error, so that every error is written in one place.
func handle(log *slog.Logger, f func(w http.ResponseWriter, r *http.Request) error) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if err := f(w, r); err != nil {
			writeError(w, r, log, err)
		}
	})
}

// writeError is the one error writer: it maps err to a status and code; errors that are not the
// client's are logged with the request id and never shown.
func writeError(w http.ResponseWriter, r *http.Request, log *slog.Logger, err error) {
	var e *apiError
	switch {
	case errors.As(err, &e):
	case errors.Is(err, ErrUnavailable), errors.Is(err, errBusy):
		log.LogAttrs(r.Context(), slog.LevelWarn, "unavailable",
			slog.String("request_id", requestID(r.Context())), slog.String("err", err.Error()))
		e = errUnavailable
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		return // the client went away; nobody reads an answer
	default:
		log.LogAttrs(r.Context(), slog.LevelError, "internal error",
			slog.String("request_id", requestID(r.Context())), slog.String("err", err.Error()))
		e = errInternal
	}
	h := w.Header()
	switch e {
	case errUnavailable:
		if h.Get("Retry-After") == "" {
			h.Set("Retry-After", "1")
		}
	case errTokenMissing:
		h.Set("WWW-Authenticate", `Bearer`)
	case errTokenInvalid, errTokenExpired, errTokenRevoked, errTokenReused:
		h.Set("WWW-Authenticate", fmt.Sprintf(`Bearer error="invalid_token", error_description=%q`, e.message))
	}
	encode(w, e.status, errorBody{e.code, e.message})
}

type errorBody struct {
	Error   string `json:"error"`
	Message string `json:"message"`
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
	var v T
	err := decodeOptional(w, r, &v)
	if errors.Is(err, io.EOF) {
		return v, &apiError{http.StatusBadRequest, "invalid_request", "the request body is empty; send a JSON object"}
	}
	return v, err
}

// decodeOptional is decode for endpoints where the body is optional: an empty body leaves v as
// it is and returns io.EOF.
func decodeOptional(w http.ResponseWriter, r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxBody))
	err := dec.Decode(v)
	if err == io.EOF {
		return io.EOF
	}
	if err == nil {
		if _, err = dec.Token(); err == io.EOF {
			return nil
		} else if err == nil {
			return &apiError{http.StatusBadRequest, "invalid_request", "the request body must hold exactly one JSON value"}
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
		return &apiError{http.StatusBadRequest, "invalid_request",
			fmt.Sprintf("field %q must be a JSON %s", typeErr.Field, jsonKind(typeErr.Type.Kind()))}
	}
	return &apiError{http.StatusBadRequest, "invalid_request", "the request body is not a valid JSON object"}
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

type credentials struct {
	Email    string `json:"email"`
	Password string `json:"password"`
}

// normalizeEmail is the form in which emails are stored and compared: trimmed and lower-cased.
func normalizeEmail(s string) string { return strings.ToLower(strings.TrimSpace(s)) }

// validEmail checks the shape of a normalised address; mail servers decide the rest.
func validEmail(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if len(s) > 254 || at < 1 || at > 64 || at == len(s)-1 || strings.Count(s, "@") != 1 {
		return false
	}
	domain := s[at+1:]
	if !strings.Contains(domain, ".") || strings.HasPrefix(domain, ".") || strings.HasSuffix(domain, ".") ||
		strings.Contains(domain, "..") {
		return false
	}
	for _, c := range s {
		if c <= ' ' || c == 0x7f || c == '<' || c == '>' || c == '(' || c == ')' || c == ',' || c == ';' || c == '\\' || c == '"' {
			return false
		}
	}
	return true
}

func handleSignup(d *deps) http.Handler {
	type response struct {
		ID        string    `json:"id"`
		Email     string    `json:"email"`
		CreatedAt time.Time `json:"created_at"`
	}
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		email := normalizeEmail(req.Email)
		if !validEmail(email) {
			return errInvalidEmail
		}
		if len(req.Password) < 8 || len(req.Password) > 1024 {
			return errWeakPassword
		}
		var hash string
		if err := d.hasher.do(r.Context(), func() { hash = hashPassword(req.Password) }); err != nil {
			return err
		}
		u := &User{ID: newID(), Email: email, PasswordHash: hash, CreatedAt: d.now().UTC().Truncate(time.Millisecond)}
		if err := d.store.CreateUser(r.Context(), u); errors.Is(err, ErrDuplicate) {
			return errEmailTaken
		} else if err != nil {
			return err
		}
		encode(w, http.StatusCreated, response{u.ID, u.Email, u.CreatedAt})
		return nil
	})
}

func handleLogin(d *deps) http.Handler {
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		req, err := decode[credentials](w, r)
		if err != nil {
			return err
		}
		if req.Email == "" || req.Password == "" {
			return &apiError{http.StatusBadRequest, "invalid_request", "email and password are required"}
		}
		ctx := r.Context()
		release, err := d.hasher.admit()
		if err != nil {
			return err
		}
		defer release()
		email := normalizeEmail(req.Email)
		client := d.clients.of(r)
		// The throttle and the account are read at once: the work around the hash must stay
		// small next to the hash itself.
		var (
			u       *User
			userErr error
			fetched = make(chan struct{})
		)
		go func() {
			defer close(fetched)
			u, userErr = d.store.UserByEmail(ctx, email)
		}()
		wait, failures, err := d.throttle.wait(ctx, client, email)
		<-fetched
		if err != nil {
			return err
		} else if wait > 0 {
			w.Header().Set("Retry-After", retryAfter(wait))
			d.metrics.login(loginThrottled)
			return errTooManyAttempts
		}
		if userErr != nil && !errors.Is(userErr, ErrNotFound) {
			return userErr
		}
		// An unknown email is checked against a dummy hash, so that it takes as long as a wrong
		// password and the answer is the same.
		hash := dummyHash
		if u != nil {
			hash = u.PasswordHash
		}
		var ok, rehash bool
		if err := d.hasher.run(ctx, func() { ok, rehash = checkPassword(hash, req.Password) }); err != nil {
			return err
		}
		if u == nil || !ok {
			if err := d.throttle.failed(ctx, client, email); err != nil {
				return err
			}
			d.metrics.login(loginInvalidCredentials)
			return errInvalidCredentials
		}
		if rehash {
			// Moved over from bcrypt, or from older argon2id parameters: upgrade while we know the
			// password. A failure here costs nothing but a later retry.
			var fresh string
			if d.hasher.run(ctx, func() { fresh = hashPassword(req.Password) }) == nil {
				if err := d.store.SetPasswordHash(ctx, u.ID, fresh); err != nil {
					d.log.Warn("password rehash not saved", "user_id", u.ID, "err", err)
				}
			}
		}
		if failures > 0 {
			if err := d.throttle.succeeded(ctx, client, email); err != nil {
				d.log.Warn("clearing login failures failed", "err", err)
			}
		}
		pair, err := d.tokens.issue(u.ID, u.Email, newID())
		if err != nil {
			return err
		}
		d.metrics.login(loginSuccess)
		noteUser(ctx, u.ID)
		encode(w, http.StatusOK, pair)
		return nil
	})
}

type refreshBody struct {
	RefreshToken string `json:"refresh_token"`
}

// refreshToken takes the refresh token from the seed's header or, failing that, the body.
func refreshToken(w http.ResponseWriter, r *http.Request) (string, error) {
	if t := bearer(header(r, hdrRefresh)); t != "" {
		return t, nil
	}
	var body refreshBody
	if err := decodeOptional(w, r, &body); err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return bearer(body.RefreshToken), nil
}

// The seed's header names, as net/http stores them (it canonicalises only the first letter of a
// name with an underscore). Looking them up by their stored form spares the forward-auth check a
// canonicalisation and an allocation per request.
const (
	hdrAccess  = "Authorization_access"
	hdrRefresh = "Authorization_refresh"
)

func header(r *http.Request, canonical string) string {
	if v := r.Header[canonical]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// accessToken takes the access token from the seed's header or the standard one.
func accessToken(r *http.Request) string {
	if t := bearer(header(r, hdrAccess)); t != "" {
		return t
	}
	return bearer(header(r, "Authorization"))
}

func handleRefresh(d *deps) http.Handler {
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		raw, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		if raw == "" {
			return errTokenMissing
		}
		c, err := d.tokens.parse(raw, useRefresh)
		if err != nil {
			return err
		}
		ctx, now := r.Context(), d.now()
		// Refresh is not the hot path, so it asks the database too rather than trust a cache
		// that may be up to one sync interval behind another instance's logout.
		if d.revocations.revoked(c) {
			return errTokenRevoked
		}
		if revoked, err := d.store.Revoked(ctx, now, jtiPrefix+c.ID, sidPrefix+c.Session); err != nil {
			return err
		} else if revoked {
			return errTokenRevoked
		}
		won, firstUse, err := d.store.ClaimRefresh(ctx, c.ID, now, c.expiresAt().Add(clockSkew))
		if err != nil {
			return err
		}
		if !won && now.Sub(firstUse) >= d.reuseInterval {
			// A retired token came back after the grace period: whoever holds it, the session may
			// be stolen, so all of it ends.
			rev := Revocation{ID: sidPrefix + c.Session, ExpiresAt: now.Add(d.tokens.maxTTL()), CreatedAt: now}
			if err := d.revocations.revoke(ctx, rev); err != nil {
				return err
			}
			d.metrics.revoked(rev)
			d.metrics.refresh(refreshReused)
			d.log.LogAttrs(ctx, slog.LevelWarn, "refresh token reused; session revoked",
				slog.String("request_id", requestID(ctx)), slog.String("user_id", c.Subject))
			return errTokenReused
		}
		// The first use, or another tab presenting the same token within the reuse interval:
		// both continue the same session.
		pair, err := d.tokens.issue(c.Subject, c.Email, c.Session)
		if err != nil {
			return err
		}
		if won {
			d.metrics.refresh(refreshRotated)
		} else {
			d.metrics.refresh(refreshReuseGrace)
		}
		noteUser(ctx, c.Subject)
		encode(w, http.StatusOK, pair)
		return nil
	})
}

func handleLogout(d *deps) http.Handler {
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		access := accessToken(r)
		refresh, err := refreshToken(w, r)
		if err != nil {
			return err
		}
		if access == "" && refresh == "" {
			return errTokenMissing
		}
		now := d.now()
		var revs []Revocation
		for _, t := range []struct{ raw, use string }{{access, useAccess}, {refresh, useRefresh}} {
			if t.raw == "" {
				continue
			}
			// An expired token is still proof of its session, and logging it out must work.
			c, err := d.tokens.parse(t.raw, t.use)
			if err != nil && !errors.Is(err, errTokenExpired) {
				return err
			}
			noteUser(r.Context(), c.Subject)
			revs = append(revs,
				Revocation{ID: jtiPrefix + c.ID, ExpiresAt: c.expiresAt().Add(clockSkew), CreatedAt: now},
				Revocation{ID: sidPrefix + c.Session, ExpiresAt: now.Add(d.tokens.maxTTL()), CreatedAt: now})
		}
		if err := d.revocations.revoke(r.Context(), revs...); err != nil {
			return err
		}
		d.metrics.revoked(revs...)
		encode(w, http.StatusOK, map[string]string{"message": "logged out"})
		return nil
	})
}

func handleVerify(d *deps) http.Handler {
	type request struct {
		Token string `json:"token"`
	}
	type response struct {
		Valid    bool    `json:"valid"`
		TokenUse string  `json:"token_use"`
		Claims   *claims `json:"claims"`
	}
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		var req request
		if err := decodeOptional(w, r, &req); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		raw := bearer(req.Token)
		if raw == "" {
			raw = accessToken(r)
		}
		if raw == "" {
			raw = bearer(header(r, hdrRefresh))
		}
		if raw == "" {
			return errTokenMissing
		}
		c, err := d.tokens.parse(raw, "")
		if err != nil {
			return err
		}
		if d.revocations.revoked(c) {
			return errTokenRevoked
		}
		noteUser(r.Context(), c.Subject)
		encode(w, http.StatusOK, response{true, c.Use, c})
		return nil
	})
}

func handlePage(d *deps) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c := claimsFrom(r.Context())
		left := max(int64(c.expiresAt().Sub(d.now())/time.Second), 0)
		// This answers every request a forward-auth proxy serves, so its body is appended by
		// hand: {"user":{"id":...,"email":...},"expires_in":...}.
		b := make([]byte, 0, 128)
		b = append(b, `{"user":{"id":`...)
		b = appendJSONString(b, c.Subject)
		b = append(b, `,"email":`...)
		b = appendJSONString(b, c.Email)
		b = append(b, `},"expires_in":`...)
		b = strconv.AppendInt(b, left, 10)
		b = append(b, "}\n"...)
		// The four header values share one allocation; each slice is capped so that a later
		// Add cannot write into its neighbour.
		v := []string{c.Subject, c.Email, "application/json", "no-store"}
		h := w.Header()
		h["X-User-Id"] = v[0:1:1]
		h["X-User-Email"] = v[1:2:2]
		h["Content-Type"] = v[2:3:3]
		h["Cache-Control"] = v[3:4:4]
		w.Write(b)
	})
}

func handleHealthz() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		encode(w, http.StatusOK, map[string]string{"status": "ok"})
	})
}

func handleReadyz(d *deps) http.Handler {
	return handle(d.log, func(w http.ResponseWriter, r *http.Request) error {
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := d.store.Ping(ctx); err != nil {
			return fmt.Errorf("%w: %v", ErrUnavailable, err)
		}
		encode(w, http.StatusOK, map[string]string{"status": "ready"})
		return nil
	})
}
