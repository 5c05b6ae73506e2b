package file

import (
	"strings"
	"testing"

	"github.com/kmesh-go/kmesh/examples"
)

func FuzzParse(f *testing.F) {
	f.Add(examples.Hello)
	for _, tc := range badFiles {
		f.Add([]byte(tc.yaml))
	}
	for _, tc := range badPolicyFiles {
		f.Add([]byte(policyWorkloads + tc.yaml))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		// No node: the netns check would stat paths from the input.
		m, err := Parse("fuzz.yaml", data, "")
		if err != nil {
			for _, line := range strings.Split(err.Error(), "\n") {
				if !strings.HasPrefix(line, "fuzz.yaml:") {
					t.Fatalf("error line %q does not name the file", line)
				}
			}
			return
		}
		if err := m.Validate(); err != nil {
			t.Fatalf("Parse succeeded but Validate failed: %v", err)
		}
	})
}
