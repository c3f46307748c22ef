package main

// middleware.go wraps every request: recovery, request ids, the access log, CORS, JSON mux errors.

import (
	"context"
	"log/slog"
	"net/http"
	"runtime/debug"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

type ctxKey int

const infoKey ctxKey = 0

// reqInfo travels with a request under one context key: its id, and the verified identity once
// requireAccess has checked the token, which the access log also reads. One context value per
// request rather than one per fact keeps the forward-auth check to a single request copy.
type reqInfo struct {
	id     string
	userID string
	claims *claims
	route  string // for the metrics and the log when no route pattern matched (a CORS preflight)
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
	if info, ok := ctx.Value(infoKey).(*reqInfo); ok {
		return info.claims
	}
	return nil
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
					writeError(w, r, log, errInternal)
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

// requestIDs makes request ids unique without a system call per request: a random prefix per
// process and a counter.
type requestIDs struct {
	prefix string
	n      atomic.Uint64
}

func newRequestIDs() *requestIDs { return &requestIDs{prefix: newID()[:12]} }

func (g *requestIDs) next() string {
	var b [32]byte
	id := append(append(b[:0], g.prefix...), '-')
	return string(strconv.AppendUint(id, g.n.Add(1), 36))
}

// accessLog gives every request an id (the client's X-Request-Id when sane), and when it is
// answered logs one line and counts it in m. It runs on every forward-auth check, so it allocates
// once per request and builds its record without a slice of attributes.
func accessLog(log *slog.Logger, now func() time.Time, ids *requestIDs, m *metrics) func(http.Handler) http.Handler {
	type tracked struct {
		statusWriter
		info reqInfo
	}
	return func(next http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			start := now()
			t := &tracked{statusWriter: statusWriter{ResponseWriter: w}}
			t.info.id = r.Header.Get("X-Request-Id")
			if !saneRequestID(t.info.id) {
				t.info.id = ids.next()
			}
			w.Header()["X-Request-Id"] = []string{t.info.id}
			ctx := context.WithValue(r.Context(), infoKey, &t.info)
			inner := r.WithContext(ctx)
			defer func() {
				// A panic is still a request: it is counted and logged as the 500 that recoverer,
				// outside, answers (with the stack), and then passed on to it.
				if v := recover(); v != nil {
					if t.status == 0 {
						t.status = http.StatusInternalServerError
					}
					defer panic(v)
				}
				// ServeMux notes the pattern it matched on the request it was given: inner, as long
				// as the middleware in between passes requests on unchanged.
				logRequest(ctx, log, m, r, inner.Pattern, &t.statusWriter, &t.info, start, now())
			}()
			next.ServeHTTP(&t.statusWriter, inner)
		})
	}
}

// logRequest counts an answered request and writes its access line.
func logRequest(ctx context.Context, log *slog.Logger, m *metrics, r *http.Request, pattern string,
	t *statusWriter, info *reqInfo, start, end time.Time) {
	if t.status == 0 {
		t.status = http.StatusOK
	}
	took := end.Sub(start)
	route := pattern
	if route == "" {
		route = info.route
	}
	if route == "" {
		route = "unmatched"
	}
	m.observe(route, r.Method, t.status, took)
	h := log.Handler()
	if !h.Enabled(ctx, slog.LevelInfo) {
		return
	}
	rec := slog.NewRecord(end, slog.LevelInfo, "request", 0)
	rec.AddAttrs(
		slog.String("method", r.Method),
		slog.String("path", r.URL.Path),
		slog.String("route", route),
		slog.Int("status", t.status),
		// Whole microseconds: slog writes floats through json.Marshal, which costs more
		// than the rest of the line.
		slog.Int64("duration_us", took.Microseconds()),
	)
	rec.AddAttrs(slog.Int("bytes", t.bytes), slog.String("request_id", info.id))
	if info.userID != "" {
		rec.AddAttrs(slog.String("user_id", info.userID))
	}
	h.Handle(ctx, rec)
}

// statusWriter records the status and size of an answer for the access log.
type statusWriter struct {
	http.ResponseWriter
	status int
	bytes  int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.bytes += n
	return n, err
}

func (w *statusWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// muxErrorsAsJSON rewrites ServeMux's own plain-text 404 and 405 answers into the JSON error that
// every other answer uses, keeping the 405's Allow header. A catch-all "/" route would do the 404
// but would also swallow every 405.
func muxErrorsAsJSON(next http.Handler) http.Handler {
	return muxErrorsAs(next, func(*http.Request) func(http.ResponseWriter, int) { return nil })
}

// muxErrorsAs is muxErrorsAsJSON, except that on a request for which pageOf gives a writer,
// that writer answers instead (the portal's HTML pages).
func muxErrorsAs(next http.Handler, pageOf func(*http.Request) func(http.ResponseWriter, int)) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		next.ServeHTTP(&muxErrorWriter{ResponseWriter: w, page: pageOf(r)}, r)
	})
}

var muxErrors = map[int]*apiError{
	http.StatusNotFound:         errNotFound,
	http.StatusMethodNotAllowed: errMethodNotAllowed,
}

type muxErrorWriter struct {
	http.ResponseWriter
	page           func(http.ResponseWriter, int) // nil: JSON
	wrote, swallow bool
}

func (w *muxErrorWriter) WriteHeader(code int) {
	if w.wrote {
		return
	}
	w.wrote = true
	// ServeMux answers with http.Error, which declares text/plain; the service's own 404s are JSON.
	if e := muxErrors[code]; e != nil && strings.HasPrefix(w.Header().Get("Content-Type"), "text/plain") {
		w.swallow = true
		if w.page != nil {
			w.page(w.ResponseWriter, code)
			return
		}
		encode(w.ResponseWriter, code, errorBody{Error: e.code, Message: e.message})
		return
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *muxErrorWriter) Write(b []byte) (int, error) {
	if !w.wrote {
		w.WriteHeader(http.StatusOK)
	}
	if w.swallow {
		return len(b), nil
	}
	return w.ResponseWriter.Write(b)
}

func (w *muxErrorWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// forwardAuthPath is the route that forward-auth proxies ask about the requests they guard. A
// request there stands for another one, which decides whether it is a CORS preflight.
const forwardAuthPath = "/auth/page"

// guardedMethod is the method of the request r stands for, which decides whether r is a CORS
// preflight. Off the forward-auth route that is r's own. On it, X-Forwarded-Method decides when
// present, whichever way it disagrees with r's: nginx, Caddy and Traefik ask with GET and name the
// client's method there, replacing any the client sent. Taking a header of a client's own for the
// truth costs at most a refused preflight, never a request let through. More than one value means
// something appended rather than replaced: none is believed, and the token check decides.
func guardedMethod(r *http.Request) string {
	if r.URL.Path != forwardAuthPath {
		return r.Method
	}
	if _, sent := r.Header["X-Forwarded-Method"]; !sent {
		return r.Method
	}
	named, _ := header(r, "X-Forwarded-Method")
	return named
}

// cors lets browsers on the listed origins call the service directly. A listed origin is echoed
// and may send credentials; "*" allows any origin but then never with credentials.
//
// A preflight from such an origin is answered 204 without a token, as browsers send none. On the
// forward-auth route that 204 lets the guarded request through the proxy, so there only a real
// preflight gets it (see guardedMethod); anything else there goes on to the token check. An
// Origin or Access-Control-Request-Method sent twice is believed neither way: no CORS answer.
func cors(origins []string) func(http.Handler) http.Handler {
	allowed := make(map[string]bool, len(origins))
	for _, o := range origins {
		allowed[strings.TrimSuffix(o, "/")] = true // browsers never send the slash
	}
	return func(next http.Handler) http.Handler {
		if len(allowed) == 0 {
			return next
		}
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			origin, err := header(r, "Origin")
			if origin == "" || err != nil {
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
			h.Set("Access-Control-Expose-Headers", "WWW-Authenticate, Retry-After, X-Request-Id, X-User-Id, X-User-Email, X-User-Email-Verified, X-User-Acr, X-User-Amr")
			asks, err := header(r, "Access-Control-Request-Method")
			if guardedMethod(r) == http.MethodOptions && asks != "" && err == nil {
				h.Set("Access-Control-Allow-Methods", "GET, HEAD, POST, DELETE, OPTIONS")
				h.Set("Access-Control-Allow-Headers",
					"Authorization, Content-Type, authorization_access, authorization_refresh, X-Request-Id")
				h.Set("Access-Control-Max-Age", "600")
				if r.URL.Path == forwardAuthPath {
					// The proxy passes the preflight on with no identity. Empty rather than absent:
					// Caddy 2.6's copy_headers hands the application a header missing from this
					// answer as the text of its own placeholder, and an empty one as empty; nginx
					// drops an empty one.
					h["X-User-Id"] = []string{""}
					h["X-User-Email"] = []string{""}
					h["X-User-Email-Verified"] = []string{""}
					h["X-User-Acr"] = []string{""}
					h["X-User-Amr"] = []string{""}
				}
				if info, ok := r.Context().Value(infoKey).(*reqInfo); ok {
					info.route = "preflight"
				}
				w.WriteHeader(http.StatusNoContent)
				return
			}
			next.ServeHTTP(w, r)
		})
	}
}
