package file

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/kmesh-go/kmesh/examples"
)

// fastYAMLSeeds are files in fastDecode's subset (and a few just outside
// it), the shapes a generated config and a hand-written one take.
var fastYAMLSeeds = []string{
	"services:\n- {name: svc-00010, namespace: ns-010, addresses: [10.96.0.11], ports: [{port: 80, targetPort: 8080}], selector: {app: svc-00010}}\n" +
		"workloads:\n- {name: ep-0000010, namespace: ns-010, labels: {app: svc-00010}, addresses: [10.128.0.11], node: remote}\n" +
		"- {name: ep-0000011, namespace: ns-011, labels: {app: svc-00011}, addresses: [10.128.0.12], node: remote}\n",
	"workloads:\n- {name: ep-0000011, namespace: ns-011, addresses: [10.128.0.12, fd00::1]}\n",
	"services:\nworkloads:\n",
	"services:\n  - name: a\n    namespace: default\n    ports:\n    - port: 80\n      targetPort: 8080\n    selector:\n      app: a\n" +
		"workloads:\n  - name: w\n    namespace: default\n    addresses: [10.0.0.1]\n    labels: {app: a, version: v1}\n    weight: 2\n",
	"a: {x: 1, y: [b, c], z: {}, w: []}\nb: [[1, 2], [3], {k: v}]\nc: true\nd: null\nf: 1.5\ng: 0x1F\nh: 2001-12-14\ni: .inf\nj: y\n",
	"- a\n- b: c\n  d: e\n- {f: g}\n-  h\n",
	"a:\n  b:\n    c: d\n  e: f\ng: h\n",
	"a: b c\nd: {e: f g, h: i}\n",
	"a: 1\na: 2\n",
	"{a: 1, a: 2}\n",
	"a: b\n  c\n",
	"a:   \nb: c\n",
	"a:\n- b\n c: d\n",
	"---\na: b\n",
	"a: b\n---\nc: d\n",
	"a: ~\n",
	"null\n",
	"",
	"\n\n  \n",
	"a: [b,c]\n",
	"a: {b:c}\n",
	"a: [b, c,]\n",
	"a: - b\n",
	"a:\n-\n  b: c\n",
	"a: -1\nb: +1\nc: 1_000\nd: 010\ne: 1e3\nf: .5\n",
	"a:b: c\n",
	"a: b:c\n",
	"a: {b: c}, \n",
	"services:\n- {name: s-1, addresses: [\"10.96.0.1\"], ports: [{port: 80, targetPort: 8080}], selector: {app: s-1}}\n" +
		"workloads:\n- {name: w-1, labels: {app: s-1}, addresses: [\"10.128.0.1\", \"fd00::1\"], node: remote}\n",
	"a: \"b c: d, {e}\"\nb: [\"\", \"1\"]\n\"c\": \"true\"\nd: {\"e\": \"f\"}\n",
	"a: \"b\nc\"\n",
	"a: \"b\" c\n",
	"a: \"b\":c\n",
	"{\"a\":1}\n",
}

// TestFastDecode_AsYAML: whatever fastDecode decodes, yaml.v3 decodes to
// the same tree (kinds, tags, values, styles, lines and columns), and it
// takes what it does not know to yaml.v3. Seeds, the example configs, and
// thousands of random edits of them (characters inserted, deleted,
// lines indented), a good part of which fastDecode still takes.
func TestFastDecode_AsYAML(t *testing.T) {
	seeds := append([]string{string(examples.Hello)}, fastYAMLSeeds...)
	for _, glob := range []string{"../../../examples/*.yaml", "testdata/*.yaml"} {
		files, _ := filepath.Glob(glob)
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			seeds = append(seeds, string(data))
		}
	}
	var taken int
	check := func(data string) bool {
		t.Helper()
		got, ok := fastDecode([]byte(data), nil)
		if !ok {
			return false
		}
		taken++
		want, err := yamlDecode([]byte(data))
		if err != nil {
			t.Fatalf("fastDecode took a file yaml.v3 refuses (%v):\n%s", err, data)
		}
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("fastDecode differs from yaml.v3 on:\n%s\nfast:\n%s\nyaml.v3:\n%s", data, dumpNode(got), dumpNode(want))
		}
		return true
	}
	var inSubset []string // the edits start from these
	for _, s := range seeds {
		if check(s) {
			inSubset = append(inSubset, s)
		}
	}
	if taken < 6 {
		t.Fatalf("fastDecode took %d of the seeds, want at least 6", taken)
	}
	rng := rand.New(rand.NewPCG(12, 7))
	const edits = " \n:-{}[],a1.x\""
	taken = 0
	const mutants = 20000
	for range mutants {
		b := []byte(inSubset[rng.IntN(len(inSubset))])
		for range 1 + rng.IntN(3) {
			i := rng.IntN(len(b) + 1)
			switch rng.IntN(3) {
			case 0:
				b = append(b[:i], append([]byte{edits[rng.IntN(len(edits))]}, b[i:]...)...)
			case 1:
				if i < len(b) {
					b = append(b[:i], b[i+1:]...)
				}
			case 2:
				j := strings.LastIndexByte(string(b[:i]), '\n') + 1
				b = append(b[:j], append([]byte("  "), b[j:]...)...)
			}
		}
		check(string(b))
	}
	if taken < mutants/10 {
		t.Fatalf("fastDecode took %d of %d edited files, want at least a tenth", taken, mutants)
	}
	t.Logf("fastDecode took %d of %d edited files", taken, mutants)
}

func dumpNode(n *yaml.Node) string {
	var b strings.Builder
	var walk func(*yaml.Node, string)
	walk = func(n *yaml.Node, indent string) {
		if n == nil {
			b.WriteString(indent + "nil\n")
			return
		}
		fmt.Fprintf(&b, "%skind %d tag %q value %q style %d at %d:%d\n", indent, n.Kind, n.Tag, n.Value, n.Style, n.Line, n.Column)
		for _, c := range n.Content {
			walk(c, indent+"  ")
		}
	}
	walk(n, "")
	return b.String()
}

// TestPlainTag_AsYAML: plainTag gives the tag yaml.v3 resolves for plain
// scalars of fastDecode's alphabet, the keywords and their neighbours too.
func TestPlainTag_AsYAML(t *testing.T) {
	for _, s := range []string{
		"true", "True", "TRUE", "tRUE", "truer", "false", "False", "FALSE", "null", "Null", "NULL", "nULL", "nil",
		"y", "Y", "yes", "Yes", "n", "N", "no", "No", "on", "On", "ON", "off", "Off", "OFF", "o", "t", "f",
		"name", "namespace", "node", "ns-010", "nan", "inf", "a", "app", "svc-00010", "Ab_c.d/e+f",
		"10.96.0.1", "1", "10", "0", "007", "1.5", "1.2.3", "1.2.3.4", "10.128.39.27", "2001-12-14", "1_000", "0x1F",
		"1e3", ".5", ".inf", ".nan", "+1", "-1", "+.inf", "/a/b", "_x", ".", "..",
	} {
		v := &yaml.Node{Kind: yaml.ScalarNode, Value: s}
		want := v.ShortTag()
		if got := plainTag(v); got != want {
			t.Errorf("plainTag(%q) = %s, yaml.v3 says %s", s, got, want)
		}
	}
}

// TestParserInteger_AsYAML: integer reads decimal digits itself and gives
// what yaml.v3 decodes, 010 (octal) and the out-of-range ones included.
func TestParserInteger_AsYAML(t *testing.T) {
	for _, s := range []string{"1", "80", "8080", "65535", "65536", "0", "010", "0x1F", "1_000", "+80", "99999999999999999999"} {
		n := &yaml.Node{Kind: yaml.ScalarNode, Value: s}
		n.Tag = n.ShortTag()
		var want int64
		err := n.Decode(&want)
		p := newParser("f.yaml", "", 100)
		got, ok := p.integer(n, "port", 0, 1<<40)
		if ok != (err == nil) || ok && got != want {
			t.Errorf("integer(%s) = %d, %v; yaml.v3: %d, %v", s, got, ok, want, err)
		}
	}
}
