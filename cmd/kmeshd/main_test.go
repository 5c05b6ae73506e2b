package main

import (
	"os"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

// TestREADME_FlagTableNamesEveryFlag: the README's kmeshd flag table is
// where a user looks a flag up; every flag of kmeshd is in it.
func TestREADME_FlagTableNamesEveryFlag(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "\n## kmeshd\n")
	if !ok {
		t.Fatal("README has no kmeshd section")
	}
	section, _, _ := strings.Cut(rest, "\n## ")
	var table strings.Builder
	for _, line := range strings.Split(section, "\n") {
		if strings.HasPrefix(line, "| `--") {
			first, _, _ := strings.Cut(strings.TrimPrefix(line, "|"), "|")
			table.WriteString(first)
		}
	}
	newCommand().Flags().VisitAll(func(f *pflag.Flag) {
		if !strings.Contains(table.String(), "`--"+f.Name+"`") && !strings.Contains(table.String(), "`--"+f.Name+" ") {
			t.Errorf("flag --%s is not in the README's kmeshd flag table", f.Name)
		}
	})
}
