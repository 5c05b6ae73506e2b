package file

import (
	"regexp"
	"testing"
)

// TestDNSNames: isDNSLabel and isDNSSubdomain take exactly what the RFC
// 1123 patterns they replace take, over every string of up to four
// characters from an alphabet of their edge cases, and some longer ones.
func TestDNSNames(t *testing.T) {
	label := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
	subdomain := regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	check := func(s string) {
		if got, want := isDNSLabel(s), label.MatchString(s); got != want {
			t.Errorf("isDNSLabel(%q) = %v, want %v", s, got, want)
		}
		if got, want := isDNSSubdomain(s), subdomain.MatchString(s); got != want {
			t.Errorf("isDNSSubdomain(%q) = %v, want %v", s, got, want)
		}
	}
	const alphabet = "az09-.A_/é"
	var walk func(prefix string, n int)
	walk = func(prefix string, n int) {
		check(prefix)
		if n == 0 {
			return
		}
		for _, r := range alphabet {
			walk(prefix+string(r), n-1)
		}
	}
	walk("", 4)
	for _, s := range []string{"hello-1", "hello-1.default", "ep-0000001", "a.b.c.d", "a..b", ".a", "a.", "a-.b", "a.-b", "-", "x\n"} {
		check(s)
	}
}
