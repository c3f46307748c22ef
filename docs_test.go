package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// mdPage is a Markdown file of the repository's documentation, split into its prose (code
// removed, so that code is never read as links) and the lines of its code blocks.
type mdPage struct {
	path  string
	prose []string
	code  []string
}

// docPages reads README.md and every docs/*.md.
func docPages(tb testing.TB) []mdPage {
	tb.Helper()
	paths, err := filepath.Glob("docs/*.md")
	if err != nil {
		tb.Fatal(err)
	}
	var pages []mdPage
	for _, p := range append([]string{"README.md"}, paths...) {
		b, err := os.ReadFile(p)
		if err != nil {
			tb.Fatal(err)
		}
		pages = append(pages, splitMarkdown(p, string(b)))
	}
	return pages
}

var inlineCode = regexp.MustCompile("`[^`]*`")

func splitMarkdown(path, text string) mdPage {
	page := mdPage{path: path}
	fenced := false
	for line := range strings.SplitSeq(text, "\n") {
		switch {
		case strings.HasPrefix(line, "```"):
			fenced = !fenced
		case fenced, strings.HasPrefix(line, "    "), strings.HasPrefix(line, "\t"):
			page.code = append(page.code, line)
		case strings.HasPrefix(line, "#"):
			page.prose = append(page.prose, strings.ReplaceAll(line, "`", "")) // code in a heading names its anchor
		default:
			page.prose = append(page.prose, inlineCode.ReplaceAllString(line, ""))
		}
	}
	return page
}

var mdLink = regexp.MustCompile(`\]\(([^)\s]+)\)`)

// links are the page's relative link targets, as written.
func (p mdPage) links() []string {
	var out []string
	for _, line := range p.prose {
		for _, m := range mdLink.FindAllStringSubmatch(line, -1) {
			if t := m[1]; !strings.Contains(t, "://") && !strings.HasPrefix(t, "mailto:") {
				out = append(out, t)
			}
		}
	}
	return out
}

// anchors are the ids GitHub gives the page's headings: lower case, spaces to hyphens,
// punctuation other than hyphens and underscores dropped, repeats numbered.
func (p mdPage) anchors() map[string]bool {
	ids := map[string]bool{}
	seen := map[string]int{}
	for _, line := range p.prose {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		text := strings.TrimSpace(strings.TrimLeft(line, "#"))
		text = mdLink.ReplaceAllString(text, "]") // [text](target) keeps its text
		var b strings.Builder
		for _, r := range strings.ToLower(text) {
			switch {
			case r == ' ':
				b.WriteRune('-')
			case r == '-' || r == '_' || unicode.IsLetter(r) || unicode.IsDigit(r):
				b.WriteRune(r)
			}
		}
		id := b.String()
		if n := seen[id]; n > 0 {
			ids[id+"-"+strconv.Itoa(n)] = true
		} else {
			ids[id] = true
		}
		seen[id]++
	}
	return ids
}

// Every relative link in the README and docs/ names a file that exists, and an anchor into a
// Markdown file names one of its headings.
func TestDocsLinksResolve(t *testing.T) {
	t.Parallel()
	pages := docPages(t)
	byPath := map[string]mdPage{}
	for _, p := range pages {
		byPath[p.path] = p
	}
	for _, p := range pages {
		for _, link := range p.links() {
			target, anchor, _ := strings.Cut(link, "#")
			file := p.path
			if target != "" {
				file = filepath.Join(filepath.Dir(p.path), target)
				if _, err := os.Stat(file); err != nil {
					t.Errorf("%s links to %s, which does not exist", p.path, link)
					continue
				}
			}
			if anchor == "" || !strings.HasSuffix(file, ".md") {
				continue
			}
			to, ok := byPath[file]
			if !ok {
				b, err := os.ReadFile(file)
				if err != nil {
					t.Fatal(err)
				}
				to = splitMarkdown(file, string(b))
			}
			if !to.anchors()[anchor] {
				t.Errorf("%s links to %s, but %s has no heading with that anchor", p.path, link, file)
			}
		}
	}
}

// The proxy configurations live in deploy/ alone, where the tests run them: the docs link every
// file there, and no page pastes one (a pasted copy drifts from the tested file).
func TestDocsLinkEveryDeployFileAndPasteNone(t *testing.T) {
	t.Parallel()
	entries, err := os.ReadDir("deploy")
	if err != nil {
		t.Fatal(err)
	}
	pages := docPages(t)
	linked := map[string]bool{}
	for _, p := range pages {
		for _, link := range p.links() {
			target, _, _ := strings.Cut(link, "#")
			linked[filepath.Join(filepath.Dir(p.path), target)] = true
		}
	}
	for _, e := range entries {
		path := filepath.Join("deploy", e.Name())
		if !linked[path] {
			t.Errorf("no page of the docs links %s", path)
		}
		conf, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		lines := significantLines(strings.Split(string(conf), "\n"))
		for _, p := range pages {
			code := significantLines(p.code)
			n := 0
			for l := range lines {
				if code[l] {
					n++
				}
			}
			if len(lines) >= 5 && 2*n > len(lines) {
				t.Errorf("%s pastes %s (%d of its %d lines): link it instead", p.path, path, n, len(lines))
			}
		}
	}
}

// significantLines are the distinct lines that say something: not blank, not a comment, not a
// lone brace.
func significantLines(lines []string) map[string]bool {
	out := map[string]bool{}
	for _, l := range lines {
		l = strings.TrimSpace(l)
		if l == "" || strings.HasPrefix(l, "#") || l == "{" || l == "}" {
			continue
		}
		out[l] = true
	}
	return out
}

// Every path a route registers is findable in the first column of the README's API table: as
// "`METHOD /path`", "`/path`", or after a full path as "`/last`", which replaces its last segment.
func TestTheREADMEsAPITableNamesEveryRoute(t *testing.T) {
	t.Parallel()
	e := newTestEnv(t, withPortal)
	var patterns patternList
	addRoutes(&patterns, e.deps)
	addAdminRoutes(&patterns, e.deps)
	addMetricsRoutes(&patterns, e.deps)
	registered := map[string]bool{}
	for _, p := range patterns {
		_, path, ok := strings.Cut(p, " ")
		if !ok {
			path = p
		}
		registered[path] = true
	}
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	named := map[string]bool{}
	for line := range strings.SplitSeq(string(readme), "\n") {
		cells := strings.Split(line, " | ")
		if !strings.HasPrefix(line, "| `") || len(cells) < 2 {
			continue
		}
		prev := ""
		for _, code := range inlineCode.FindAllString(cells[0], -1) {
			fields := strings.Fields(strings.Trim(code, "`"))
			if len(fields) == 0 || !strings.HasPrefix(fields[len(fields)-1], "/") {
				continue
			}
			path, _, _ := strings.Cut(fields[len(fields)-1], "?")
			if !registered[path] && prev != "" {
				path = prev[:strings.LastIndex(prev, "/")] + path
			}
			named[path], prev = true, path
		}
	}
	for path := range registered {
		if !named[path] {
			t.Errorf("%s is registered but the README's API table does not name it", path)
		}
	}
}
