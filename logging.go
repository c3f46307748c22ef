package main

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

// newLogger logs JSON lines (or text with LOG_FORMAT=text) at the configured level.
func newLogger(w io.Writer, c config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	// Both paths write whole lines through one lock, so that lines never interleave; the
	// service's logBuffer is that lock already.
	if _, ok := w.(*logBuffer); !ok {
		w = &lockedWriter{w: w}
	}
	return slog.New(&flatJSONHandler{JSONHandler: slog.NewJSONHandler(w, opts), w: w})
}

type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// flatJSONHandler writes flat records of strings and numbers, the access line among them, byte for
// byte as slog's JSONHandler would (a test compares the two), without its generic machinery: under
// a forward-auth load slog's encoder cost more per request than the token check it logged.
// Anything else, and any logger derived with attributes or groups, is slog's own JSONHandler.
type flatJSONHandler struct {
	*slog.JSONHandler
	w io.Writer
}

func (h *flatJSONHandler) Handle(ctx context.Context, r slog.Record) error {
	flat := true
	r.Attrs(func(a slog.Attr) bool {
		switch a.Value.Kind() {
		case slog.KindString, slog.KindInt64, slog.KindUint64, slog.KindBool:
		default:
			flat = false
		}
		return flat
	})
	if !flat || r.Time.Year() < 0 || r.Time.Year() >= 10000 {
		return h.JSONHandler.Handle(ctx, r)
	}
	b := make([]byte, 0, 256)
	if !r.Time.IsZero() {
		b = append(b, `{"time":"`...)
		b = r.Time.Round(0).AppendFormat(b, time.RFC3339Nano)
		b = append(b, `","level":`...)
	} else {
		b = append(b, `{"level":`...)
	}
	b = appendJSONString(b, r.Level.String())
	b = append(b, `,"msg":`...)
	b = appendJSONString(b, r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b = append(b, ',')
		b = appendJSONString(b, a.Key)
		b = append(b, ':')
		switch v := a.Value; v.Kind() {
		case slog.KindString:
			b = appendJSONString(b, v.String())
		case slog.KindInt64:
			b = strconv.AppendInt(b, v.Int64(), 10)
		case slog.KindUint64:
			b = strconv.AppendUint(b, v.Uint64(), 10)
		case slog.KindBool:
			b = strconv.AppendBool(b, v.Bool())
		}
		return true
	})
	b = append(b, "}\n"...)
	_, err := h.w.Write(b)
	return err
}

func (h *flatJSONHandler) WithAttrs(as []slog.Attr) slog.Handler { return h.JSONHandler.WithAttrs(as) }
func (h *flatJSONHandler) WithGroup(name string) slog.Handler    { return h.JSONHandler.WithGroup(name) }

// appendJSONString quotes s as slog's JSONHandler does: \n, \r, \t and \" short, other control
// bytes as \u00XX, invalid UTF-8 as \ufffd, and U+2028 and U+2029 escaped. The access log and
// the forward-auth answer both write their strings with it.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' && c < utf8.RuneSelf {
			i++
			continue
		}
		if c < utf8.RuneSelf {
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			b = append(append(b, s[start:i]...), `\ufffd`...)
		case r == '\u2028' || r == '\u2029':
			b = append(append(b, s[start:i]...), `\u202`...)
			b = append(b, hex[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// logBuffer batches log lines so that an access line costs a copy into memory rather than a write
// system call per request; it is flushed every 100ms and when run returns, so at most that much is
// lost if the process is killed outright.
type logBuffer struct {
	mu sync.Mutex
	w  *bufio.Writer
}

func newLogBuffer(w io.Writer) *logBuffer { return &logBuffer{w: bufio.NewWriterSize(w, 64<<10)} }

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Write(p)
}

func (b *logBuffer) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.w.Flush()
}

func (b *logBuffer) flushEvery(ctx context.Context, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.Flush()
		}
	}
}
