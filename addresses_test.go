package main

import (
	"context"
	"strings"
	"testing"
	"time"
)

func TestTheAddressRule(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, in string
		stored   string // the normalised form; empty when the address is refused
	}{
		{"an ASCII address is accepted", "user1@example.com", "user1@example.com"},
		{"an address is trimmed and lower-cased", "  Ada.Lovelace@Example.COM ", "ada.lovelace@example.com"},
		{"every atext character is accepted in the local part", "a!#$%&'*+-/=?^_`{|}~z@example.com", "a!#$%&'*+-/=?^_`{|}~z@example.com"},
		{"letters beyond ASCII are accepted in the local part", "jürgen@example.de", "jürgen@example.de"},
		{"a composed and a decomposed letter are one address", "ju\u0308rgen@example.de", "jürgen@example.de"},
		{"a Unicode domain is stored in A-labels", "jürgen@müller.de", "jürgen@xn--mller-kva.de"},
		{"an A-label domain is accepted as it is", "jürgen@XN--MLLER-KVA.de", "jürgen@xn--mller-kva.de"},
		{"Chinese in the local part and the domain is accepted", "用户@例子.广告", "用户@xn--fsqu00a.xn--4rr70v"},
		{"Japanese mixing Latin, kanji and kana is accepted", "tanaka田中たなか@example.jp", "tanaka田中たなか@example.jp"},
		{"Korean mixing Latin and Hangul is accepted", "kim김@example.kr", "kim김@example.kr"},
		{"a Cyrillic domain label is accepted", "ivan@пример.рф", "ivan@xn--e1afmkfd.xn--p1ai"},
		{"a domain label may start with a digit", "user@1password.com", "user@1password.com"},
		{"a local part of 64 octets is accepted", strings.Repeat("a", 64) + "@example.com", strings.Repeat("a", 64) + "@example.com"},
		{"an address of 254 octets is accepted", "ab@" + strings.Repeat(strings.Repeat("b", 61)+".", 4) + "com",
			"ab@" + strings.Repeat(strings.Repeat("b", 61)+".", 4) + "com"},
		{"a domain label of 63 octets is accepted", "a@" + strings.Repeat("b", 63) + ".com", "a@" + strings.Repeat("b", 63) + ".com"},

		{"a domain mixing Latin and Cyrillic is refused", "victim@ex\u0430mple.com", ""},
		{"a domain mixing Latin and Cyrillic typed as A-labels is refused", "victim@xn--exmple-4nf.com", ""},
		{"a local part mixing Latin and Cyrillic is refused", "p\u0430ypal@example.com", ""},
		{"a local part mixing Latin and Greek across dots is refused", "ada.\u03bb@example.com", ""},
		{"Hangul with kana is refused", "김たなか@example.kr", ""},
		{"an IPv4 address literal is refused", "user@[127.0.0.1]", ""},
		{"an IPv6 address literal is refused", "user@[IPv6:::1]", ""},
		{"an IP address as the domain is refused", "user@127.0.0.1", ""},
		{"an all-numeric top-level label is refused", "user@example.123", ""},
		{"a quoted local part is refused", `"quoted"@example.com`, ""},
		{"a URL is refused", "http://x@example.com", ""},
		{"two dots in a row are refused", "a..b@example.com", ""},
		{"a leading dot is refused", ".a@example.com", ""},
		{"a trailing dot in the local part is refused", "a.@example.com", ""},
		{"a trailing dot in the domain is refused", "a@example.com.", ""},
		{"a domain of one label is refused", "user@localhost", ""},
		{"an underscore in the domain is refused", "user@exa_mple.com", ""},
		{"a label starting with a hyphen is refused", "user@-example.com", ""},
		{"an A-label that is not Punycode is refused", "user@xn--a.com", ""},
		{"a local part over 64 octets is refused", strings.Repeat("a", 65) + "@example.com", ""},
		{"a domain label over 63 octets is refused", "a@" + strings.Repeat("b", 64) + ".com", ""},
		{"an address over 254 octets is refused", "abc@" + strings.Repeat(strings.Repeat("b", 61)+".", 4) + "com", ""},
		{"a soft hyphen in the domain is refused", "user@exam\u00adple.com", ""},
		{"a zero-width joiner in the domain is refused", "user@exam\u200dple.com", ""},
		{"two @ are refused", "a@b@example.com", ""},
		{"a comma is refused", "a,b@example.com", ""},
		{"angle brackets are refused", "<a@example.com>", ""},
		{"a backslash is refused", `a\b@example.com`, ""},
		{"an empty local part is refused", "@example.com", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := normalizeEmail(tt.in)
			valid := validEmail(got)
			switch {
			case tt.stored == "" && valid:
				t.Fatalf("%q is accepted as %q", tt.in, got)
			case tt.stored != "" && !valid:
				t.Fatalf("%q (normalised %q) is refused", tt.in, got)
			case tt.stored != "" && got != tt.stored:
				t.Fatalf("%q is stored as %q, want %q", tt.in, got, tt.stored)
			}
		})
	}
}

func TestSignupRefusesAnAddressMixingLatinAndCyrillic(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	r := e.do(t, "POST", "/auth/signup", credentials{"victim@ex\u0430mple.com", "password123"}).want(t, 400, "invalid_email")
	if !strings.Contains(r.str("message"), "script") {
		t.Fatalf("message %q does not say why", r.str("message"))
	}
	e.do(t, "POST", "/auth/signup", credentials{"p\u0430ypal@example.com", "password123"}).want(t, 400, "invalid_email")
	e.signup(t, "victim@example.com", "password123")
}

func TestSignupRefusesAddressLiterals(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	for _, email := range []string{"user@[127.0.0.1]", "user@[IPv6:::1]", "user@127.0.0.1", `"quoted"@example.com`, "http://x@example.com"} {
		e.do(t, "POST", "/auth/signup", credentials{email, "password123"}).want(t, 400, "invalid_email")
	}
}

func TestSignupStoresTheDomainInALabels(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t)
	r := e.signup(t, "Jürgen@Müller.de", "password123")
	if r.str("email") != "jürgen@xn--mller-kva.de" {
		t.Fatalf("email %q, want the domain in A-labels", r.str("email"))
	}
	e.login(t, "jürgen@xn--mller-kva.de", "password123")
	e.login(t, "jürgen@müller.de", "password123")
	e.login(t, "JÜRGEN@MÜLLER.DE", "password123")
	e.do(t, "POST", "/auth/signup", credentials{"jürgen@xn--mller-kva.de", "password123"}).want(t, 409, "email_taken")
	e.do(t, "POST", "/auth/signup", credentials{"ju\u0308rgen@mu\u0308ller.de", "password123"}).want(t, 409, "email_taken")
	found := e.adminDo(t, "GET", "/admin/users?email=j%C3%BCrgen@m%C3%BCller.de", nil).want(t, 200, "")
	if found.str("id") != r.str("id") {
		t.Fatalf("the admin API found %s for the Unicode form", found.raw)
	}
}

// Before the rule, addresses were stored as typed, lower-cased: a Unicode domain as Unicode. The
// start rewrites them, but for one whose new form another account has.
func TestAnAccountWithAUnicodeDomainFromBeforeKeepsWorking(t *testing.T) {
	t.Parallel()
	db := newTestDB(t)
	ctx := context.Background()
	old, err := newMongoStore(ctx, db, nil)
	if err != nil {
		t.Fatal(err)
	}
	hash := hashPassword("correct horse battery")
	for _, u := range []User{
		{ID: "old", Email: "jürgen@exämple.de", EmailVerified: true},
		{ID: "nfd", Email: "ju\u0308rgen@example.de"},
		{ID: "clash-unicode", Email: "ada@bücher.de"},
		{ID: "clash-alabel", Email: "ada@xn--bcher-kva.de"},
	} {
		u.PasswordHash, u.CreatedAt = hash, time.Now()
		if err := old.CreateUser(ctx, &u); err != nil {
			t.Fatal(err)
		}
	}

	e := newTestEnvOn(t, db)
	for _, email := range []string{"jürgen@exämple.de", "jürgen@xn--exmple-cua.de", "JÜRGEN@EXÄMPLE.DE"} {
		access, _ := e.login(t, email, "correct horse battery")
		e.page(t, access).want(t, 200, "")
	}
	u, err := e.store.UserByID(ctx, "old")
	if err != nil {
		t.Fatal(err)
	}
	if u.Email != "jürgen@xn--exmple-cua.de" || !u.EmailVerified {
		t.Fatalf("stored %q, verified %v; want the A-label form, still verified", u.Email, u.EmailVerified)
	}
	if u, err := e.store.UserByEmail(ctx, "jürgen@example.de"); err != nil || u.ID != "nfd" {
		t.Fatalf("the decomposed address is not stored composed: %v %v", u, err)
	}
	e.login(t, "ju\u0308rgen@example.de", "correct horse battery")

	// The clash is left for the operator, and logged.
	if u, err := e.store.UserByID(ctx, "clash-unicode"); err != nil || u.Email != "ada@bücher.de" {
		t.Fatalf("the clashing account: %v %v", u, err)
	}
	if !strings.Contains(e.logs.String(), "clash-unicode") {
		t.Fatalf("the clash is not logged:\n%s", e.logs.String())
	}
	access, _ := e.login(t, "ada@bücher.de", "correct horse battery")
	if r := e.page(t, access).want(t, 200, ""); r.header.Get("X-User-Id") != "clash-alabel" {
		t.Fatalf("logged in as %q, want the account with the normalised address", r.header.Get("X-User-Id"))
	}
	// A second start has nothing left to do but the clash.
	newTestEnvOn(t, db)
}

func TestEmailChangeRefusesAnAddressThatIsNotAMailbox(t *testing.T) {
	t.Parallel()
	srv := newMailServer(t, false)
	e := newMailEnv(t, srv)
	e.signupMailed(t, srv, "changer@example.com")
	access, _ := e.login(t, "changer@example.com", "correct horse battery")
	auth := []string{"Authorization", "Bearer " + access}
	for _, email := range []string{"victim@ex\u0430mple.com", "user@[127.0.0.1]"} {
		e.do(t, "POST", "/auth/email/change", map[string]string{"new_email": email, "password": "correct horse battery"}, auth...).
			want(t, 400, "invalid_email")
	}
}
