package main

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strings"
	"time"
)

type ctxKey int

const (
	infoKey ctxKey = iota
	claimsKey
)

// reqInfo travels with a request so that the access log can name what inner layers learnt.
type reqInfo struct {
	id     string
	userID string
}

// noteUser names the request's user in its access log line.
func noteUser(ctx context.Context, id string) {
	if info, ok := ctx.Value(infoKey).(*reqInfo); ok {
		info.userID = id
	}
}

func requestID(ctx context.Context) string {
	if info, ok := ctx.Value(infoKey).(*reqInfo); ok {
		return info.id
	}
	return ""
}

// claimsFrom returns the verified access token of a request that passed requireAccess.
func claimsFrom(ctx context.Context) *claims {
	c, _ := ctx.Value(claimsKey).(*claims)
	return c
}

// recoverer turns a panic into a logged 500, so that one bad request cannot take the process down.
func recoverer(log *slog.Logger) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			defer func() {
				if v := recover(); v != nil {
					if v == http.ErrAbortHandler {
						panic(v)
					}
					log.Error("panic", "request_id", w.Header().Get("X-Request-Id"), "panic", v,
						"stack", string(debug.Stack()))
					encode(w, http.StatusInternalServerError, errorBody{errInternal.code, errInternal.message})
				}
			}()
			next.ServeHTTP(w, r)
		})
	}
}

// saneRequestID accepts a client's X-Request-Id only if it is a short token that is safe to log.
func saneRequestID(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
			c == '-' || c == '_' || c == '.' || c == ':') {
			return false
		}
	}
	return true
}

// accessLog gives every request an id (the client's X-Request-Id when sane), and when it is
// answered logs one line and counts it in m.
func accessLog(log *slog.Logger, now func() time.Time, m *metrics) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := now()
			info := &reqInfo{id: r.Header.Get("X-Request-Id")}
			if !saneRequestID(info.id) {
				info.id = newID()
			}
			w.Header()["X-Request-Id"] = []string{info.id}
			sw := &statusWriter{ResponseWriter: w}
			inner := r.WithContext(context.WithValue(r.Context(), infoKey, info))
			next.ServeHTTP(sw, inner)
			if sw.status == 0 {
				sw.status = http.StatusOK
			}
			took := now().Sub(start)
			// ServeMux notes the pattern it matched on the request it was given: inner, as long as
			// the middleware in between passes requests on unchanged.
			route := inner.Pattern
			if route == "" {
				route = "unmatched"
			}
			m.observe(route, r.Method, sw.status, took)
			attrs := []slog.Attr{
				slog.String("method", r.Method),
				slog.String("path", r.URL.Path),
				slog.String("route", route),
				slog.Int("status", sw.status),
				slog.Float64("duration_ms", float64(took.Microseconds())/1000),
				slog.Int("bytes", sw.bytes),
				slog.String("request_id", info.id),
			}
			if info.userID != "" {
				attrs = append(attrs, slog.String("user_id", info.userID))
			}
			log.LogAttrs(r.Context(), slog.LevelInfo, "request", attrs...)
		})
	}
}

// statusWriter records the status and size of an answer for the access log. It also rewrites
// ServeMux's own plain-text 404 and 405 into the JSON error every other answer uses (keeping the
// 405's Allow): a catch-all "/" route would do the 404 but would also swallow every 405.
type statusWriter struct {
	http.ResponseWriter
	status  int
	bytes   int
	swallow bool
}

var muxErrors = map[int]*apiError{
	http.StatusNotFound:         errNotFound,
	http.StatusMethodNotAllowed: errMethodNotAllowed,
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status != 0 {
		return
	}
	w.status = code
	if e := muxErrors[code]; e != nil && strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		w.swallow = true
		w.Header().Del("X-Content-Type-Options")
		encode(w.ResponseWriter, code, errorBody{e.code, e.message})
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(b), nil
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// cors lets browsers on the listed origins call the service directly. A listed origin is echoed
// and may send credentials; "*" allows any origin but then never with credentials.
func cors(origins []string) func(http.Handler) http.Handler {
	allowed := make(map[string]bool, len(origins))
	for _, o := range origins {
		allowed[o] = true
	}
	return func(next http.Handler) http.Handler {
		if len(allowed) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			origin := r.Header.Get("Origin")
			if origin == "" {
				next.ServeHTTP(w, r)
				return
			}
			h := w.Header()
			h.Add("Vary", "Origin")
			switch {
			case allowed[origin]:
				h.Set("Access-Control-Allow-Origin", origin)
				h.Set("Access-Control-Allow-Credentials", "true")
			case allowed["*"]:
				h.Set("Access-Control-Allow-Origin", "*")
			default:
				next.ServeHTTP(w, r)
				return
			}
			h.Set("Access-Control-Expose-Headers", "WWW-Authenticate, Retry-After, X-Request-Id, X-User-Id, X-User-Email")
			if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, OPTIONS")
				h.Set("Access-Control-Allow-Headers",
					"Authorization, Content-Type, authorization_access, authorization_refresh, X-Request-Id")
				h.Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}

// requireAccess lets a request through only with a valid, unexpired, unrevoked access token, and
// tells the client why not otherwise: token_expired means "call /auth/refresh and retry". It never
// touches the database: tokens are checked by signature and the in-memory revocation list.
// Identity headers a client sends itself are never read.
func requireAccess(d *deps) func(http.Handler) http.Handler {
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			raw := accessToken(r)
			if raw == "" {
				writeError(w, r, d.log, errTokenMissing)
				return
			}
			c, err := d.tokens.parse(raw, useAccess)
			if err != nil {
				writeError(w, r, d.log, err)
				return
			}
			if d.revocations.revoked(c) {
				writeError(w, r, d.log, errTokenRevoked)
				return
			}
			ctx := r.Context()
			noteUser(ctx, c.Subject)
			next.ServeHTTP(w, r.WithContext(context.WithValue(ctx, claimsKey, c)))
		})
	}
}
