package main

// addresses.go decides which email addresses are accepted, and the one form they are stored in.

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// domainNames is IDNA2008 for lookup with the UTS 46 mapping (case, width, compatibility forms),
// the Bidi and joiner rules, LDH labels and DNS lengths. Nontransitional: "ß" stays "ß", as
// registries and mail servers now treat it. A Profile is never changed after it is made.
var domainNames = idna.New(idna.MapForLookup(), idna.BidiRule(), idna.VerifyDNSLength(true), idna.Transitional(false))

// normalizeEmail is the form in which emails are stored and compared: trimmed, the local part
// lower-cased and in NFC (so that "ü" typed as one or two code points is one address), the domain
// in A-labels ("xn--mller-kva.de" for "müller.de"), so that either form finds the account. A
// domain with characters that do not show, or that IDNA refuses, is only lower-cased: validEmail
// refuses it, and accounts stored before this rule with such a domain are still found.
func normalizeEmail(s string) string {
	s = strings.TrimSpace(s)
	at := strings.LastIndexByte(s, '@')
	if at < 0 {
		return strings.ToLower(s)
	}
	local, domain := norm.NFC.String(strings.ToLower(s[:at])), s[at+1:]
	if visible(domain) {
		if a, err := domainNames.ToASCII(domain); err == nil {
			domain = a
		}
	}
	return local + "@" + strings.ToLower(domain)
}

// validEmail checks that a normalised address is a mailbox: a local part that is an RFC 5321
// Dot-string (atext extended to UTF-8 as in RFC 6531; no quoted strings) and a host name, as
// A-labels. Neither an address literal ("[127.0.0.1]") nor an IP address is a mailbox's domain.
// Characters that do not show (zero-width spaces, bidirectional controls, other format and control
// characters, spaces of any kind) are refused: an address must look like what it is wherever it is
// shown, a proxy's X-User-Email header included. For the same reason the local part, and each
// label of the domain as Unicode, keep to one script (see oneScript).
func validEmail(s string) bool {
	at := strings.LastIndexByte(s, '@')
	if len(s) > 254 || at < 1 || at > 64 || !visible(s) || normalizeEmail(s) != s {
		return false
	}
	local, domain := s[:at], s[at+1:]
	return dotString(local) && oneScript(local) && hostName(domain)
}

// visible reports whether s is valid UTF-8 with no character that does not show.
func visible(s string) bool {
	for _, c := range s {
		// Not graphic: controls, format characters (Cf), private use, unassigned. U+FFFD is what
		// JSON decoding makes of bytes that are not UTF-8.
		if !unicode.IsGraphic(c) || unicode.IsSpace(c) || c == utf8.RuneError {
			return false
		}
	}
	return true
}

// dotString reports whether local is atoms of atext joined by single dots; any character beyond
// ASCII is atext (RFC 6531), once visible has passed it.
func dotString(local string) bool {
	for atom := range strings.SplitSeq(local, ".") {
		if atom == "" {
			return false
		}
		for _, c := range atom {
			if c < utf8.RuneSelf && !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
				strings.ContainsRune("!#$%&'*+-/=?^_`{|}~", c)) {
				return false
			}
		}
	}
	return true
}

// hostName reports whether domain, in A-labels, names a host: two labels or more of letters,
// digits and inner hyphens, 1 to 63 octets each, and a top-level label that is not all digits
// (which also keeps out IPv4 addresses, "127.0.0.1" as "127.1"). Each label, as Unicode, keeps to
// one script.
func hostName(domain string) bool {
	if a, err := domainNames.ToASCII(domain); err != nil || a != domain {
		return false
	}
	labels := strings.Split(domain, ".")
	if len(labels) < 2 {
		return false
	}
	for _, l := range labels {
		if l == "" || len(l) > 63 || l[0] == '-' || l[len(l)-1] == '-' {
			return false
		}
		for i := range len(l) {
			if c := l[i]; !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-') {
				return false
			}
		}
	}
	if strings.Trim(labels[len(labels)-1], "0123456789") == "" {
		return false
	}
	u, err := domainNames.ToUnicode(domain)
	if err != nil {
		return false
	}
	for l := range strings.SplitSeq(u, ".") {
		if !oneScript(l) {
			return false
		}
	}
	return true
}

// oneScript reports whether s keeps to one script, as Unicode's "Highly Restrictive" level has
// it (UTS #39, 5.2): Common and Inherited characters (digits, punctuation, combining marks)
// belong to none, and Latin may go with the scripts written along with it in Japanese, Chinese
// and Korean. So "exаmple" with a Cyrillic "а" is refused, "jürgen" and "用户" are not. The local
// part is checked as a whole, not atom by atom: it is one name, shown as one.
func oneScript(s string) bool {
	var seen []string
	for _, c := range s {
		if c < utf8.RuneSelf && ('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z') {
			seen = addScript(seen, "Latin")
			continue
		}
		if c < utf8.RuneSelf || unicode.In(c, unicode.Common, unicode.Inherited) {
			continue
		}
		name := "unknown"
		for n, table := range unicode.Scripts {
			if unicode.Is(table, c) {
				name = n
				break
			}
		}
		seen = addScript(seen, name)
	}
	if len(seen) <= 1 {
		return true
	}
	for _, allowed := range [][]string{
		{"Latin", "Han", "Hiragana", "Katakana"},
		{"Latin", "Han", "Bopomofo"},
		{"Latin", "Han", "Hangul"},
	} {
		within := true
		for _, n := range seen {
			within = within && contains(allowed, n)
		}
		if within {
			return true
		}
	}
	return false
}

func addScript(seen []string, name string) []string {
	if contains(seen, name) {
		return seen
	}
	return append(seen, name)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// normalizeStoredEmails rewrites the addresses that were stored before normalizeEmail made
// domains A-labels (and local parts NFC), so that a login, which looks up the normalised form,
// finds their accounts. It runs at every start, since instances of an older version may still
// write such addresses during an upgrade; only addresses beyond ASCII are read. An address whose
// new form another account has already is left as it is, and logged: the operator decides.
func normalizeStoredEmails(ctx context.Context, store userStore, log *slog.Logger) error {
	users, err := store.UsersWithUnicodeEmail(ctx)
	if err != nil {
		return err
	}
	for _, u := range users {
		to := normalizeEmail(u.Email)
		if to == u.Email {
			continue
		}
		switch err := store.RewriteEmail(ctx, u.ID, u.Email, to); {
		case errors.Is(err, ErrDuplicate):
			log.Warn("an account's address was left in its old form: another account has its normalised form",
				"user_id", u.ID, "email", u.Email, "normalised", to)
		case errors.Is(err, ErrNotFound):
			// Deleted or given another address meanwhile.
		case err != nil:
			return err
		default:
			log.Info("an account's address is now stored in its normalised form", "user_id", u.ID, "normalised", to)
		}
	}
	return nil
}
