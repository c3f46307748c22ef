package main

// logging.go writes the service's log: slog lines, batched in memory and flushed often.

import (
	"bufio"
	"context"
	"io"
	"log/slog"
	"sync"
	"time"
)

// newLogger logs JSON lines (or text with LOG_FORMAT=text) at the configured level. slog's
// handlers write each record whole under a lock of their own, so lines never interleave.
func newLogger(w io.Writer, c config) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.logLevel}
	if c.logFormat == "text" {
		return slog.New(slog.NewTextHandler(w, opts))
	}
	return slog.New(slog.NewJSONHandler(w, opts))
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
