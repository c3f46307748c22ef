package main

// The portal's passkeys in a real Chromium, with its virtual authenticator (the DevTools WebAuthn
// domain): add one on the account page, sign out, sign in with it alone, and meet phr.

import (
	"context"
	"net"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/webauthn"
	"github.com/chromedp/chromedp"
)

func TestThePortalsPasskeysInChromium(t *testing.T) {
	t.Parallel()
	// WebAuthn needs a secure context: Chromium counts http://localhost as one. The portal is
	// served on a port chosen first, so that PUBLIC_URL, the RP ID and the origin can name it.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	publicURL := "http://localhost:" + port
	e := newTestEnv(t, func(c *config) {
		c.portalCfg.publicURL, c.portalCfg.secure, c.portalCfg.cookieDomain = publicURL, false, ""
		c.passkeys = passkeyConfig{rpID: "localhost", rpName: "Example", origins: []string{publicURL}}
	})
	srv := &http.Server{Handler: e.srv.Config.Handler}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })

	browser := startChromium(t, chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1"))
	email, _, _ := e.user(t)
	tab := newPortalTab(t, browser)
	if _, err := chromedp.Call(tab.ctx, webauthn.Enable, webauthn.EnableParams{}); err != nil {
		t.Fatalf("the WebAuthn domain: %v", err)
	}
	if _, err := chromedp.Call(tab.ctx, webauthn.AddVirtualAuthenticator, webauthn.AddVirtualAuthenticatorParams{
		Options: &webauthn.VirtualAuthenticatorOptions{Protocol: webauthn.AuthenticatorProtocolCtap2,
			Transport: webauthn.AuthenticatorTransportInternal, HasResidentKey: true, HasUserVerification: true,
			IsUserVerified: true, AutomaticPresenceSimulation: true},
	}); err != nil {
		t.Fatalf("a virtual authenticator: %v", err)
	}

	// Two minutes are far more than the steps here take; they only keep a hang from lasting.
	wait, cancel := context.WithTimeout(tab.ctx, 2*time.Minute)
	defer cancel()

	// Signed in with the password, the account page adds a passkey.
	tab.navigate(t, publicURL+"/login", 200)
	tab.submit(t, map[string]string{"email": email, "password": "correct horse battery"}, 200)
	tab.navigate(t, publicURL+"/account", 200)
	if err := chromedp.Do(wait,
		chromedp.SetValue(chromedp.ID("passkey_password"), "correct horse battery"),
		chromedp.SetValue(chromedp.ID("passkey_name"), "virtual"),
		chromedp.Click(chromedp.ID("passkey-add-button")),
		chromedp.WaitVisible(chromedp.ID("recovery-codes")),
	); err != nil {
		t.Fatalf("adding a passkey: %v: %s", err, tab.text(t))
	}

	// Signed out, the passkey alone signs in.
	tab.navigate(t, publicURL+"/logout", 200)
	tab.submit(t, map[string]string{}, 200)
	tab.navigate(t, publicURL+"/login", 200)
	// Clicked from the page itself: the click starts a ceremony that ends in a navigation, which
	// an input event sent over DevTools would wait on.
	if err := chromedp.Do(wait, chromedp.WaitVisible(chromedp.ID("passkey-button"))); err != nil {
		t.Fatalf("the passkey button: %v: %s", err, tab.text(t))
	}
	if _, err := chromedp.Run(wait, chromedp.Evaluate[bool](`document.getElementById("passkey-button").click(), true`)); err != nil {
		t.Fatalf("signing in with the passkey: %v", err)
	}
	// The form's submission navigates to the account page.
	waitFor(t, "the account page after a passkey sign-in", func() bool {
		text, err := chromedp.Run(wait, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		return err == nil && strings.Contains(text, "You are signed in as "+email) && strings.Contains(text, "virtual")
	})
	// The cookie session a passkey opened meets phr.
	got, err := chromedp.Run(wait, chromedp.Evaluate[int](`fetch("/auth/page", {headers: {"X-Auth-Require": "phr"}}).then(r => r.status)`,
		chromedp.EvalAwaitPromise))
	if err != nil || got != http.StatusOK {
		t.Fatalf("phr for the passkey's cookie session: %d %v", got, err)
	}
}
