package main

import (
	"encoding/base32"
	"fmt"
	"net/url"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// RFC 6238's own test vectors (appendix B, SHA-1, eight digits).
func TestTOTPAgreesWithRFC6238(t *testing.T) {
	t.Parallel()
	secret := []byte("12345678901234567890")
	for _, tt := range []struct {
		unix int64
		code string
	}{
		{59, "94287082"}, {1111111109, "07081804"}, {1111111111, "14050471"},
		{1234567890, "89005924"}, {2000000000, "69279037"}, {20000000000, "65353130"},
	} {
		if got := totpCode(secret, tt.unix/30, 8); got != tt.code {
			t.Errorf("at %d: %s, want %s", tt.unix, got, tt.code)
		}
	}
}

// oathtool computes a TOTP code with an implementation nobody here wrote (Debian's oathtool).
func oathtool(tb testing.TB, secret string, at time.Time) string {
	tb.Helper()
	bin, err := exec.LookPath("oathtool")
	if err != nil {
		tb.Skip("oathtool is not installed (apt-get install oathtool); skipping the second-factor tests")
	}
	out, err := exec.Command(bin, "--totp", "-b", "--now", "@"+strconv.FormatInt(at.Unix(), 10), secret).Output()
	if err != nil {
		tb.Fatalf("oathtool: %v", err)
	}
	return strings.TrimSpace(string(out))
}

// enrolTOTP gives the holder of access an active second factor, and returns its secret and the
// recovery codes.
func (e *testEnv) enrolTOTP(tb testing.TB, access string) (secret string, recovery []string) {
	tb.Helper()
	r := e.do(tb, "POST", "/auth/mfa/totp", map[string]string{"password": "correct horse battery"}, "Authorization", "Bearer "+access).want(tb, 200, "")
	secret = r.str("secret")
	c := e.do(tb, "POST", "/auth/mfa/totp/confirm", map[string]string{"code": oathtool(tb, secret, e.clock.Now())},
		"Authorization", "Bearer "+access).want(tb, 200, "")
	for _, code := range c.body["recovery_codes"].([]any) {
		recovery = append(recovery, code.(string))
	}
	e.clock.Advance(totpStep) // the confirming code's step is used
	return secret, recovery
}

// loginMFA logs in with the password and returns the mfa_token of the challenge.
func (e *testEnv) loginMFA(tb testing.TB, email string) string {
	tb.Helper()
	r := e.do(tb, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(tb, 200, "")
	if r.body["mfa_required"] != true || r.str("mfa_token") == "" || r.body["expires_in"] != 300.0 || r.str("access_token") != "" ||
		!strings.HasPrefix(fmt.Sprint(r.body["methods"]), "[totp ") || !strings.HasSuffix(fmt.Sprint(r.body["methods"]), " recovery_code]") {
		tb.Fatalf("login of a user with a second factor: %s", r.raw)
	}
	return r.str("mfa_token")
}

func (e *testEnv) verifyMFA(tb testing.TB, body map[string]string, headers ...string) response {
	tb.Helper()
	return e.do(tb, "POST", "/auth/mfa/verify", body, headers...)
}

func TestSecondFactor(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, trustLoopback)
	email, access, _ := e.user(t)

	var secret string
	var recovery []string
	t.Run("enrolment gives a secret and an otpauth URL any authenticator app reads", func(t *testing.T) {
		r := e.do(t, "POST", "/auth/mfa/totp", map[string]string{"password": "correct horse battery"}, "Authorization", "Bearer "+access).want(t, 200, "")
		secret = r.str("secret")
		if raw, err := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret); err != nil || len(raw) != 20 {
			t.Fatalf("secret %q: want 160 bits in base32", secret)
		}
		u, err := url.Parse(r.str("otpauth_url"))
		if err != nil || u.Scheme != "otpauth" || u.Host != "totp" || u.Path != "/auth:"+email {
			t.Fatalf("otpauth_url %q", r.str("otpauth_url"))
		}
		q := u.Query()
		if q.Get("secret") != secret || q.Get("issuer") != "auth" || q.Get("algorithm") != "SHA1" || q.Get("digits") != "6" || q.Get("period") != "30" {
			t.Fatalf("otpauth_url parameters %v", q)
		}
		e.do(t, "POST", "/auth/login", credentials{email, "correct horse battery"}).want(t, 200, "") // not active yet
	})
	t.Run("confirmation with a code from the app activates it and answers ten recovery codes", func(t *testing.T) {
		e.do(t, "POST", "/auth/mfa/totp/confirm", map[string]string{"code": "000000"}, "Authorization", "Bearer "+access).
			want(t, 401, "invalid_code")
		r := e.do(t, "POST", "/auth/mfa/totp/confirm", map[string]string{"code": oathtool(t, secret, e.clock.Now())},
			"Authorization", "Bearer "+access).want(t, 200, "")
		seen := map[string]bool{}
		for _, c := range r.body["recovery_codes"].([]any) {
			recovery = append(recovery, c.(string))
			seen[c.(string)] = true
		}
		if len(recovery) != 10 || len(seen) != 10 {
			t.Fatalf("recovery codes %v, want ten different ones", recovery)
		}
		e.do(t, "POST", "/auth/mfa/totp", map[string]string{"password": "correct horse battery"}, "Authorization", "Bearer "+access).want(t, 409, "mfa_already_enabled")
	})
	t.Run("the secret is stored sealed, and recovery codes only as digests", func(t *testing.T) {
		f, err := e.store.TOTP(t.Context(), userID(t, e, access))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := base32.StdEncoding.WithPadding(base32.NoPadding).DecodeString(secret)
		if strings.Contains(string(f.Secret), string(raw)) || strings.Contains(fmt.Sprint(f), secret) {
			t.Fatal("the secret is stored in clear")
		}
		if err := e.store.UseRecoveryCode(t.Context(), userID(t, e, access), recovery[9]); err == nil {
			t.Fatal("a recovery code is stored in clear")
		}
	})
	e.clock.Advance(totpStep)

	var aal2, aal2Refresh string
	t.Run("a login then asks for the second factor and a code completes it at aal2", func(t *testing.T) {
		token := e.loginMFA(t, email)
		e.verifyMFA(t, map[string]string{"mfa_token": token, "code": "123456"}).want(t, 401, "invalid_code")
		r := e.verifyMFA(t, map[string]string{"mfa_token": token, "code": oathtool(t, secret, e.clock.Now())}).want(t, 200, "")
		aal2, aal2Refresh = r.str("access_token"), r.str("refresh_token")
		c := e.claimsOf(t, aal2)
		if c["acr"] != "aal2" || fmt.Sprint(c["amr"]) != "[pwd otp]" {
			t.Fatalf("claims %v, want acr aal2 and amr [pwd otp]", c)
		}
		if p := e.page(t, aal2).want(t, 200, ""); p.header.Get("X-User-Acr") != "aal2" {
			t.Fatalf("X-User-Acr %q", p.header.Get("X-User-Acr"))
		}
		e.verifyMFA(t, map[string]string{"mfa_token": token, "code": oathtool(t, secret, e.clock.Now())}).want(t, 401, "")
	})
	t.Run("refresh keeps the level", func(t *testing.T) {
		r := e.refresh(t, aal2Refresh).want(t, 200, "")
		if c := e.claimsOf(t, r.str("access_token")); c["acr"] != "aal2" || fmt.Sprint(c["amr"]) != "[pwd otp]" {
			t.Fatalf("claims after refresh %v", c)
		}
	})
	t.Run("a code is never accepted twice", func(t *testing.T) {
		code := oathtool(t, secret, e.clock.Now()) // the step just used
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": code}).want(t, 401, "invalid_code")
	})
	t.Run("a code one step either side is accepted, two steps off is not", func(t *testing.T) {
		for _, tt := range []struct {
			off    time.Duration
			status int
		}{{-2 * totpStep, 401}, {2 * totpStep, 401}, {-totpStep, 200}, {totpStep, 200}} {
			e.clock.Advance(3 * totpStep) // a fresh step, nowhere near the last used
			r := e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": oathtool(t, secret, e.clock.Now().Add(tt.off))})
			if r.status != tt.status {
				t.Errorf("a code %s off: %d %s, want %d", tt.off, r.status, r.raw, tt.status)
			}
		}
	})
	t.Run("a code and a recovery code together are refused, and neither is used", func(t *testing.T) {
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": "000000", "recovery_code": recovery[0]}).
			want(t, 400, "invalid_request")
	}) // the next subtest's first use of recovery[0] shows that it was not used here
	t.Run("a recovery code works once", func(t *testing.T) {
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "recovery_code": strings.ToUpper(recovery[0])}).want(t, 200, "")
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "recovery_code": recovery[0]}).want(t, 401, "invalid_code")
	})
	t.Run("wrong codes lock the account's second factor, not its password", func(t *testing.T) {
		const client = "203.0.113.9"
		e.clock.Advance(e.cfg.failureWindow) // past the wrong codes above
		for range e.cfg.mfaMaxFailures {
			e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": "000000"}, "X-Forwarded-For", client).
				want(t, 401, "invalid_code")
		}
		e.clock.Advance(3 * totpStep)
		e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "code": oathtool(t, secret, e.clock.Now())},
			"X-Forwarded-For", client).want(t, 429, "too_many_attempts")
		e.loginFrom(t, client, email, "correct horse battery").want(t, 200, "")
	})
}

// A proxy demands two factors on the routes it chooses: the forward-auth check answers a weaker
// token RFC 9470's challenge, and the user steps up in the same session.
func TestStepUp(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	_, access, refresh := e.user(t) // an aal1 session
	secret, _ := e.enrolTOTP(t, access)
	sid := e.claimsOf(t, access)["sid"]

	t.Run("without X-Auth-Require any valid token passes", func(t *testing.T) {
		if r := e.page(t, access).want(t, 200, ""); r.header.Get("X-User-Acr") != "aal1" {
			t.Fatalf("X-User-Acr %q", r.header.Get("X-User-Acr"))
		}
	})
	t.Run("with X-Auth-Require: aal2 an aal1 token gets the step-up challenge", func(t *testing.T) {
		r := e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access, "X-Auth-Require", "aal2").want(t, 401, "mfa_required")
		h := r.header.Get("WWW-Authenticate")
		if !strings.HasPrefix(h, `Bearer error="insufficient_user_authentication"`) || !strings.Contains(h, `acr_values="aal2"`) {
			t.Fatalf("WWW-Authenticate %q", h)
		}
	})
	t.Run("an unknown requirement fails closed", func(t *testing.T) {
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+access, "X-Auth-Require", "aal9").want(t, 401, "mfa_required")
	})
	var stepped response
	t.Run("a code with the access token moves the same session to aal2", func(t *testing.T) {
		e.verifyMFA(t, map[string]string{"code": "000000"}, "Authorization", "Bearer "+access).want(t, 401, "invalid_code")
		stepped = e.verifyMFA(t, map[string]string{"code": oathtool(t, secret, e.clock.Now())}, "Authorization", "Bearer "+access).want(t, 200, "")
		c := e.claimsOf(t, stepped.str("access_token"))
		if c["acr"] != "aal2" || c["sid"] != sid {
			t.Fatalf("claims %v, want aal2 in session %v", c, sid)
		}
		e.do(t, "GET", "/auth/page", nil, "Authorization", "Bearer "+stepped.str("access_token"), "X-Auth-Require", "aal2").want(t, 200, "")
	})
	t.Run("the session stays one chain: the old refresh token gets the stepped-up successor", func(t *testing.T) {
		r := e.refresh(t, refresh).want(t, 200, "")
		if r.str("refresh_token") != stepped.str("refresh_token") {
			t.Fatal("the old refresh token started a chain of its own")
		}
		e.clock.Advance(e.reuseWindow())
		e.refresh(t, refresh).want(t, 401, "token_reused") // and past the window it is reuse
	})
}

func TestRemovingTheSecondFactor(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	email, access, _ := e.user(t)
	secret, recovery := e.enrolTOTP(t, access)
	other := e.verifyMFA(t, map[string]string{"mfa_token": e.loginMFA(t, email), "recovery_code": recovery[1]}).want(t, 200, "")
	e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"code": "000000"}, "Authorization", "Bearer "+access).want(t, 401, "invalid_code")
	e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"code": oathtool(t, secret, e.clock.Now())}, "Authorization", "Bearer "+access).
		want(t, 204, "")
	e.page(t, access).want(t, 200, "")                                 // this session stays
	e.page(t, other.str("access_token")).want(t, 401, "token_revoked") // the others end
	e.login(t, email, "correct horse battery")                         // no second step any more
	e.do(t, "DELETE", "/auth/mfa/totp", map[string]string{"recovery_code": recovery[2]}, "Authorization", "Bearer "+access).
		want(t, 409, "mfa_not_enrolled")
}

// Each single-use thing is taken by a unique-key insert or a single-document delete: of many
// simultaneous uses, exactly one succeeds, on every backend.
func TestSecondFactorUsesRaceToExactlyOneWinner(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, func(c *config) { c.maxFailures, c.maxClientFails, c.mfaMaxFailures = 0, 0, 0 })
	// Nor does a challenge die of the wrong answers racing its right one: this is about the store.
	e.deps.mfa.limits.maxChallenge = 0
	email, access, _ := e.user(t)
	secret, recovery := e.enrolTOTP(t, access)
	race := func(t *testing.T, n int, body func(i int) map[string]string) map[int]int {
		t.Helper()
		statuses := make([]int, n)
		var wg sync.WaitGroup
		start := make(chan struct{})
		for i := range n {
			wg.Go(func() {
				<-start
				statuses[i] = e.verifyMFA(t, body(i)).status
			})
		}
		close(start)
		wg.Wait()
		count := map[int]int{}
		for _, s := range statuses {
			count[s]++
		}
		return count
	}
	// oneWinner: never two 200s, and the others lose with 401. A use the store did not answer in
	// time (503, seen on PostgreSQL under the race detector) may have been the winner, unseen.
	oneWinner := func(t *testing.T, got map[int]int, n int) {
		t.Helper()
		if got[200] > 1 || got[200]+got[401]+got[503] != n || (got[503] == 0 && got[200] != 1) {
			t.Fatalf("statuses %v, want one 200 and the rest 401", got)
		}
	}
	for round := range 3 {
		t.Run(fmt.Sprintf("one recovery code, round %d", round), func(t *testing.T) {
			tokens := make([]string, 16)
			for i := range tokens {
				tokens[i] = e.loginMFA(t, email)
			}
			got := race(t, len(tokens), func(i int) map[string]string {
				return map[string]string{"mfa_token": tokens[i], "recovery_code": recovery[round]}
			})
			oneWinner(t, got, len(tokens))
		})
		t.Run(fmt.Sprintf("one TOTP code, round %d", round), func(t *testing.T) {
			e.clock.Advance(3 * totpStep)
			tokens := make([]string, 16)
			for i := range tokens {
				tokens[i] = e.loginMFA(t, email)
			}
			code := oathtool(t, secret, e.clock.Now())
			got := race(t, len(tokens), func(i int) map[string]string { return map[string]string{"mfa_token": tokens[i], "code": code} })
			oneWinner(t, got, len(tokens))
		})
		t.Run(fmt.Sprintf("one login challenge, round %d", round), func(t *testing.T) {
			token := e.loginMFA(t, email)
			got := race(t, 8, func(i int) map[string]string {
				return map[string]string{"mfa_token": token, "recovery_code": recovery[3+2*round+i%2]}
			})
			oneWinner(t, got, 8)
		})
	}
}
