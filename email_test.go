package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"mime"
	"mime/multipart"
	"net"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"go.mongodb.org/mongo-driver/v2/bson"
)

// mailServer is a real SMTP server for the tests (go-smtp), with STARTTLS under a certificate made
// for the test, AUTH PLAIN required before any mail, and everything it receives kept. It listens
// on a Unix socket behind a TCP proxy, so that it can be stopped and started again while the
// service keeps the one address it was given.
type mailServer struct {
	sock        string
	proxy       *tcpProxy
	roots       *x509.CertPool
	caFile      string // the certificate, PEM, for SMTP_CA_FILE
	cert        tls.Certificate
	implicitTLS bool

	mu     sync.Mutex
	srv    *smtp.Server
	got    []receivedMail
	seen   map[string]int  // per address, how many mails next has handed out
	refuse map[string]bool // recipients answered 550
}

const (
	testSMTPUser = "mailer"
	testSMTPPass = "smtp-password-for-tests"
	testAppURL   = "https://app.example.com"
)

type receivedMail struct {
	from   string
	to     []string
	data   []byte
	tls    bool   // the mail came over TLS
	authed string // the user it authenticated as
}

func newMailServer(tb testing.TB, implicitTLS bool) *mailServer {
	tb.Helper()
	dir, err := os.MkdirTemp("", "smtp-") // short: a socket's path is limited to about 107 bytes
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	s := &mailServer{sock: filepath.Join(dir, "smtp.sock"), implicitTLS: implicitTLS, seen: map[string]int{},
		refuse: map[string]bool{}}
	s.makeCert(tb, dir)
	s.start(tb)
	s.proxy = newTCPProxy(tb, s.sock)
	tb.Cleanup(func() { s.stop() })
	return s
}

// makeCert makes a self-signed certificate for 127.0.0.1 and localhost.
func (s *mailServer) makeCert(tb testing.TB, dir string) {
	tb.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "smtp test"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, IsCA: true, BasicConstraintsValid: true,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	s.roots = x509.NewCertPool()
	s.roots.AddCert(leaf)
	s.cert = tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	s.caFile = filepath.Join(dir, "ca.pem")
	if err := os.WriteFile(s.caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		tb.Fatal(err)
	}
}

// start serves on the socket, and sends the proxy's connections to it again.
func (s *mailServer) start(tb testing.TB) {
	tb.Helper()
	os.Remove(s.sock)
	var ln net.Listener
	ln, err := net.Listen("unix", s.sock)
	if err != nil {
		tb.Fatal(err)
	}
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &mailSession{s: s, conn: c}, nil
	}))
	srv.Domain = "localhost"
	srv.TLSConfig = &tls.Config{Certificates: []tls.Certificate{s.cert}}
	srv.AllowInsecureAuth = false // AUTH only after STARTTLS
	srv.ReadTimeout, srv.WriteTimeout = 10*time.Second, 10*time.Second
	srv.ErrorLog = discardSMTPLog{}
	if s.implicitTLS {
		ln = tls.NewListener(ln, srv.TLSConfig)
	}
	s.mu.Lock()
	s.srv = srv
	s.mu.Unlock()
	go srv.Serve(ln)
	if s.proxy != nil {
		s.proxy.connect(s.sock)
	}
}

// stop closes the server and every connection to it; new ones are refused until start.
func (s *mailServer) stop() {
	if s.proxy != nil {
		s.proxy.cut()
	}
	s.mu.Lock()
	srv := s.srv
	s.srv = nil
	s.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

type discardSMTPLog struct{}

func (discardSMTPLog) Printf(string, ...any) {}
func (discardSMTPLog) Println(...any)        {}

// port is the TCP port the service sends to.
func (s *mailServer) port() string {
	_, port, _ := net.SplitHostPort(s.proxy.addr())
	return port
}

// url is the server as SMTP_URL says it.
func (s *mailServer) url() string {
	scheme := "smtp"
	if s.implicitTLS {
		scheme = "smtps"
	}
	return fmt.Sprintf("%s://%s:%s@127.0.0.1:%s", scheme, testSMTPUser, testSMTPPass, s.port())
}

// configure points c's mail at s, with short retries. Polls stay a quarter second apart: a mail
// queued wakes the sender at once, and a few dozen senders polling faster slow the shared test
// database enough that other tests' calls time out under the race detector.
func (s *mailServer) configure(c *config) {
	c.mail.mode = mailSMTP
	c.mail.smtp = smtpConfig{host: "127.0.0.1", port: s.port(), user: testSMTPUser, pass: testSMTPPass,
		implicitTLS: s.implicitTLS, roots: s.roots}
	c.mail.from, c.mail.fromAddr = `"Example App" <auth@example.com>`, "auth@example.com"
	c.mail.appURL, c.mail.appName = testAppURL, "Example App"
	c.mail.verification = verificationOptional
	c.mail.poll, c.mail.retryBase, c.mail.retryCap = 250*time.Millisecond, 50*time.Millisecond, 200*time.Millisecond
	c.mail.maxPerClient = 0 // the tests send from one address; the limits' own test sets them
	c.mail.addressInterval = 0
}

type mailSession struct {
	s    *mailServer
	conn *smtp.Conn
	user string
	from string
	to   []string
}

func (m *mailSession) AuthMechanisms() []string { return []string{sasl.Plain} }

func (m *mailSession) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, username, password string) error {
		if username != testSMTPUser || password != testSMTPPass {
			return smtp.ErrAuthFailed
		}
		m.user = username
		return nil
	}), nil
}

func (m *mailSession) Mail(from string, _ *smtp.MailOptions) error {
	if m.user == "" {
		return smtp.ErrAuthRequired
	}
	m.from = from
	return nil
}

func (m *mailSession) Rcpt(to string, _ *smtp.RcptOptions) error {
	m.s.mu.Lock()
	refused := m.s.refuse[to]
	m.s.mu.Unlock()
	if refused {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such mailbox"}
	}
	m.to = append(m.to, to)
	return nil
}

func (m *mailSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	_, isTLS := m.conn.TLSConnectionState()
	m.s.mu.Lock()
	defer m.s.mu.Unlock()
	m.s.got = append(m.s.got, receivedMail{from: m.from, to: m.to, data: b, tls: isTLS, authed: m.user})
	return nil
}

func (m *mailSession) Reset()        { m.from, m.to = "", nil }
func (m *mailSession) Logout() error { return nil }

// mailsTo lists what s received for to.
func (s *mailServer) mailsTo(to string) []receivedMail {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []receivedMail
	for _, m := range s.got {
		if len(m.to) == 1 && m.to[0] == to {
			out = append(out, m)
		}
	}
	return out
}

// next waits for the next mail to to that next has not handed out yet. While it waits it calls
// tick, when not nil (to move a test's clock on to a retry).
func (s *mailServer) next(tb testing.TB, to string, tick func()) parsedMail {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		s.mu.Lock()
		n := s.seen[to]
		s.mu.Unlock()
		if got := s.mailsTo(to); len(got) > n {
			s.mu.Lock()
			s.seen[to] = n + 1
			s.mu.Unlock()
			return parseMail(tb, got[n])
		}
		if time.Now().After(deadline) {
			tb.Fatalf("no mail to %s arrived within 30s", to)
		}
		if tick != nil {
			tick()
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// parsedMail is a received mail taken apart.
type parsedMail struct {
	receivedMail
	header     mail.Header
	subject    string
	text, html string
}

func parseMail(tb testing.TB, r receivedMail) parsedMail {
	tb.Helper()
	msg, err := mail.ReadMessage(bytes.NewReader(r.data))
	if err != nil {
		tb.Fatalf("the mail does not parse: %v\n%s", err, r.data)
	}
	p := parsedMail{receivedMail: r, header: msg.Header}
	if p.subject, err = new(mime.WordDecoder).DecodeHeader(msg.Header.Get("Subject")); err != nil {
		tb.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/alternative" {
		tb.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	parts := multipart.NewReader(msg.Body, params["boundary"])
	for {
		part, err := parts.NextPart() // decodes quoted-printable
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		b, _ := io.ReadAll(part)
		switch ct := part.Header.Get("Content-Type"); {
		case strings.HasPrefix(ct, "text/plain"):
			p.text = string(b)
		case strings.HasPrefix(ct, "text/html"):
			p.html = string(b)
		}
	}
	p.text = strings.ReplaceAll(p.text, "\r\n", "\n")
	if p.text == "" || p.html == "" {
		tb.Fatalf("the mail lacks a text or an HTML body:\n%s", r.data)
	}
	return p
}

var mailLink = regexp.MustCompile(regexp.QuoteMeta(testAppURL) + `(/[a-z-]+)\?token=([A-Za-z0-9_-]+)`)

// link returns the path and token of the link in m, checking that the HTML body has the same
// link and that both show the token alone, as a code.
func (m parsedMail) link(tb testing.TB) (path, token string) {
	tb.Helper()
	found := mailLink.FindStringSubmatch(m.text)
	if found == nil {
		tb.Fatalf("no link in the mail's text:\n%s", m.text)
	}
	path, token = found[1], found[2]
	if !strings.Contains(m.html, `href="`+found[0]+`"`) {
		tb.Fatalf("the HTML body does not link to %s:\n%s", found[0], m.html)
	}
	if !strings.Contains(m.text, "\n"+token+"\n") || !strings.Contains(m.html, ">"+token+"<") {
		tb.Fatalf("the mail does not show the code alone:\n%s\n%s", m.text, m.html)
	}
	if len(token) < 22 { // 128 bits in base64
		tb.Fatalf("token %q is shorter than 128 bits", token)
	}
	return path, token
}

// newMailEnv is a service whose mail goes to srv, with its sender running.
func newMailEnv(tb testing.TB, srv *mailServer, opts ...func(*config)) *testEnv {
	tb.Helper()
	e := newTestEnv(tb, append([]func(*config){srv.configure}, opts...)...)
	e.startSender(tb)
	return e
}

// startSender runs e's mail sender until the test ends.
func (e *testEnv) startSender(tb testing.TB) {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.deps.mail.outbox.loop(ctx) }()
	tb.Cleanup(func() { cancel(); <-done })
}

// signupMailed signs up email and takes the verification mail it is sent.
func (e *testEnv) signupMailed(tb testing.TB, srv *mailServer, email string) parsedMail {
	tb.Helper()
	e.signup(tb, email, "correct horse battery")
	m := srv.next(tb, email, nil)
	if path, _ := m.link(tb); path != "/verify-email" {
		tb.Fatalf("the sign-up mail links to %s, want /verify-email", path)
	}
	return m
}

// outboxEmpty waits until e's outbox holds nothing: every mail is sent, or needed none.
func (e *testEnv) outboxEmpty(tb testing.TB) {
	tb.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err := e.store.OldestMail(context.Background())
		if errors.Is(err, ErrNotFound) {
			return
		}
		if time.Now().After(deadline) {
			tb.Fatalf("the outbox is not empty after 30s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestPasswordResetFromTheMailReceived(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const email = "ada@example.com"
	e.signupMailed(t, srv, email)
	access, refresh := e.login(t, email, "correct horse battery")

	r := e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "  ADA@example.com "}).want(t, 202, "")
	m := srv.next(t, email, nil)
	if !m.tls || m.authed != testSMTPUser || m.from != "auth@example.com" {
		t.Fatalf("the mail came with TLS %v, authenticated as %q, from %q: want STARTTLS, %s, auth@example.com",
			m.tls, m.authed, m.from, testSMTPUser)
	}
	if !strings.Contains(m.subject, "Example App") || m.header.Get("To") != email ||
		!strings.Contains(m.header.Get("From"), "auth@example.com") || !strings.Contains(m.text, "15 minutes") {
		t.Fatalf("subject %q, To %q, From %q, text:\n%s", m.subject, m.header.Get("To"), m.header.Get("From"), m.text)
	}
	path, token := m.link(t)
	if path != "/reset-password" {
		t.Fatalf("the reset mail links to %s", path)
	}
	t.Run("stores neither the token nor the link in clear", func(t *testing.T) {
		for _, coll := range []string{"mail_tokens", "mail_outbox", "mail_leases", "users"} {
			cur, err := e.store.users.Database().Collection(coll).Find(t.Context(), bson.D{})
			if err != nil {
				t.Fatal(err)
			}
			var docs []bson.M
			if err := cur.All(t.Context(), &docs); err != nil {
				t.Fatal(err)
			}
			if dump := fmt.Sprint(docs); strings.Contains(dump, token) {
				t.Fatalf("%s holds the token in clear: %s", coll, dump)
			}
		}
	})
	t.Run("refuses a weak password without using up the link", func(t *testing.T) {
		e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "short"}).want(t, 400, "weak_password")
	})
	t.Run("replaces the password and ends every session", func(t *testing.T) {
		got := e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "a brand new password"}).want(t, 200, "")
		if got.str("message") == "" || r.str("message") == "" {
			t.Fatalf("answers without a message: %s, %s", r.raw, got.raw)
		}
		e.page(t, access).want(t, 401, "token_revoked")
		e.refresh(t, refresh).want(t, 401, "token_revoked")
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 401, "invalid_credentials")
		e.login(t, email, "a brand new password")
	})
	t.Run("answers a used, unknown or empty token 400 token_invalid", func(t *testing.T) {
		for _, tok := range []string{token, "no-such-token", ""} {
			e.do(t, "POST", "/auth/password/reset", map[string]string{"token": tok, "password": "yet another password"}).want(t, 400, "token_invalid")
		}
	})
	t.Run("counts the mail sent and the session ended", func(t *testing.T) {
		e.outboxEmpty(t) // a mail is counted once the server's answer is in, after it arrived
		fams := scrape(t, e)
		if n := metricValue(t, fams, "auth_mails_total", "outcome", "sent"); n < 2 {
			t.Errorf("auth_mails_total{outcome=sent} = %v, want 2 (verification and reset)", n)
		}
		if n := metricValue(t, fams, "auth_sessions_ended_total", "reason", "password_reset"); n != 1 {
			t.Errorf("auth_sessions_ended_total{reason=password_reset} = %v, want 1", n)
		}
	})
}

func TestAResetLinkExpiresAndServesOnlyItsPurpose(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const email = "grace@example.com"
	_, verifyToken := e.signupMailed(t, srv, email).link(t)
	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": email}).want(t, 202, "")
	_, resetToken := srv.next(t, email, nil).link(t)

	// Each endpoint refuses the other's token, and leaves it usable.
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": verifyToken, "password": "a brand new password"}).want(t, 400, "token_invalid")
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": resetToken}).want(t, 400, "token_invalid")
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": verifyToken}).want(t, 200, "")

	e.clock.Advance(e.cfg.mail.resetTTL)
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": resetToken, "password": "a brand new password"}).want(t, 400, "token_invalid")
	e.login(t, email, "correct horse battery")
}

func TestForgotPasswordAnswersUnknownAddressesAlikeAndMailsNothing(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	e.signupMailed(t, srv, "known@example.com")
	known := e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "known@example.com"}).want(t, 202, "")
	unknown := e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "nobody@example.com"}).want(t, 202, "")
	if known.raw != unknown.raw {
		t.Fatalf("the answers differ: %s and %s", known.raw, unknown.raw)
	}
	srv.next(t, "known@example.com", nil)
	e.outboxEmpty(t)
	if got := srv.mailsTo("nobody@example.com"); len(got) != 0 {
		t.Fatalf("%d mails to an address without an account", len(got))
	}
	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "not an address"}).want(t, 400, "invalid_email")
	e.do(t, "POST", "/auth/password/forgot", `{"email":"known@example.com"}`, "Content-Type", "text/plain").want(t, 415, "unsupported_media_type")
}

func TestEmailVerificationFromTheMailReceived(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const email = "verify-me@example.com"
	_, token := e.signupMailed(t, srv, email).link(t)
	access, refresh := e.login(t, email, "correct horse battery") // optional: nothing refused
	if got := e.page(t, access).want(t, 200, "").header.Get("X-User-Email-Verified"); got != "false" {
		t.Fatalf("X-User-Email-Verified %q before verification, want false", got)
	}
	r := e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 200, "")
	if r.str("email") != email || r.body["email_verified"] != true {
		t.Fatalf("verify answered %s", r.raw)
	}
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 400, "token_invalid")

	t.Run("tokens say so from the next refresh on", func(t *testing.T) {
		if c := e.claimsOf(t, access); c["email_verified"] != false {
			t.Fatalf("the token from before says email_verified %v", c["email_verified"])
		}
		next := e.refresh(t, refresh).want(t, 200, "")
		page := e.page(t, next.str("access_token")).want(t, 200, "")
		if got := page.header.Get("X-User-Email-Verified"); got != "true" {
			t.Fatalf("X-User-Email-Verified %q after verification and a refresh, want true", got)
		}
		fresh, _ := e.login(t, email, "correct horse battery")
		if c := e.claimsOf(t, fresh); c["email_verified"] != true {
			t.Fatalf("a new login's token says email_verified %v", c["email_verified"])
		}
	})
	t.Run("resend mails an unverified address again and a verified one nothing", func(t *testing.T) {
		const other = "unverified@example.com"
		e.signupMailed(t, srv, other)
		for _, addr := range []string{email, other, "nobody@example.com"} {
			e.do(t, "POST", "/auth/email/resend", map[string]string{"email": addr}).want(t, 202, "")
		}
		_, again := srv.next(t, other, nil).link(t)
		e.outboxEmpty(t)
		if n := len(srv.mailsTo(email)); n != 1 {
			t.Fatalf("%d mails to the verified address, want only the sign-up's", n)
		}
		e.do(t, "POST", "/auth/email/verify", map[string]string{"token": again}).want(t, 200, "")
	})
}

func TestRequiredVerificationRefusesOnlyTheRightPassword(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, func(c *config) { c.mail.verification = verificationRequired })
	const email = "strict@example.com"
	_, token := e.signupMailed(t, srv, email).link(t)
	e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 403, "email_not_verified")
	e.do(t, "POST", "/auth/login", credentials{email, "not the password"}).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/login", credentials{"nobody@example.com", "not the password"}).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 200, "")
	e.login(t, email, "correct horse battery")
	if n := metricValue(t, scrape(t, e), "auth_logins_total", "outcome", "email_not_verified"); n != 1 {
		t.Fatalf("auth_logins_total{outcome=email_not_verified} = %v, want 1", n)
	}
}

func TestSignUpWithVerificationTellsNobodyWhoHasAnAccount(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const email = "owner@example.com"
	first := e.signup(t, email, "correct horse battery")
	srv.next(t, email, nil)
	again := e.do(t, "POST", "/auth/signup", credentials{email, "another password"}).want(t, 201, "")
	if again.str("id") == first.str("id") || again.str("id") == "" || again.str("email") != email || again.str("created_at") == "" {
		t.Fatalf("second sign-up answered %s; the first %s", again.raw, first.raw)
	}
	if len(again.body) != len(first.body) {
		t.Fatalf("the answers differ in shape: %s and %s", first.raw, again.raw)
	}
	notice := srv.next(t, email, nil)
	if !strings.Contains(notice.subject, "sign up") || mailLink.MatchString(notice.text) {
		t.Fatalf("the owner's notice: %q\n%s", notice.subject, notice.text)
	}
	e.login(t, email, "correct horse battery")
	e.do(t, "POST", "/auth/login", credentials{email, "another password"}).want(t, 401, "invalid_credentials")

	t.Run("with verification off, 409 as before and no mail", func(t *testing.T) {
		off := newMailEnv(t, srv, func(c *config) { c.mail.verification = verificationOff })
		off.signup(t, "quiet@example.com", "correct horse battery")
		off.do(t, "POST", "/auth/signup", credentials{"quiet@example.com", "correct horse battery"}).want(t, 409, "email_taken")
		off.outboxEmpty(t)
		if n := len(srv.mailsTo("quiet@example.com")); n != 0 {
			t.Fatalf("%d mails with verification off", n)
		}
	})
}

// With verification on, a sign-up with a taken address is answered like a new one, after the same
// database work: the same commands on the same collections, and as many documents written. A
// new account's insert commits where a taken address's fails without a commit, which on its own
// would answer sooner (BENCHMARKS.md, "Sign-up of a taken address").
func TestSignupOfATakenAddressDoesTheSameDatabaseWork(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	for _, verification := range []string{verificationOptional, verificationRequired} {
		t.Run(verification, func(t *testing.T) {
			var l commandLog
			cfg := testConfig(t)
			srv.configure(&cfg)
			cfg.mail.verification = verification
			e := newMonitoredEnv(t, &l, cfg) // no mail sender: only the requests' work
			e.signup(t, "taken@example.com", "correct horse battery")

			signup := func(email string) ([]string, int64) {
				l.take()
				e.signup(t, email, "another password")
				return l.take()
			}
			fresh, freshWritten := signup("new@example.com")
			taken, takenWritten := signup("taken@example.com")
			if !slices.Equal(fresh, taken) || freshWritten != takenWritten {
				t.Fatalf("a new address: %d documents written by\n%s\na taken one: %d by\n%s",
					freshWritten, strings.Join(fresh, "\n"), takenWritten, strings.Join(taken, "\n"))
			}
		})
	}
}

func TestEmailChangeFromTheMailsReceived(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const old, fresh = "before@example.com", "after@example.com"
	e.signupMailed(t, srv, old)
	access, refresh := e.login(t, old, "correct horse battery")
	auth := []string{"Authorization", "Bearer " + access}

	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": fresh, "password": "wrong"}, auth...).want(t, 401, "invalid_credentials")
	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": "bad", "password": "correct horse battery"}, auth...).want(t, 400, "invalid_email")
	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": old, "password": "correct horse battery"}, auth...).want(t, 400, "invalid_request")
	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": fresh, "password": "correct horse battery"}).want(t, 401, "token_missing")
	e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": fresh, "password": "correct horse battery"}, auth...).want(t, 202, "")

	notice := srv.next(t, old, nil)
	if !strings.Contains(notice.text, fresh) || mailLink.MatchString(notice.text) {
		t.Fatalf("the old address's notice:\n%s", notice.text)
	}
	confirm := srv.next(t, fresh, nil)
	_, token := confirm.link(t)
	if got := e.page(t, access).want(t, 200, "").header.Get("X-User-Email"); got != old {
		t.Fatalf("X-User-Email %q before the link is followed, want %s", got, old)
	}
	r := e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).want(t, 200, "")
	if r.str("email") != fresh {
		t.Fatalf("verify answered %s", r.raw)
	}

	t.Run("no session ends; the new address shows from the next refresh", func(t *testing.T) {
		if got := e.page(t, access).want(t, 200, "").header.Get("X-User-Email"); got != old {
			t.Fatalf("the token from before says %q; it carries the old address until refreshed", got)
		}
		next := e.refresh(t, refresh).want(t, 200, "")
		page := e.page(t, next.str("access_token")).want(t, 200, "")
		if page.header.Get("X-User-Email") != fresh || page.header.Get("X-User-Email-Verified") != "true" {
			t.Fatalf("after the refresh: X-User-Email %q, verified %q", page.header.Get("X-User-Email"), page.header.Get("X-User-Email-Verified"))
		}
	})
	t.Run("the new address logs in, the old one no longer", func(t *testing.T) {
		e.login(t, fresh, "correct horse battery")
		e.do(t, "POST", "/auth/login", credentials{old, "correct horse battery"}).want(t, 401, "invalid_credentials")
	})
	t.Run("a reset link mailed to the old address no longer works", func(t *testing.T) {
		u, err := e.store.UserByEmail(t.Context(), fresh)
		if err != nil {
			t.Fatal(err)
		}
		stamp, err := e.store.Stamp(t.Context(), u.ID)
		if err != nil {
			t.Fatal(err)
		}
		stale, err := newMailToken(t.Context(), e.store, e.clock.Now(), purposeReset, u.ID, old, stamp, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		e.do(t, "POST", "/auth/password/reset", map[string]string{"token": stale, "password": "a brand new password"}).want(t, 400, "token_invalid")
	})
	t.Run("the address is still unique when the link is followed", func(t *testing.T) {
		const wanted = "wanted@example.com"
		var tokens []string
		for _, who := range []string{"first@example.com", "second@example.com"} {
			e.signupMailed(t, srv, who)
			a, _ := e.login(t, who, "correct horse battery")
			e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": wanted, "password": "correct horse battery"},
				"Authorization", "Bearer "+a).want(t, 202, "")
			_, tok := srv.next(t, wanted, nil).link(t)
			tokens = append(tokens, tok)
		}
		e.do(t, "POST", "/auth/email/verify", map[string]string{"token": tokens[0]}).want(t, 200, "")
		e.do(t, "POST", "/auth/email/verify", map[string]string{"token": tokens[1]}).want(t, 409, "email_taken")
		e.login(t, "second@example.com", "correct horse battery")
	})
}

// Two simultaneous uses of one token: exactly one acts. A single-document delete decides, which
// FerretDB, unlike a guarded findOneAndUpdate, makes atomic.
func TestRacingUsesOfOneTokenLetExactlyOneWin(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	e.signupMailed(t, srv, "racer@example.com")
	u, err := e.store.UserByEmail(t.Context(), "racer@example.com")
	if err != nil {
		t.Fatal(err)
	}
	const racers, rounds = 32, 10
	for round := range rounds {
		token, err := newMailToken(t.Context(), e.store, e.clock.Now(), purposeVerify, u.ID, u.Email, 0, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		var (
			wg       sync.WaitGroup
			start    = make(chan struct{})
			statuses = make([]int, racers)
		)
		for i := range racers {
			wg.Go(func() {
				<-start
				statuses[i] = e.do(t, "POST", "/auth/email/verify", map[string]string{"token": token}).status
			})
		}
		close(start)
		wg.Wait()
		won := 0
		for _, s := range statuses {
			switch s {
			case 200:
				won++
			case 400:
			default:
				t.Fatalf("round %d: status %d", round, s)
			}
		}
		if won != 1 {
			t.Fatalf("round %d: %d of %d uses of one token succeeded, want exactly 1", round, won, racers)
		}
	}
}

func TestMailQueuedDuringAnSMTPOutageArrivesWhenTheServerIsBack(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	e.signupMailed(t, srv, "patient@example.com")
	// The server has the mail once it has the data, but the sender has it delivered only once the
	// server's answer arrives: stopping the server in between makes the sender retry a mail that
	// did arrive (the duplicate the README admits to).
	e.outboxEmpty(t)
	srv.stop()
	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "patient@example.com"}).want(t, 202, "")
	// Let attempts fail and be retried, moving the clock on to each retry.
	deadline := time.Now().Add(30 * time.Second)
	for metricValue(t, scrape(t, e), "auth_mails_total", "outcome", "retried") < 3 {
		if time.Now().After(deadline) {
			t.Fatal("no retries within 30s")
		}
		e.clock.Advance(100 * time.Millisecond)
		time.Sleep(20 * time.Millisecond)
	}
	if age := metricValue(t, scrape(t, e), "auth_mail_outbox_age_seconds"); age <= 0 {
		t.Errorf("auth_mail_outbox_age_seconds = %v while a mail waits", age)
	}
	if !strings.Contains(e.logs.String(), `"msg":"mail delivery failed; it will be retried"`) {
		t.Errorf("no warning of the failed delivery in the log")
	}
	srv.start(t)
	m := srv.next(t, "patient@example.com", func() { e.clock.Advance(100 * time.Millisecond) })
	if path, token := m.link(t); path != "/reset-password" {
		t.Fatalf("got a mail linking to %s", path)
	} else {
		e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "a brand new password"}).want(t, 200, "")
	}
	e.outboxEmpty(t)
	if n := len(srv.mailsTo("patient@example.com")); n != 2 {
		t.Fatalf("%d mails, want the verification and one reset", n)
	}
	if n := metricValue(t, scrape(t, e), "auth_mails_total", "outcome", "failed"); n != 0 {
		t.Fatalf("%v mails given up", n)
	}
}

// A mail queued by a service that is stopped before it could deliver goes out from the next
// start: the outbox is in the database, not in the process.
func TestQueuedMailSurvivesARestartOfTheService(t *testing.T) {
	// Not parallel: ferretdb.New writes a package variable of FerretDB's, so development databases
	// started at once race (the race detector says so); this test starts two.
	srv := newMailServer(t, false)
	dataDir := t.TempDir() + "/data"
	env := []string{"SMTP_URL", srv.url(), "SMTP_CA_FILE", srv.caFile, "MAIL_FROM", "auth@example.com",
		"APP_URL", testAppURL, "APP_NAME", "Example App", "LOG_LEVEL", "debug",
		"MAIL_ADDRESS_INTERVAL", "0"} // or the reset right after the sign-up's mail would be held back
	s, logs, stop := startRun(t, dataDir, env...)
	s.do(t, "POST", "/auth/signup", credentials{"restart@example.com", "correct horse battery"}).want(t, 201, "")
	srv.next(t, "restart@example.com", nil)
	waitForLog(t, logs, `"msg":"mail sent"`) // delivered, as the sender sees it: see the outage test
	srv.stop()
	s.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "restart@example.com"}).want(t, 202, "")
	waitForLog(t, logs, `"msg":"mail delivery failed; it will be retried"`)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	srv.start(t)
	s, logs, _ = startRun(t, dataDir, env...)
	m := srv.next(t, "restart@example.com", nil) // the first retry is 5s after the failure
	_, token := m.link(t)
	s.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "a brand new password"}).want(t, 200, "")
	s.do(t, "POST", "/auth/login", credentials{"restart@example.com", "a brand new password"}).want(t, 200, "")
	if strings.Contains(logs.String(), token) {
		t.Fatal("the log holds the token")
	}
}

// waitFor waits until logs hold s.
func waitForLog(tb testing.TB, logs *syncBuffer, s string) {
	tb.Helper()
	waitFor(tb, s+" in the log", func() bool { return strings.Contains(logs.String(), s) })
}

// Two instances deliver one outbox: each mail goes out once.
func TestTwoInstancesSendEachMailOnce(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	a, b := newTestPair(t, srv.configure)
	a.startSender(t)
	b.startSender(t)
	const n = 24
	for i := range n {
		e := a
		if i%2 == 1 {
			e = b
		}
		e.signup(t, fmt.Sprintf("twice-%d@example.com", i), "correct horse battery")
	}
	a.outboxEmpty(t)
	for i := range n {
		if got := len(srv.mailsTo(fmt.Sprintf("twice-%d@example.com", i))); got != 1 {
			t.Fatalf("%d mails to twice-%d@example.com, want 1", got, i)
		}
	}
}

// An attempt whose holder died is taken up again once its lease has run out, and not before.
func TestAnAttemptWhoseHolderDiedIsRetriedAfterTheLease(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newTestEnv(t, srv.configure)
	o := e.deps.mail.outbox
	if err := o.queue(t.Context(), &MailMessage{Kind: mailSignupExists, To: "orphan@example.com"}); err != nil {
		t.Fatal(err)
	}
	due, err := e.store.DueMail(t.Context(), e.clock.Now(), 10)
	if err != nil || len(due) != 1 {
		t.Fatalf("due %v, %v", due, err)
	}
	// A holder that claimed attempt 0 and died before it wrote anything.
	now := e.clock.Now()
	if err := e.store.LeaseMail(t.Context(), &MailLease{ID: due[0].ID + "#0", MessageID: due[0].ID, TakenAt: now,
		ExpiresAt: now.Add(time.Hour)}); err != nil {
		t.Fatal(err)
	}
	o.round(t.Context())
	if n := len(srv.mailsTo("orphan@example.com")); n != 0 {
		t.Fatalf("%d mails while another instance holds the attempt", n)
	}
	e.clock.Advance(e.cfg.mail.lease + time.Second)
	o.round(t.Context())
	if n := len(srv.mailsTo("orphan@example.com")); n != 1 {
		t.Fatalf("%d mails after the lease ran out, want 1", n)
	}
	e.outboxEmpty(t)
}

func TestARefusedRecipientIsGivenUpCountedAndLogged(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	srv.mu.Lock()
	srv.refuse["bounce@example.com"] = true
	srv.mu.Unlock()
	e.signup(t, "bounce@example.com", "correct horse battery")
	e.outboxEmpty(t)
	if n := metricValue(t, scrape(t, e), "auth_mails_total", "outcome", "failed"); n != 1 {
		t.Fatalf("auth_mails_total{outcome=failed} = %v, want 1", n)
	}
	if !strings.Contains(e.logs.String(), `"level":"ERROR","msg":"mail given up"`) {
		t.Fatalf("no error line for the mail given up:\n%s", e.logs)
	}
}

func TestMailIsLimitedPerAddressAndPerClientWithTheSameAnswer(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	queued := func(e *testEnv) int {
		n, err := e.store.outboxColl().CountDocuments(t.Context(), bson.D{})
		if err != nil {
			t.Fatal(err)
		}
		return int(n)
	}
	t.Run("one mail per address per interval", func(t *testing.T) {
		e := newTestEnv(t, srv.configure, func(c *config) { c.mail.addressInterval = time.Minute })
		first := e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "limited@example.com"}).want(t, 202, "")
		second := e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "limited@example.com"}).want(t, 202, "")
		if first.raw != second.raw {
			t.Fatalf("the answers differ: %s and %s", first.raw, second.raw)
		}
		if n := queued(e); n != 1 {
			t.Fatalf("%d mails queued, want 1", n)
		}
		e.clock.Advance(time.Minute)
		e.do(t, "POST", "/auth/email/resend", map[string]string{"email": "limited@example.com"}).want(t, 202, "")
		if n := queued(e); n != 2 {
			t.Fatalf("%d mails queued after the interval, want 2", n)
		}
	})
	t.Run("a few per address per hour", func(t *testing.T) {
		e := newTestEnv(t, srv.configure, func(c *config) { c.mail.maxPerAddress = 3 })
		for range 5 {
			e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "hourly@example.com"}).want(t, 202, "")
		}
		if n := queued(e); n != 3 {
			t.Fatalf("%d mails queued, want 3", n)
		}
	})
	t.Run("a few per client per hour", func(t *testing.T) {
		e := newTestEnv(t, srv.configure, func(c *config) { c.mail.maxPerClient = 2 })
		for i := range 4 {
			e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": fmt.Sprintf("c%d@example.com", i)}).want(t, 202, "")
		}
		if n := queued(e); n != 2 {
			t.Fatalf("%d mails queued, want 2", n)
		}
	})
}

// subjectsTo lists the subjects of what s received for to, in order.
func (s *mailServer) subjectsTo(tb testing.TB, to string) []string {
	tb.Helper()
	var out []string
	for _, m := range s.mailsTo(to) {
		out = append(out, parseMail(tb, m).subject)
	}
	return out
}

// count is how many of subjects contain part.
func count(subjects []string, part string) int {
	n := 0
	for _, s := range subjects {
		if strings.Contains(s, part) {
			n++
		}
	}
	return n
}

// Anyone may have mail sent to an address: by naming it as an account's new address, or by
// signing up with it. Each kind of mail has limits of its own, so none of that holds back the
// owner's password reset.
func TestChangeRequestsDoNotBlockTheOwnersResetMail(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, func(c *config) { // the default limits
		c.mail.addressInterval, c.mail.maxPerAddress, c.mail.maxPerClient = time.Minute, 5, 20
	})
	const victim = "victim@example.com"
	e.signupMailed(t, srv, victim)
	for range e.cfg.mail.maxPerAddress + 1 {
		_, access, _ := e.user(t) // an account of the attacker's for each: its notices are limited too
		e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": victim, "password": "correct horse battery"},
			"Authorization", "Bearer "+access).want(t, 202, "")
	}
	for range e.cfg.mail.maxPerAddress + 1 {
		e.do(t, "POST", "/auth/signup", credentials{victim, "another password"}).want(t, 201, "")
	}
	e.outboxEmpty(t)
	before := srv.subjectsTo(t, victim)
	if count(before, "Confirm your new address") == 0 || count(before, "tried to sign up") == 0 {
		t.Fatalf("the attack sent the victim none of its mails: %q", before)
	}

	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": victim}).want(t, 202, "")
	e.outboxEmpty(t)
	var reset []parsedMail
	for _, m := range srv.mailsTo(victim)[len(before):] {
		reset = append(reset, parseMail(t, m))
	}
	if len(reset) != 1 {
		t.Fatalf("%d mails after the reset request, want the reset mail", len(reset))
	}
	if path, _ := reset[0].link(t); path != "/reset-password" {
		t.Fatalf("the mail after the reset request links to %s", path)
	}
}

// A change of address mails its link to the new address only together with a notice to the old
// one; the notices are limited like any mail, and past their limit the request is refused.
func TestAddressChangeNoticesAreThrottled(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	const owner = "changer@example.com"
	e.signupMailed(t, srv, owner)
	access, _ := e.login(t, owner, "correct horse battery")
	change := func(to string) response {
		return e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": to, "password": "correct horse battery"},
			"Authorization", "Bearer "+access)
	}
	limit := e.cfg.mail.maxPerAddress
	for i := range limit {
		change(fmt.Sprintf("new%d@example.com", i)).want(t, 202, "")
	}
	r := change("one-more@example.com").want(t, 429, "too_many_attempts")
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q, want seconds", r.header.Get("Retry-After"))
	}
	e.outboxEmpty(t)
	if n := count(srv.subjectsTo(t, owner), "about to change"); n != limit {
		t.Fatalf("%d notices to the old address, want %d", n, limit)
	}
	if got := srv.mailsTo("one-more@example.com"); len(got) != 0 {
		t.Fatalf("%d mails to the address of the refused change", len(got))
	}
}

// Other mail to the old address does not silence the notice; a notice spent within the interval
// refuses the change, link and all; and a change whose link the new address's limits hold back
// sends nothing, notice included, and answers as ever.
func TestNoChangeLinkGoesOutWithoutItsNotice(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, func(c *config) { c.mail.addressInterval, c.mail.maxPerAddress = time.Minute, 5 })
	const owner = "owner-of-it@example.com"
	e.signupMailed(t, srv, owner)
	access, _ := e.login(t, owner, "correct horse battery")
	change := func(access, to string) response {
		return e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": to, "password": "correct horse battery"},
			"Authorization", "Bearer "+access)
	}
	notices := func() int { e.outboxEmpty(t); return count(srv.subjectsTo(t, owner), "about to change") }
	links := func(to string) int { e.outboxEmpty(t); return count(srv.subjectsTo(t, to), "Confirm your new address") }

	for range 6 {
		e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": owner}).want(t, 202, "")
	}
	change(access, "a@example.com").want(t, 202, "")
	if notices() != 1 || links("a@example.com") != 1 {
		t.Fatalf("after other mail to the old address: %d notices, %d links; want one of each", notices(), links("a@example.com"))
	}

	r := change(access, "b@example.com").want(t, 429, "too_many_attempts")
	if s, err := strconv.Atoi(r.header.Get("Retry-After")); err != nil || s < 1 || s > 60 {
		t.Fatalf("Retry-After %q, want at most the interval", r.header.Get("Retry-After"))
	}
	if notices() != 1 || links("b@example.com") != 0 {
		t.Fatalf("a change refused: %d notices, %d links to its address; want 1 and 0", notices(), links("b@example.com"))
	}

	e.clock.Advance(time.Minute)
	_, other, _ := e.user(t)
	change(other, "c@example.com").want(t, 202, "") // spends c's interval
	change(access, "c@example.com").want(t, 202, "")
	if notices() != 1 || links("c@example.com") != 1 {
		t.Fatalf("a change held back by the new address's limits: %d notices, %d links; want 1 and 1", notices(), links("c@example.com"))
	}
}

func TestImplicitTLSDeliversToo(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, true)
	e := newMailEnv(t, srv)
	m := e.signupMailed(t, srv, "smtps@example.com")
	if !m.tls || m.authed != testSMTPUser {
		t.Fatalf("TLS %v, authenticated as %q", m.tls, m.authed)
	}
}

// With a host other than this machine, a server that offers no STARTTLS gets neither the
// credentials nor the mail.
func TestNoMailGoesInClearToAnotherHost(t *testing.T) {
	t.Parallel()
	for host, want := range map[string]bool{"127.0.0.1": true, "::1": true, "localhost": true, "LocalHost": true,
		"127.1.2.3": true, "mail.example.com": false, "10.0.0.1": false, "localhost.example.com": false} {
		if loopbackHost(host) != want {
			t.Errorf("loopbackHost(%q) = %v", host, !want)
		}
	}
	addr := nonLoopbackAddr(t)
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		return &mailSession{s: &mailServer{refuse: map[string]bool{}}, conn: c}, nil
	}))
	srv.Domain, srv.AllowInsecureAuth, srv.ErrorLog = "localhost", true, discardSMTPLog{} // no TLSConfig: no STARTTLS
	ln, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		t.Skipf("cannot listen on %s: %v", addr, err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	host, port, _ := net.SplitHostPort(ln.Addr().String())
	tr := &smtpTransport{cfg: smtpConfig{host: host, port: port, user: testSMTPUser, pass: testSMTPPass},
		from: "auth@example.com", dialTimeout: 5 * time.Second}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	err = tr.deliver(ctx, &outgoingMail{to: "x@example.com", data: []byte("Subject: x\r\n\r\nx\r\n")})
	if err == nil || !strings.Contains(err.Error(), "offers no STARTTLS") {
		t.Fatalf("delivered in clear to %s: %v", host, err)
	}
}

// nonLoopbackAddr is an address of this machine's that is not loopback, or skips the test.
func nonLoopbackAddr(tb testing.TB) string {
	tb.Helper()
	addrs, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() && !p.Addr().IsLoopback() {
			return p.Addr().String()
		}
	}
	tb.Skip("this machine has no IPv4 address besides loopback")
	return ""
}

func TestDevelopmentMailboxWritesPrivateEmlFilesAndLogsTheLink(t *testing.T) {
	t.Parallel()
	dir := filepath.Join(t.TempDir(), "mail")
	e := newTestEnv(t, func(c *config) {
		c.mail.verification = verificationOptional
		c.mail.dir = dir
		c.mail.poll = 250 * time.Millisecond
	})
	e.startSender(t)
	e.signup(t, "dev@example.com", "correct horse battery")
	e.outboxEmpty(t)
	files, err := filepath.Glob(filepath.Join(dir, "*.eml"))
	if err != nil || len(files) != 1 {
		t.Fatalf("files %v, %v; want one .eml", files, err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, files[0]: 0o600} {
		if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: %v, %v; want mode %#o", path, fi.Mode(), err, want)
		}
	}
	data, _ := os.ReadFile(files[0])
	m := parseMail(t, receivedMail{data: data})
	link := regexp.MustCompile(`http://localhost:7878/verify-email\?token=[A-Za-z0-9_-]+`).FindString(m.text)
	if link == "" {
		t.Fatalf("no link to the default APP_URL in:\n%s", m.text)
	}
	if !strings.Contains(e.logs.String(), `"msg":"mail written to the development mailbox"`) || !strings.Contains(e.logs.String(), link) {
		t.Fatalf("the link is not logged:\n%s", e.logs)
	}
}

func TestLogsOfMailNeverHoldTokens(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, func(c *config) { c.logLevel = -8 }) // below debug: everything
	const email = "quiet-logs@example.com"
	_, verify := e.signupMailed(t, srv, email).link(t)
	e.do(t, "POST", "/auth/email/verify", map[string]string{"token": verify}).want(t, 200, "")
	e.outboxEmpty(t)
	srv.stop()
	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": email}).want(t, 202, "")
	waitForLog(t, e.logs, `"msg":"mail delivery failed; it will be retried"`)
	srv.start(t)
	_, reset := srv.next(t, email, func() { e.clock.Advance(100 * time.Millisecond) }).link(t)
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": reset, "password": "a brand new password"}).want(t, 200, "")
	logs := e.logs.String()
	for what, s := range map[string]string{"the verification token": verify, "the reset token": reset,
		"the reset token's digest": digest(reset), "the SMTP password": testSMTPPass} {
		if strings.Contains(logs, s) {
			t.Errorf("the log holds %s", what)
		}
	}
	if !strings.Contains(logs, `"msg":"mail sent"`) {
		t.Fatalf("the drive did not reach a sent mail; the test checks less than it claims:\n%s", logs)
	}
}

func TestEmailSettings(t *testing.T) {
	t.Parallel()
	load := func(kv ...string) (config, error) {
		env := map[string]string{}
		for i := 0; i+1 < len(kv); i += 2 {
			env[kv[i]] = kv[i+1]
		}
		return loadConfig(func(k string) string { return env[k] })
	}
	prod := []string{"MONGODB_URI", "mongodb://db.example.com", "JWT_SECRET", testSecret}
	smtpEnv := append(prod, "SMTP_URL", "smtp://u:p@mail.example.com", "MAIL_FROM", "auth@example.com", "APP_URL", "https://app.example.com")
	for _, tt := range []struct {
		name    string
		env     []string
		refused string // a part of the error; "" for accepted
		check   func(t *testing.T, c config)
	}{
		{name: "the development default writes to DATA_DIR/mail and verifies optionally", check: func(t *testing.T, c config) {
			if c.mail.mode != mailDir || c.mail.dir != filepath.Join("./data", "mail") || c.mail.verification != verificationOptional {
				t.Fatalf("%+v", c.mail)
			}
		}},
		{name: "production without SMTP_URL has no mail and no verification", env: prod, check: func(t *testing.T, c config) {
			if c.mail.enabled() || c.mail.verification != verificationOff {
				t.Fatalf("%+v", c.mail)
			}
		}},
		{name: "verification without mail is refused", env: append(prod, "EMAIL_VERIFICATION", "required"), refused: "EMAIL_VERIFICATION: required needs mail"},
		{name: "an unknown verification mode is refused", env: []string{"EMAIL_VERIFICATION", "sometimes"}, refused: "EMAIL_VERIFICATION"},
		{name: "smtp:// is STARTTLS on 587", env: smtpEnv, check: func(t *testing.T, c config) {
			if c.mail.mode != mailSMTP || c.mail.smtp != (smtpConfig{host: "mail.example.com", port: "587", user: "u", pass: "p"}) {
				t.Fatalf("%+v", c.mail.smtp)
			}
		}},
		{name: "smtps:// is implicit TLS on 465", env: append(smtpEnv, "SMTP_URL", "smtps://mail.example.com"), check: func(t *testing.T, c config) {
			if !c.mail.smtp.implicitTLS || c.mail.smtp.port != "465" {
				t.Fatalf("%+v", c.mail.smtp)
			}
		}},
		{name: "another scheme is refused, without repeating the password", env: append(prod, "SMTP_URL", "http://u:secret-pass@x", "MAIL_FROM", "a@b.c", "APP_URL", "https://a.b"), refused: "SMTP_URL: the scheme"},
		{name: "SMTP_URL needs MAIL_FROM", env: append(prod, "SMTP_URL", "smtp://mail.example.com", "APP_URL", "https://a.b"), refused: "MAIL_FROM: required"},
		{name: "SMTP_URL needs APP_URL", env: append(prod, "SMTP_URL", "smtp://mail.example.com", "MAIL_FROM", "a@b.c"), refused: "APP_URL: required"},
		{name: "APP_URL must be http(s)", env: []string{"APP_URL", "javascript:alert(1)"}, refused: "APP_URL"},
		{name: "SMTP_CA_FILE must hold a certificate", env: append(smtpEnv, "SMTP_CA_FILE", "/nonexistent.pem"), refused: "SMTP_CA_FILE"},
		{name: "templates that do not parse are refused", env: []string{"MAIL_TEMPLATES_DIR", badTemplates(t)}, refused: "MAIL_TEMPLATES_DIR"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			c, err := load(tt.env...)
			switch {
			case tt.refused == "" && err != nil:
				t.Fatal(err)
			case tt.refused != "" && (err == nil || !strings.Contains(err.Error(), tt.refused)):
				t.Fatalf("got %v, want an error with %q", err, tt.refused)
			case err != nil && strings.Contains(err.Error(), "secret-pass"):
				t.Fatalf("the error repeats the password: %v", err)
			}
			if tt.check != nil {
				tt.check(t, c)
			}
		})
	}
}

func badTemplates(tb testing.TB) string {
	dir := tb.TempDir()
	os.WriteFile(filepath.Join(dir, "reset.txt"), []byte(`{{define "subject"}}x{{end}}{{.Nope`), 0o600)
	return dir
}

func TestOperatorsReplaceTemplatesFromADirectory(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "reset.txt"), []byte("{{define \"subject\"}}Your {{.AppName}} reset{{end}}Go to:\n{{.Link}}\nCode:\n{{.Code}}\n"), 0o600)
	os.WriteFile(filepath.Join(dir, "reset.html"), []byte(`<p><a href="{{.Link}}">reset</a> <b>{{.Code}}</b></p>`), 0o600)
	tmpl, err := loadMailTemplates(dir)
	if err != nil {
		t.Fatal(err)
	}
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv, func(c *config) { c.mail.templates = tmpl })
	e.signupMailed(t, srv, "custom@example.com") // the built-in verification mail
	e.do(t, "POST", "/auth/password/forgot", map[string]string{"email": "custom@example.com"}).want(t, 202, "")
	m := srv.next(t, "custom@example.com", nil)
	if m.subject != "Your Example App reset" || !strings.HasPrefix(m.text, "Go to:") {
		t.Fatalf("subject %q, text:\n%s", m.subject, m.text)
	}
	_, token := m.link(t)
	e.do(t, "POST", "/auth/password/reset", map[string]string{"token": token, "password": "a brand new password"}).want(t, 200, "")
}

func TestEmailEndpointsSayWhenMailIsOff(t *testing.T) {
	t.Parallel() // with MONGODB_URI: no development database of its own
	// A production configuration without SMTP_URL: the service starts, and says so.
	s, logs, _ := startRun(t, t.TempDir()+"/data", "MONGODB_URI", testMongoURI,
		"MONGODB_DATABASE", newTestDB(t).Name(), "JWT_SECRET", testSecret)
	if !strings.Contains(logs.String(), "email is off") {
		t.Errorf("the start does not say that email is off:\n%s", logs)
	}
	email := "off@example.com"
	s.do(t, "POST", "/auth/signup", credentials{email, "correct horse battery"}).want(t, 201, "")
	s.do(t, "POST", "/auth/signup", credentials{email, "correct horse battery"}).want(t, 409, "email_taken")
	login := s.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 200, "")
	for _, path := range []string{"/auth/password/forgot", "/auth/password/reset", "/auth/email/verify", "/auth/email/resend", "/auth/email/change"} {
		s.do(t, "POST", path, map[string]string{"email": "a@example.com", "token": "x", "password": "whatever123",
			"new_email": "b@example.com"}, "Authorization", "Bearer "+login.str("access_token")).want(t, 501, "email_disabled")
	}
}

func TestOpenAPIDocumentsTheEmailErrors(t *testing.T) {
	t.Parallel()
	for _, e := range []*apiError{errEmailDisabled, errMailTokenInvalid, errEmailNotVerified} {
		if row := fmt.Sprintf("| `%s` | %d |", e.code, e.status); !bytes.Contains(openAPI, []byte(row)) {
			t.Errorf("openapi.yaml has no row %q", row)
		}
		if !bytes.Contains(openAPI, []byte("            - "+e.code+"\n")) {
			t.Errorf("the Error schema does not list %s", e.code)
		}
	}
}

// BenchmarkForgotPassword times the request for an address with an account and one without, with
// the default limits: they do the same database work (the limits' and one insert), so they should
// take as long. The clock moves an hour between requests, so that every one is within the limits.
//
//	go test -run '^$' -bench ForgotPassword -count 5 .
func BenchmarkForgotPassword(b *testing.B) {
	srv := newMailServer(b, false)
	e := newTestEnv(b, srv.configure, func(c *config) { // no sender: only the request
		c.mail.addressInterval, c.mail.maxPerAddress, c.mail.maxPerClient = time.Minute, 5, 20
	})
	e.signup(b, "known@example.com", "correct horse battery")
	for _, tt := range []struct{ name, email string }{{"known", "known@example.com"}, {"unknown", "nobody@example.com"}} {
		b.Run(tt.name, func(b *testing.B) {
			for b.Loop() {
				// As the service purges expired attempts every minute, or they would pile up here.
				b.StopTimer()
				e.clock.Advance(time.Hour)
				if err := e.store.Purge(b.Context(), e.clock.Now()); err != nil {
					b.Fatal(err)
				}
				if _, err := e.store.outboxColl().DeleteMany(b.Context(), bson.D{}); err != nil { // as the sender would
					b.Fatal(err)
				}
				b.StartTimer()
				e.do(b, "POST", "/auth/password/forgot", map[string]string{"email": tt.email}).want(b, 202, "")
			}
		})
	}
}

// BenchmarkSignupNewAndTaken times sign-ups with verification on, of a new address and of a
// taken one in turns (which goes first alternates), and reports the median of each: they should
// take as long (see TestSignupOfATakenAddressDoesTheSameDatabaseWork). The clock moves an hour,
// and expired attempts and the outbox are cleared, between turns, so that each is within the limits.
//
//	go test -run '^$' -bench SignupNewAndTaken -benchtime 100x -count 3 .
func BenchmarkSignupNewAndTaken(b *testing.B) {
	srv := newMailServer(b, false)
	e := newTestEnv(b, srv.configure, func(c *config) { // no sender: only the requests
		c.mail.addressInterval, c.mail.maxPerAddress = time.Minute, 5
	})
	e.signup(b, "taken@example.com", "correct horse battery")
	var fresh, taken []time.Duration
	timed := func(into *[]time.Duration, email string) {
		start := time.Now()
		e.signup(b, email, "correct horse battery")
		*into = append(*into, time.Since(start))
	}
	for b.Loop() {
		b.StopTimer()
		e.clock.Advance(time.Hour)
		if err := e.store.Purge(b.Context(), e.clock.Now()); err != nil {
			b.Fatal(err)
		}
		if _, err := e.store.outboxColl().DeleteMany(b.Context(), bson.D{}); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
		if len(fresh)%2 == 0 {
			timed(&fresh, "new-"+newID()+"@example.com")
			timed(&taken, "taken@example.com")
		} else {
			timed(&taken, "taken@example.com")
			timed(&fresh, "new-"+newID()+"@example.com")
		}
	}
	median := func(d []time.Duration) float64 {
		slices.Sort(d)
		return float64(d[len(d)/2].Microseconds()) / 1000
	}
	b.ReportMetric(median(fresh), "new-ms")
	b.ReportMetric(median(taken), "taken-ms")
}

// BenchmarkCreateAccount times sign-up's database write alone, for a new address and a taken one
// in turns, without the twin write (uneven, as with EMAIL_VERIFICATION=off) and with it, and
// reports the median of each.
//
//	go test -run '^$' -bench CreateAccount -benchtime 300x -count 3 .
func BenchmarkCreateAccount(b *testing.B) {
	for _, even := range []bool{false, true} {
		b.Run(map[bool]string{false: "uneven", true: "even"}[even], func(b *testing.B) {
			store, err := newMongoStore(b.Context(), newTestDB(b), nil)
			if err != nil {
				b.Fatal(err)
			}
			create := func(into *[]time.Duration, email string) {
				start := time.Now()
				if _, err := createAccount(b.Context(), store, &User{ID: newID(), Email: email, CreatedAt: time.Now()}, even); err != nil {
					b.Fatal(err)
				}
				*into = append(*into, time.Since(start))
			}
			var fresh, taken []time.Duration
			create(&fresh, "taken@example.com")
			fresh = nil
			for b.Loop() {
				create(&fresh, "new-"+newID()+"@example.com")
				create(&taken, "taken@example.com")
			}
			median := func(d []time.Duration) float64 {
				slices.Sort(d)
				return float64(d[len(d)/2].Microseconds()) / 1000
			}
			b.ReportMetric(median(fresh), "new-ms")
			b.ReportMetric(median(taken), "taken-ms")
		})
	}
}
