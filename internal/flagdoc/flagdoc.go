// Package flagdoc checks that a command's flag table in the docs names every
// flag the command takes, so a flag never ships undocumented. Tests of the
// commands call it; the product does not.
package flagdoc

import (
	"fmt"
	"os"
	"strings"

	"github.com/spf13/pflag"
)

// Undocumented reads the markdown file at path, takes the first table after
// the first line that starts with marker, and returns the flags of fs that no
// row's first column names as `--name` (alone or followed by a value, as in
// `--config FILE`).
func Undocumented(path, marker string, fs *pflag.FlagSet) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	lines := strings.Split(string(b), "\n")
	start := -1
	for i, l := range lines {
		if strings.HasPrefix(l, marker) {
			start = i
			break
		}
	}
	if start < 0 {
		return nil, fmt.Errorf("%s: no line starts with %q", path, marker)
	}
	var names strings.Builder
	inTable := false
	for _, l := range lines[start:] {
		if !strings.HasPrefix(l, "|") {
			if inTable {
				break
			}
			continue
		}
		inTable = true
		first, _, _ := strings.Cut(strings.TrimPrefix(l, "|"), "|")
		names.WriteString(first)
	}
	if !inTable {
		return nil, fmt.Errorf("%s: no table after %q", path, marker)
	}
	var missing []string
	fs.VisitAll(func(f *pflag.Flag) {
		if f.Hidden || f.Name == "help" {
			return
		}
		col := names.String()
		if !strings.Contains(col, "`--"+f.Name+"`") && !strings.Contains(col, "`--"+f.Name+" ") {
			missing = append(missing, "--"+f.Name)
		}
	})
	return missing, nil
}
