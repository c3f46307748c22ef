package main

// config_mail.go is the email part of the settings: how mail leaves, the verification modes and
// the mail limits.

import (
	"crypto/x509"
	"time"
)

// How mail leaves the service (mailConfig.mode).
const (
	mailOff  = "off"  // MONGODB_URI without SMTP_URL: the email endpoints answer email_disabled
	mailSMTP = "smtp" // SMTP_URL
	mailDir  = "dir"  // the development mailbox: .eml files under DATA_DIR/mail
)

// EMAIL_VERIFICATION's values.
const (
	verificationOff      = "off"      // no mail at sign-up; sign-up answers 409 for a taken address
	verificationOptional = "optional" // a mail at sign-up; nothing refused
	verificationRequired = "required" // and a login with the right password answers 403 until verified
)

// mailConfig is the email part of the configuration; see the README's table.
type mailConfig struct {
	mode         string
	dir          string // the development mailbox: DATA_DIR/mail
	smtp         smtpConfig
	from         string // the From header, possibly with a name
	fromAddr     string // the bare address, for MAIL FROM
	appURL       string // the base of links, without a trailing slash
	appName      string
	templates    *mailTemplates
	verification string
	resetTTL     time.Duration
	verifyTTL    time.Duration
	// Of each kind of mail: at most one per address per addressInterval, maxPerAddress per
	// address and maxPerClient per client within mailWindow; 0 turns a limit off.
	addressInterval time.Duration
	maxPerAddress   int
	maxPerClient    int
	giveUpAfter     time.Duration

	// Fixed defaults; fields so that tests can shorten them.
	poll        time.Duration // how often the outbox is read
	retryBase   time.Duration // the first retry's delay, doubled for each further one
	retryCap    time.Duration
	lease       time.Duration // after this, an attempt whose holder said nothing is taken as dead
	dialTimeout time.Duration
	sendTimeout time.Duration // the whole SMTP exchange
}

// mailWindow is the window of the per-hour mail limits.
const mailWindow = time.Hour

type smtpConfig struct {
	host, port  string
	user, pass  string
	implicitTLS bool           // smtps://: TLS from the first byte; smtp:// upgrades with STARTTLS
	roots       *x509.CertPool // nil: the system's; SMTP_CA_FILE adds to them, tests set their own
}

func (c mailConfig) enabled() bool { return c.mode != mailOff }
