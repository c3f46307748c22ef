package main

// Passkeys in a real Chromium, with its virtual authenticator (the DevTools WebAuthn domain): on
// the portal (add one on the account page, sign out, sign in with it alone, meet phr), and through
// client.js in a single-page app.

import (
	"context"
	"fmt"
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
	serveOn(t, ln, e.srv.Config.Handler)

	browser := startChromium(t, chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1"))
	email, _, _ := e.user(t)
	tab := newPortalTab(t, browser)
	addVirtualAuthenticator(t, tab)

	// Two minutes are far more than the steps here take; they only keep a hang from lasting.
	wait, cancel := context.WithTimeout(tab.ctx, 2*time.Minute)
	defer cancel()
	pageText := func() string {
		text, _ := chromedp.Run(wait, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		return text
	}

	// Signed in with the password, the account page adds a passkey.
	tab.navigate(t, publicURL+"/login", 200)
	tab.submit(t, map[string]string{"email": email, "password": "correct horse battery"}, 200)
	addPasskeyOnTheAccountPage(t, tab, publicURL, wait)
	waitFor(t, "the recovery codes of the first passkey", func() bool { return strings.Contains(pageText(), "Keep these recovery codes") })

	// Signed out, the passkey alone signs in.
	tab.navigate(t, publicURL+"/logout", 200)
	tab.submit(t, map[string]string{}, 200)
	tab.navigate(t, publicURL+"/login", 200)
	// The page's autofill request (conditional mediation) may sign in first: the virtual
	// authenticator answers it at once. Otherwise the button does, clicked from the page itself,
	// since an input event sent over DevTools would wait on the navigation the ceremony ends in.
	// A click whose ceremony the autofill's aborted, on a busy machine, is clicked again.
	var clicked time.Time
	waitFor(t, "the account page after a passkey sign-in", func() bool {
		text := pageText()
		if strings.Contains(text, "You are signed in as "+email) && strings.Contains(text, "virtual") {
			return true
		}
		if time.Since(clicked) > 5*time.Second {
			if ok, _ := chromedp.Run(wait, chromedp.Evaluate[bool](
				`(b => !!b && !b.hidden && (b.click(), true))(document.getElementById("passkey-button"))`)); ok {
				clicked = time.Now()
			}
		}
		return false
	})
	// The cookie session a passkey opened meets phr.
	got, err := chromedp.Run(wait, chromedp.Evaluate[int](`fetch("/auth/page", {headers: {"X-Auth-Require": "phr"}}).then(r => r.status)`,
		chromedp.EvalAwaitPromise))
	if err != nil || got != http.StatusOK {
		t.Fatalf("phr for the passkey's cookie session: %d %v", got, err)
	}
}

// addVirtualAuthenticator gives tab's browser Chromium's virtual authenticator: a platform one
// that keeps passkeys, verifies the user and answers at once.
func addVirtualAuthenticator(t *testing.T, tab *portalTab) {
	t.Helper()
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
}

// addPasskeyOnTheAccountPage adds a passkey named "virtual" on the portal's account page, with the
// password of the tests' users. It returns once the button is clicked: the caller awaits the page.
func addPasskeyOnTheAccountPage(t *testing.T, tab *portalTab, publicURL string, wait context.Context) {
	t.Helper()
	tab.navigate(t, publicURL+"/account", 200)
	if err := chromedp.Do(wait,
		chromedp.SetValue(chromedp.ID("passkey_password"), "correct horse battery"),
		chromedp.SetValue(chromedp.ID("passkey_name"), "virtual"),
	); err != nil {
		t.Fatalf("the form to add a passkey: %v: %s", err, tab.text(t))
	}
	// Clicked from the page, and the next page awaited by its text: a wait for an element may
	// stay bound to the page that the ceremony's form submission replaces.
	if _, err := chromedp.Run(wait, chromedp.Evaluate[bool](`document.getElementById("passkey-add-button").click(), true`)); err != nil {
		t.Fatalf("adding a passkey: %v", err)
	}
}

// A route that only a passkey opens, behind deploy/nginx-portal.conf, in real Chromium: a session
// signed in with a password and a code reaches the app's other routes, but on /keys/ it is sent
// to the step-up page, which asks for the passkey alone (Chromium's virtual authenticator) and
// comes back to the route, where the app is told how the user signed in.
func TestAPhishingResistantRouteBehindNginxTakesAPasskeyInChromium(t *testing.T) {
	t.Parallel()
	bin := nginxBinary(t)
	addr := freeLoopbackAddr(t)
	_, port, _ := net.SplitHostPort(addr)
	publicURL := "http://auth.example.test:" + port
	e := newTestEnv(t, func(c *config) {
		c.portalCfg.publicURL, c.portalCfg.secure, c.portalCfg.cookieDomain = publicURL, false, "example.test"
		c.passkeys = passkeyConfig{rpID: "example.test", rpName: "Example", origins: []string{publicURL}}
	})
	one, two := startSeenApp(t), startSeenApp(t)
	site := nginxPortalSite(t, addr, publicURL, hostPort(t, e.srv.URL), hostPort(t, one.srv.URL), hostPort(t, two.srv.URL))
	if err := runNginx(t, bin, nginxConfFile(t, bin, site), addr); err != nil {
		t.Fatal(err)
	}
	// WebAuthn needs a secure context, which plain http on a name other than localhost is not;
	// Chromium's flag makes the portal's origin one, as TLS would in production.
	browser := startChromium(t,
		chromedp.Flag("host-resolver-rules", "MAP *.example.test 127.0.0.1"),
		chromedp.Flag("explicitly-allowed-ports", port),
		chromedp.Flag("no-proxy-server", true),
		chromedp.Flag("unsafely-treat-insecure-origin-as-secure", publicURL),
		chromedp.Flag("disable-features", "site-per-process,Translate,BlinkGenPropertyTrees,HttpsUpgrades,HttpsFirstBalancedModeAutoEnable"),
	)
	email, access, _ := e.user(t)
	secret, _ := e.enrolTOTP(t, access)
	tab := newPortalTab(t, browser)
	addVirtualAuthenticator(t, tab)
	wait, cancel := context.WithTimeout(tab.ctx, 2*time.Minute)
	defer cancel()
	pageText := func() string {
		text, _ := chromedp.Run(wait, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
		return text
	}

	// Signed in with the password and the code, the browser adds a passkey on the account page.
	app := "http://app1.example.test:" + port
	tab.navigate(t, app+"/", 200)
	tab.submit(t, map[string]string{"email": email, "password": "correct horse battery"}, 200)
	tab.submit(t, map[string]string{"code": oathtool(t, secret, e.clock.Now())}, 200)
	tab.wantAt(t, app+"/")
	addPasskeyOnTheAccountPage(t, tab, publicURL, wait)
	waitFor(t, "the account page after adding a passkey", func() bool { return strings.Contains(pageText(), "The passkey is added") })

	// The route that only a passkey opens: the step-up page, with the passkey and no code.
	tab.navigate(t, app+"/keys/signing", 200)
	tab.wantAt(t, publicURL+"/step-up?level=phr&rd="+app+"/keys/signing")
	if text := tab.text(t); !strings.Contains(text, "This page asks for a passkey") || strings.Contains(text, "Enter the code") {
		t.Fatalf("the step-up page for phr: %s", text)
	}
	if one.saw("/keys/signing") {
		t.Fatal("the app saw the route before the passkey")
	}
	if _, err := chromedp.Run(wait, chromedp.Evaluate[bool](
		`(b => !!b && !b.hidden && (b.click(), true))(document.getElementById("passkey-button"))`)); err != nil {
		t.Fatalf("the passkey button: %v", err)
	}
	waitFor(t, "the app's route after the passkey", func() bool { return one.saw("/keys/signing") })
	tab.wantAt(t, app+"/keys/signing")
	if amr := tab.echoed(t).Header.Get("X-User-Amr"); amr != "pwd,hwk" && amr != "pwd,swk" {
		t.Fatalf("the app saw X-User-Amr %q, want the password and the passkey", amr)
	}
}

// serveOn serves h on ln until the test ends.
func serveOn(t *testing.T, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
}

func TestClientPasskeysInChromium(t *testing.T) {
	t.Parallel()
	// A single-page app on one localhost origin, the service on another: both secure contexts
	// for Chromium, and under the RP ID localhost.
	appLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	svcLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	_, appPort, _ := net.SplitHostPort(appLn.Addr().String())
	_, svcPort, _ := net.SplitHostPort(svcLn.Addr().String())
	app, service := "http://localhost:"+appPort, "http://localhost:"+svcPort
	e := newTestEnv(t, func(c *config) {
		c.corsOrigins = []string{app}
		c.passkeys = passkeyConfig{rpID: "localhost", rpName: "Example", origins: []string{app}}
	})
	serveOn(t, svcLn, e.srv.Config.Handler)
	serveOn(t, appLn, http.FileServer(http.Dir("testdata/browser")))

	browser := startChromium(t, chromedp.Flag("host-resolver-rules", "MAP localhost 127.0.0.1"))
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
	tab.navigate(t, app+"/?service="+service, 200)
	wait, cancel := context.WithTimeout(tab.ctx, 2*time.Minute)
	defer cancel()
	run := func(js string) string {
		t.Helper()
		v, err := chromedp.Run(wait, chromedp.Evaluate[string](js, chromedp.EvalAwaitPromise))
		if err != nil {
			t.Fatalf("%s: %v", js, err)
		}
		return v
	}
	waitFor(t, "the test page", func() bool { return run(`String(window.ready === true)`) == "true" })

	email, _, _ := e.user(t)
	if got := run(fmt.Sprintf(`auth.signIn(%q, "correct horse battery").then(r => r.state)`, email)); got != "signed_in" {
		t.Fatalf("signIn: %s", got)
	}
	if got := run(`auth.passkeys.register({password: "correct horse battery", name: "spa"}).then(async r => r.status + " " + (await r.json()).passkey.name)`); got != "201 spa" {
		t.Fatalf("register: %s", got)
	}
	run(`auth.signOut().then(() => "")`)
	if got := run(`auth.passkeys.signIn().then(r => r.state + " " + auth.session().email)`); got != "signed_in "+email {
		t.Fatalf("passkeys.signIn: %s", got)
	}
	if got := e.levelOf(t, run(`auth.getAccessToken()`)); got != "aal2 [hwk mfa]" {
		t.Fatalf("the passkey's session: %s", got)
	}
	// A password sign-in asks for the passkey, and the module completes it with one.
	if got := run(fmt.Sprintf(`auth.signIn(%q, "correct horse battery").then(r => r.state + " " + r.methods.join(","))`, email)); got != "mfa_required passkey,recovery_code" {
		t.Fatalf("signIn: %s", got)
	}
	if got := run(`auth.passkeys.verifySecondFactor().then(r => r.state)`); got != "signed_in" {
		t.Fatalf("passkeys.verifySecondFactor: %s", got)
	}
	if got := e.levelOf(t, run(`auth.getAccessToken()`)); got != "aal2 [pwd hwk]" {
		t.Fatalf("the second factor's session: %s", got)
	}
	if got := run(`auth.passkeys.stepUp().then(r => String(r.status))`); got != "200" {
		t.Fatalf("passkeys.stepUp: %s", got)
	}
	if got := run(`new Promise(r => setTimeout(() => r(events.join(",")), 0))`); !strings.Contains(got, "stepped_up") {
		t.Fatalf("events: %s", got)
	}
}
