package file

import (
	"strings"

	"go.yaml.in/yaml/v3"
)

// fastDecode decodes the plain YAML that generated configs are made of
// into the node tree yaml.v3 would return (kinds, values, tags, styles,
// lines and columns), several times faster: decoding is most of a first
// sync from a directory (1,000 files at 100,000 endpoints). It knows block
// mappings and sequences, one-line flow mappings and sequences, plain
// scalars of letters, digits and ._/-+, and double-quoted scalars on one
// line without escapes (a quoted address); for anything else (single
// quotes, escapes,
// comments, anchors, tags, multi-line scalars, non-ASCII text, documents,
// duplicate keys, errors of any kind) ok is false and the caller decodes
// with yaml.v3, which has the last word. A nil root means an empty or null
// file, as decode. TestFastDecode_AsYAML checks it against yaml.v3.
//
// The nodes are a's (nil: new ones); the caller releases a once the tree
// is no longer needed.
func fastDecode(data []byte, a *nodeArena) (root *yaml.Node, ok bool) {
	for _, c := range data {
		if c != '\n' && (c < 0x20 || c > 0x7e || unsafeByte[c]) {
			return nil, false
		}
	}
	if a == nil {
		a = new(nodeArena)
	}
	p := &fastParser{data: data, line: 1, a: a, stack: a.stack[:0]}
	defer func() { a.stack = p.stack[:0] }()
	defer func() {
		if r := recover(); r != nil {
			if r != errFallback {
				panic(r)
			}
			root, ok = nil, false
		}
	}()
	m, ok := p.nextLine()
	if !ok || m != 0 {
		return nil, false // empty, or indented at the top: yaml.v3 decides
	}
	root = p.block(0)
	if _, more := p.nextLine(); more {
		p.fail()
	}
	if root.Kind == yaml.ScalarNode {
		if root.Tag == "!!null" {
			return nil, true
		}
		p.fail()
	}
	return root, true
}

// unsafeByte marks the printable characters fastDecode leaves to yaml.v3:
// indicators of comments, anchors, aliases, tags, block scalars,
// directives, single quotes and escapes, and the reserved ones (double
// quotes are read by quoted).
var unsafeByte = func() (t [256]bool) {
	for _, c := range []byte("#&*!|>%@`'\\?") {
		t[c] = true
	}
	return t
}()

// errFallback unwinds fastParser when the input is not in its subset.
var errFallback = &struct{ byte }{}

type fastParser struct {
	data []byte
	i    int // next byte
	line int // line of data[i], from 1
	ls   int // offset where that line starts
	a    *nodeArena
	// stack holds the children of the nodes being read, each node's
	// from its mark on, until the node's Content is cut from it.
	stack []*yaml.Node
}

func (p *fastParser) fail() { panic(errFallback) }

func (p *fastParser) col() int { return p.i - p.ls + 1 }

func (p *fastParser) peek() byte {
	if p.i < len(p.data) {
		return p.data[p.i]
	}
	return '\n'
}

func (p *fastParser) spaces() {
	for p.i < len(p.data) && p.data[p.i] == ' ' {
		p.i++
	}
}

// nextLine moves to the first character of the next line with content,
// skipping blank ones, and returns its indentation; false at the end.
// p.i must be at a line's start or at the end of a line's content.
func (p *fastParser) nextLine() (int, bool) {
	for {
		p.spaces()
		if p.i >= len(p.data) {
			return 0, false
		}
		if p.data[p.i] != '\n' {
			if p.i == p.ls && (hasPrefix(p.data[p.i:], "---") || hasPrefix(p.data[p.i:], "...")) {
				p.fail() // document markers
			}
			return p.i - p.ls, true
		}
		p.i++
		p.line++
		p.ls = p.i
	}
}

func hasPrefix(b []byte, s string) bool { return len(b) >= len(s) && string(b[:len(s)]) == s }

// endOfLine checks that only spaces are left on the line.
func (p *fastParser) endOfLine() {
	p.spaces()
	if p.peek() != '\n' {
		p.fail()
	}
}

// seqEntry reports whether a block sequence entry starts at p.i.
func (p *fastParser) seqEntry() bool {
	if p.peek() != '-' {
		return false
	}
	return p.i+1 >= len(p.data) || p.data[p.i+1] == ' ' || p.data[p.i+1] == '\n'
}

// block parses the block node that starts at p.i, indented by n.
func (p *fastParser) block(n int) *yaml.Node {
	switch c := p.peek(); {
	case p.seqEntry():
		return p.blockSeq(n)
	case c == '{' || c == '[':
		v := p.flow()
		p.endOfLine()
		return v
	}
	line, col := p.line, p.col()
	s := p.scalar(false)
	p.spaces()
	if p.peek() != ':' {
		p.fail() // a scalar alone: maybe continued on the next lines
	}
	return p.blockMap(n, s, line, col)
}

// blockMap parses a block mapping indented by n whose first key, read
// already, is at line:col; p.i is at that key's ':'.
func (p *fastParser) blockMap(n int, key *yaml.Node, line, col int) *yaml.Node {
	m := p.node()
	*m = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Line: line, Column: col}
	mark := len(p.stack)
	for {
		// p.i is at the ':' after key.
		p.i++
		if c := p.peek(); c != ' ' && c != '\n' {
			p.fail()
		}
		if hasKey(p.stack[mark:], key.Value) {
			p.fail() // yaml.v3 refuses it: its error, its words
		}
		p.a.key(key.Value)
		var v *yaml.Node
		if p.peek() == '\n' {
			nullLine, nullCol := p.line, p.col()
			m2, more := p.nextLine()
			switch {
			case more && m2 > n:
				v = p.block(m2)
			case more && m2 == n && p.seqEntry():
				v = p.blockSeq(n)
			default:
				v = p.node()
				*v = yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Line: nullLine, Column: nullCol}
			}
		} else {
			p.spaces()
			switch p.peek() {
			case '\n':
				p.fail() // "key:" with trailing spaces: the null's column
			case '{', '[':
				v = p.flow()
			default:
				v = p.scalar(false)
			}
			p.endOfLine()
		}
		p.stack = append(p.stack, key, v)
		m2, more := p.nextLine()
		if !more || m2 < n {
			p.cut(m, mark)
			return m
		}
		if m2 > n || p.seqEntry() {
			p.fail()
		}
		key = p.scalar(false)
		p.spaces()
		if p.peek() != ':' {
			p.fail()
		}
	}
}

// hasKey reports whether the keys and values of a mapping being read
// have key.
func hasKey(content []*yaml.Node, key string) bool {
	for i := 0; i < len(content); i += 2 {
		if content[i].Value == key {
			return true
		}
	}
	return false
}

// blockSeq parses a block sequence whose entries ("- ") are indented by n.
func (p *fastParser) blockSeq(n int) *yaml.Node {
	s := p.node()
	*s = yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Line: p.line, Column: p.col()}
	mark := len(p.stack)
	for {
		// p.i is at the '-'.
		p.i++
		if p.peek() != ' ' {
			p.fail() // "-" alone: the entry is on the next lines
		}
		p.spaces()
		switch c := p.peek(); {
		case c == '\n' || p.seqEntry():
			p.fail()
		case c == '{' || c == '[':
			p.stack = append(p.stack, p.flow())
			p.endOfLine()
		default:
			line, col := p.line, p.col()
			v := p.scalar(false)
			p.spaces()
			if p.peek() == ':' {
				v = p.blockMap(col-1, v, line, col)
			} else {
				p.endOfLine()
			}
			p.stack = append(p.stack, v)
		}
		m, more := p.nextLine()
		if !more || m < n || (m == n && !p.seqEntry()) {
			p.cut(s, mark)
			return s
		}
		if m > n {
			p.fail()
		}
	}
}

// flow parses a flow mapping or sequence on one line; p.i is at its '{'
// or '['.
func (p *fastParser) flow() *yaml.Node {
	n := p.node()
	*n = yaml.Node{Kind: yaml.MappingNode, Tag: "!!map", Style: yaml.FlowStyle, Line: p.line, Column: p.col()}
	end := byte('}')
	if p.peek() == '[' {
		n.Kind, n.Tag, end = yaml.SequenceNode, "!!seq", ']'
	}
	p.i++
	p.spaces()
	if p.peek() == end {
		p.i++
		return n
	}
	mark := len(p.stack)
	for {
		var v *yaml.Node
		if c := p.peek(); c == '{' || c == '[' {
			v = p.flow()
		} else {
			v = p.scalar(true)
		}
		p.spaces()
		if n.Kind == yaml.MappingNode {
			if v.Kind != yaml.ScalarNode || p.peek() != ':' {
				p.fail()
			}
			if hasKey(p.stack[mark:], v.Value) {
				p.fail()
			}
			p.a.key(v.Value)
			p.i++
			if p.peek() != ' ' {
				p.fail()
			}
			p.spaces()
			p.stack = append(p.stack, v)
			if c := p.peek(); c == '{' || c == '[' {
				v = p.flow()
			} else {
				v = p.scalar(true)
			}
			p.spaces()
		}
		p.stack = append(p.stack, v)
		switch p.peek() {
		case ',':
			p.i++
			p.spaces()
			if c := p.peek(); c == end || c == ',' {
				p.fail()
			}
		case end:
			p.i++
			p.cut(n, mark)
			return n
		default:
			p.fail() // a ':' in a flow sequence, a line break, ...
		}
	}
}

// scalar reads a plain scalar of letters, digits and ._/-+ at p.i, and
// resolves its tag as yaml.v3 does. It must end at a space, a ':', the
// end of the line or, in a flow, at ',', '}' or ']'.
func (p *fastParser) scalar(inFlow bool) *yaml.Node {
	if p.peek() == '"' {
		return p.quoted(inFlow)
	}
	start := p.i
	if start < len(p.data) {
		if c := p.data[start]; !alnum(c) && c != '.' && c != '/' && c != '_' {
			p.fail()
		}
	}
	for p.i < len(p.data) && (alnum(p.data[p.i]) || scalarPunct(p.data[p.i])) {
		p.i++
	}
	if p.i == start || p.i-start > 1000 {
		p.fail() // nothing, or longer than an implicit key may be
	}
	p.scalarEnd(inFlow)
	v := p.node()
	*v = yaml.Node{Kind: yaml.ScalarNode, Value: p.a.text(p.data[start:p.i]), Line: p.line, Column: start - p.ls + 1}
	v.Tag = plainTag(v)
	return v
}

// quoted reads a double-quoted scalar at p.i that ends on its line and
// has no escapes (fastDecode leaves backslashes to yaml.v3); it ends as a
// plain scalar must.
func (p *fastParser) quoted(inFlow bool) *yaml.Node {
	start := p.i
	p.i++
	for p.i < len(p.data) && p.data[p.i] != '"' && p.data[p.i] != '\n' {
		p.i++
	}
	if p.peek() != '"' || p.i-start > 1000 {
		p.fail() // continued on the next line, or longer than an implicit key may be
	}
	p.i++
	p.scalarEnd(inFlow)
	v := p.node()
	*v = yaml.Node{Kind: yaml.ScalarNode, Style: yaml.DoubleQuotedStyle, Tag: "!!str", Value: p.a.text(p.data[start+1 : p.i-1]),
		Line: p.line, Column: start - p.ls + 1}
	return v
}

// scalarEnd checks what follows a scalar: a space, the end of the line, a
// key's ':', or in a flow the next entry or the end; and after its spaces
// the same (anything else makes one scalar with a space in it, or an
// error: yaml.v3's).
func (p *fastParser) scalarEnd(inFlow bool) {
	switch c := p.peek(); {
	case c == ' ' || c == '\n':
	case c == ':' && (p.i+1 >= len(p.data) || p.data[p.i+1] == ' ' || p.data[p.i+1] == '\n'):
	case inFlow && (c == ',' || c == '}' || c == ']'):
	default:
		p.fail()
	}
	if c := p.peek(); c == ' ' {
		j := p.i
		for j < len(p.data) && p.data[j] == ' ' {
			j++
		}
		if j < len(p.data) {
			switch p.data[j] {
			case '\n', ':', ',', '}', ']':
			default:
				p.fail()
			}
			if p.data[j] == ':' && !(j+1 >= len(p.data) || p.data[j+1] == ' ' || p.data[j+1] == '\n') {
				p.fail()
			}
			if !inFlow && (p.data[j] == ',' || p.data[j] == '}' || p.data[j] == ']') {
				p.fail()
			}
		}
	}
}

// plainTag is v.ShortTag() (yaml.v3's resolve), without its number
// parsing and its allocations for the two plain scalars a generated config
// is made of: names, which start with a letter (a string unless one of
// YAML 1.2's keywords), and IPv4 addresses (digits and three dots: no int,
// float or timestamp).
func plainTag(v *yaml.Node) string {
	s := v.Value
	switch c := s[0]; {
	case alnum(c) && !(c >= '0' && c <= '9'):
		switch s {
		case "true", "True", "TRUE", "false", "False", "FALSE":
			return "!!bool"
		case "null", "Null", "NULL":
			return "!!null"
		}
		return "!!str"
	case c >= '1' && c <= '9' && len(s) <= 18 && digits(s):
		return "!!int"
	case c >= '0' && c <= '9' && strings.Count(s, ".") >= 2 && digitsAndDots(s):
		return "!!str"
	}
	return v.ShortTag()
}

// digitsAndDots reports whether s is digits and dots only (an IPv4
// address, a version): a check without a copy of s, as every address of a
// config passes here.
func digitsAndDots(s string) bool {
	for i := 0; i < len(s); i++ {
		if (s[i] < '0' || s[i] > '9') && s[i] != '.' {
			return false
		}
	}
	return true
}

func digits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func (p *fastParser) node() *yaml.Node { return p.a.node() }

// cut makes the children on the stack from mark on n's Content.
func (p *fastParser) cut(n *yaml.Node, mark int) {
	n.Content = p.a.content(p.stack[mark:])
	p.stack = p.stack[:mark]
}

func alnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

func scalarPunct(c byte) bool { return c == '.' || c == '_' || c == '/' || c == '-' || c == '+' }
