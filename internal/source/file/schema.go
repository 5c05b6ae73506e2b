package file

import (
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"

	"go.yaml.in/yaml/v3"
)

// maxErrors bounds how many problems one error reports, so a file that is
// wrong throughout still gives a readable log line.
const maxErrors = 20

// posError is one problem at a line of the file. msg starts with the field
// path when there is one.
type posError struct {
	line int
	msg  string
}

// parser walks yaml.Node trees rather than decoding into structs, because only
// the nodes know the line of every value, and every error must name its line.
type parser struct {
	name string // file name, for messages
	node string // this node's name; "" skips the netns check
	errs []posError

	// budget is how many more values the walk may visit. Aliases let a small
	// file name a big mapping many times; the bound keeps that from taking
	// minutes and gigabytes.
	budget int

	// labelSets holds one map per distinct label set of the file, so the
	// workloads of one app share their labels map (a small map is ~300
	// bytes; a directory keeps every file's parsed items).
	labelSets map[string]map[string]string
	// labelTexts maps the text of a label mapping as written (its pairs
	// in order, each NUL-terminated) to its shared map, so the items with
	// the same labels as one before make no map to throw away; text is
	// where that text is put together.
	labelTexts map[string]map[string]string
	text       []byte
	// shared holds one copy of each namespace, node and service account
	// of the file: every workload keeps them, and the workloads of a
	// file mostly repeat a few (two strings fewer per workload to keep
	// and for the collector to mark: a million at 500,000 endpoints).
	shared map[string]string
	// itemMaps holds itemFields' map for each kind of item.
	itemMaps map[string]map[string]*yaml.Node
}

// share returns s, or the copy of the same string the file gave before.
func (p *parser) share(s string) string {
	if v, ok := p.shared[s]; ok {
		return v
	}
	if p.shared == nil {
		p.shared = map[string]string{}
	}
	p.shared[s] = s
	return s
}

// newParser returns a parser for a file of size bytes. A file without
// aliases has fewer values than bytes, so it always fits the budget.
func newParser(name, node string, size int) *parser {
	return &parser{name: name, node: node, budget: 4*size + 10000}
}

// spend takes the values of n from the budget, reporting false (once, with
// an error) when the budget is exhausted.
func (p *parser) spend(n *yaml.Node) bool {
	if p.budget < 0 {
		return false
	}
	p.budget -= len(n.Content)
	if p.budget < 0 {
		p.errorf(n, "", "aliases expand to too many values")
		return false
	}
	return true
}

// errorf records a problem at n. path is the field path, such as
// services[0].ports[1].port, or "" for the top level.
func (p *parser) errorf(n *yaml.Node, path, format string, args ...any) {
	p.errorAt(n.Line, path, format, args...)
}

// labelSet returns a map equal to m that the file's other items with the
// same labels share. Nothing writes to a parsed item's labels.
func (p *parser) labelSet(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	keys := slices.Sorted(maps.Keys(m))
	var b strings.Builder
	for _, k := range keys {
		b.WriteString(k)
		b.WriteByte(0)
		b.WriteString(m[k])
		b.WriteByte(0)
	}
	if shared, ok := p.labelSets[b.String()]; ok {
		return shared
	}
	if p.labelSets == nil {
		p.labelSets = map[string]map[string]string{}
	}
	p.labelSets[b.String()] = m
	return m
}

// sharedLabels is labelSet(stringMap(n, join(path, key), allowEmpty)) for
// a field of an item: a mapping of non-empty plain strings written as one
// before it in the file (the items of one app) is valid as that one was,
// and gets its map without a new one being made.
func (p *parser) sharedLabels(n *yaml.Node, path, key string, allowEmpty bool) map[string]string {
	if m, ok := p.labelsAsBefore(n); ok {
		return m
	}
	errs := len(p.errs)
	m := p.labelSet(p.stringMap(n, join(path, key), allowEmpty))
	if m != nil && len(p.errs) == errs && p.text != nil {
		if p.labelTexts == nil {
			p.labelTexts = map[string]map[string]string{}
		}
		p.labelTexts[string(p.text)] = m
	}
	return m
}

// labelsAsBefore returns the map of the label mapping n when one with the
// same text came before; it leaves n's text in p.text when it is a
// mapping of non-empty strings (nil when not).
func (p *parser) labelsAsBefore(n *yaml.Node) (map[string]string, bool) {
	p.text = p.text[:0]
	if n.Kind != yaml.MappingNode || len(n.Content)%2 != 0 {
		p.text = nil
		return nil, false
	}
	for _, c := range n.Content {
		c = resolve(c)
		if c.Kind != yaml.ScalarNode || c.Value == "" || isNull(c) || strings.IndexByte(c.Value, 0) >= 0 {
			p.text = nil
			return nil, false
		}
		p.text = append(append(p.text, c.Value...), 0)
	}
	m, ok := p.labelTexts[string(p.text)]
	if ok && !p.spend(n) {
		return nil, true // as pairs: the error is the budget's
	}
	return m, ok
}

// errorAt is errorf at a line kept from a node.
func (p *parser) errorAt(line int, path, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if path != "" {
		msg = path + ": " + msg
	}
	p.errs = append(p.errs, posError{line: line, msg: msg})
}

// err returns the recorded problems in file order, each prefixed with
// file:line, or nil.
func (p *parser) err() error {
	if len(p.errs) == 0 {
		return nil
	}
	// Cross-checks run after the walk; sorting puts their errors in place.
	sort.SliceStable(p.errs, func(i, j int) bool { return p.errs[i].line < p.errs[j].line })
	var errs []error
	for i, e := range p.errs {
		if i == maxErrors {
			errs = append(errs, fmt.Errorf("%s: %d more errors not shown", p.name, len(p.errs)-maxErrors))
			break
		}
		errs = append(errs, fmt.Errorf("%s:%d: %s", p.name, e.line, e.msg))
	}
	return errors.Join(errs...)
}

// resolve follows aliases (*name) to the anchored node, so anchors work
// anywhere and errors point at the anchored text.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		return fmt.Sprintf("%q", n.Value)
	}
	return "a YAML node of kind " + fmt.Sprint(n.Kind)
}

// join extends a field path with a key.
func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// fields checks that n is a mapping whose keys are all in known, and returns
// the value of each known key that is set and not null. Unknown and repeated
// keys are reported. It returns nil if n is not a mapping.
func (p *parser) fields(n *yaml.Node, path string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "expected a mapping, got %s", describe(n))
		return nil
	}
	// Sized for the keys given: a map of more than 8 is several
	// allocations, and a workload is one with five keys of ten known.
	return p.fieldsInto(make(map[string]*yaml.Node, min(len(known), len(n.Content)/2)), n, path, known...)
}

// itemFields is fields for the items of a list that a file repeats by
// the thousand (services, workloads): it fills the parser's map for that
// kind of item again, where fields makes a map per item (two allocations
// each). The map is valid until the next item of the kind.
func (p *parser) itemFields(kind string, n *yaml.Node, path string, known ...string) map[string]*yaml.Node {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "expected a mapping, got %s", describe(n))
		return nil
	}
	out := p.itemMaps[kind]
	if out == nil {
		if p.itemMaps == nil {
			p.itemMaps = map[string]map[string]*yaml.Node{}
		}
		out = make(map[string]*yaml.Node, len(known))
		p.itemMaps[kind] = out
	}
	clear(out)
	return p.fieldsInto(out, n, path, known...)
}

// fieldsInto is fields, filling out.
func (p *parser) fieldsInto(out map[string]*yaml.Node, n *yaml.Node, path string, known ...string) map[string]*yaml.Node {
	p.pairs(n, path, func(k, v *yaml.Node) {
		for _, name := range known {
			if k.Value == name {
				if !isNull(v) {
					out[name] = v
				}
				return
			}
		}
		// The key is quoted, not put in the path, so odd keys stay readable.
		p.errorf(k, path, "unknown field %q", k.Value)
	})
	if p.budget < 0 {
		return nil // a partial mapping would add "missing" errors
	}
	return out
}

// pairs calls f for each key and value of the mapping n, after reporting
// keys that are not scalars or are repeated.
func (p *parser) pairs(n *yaml.Node, path string, f func(k, v *yaml.Node)) {
	if !p.spend(n) {
		return
	}
	seen := make(map[string]int, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), resolve(n.Content[i+1])
		if k.Kind != yaml.ScalarNode {
			p.errorf(k, path, "expected a field name, got %s", describe(k))
			continue
		}
		if line, dup := seen[k.Value]; dup {
			p.errorf(k, path, "field %q is set twice (first at line %d)", k.Value, line)
			continue
		}
		seen[k.Value] = k.Line
		f(k, v)
	}
}

// list calls f for each item of the sequence n, with the item's path.
func (p *parser) list(n *yaml.Node, path string, f func(item *yaml.Node, path string)) {
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, path, "expected a list, got %s", describe(n))
		return
	}
	if !p.spend(n) {
		return
	}
	for i, item := range n.Content {
		f(resolve(item), itemPath(path, i))
	}
}

// sharedItemPaths is how many item paths of each top-level list
// ("workloads[7]") are made once and shared: a workload or service keeps
// its path for messages, and every file of a directory has the same ones,
// so each item held its own copy (2 MiB at 100,000 workloads, in files
// of 100).
const sharedItemPaths = 1024

var itemPaths sync.Map // top-level list name -> *[sharedItemPaths]string

// itemPath is path[i].
func itemPath(path string, i int) string {
	if i >= sharedItemPaths || strings.ContainsAny(path, ".[") {
		return path + "[" + strconv.Itoa(i) + "]"
	}
	v, ok := itemPaths.Load(path)
	if !ok {
		t := new([sharedItemPaths]string)
		for j := range t {
			t[j] = path + "[" + strconv.Itoa(j) + "]"
		}
		v, _ = itemPaths.LoadOrStore(path, t)
	}
	return v.(*[sharedItemPaths]string)[i]
}

// str returns the text of a scalar as written.
func (p *parser) str(n *yaml.Node, path string) (string, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, path, "expected a string, got %s", describe(n))
		return "", false
	}
	return n.Value, true
}

// integer returns an integer scalar within lo..hi. Only !!int is accepted:
// yaml would otherwise truncate 80.5 to 80.
func (p *parser) integer(n *yaml.Node, path string, lo, hi int64) (int64, bool) {
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" {
		p.errorf(n, path, "expected an integer, got %s", describe(n))
		return 0, false
	}
	// Decimal digits (a port) need no decoder; yaml.v3 reads the other
	// forms of !!int (0x1F, 1_000, +1, and 010, which is octal). Decode
	// fails only for integers beyond int64, which are out of range too.
	var v int64
	var err error
	if s := n.Value; s != "" && s[0] != '0' && digits(s) {
		v, err = strconv.ParseInt(s, 10, 64)
	} else {
		err = n.Decode(&v)
	}
	if err != nil || v < lo || v > hi {
		p.errorf(n, path, "%s is out of range %d..%d", n.Value, lo, hi)
		return 0, false
	}
	return v, true
}

// stringMap returns a mapping of strings, such as labels. Empty keys are
// reported; empty values only when allowEmpty is false.
func (p *parser) stringMap(n *yaml.Node, path string, allowEmpty bool) map[string]string {
	if n.Kind != yaml.MappingNode {
		p.errorf(n, path, "expected a mapping, got %s", describe(n))
		return nil
	}
	out := make(map[string]string, len(n.Content)/2)
	p.pairs(n, path, func(k, v *yaml.Node) {
		if k.Value == "" {
			p.errorf(k, path, "empty key")
			return
		}
		val := ""
		if !isNull(v) {
			s, ok := p.str(v, path)
			if !ok {
				return
			}
			val = s
		}
		if val == "" && !allowEmpty {
			// model.SelectorMatches would match workloads without the key.
			p.errorf(v, path, "empty value for %q", k.Value)
			return
		}
		out[k.Value] = val
	})
	return out
}

// address parses one IP address. IPv4-mapped IPv6 addresses are refused
// because the kernel sees such a connect as IPv4, and the same endpoint
// would have two spellings.
func (p *parser) address(n *yaml.Node, path string) (netip.Addr, bool) {
	return p.addressAt(n, func() string { return path })
}

// addressAt is address for a caller that makes the path only for a
// message (every workload's address passes here).
func (p *parser) addressAt(n *yaml.Node, path func() string) (netip.Addr, bool) {
	if n.Kind != yaml.ScalarNode || isNull(n) {
		p.errorf(n, path(), "expected a string, got %s", describe(n))
		return netip.Addr{}, false
	}
	s := n.Value
	a, err := netip.ParseAddr(s)
	switch {
	case err != nil:
		p.errorf(n, path(), "%q is not an IP address", s)
	case a.Zone() != "":
		p.errorf(n, path(), "%q has a zone; zones are not supported", s)
	case a.Is4In6():
		p.errorf(n, path(), "%q is an IPv4-mapped IPv6 address; write it as %s", s, a.Unmap())
	case a.IsUnspecified():
		p.errorf(n, path(), "%q is the unspecified address", s)
	default:
		return a, true
	}
	return netip.Addr{}, false
}

// isDNSLabel reports whether s is an RFC 1123 label, as Kubernetes
// namespaces use (^[a-z0-9]([-a-z0-9]*[a-z0-9])?$; the length is the
// caller's). Written out rather than a regexp: every name of a large
// config passes here, and the regexp's backtracking was ~7 % of parsing
// one.
func isDNSLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// isDNSSubdomain reports whether s is dot-separated DNS labels, as
// Kubernetes pod names use.
func isDNSSubdomain(s string) bool {
	for {
		label, rest, more := strings.Cut(s, ".")
		if !isDNSLabel(label) {
			return false
		}
		if !more {
			return true
		}
		s = rest
	}
}

// label returns a string that is a DNS label; keys (namespace/name) rely on
// names holding no slash.
func (p *parser) label(n *yaml.Node, path string) (string, bool) {
	s, ok := p.str(n, path)
	if ok && (len(s) > 63 || !isDNSLabel(s)) {
		p.errorf(n, path, "%q is not a DNS label (lower case letters, digits and '-', at most 63)", s)
		return "", false
	}
	return s, ok
}

// subdomain returns a string that is a DNS subdomain.
func (p *parser) subdomain(n *yaml.Node, path string) (string, bool) {
	s, ok := p.str(n, path)
	if ok && (len(s) > 253 || !isDNSSubdomain(s)) {
		p.errorf(n, path, "%q is not a DNS subdomain (lower case letters, digits, '-' and '.', at most 253)", s)
		return "", false
	}
	return s, ok
}
