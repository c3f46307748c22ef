package main

// maildelivery.go hands a rendered mail over: to an SMTP server, or to the development mailbox.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/smtp"
	"net/textproto"
	"os"
	"path/filepath"
	"strings"
	"time"
)

// smtpTransport delivers over SMTP with net/smtp: smtps:// speaks TLS from the first byte;
// smtp:// upgrades with STARTTLS whenever the server offers it, and refuses to go on without it
// unless the server is this machine. Credentials never travel in clear.
type smtpTransport struct {
	cfg         smtpConfig
	from        string
	dialTimeout time.Duration
}

func (t *smtpTransport) deliver(ctx context.Context, m *outgoingMail) error {
	d := net.Dialer{Timeout: t.dialTimeout}
	conn, err := d.DialContext(ctx, "tcp", net.JoinHostPort(t.cfg.host, t.cfg.port))
	if err != nil {
		return err
	}
	defer conn.Close()
	// The whole exchange ends with ctx: a server that stops answering cannot hold an attempt.
	if deadline, ok := ctx.Deadline(); ok {
		conn.SetDeadline(deadline)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Now()) })
	defer stop()
	tlsConfig := &tls.Config{ServerName: t.cfg.host, RootCAs: t.cfg.roots, MinVersion: tls.VersionTLS12}
	if t.cfg.implicitTLS {
		tc := tls.Client(conn, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return err
		}
		conn = tc
	}
	c, err := smtp.NewClient(conn, t.cfg.host)
	if err != nil {
		return err
	}
	defer c.Close()
	if !t.cfg.implicitTLS {
		if ok, _ := c.Extension("STARTTLS"); ok {
			if err := c.StartTLS(tlsConfig); err != nil {
				return fmt.Errorf("STARTTLS: %w", err)
			}
		} else if !loopbackHost(t.cfg.host) {
			return fmt.Errorf("the SMTP server %s offers no STARTTLS: no mail, and no password, goes to it in clear", t.cfg.host)
		}
	}
	if t.cfg.user != "" {
		// PlainAuth itself also refuses a connection without TLS to anything but localhost.
		if err := c.Auth(smtp.PlainAuth("", t.cfg.user, t.cfg.pass, t.cfg.host)); err != nil {
			return fmt.Errorf("SMTP authentication: %w", err)
		}
	}
	if err := c.Mail(t.from); err != nil {
		return permanentIfRefused(err)
	}
	if err := c.Rcpt(m.to); err != nil {
		return permanentIfRefused(err)
	}
	w, err := c.Data()
	if err != nil {
		return permanentIfRefused(err)
	}
	if _, err := w.Write(m.data); err != nil {
		return err
	}
	if err := w.Close(); err != nil {
		return permanentIfRefused(err)
	}
	c.Quit() // the mail is accepted; a failed goodbye changes nothing
	return nil
}

// permanentIfRefused marks a 5xx answer to the sender, recipient or data as permanent: the server
// will not take this mail however often it is asked.
func permanentIfRefused(err error) error {
	var te *textproto.Error
	if errors.As(err, &te) && te.Code >= 500 {
		return permanentError{err}
	}
	return err
}

// mailDirTransport is the development mailbox: each mail is a .eml file under DATA_DIR/mail,
// which any mail program opens, and its link is logged at INFO, so that `go run .` has working
// mail with nothing installed. The directory is 0700 and the files 0600: they hold live links.
// Only the development default, never production, logs a link.
type mailDirTransport struct {
	dir string
	log *slog.Logger
}

func (t *mailDirTransport) deliver(ctx context.Context, m *outgoingMail) error {
	if err := os.MkdirAll(t.dir, 0o700); err != nil {
		return err
	}
	name := filepath.Join(t.dir, time.Now().UTC().Format("20060102T150405.000Z")+"-"+m.kind+"-"+m.id+".eml")
	f, err := os.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if errors.Is(err, fs.ErrExist) {
		return nil // written by an earlier attempt that failed after
	}
	if err != nil {
		return err
	}
	_, err = f.Write(m.data)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return err
	}
	attrs := []slog.Attr{slog.String("to", m.to), slog.String("kind", m.kind), slog.String("file", name)}
	if m.link != "" {
		attrs = append(attrs, slog.String("link", m.link))
	}
	t.log.LogAttrs(ctx, slog.LevelInfo, "mail written to the development mailbox", attrs...)
	return nil
}

// loopbackHost reports whether host names this machine itself, where mail may go without TLS: a
// loopback address, or localhost. A name is not resolved: one that resolves to a loopback address
// today may not tomorrow.
func loopbackHost(host string) bool {
	if strings.EqualFold(host, "localhost") {
		return true
	}
	a, err := netip.ParseAddr(host)
	return err == nil && a.IsLoopback()
}
