package dataplane

import (
	"fmt"
	"maps"
	"math"
	"net/netip"
	"slices"

	"github.com/kmesh-go/kmesh/internal/authz"
	"github.com/kmesh-go/kmesh/internal/bpf"
	"github.com/kmesh-go/kmesh/internal/model"
)

// A policy in map terms (bpf/include/types.h, "Authorization"): its matches
// in the order the kernel walks them, and the table entries they test. The
// identity fields of a match (principals, namespaces, service accounts and
// their not_ forms) are evaluated here, by internal/authz, for every
// identity of the mesh and for "no identity"; the kernel only looks the
// source's identity up in the result.

// identities is the mesh's identities: every workload's, by hash. The
// kernel never sees another (a source it does not know has hash 0).
type identities map[uint64]*authz.Identity

type compiledPolicy struct {
	action  uint8 // enum km_authz_action
	matches []bpf.KmeshAuthzMatch
	vals    []valEntry
	ips     []ipEntry
}

type valEntry struct {
	index uint16
	kind  uint8
	value uint64
	label uint8
}

type ipEntry struct {
	index  uint16
	kind   uint8
	prefix netip.Prefix // 16-byte form: IPv4 blocks IPv4-mapped, bits + 96
	label  uint8
}

func (c *compiledPolicy) equal(o *compiledPolicy) bool {
	return o != nil && c.action == o.action && slices.Equal(c.matches, o.matches) &&
		slices.Equal(c.vals, o.vals) && slices.Equal(c.ips, o.ips)
}

// maxMatches is the most matches one policy may have: entry indexes are
// 16 bits.
const maxMatches = math.MaxUint16

const (
	flagClauseStart = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_CLAUSE_START)
	flagClauseEnd   = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_CLAUSE_END)
	flagRuleEnd     = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_RULE_END)
	flagIdentity    = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_IDENTITY)
	flagIdentityNot = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_IDENTITY_NOT)
	flagSrcIP       = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_SRC_IP)
	flagDstIP       = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_DST_IP)
	flagPort        = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_PORT)
	flagPortDefault = uint16(bpf.KmeshKmAuthzMatchFlagKM_AUTHZ_PORT_DEFAULT)

	kindIdentity = uint8(bpf.KmeshKmAuthzKindKM_AUTHZ_KIND_IDENTITY)
	kindPort     = uint8(bpf.KmeshKmAuthzKindKM_AUTHZ_KIND_PORT)
	kindSrcIP    = uint8(bpf.KmeshKmAuthzKindKM_AUTHZ_KIND_SRC_IP)
	kindDstIP    = uint8(bpf.KmeshKmAuthzKindKM_AUTHZ_KIND_DST_IP)

	actionAllow = uint8(bpf.KmeshKmAuthzActionKM_AUTHZ_ALLOW)
	actionDeny  = uint8(bpf.KmeshKmAuthzActionKM_AUTHZ_DENY)
	actionCount = uint8(bpf.KmeshKmAuthzActionKM_AUTHZ_COUNT)
)

// actionOf is where a policy goes in the lists: enforced DENY, enforced
// ALLOW, or only counted (AUDIT, dry run).
func actionOf(p *model.Policy) uint8 {
	switch {
	case !authz.Enforced(p):
		return actionCount
	case p.Action == model.ActionDeny:
		return actionDeny
	}
	return actionAllow
}

// compilePolicy lays p out for the kernel. Rules that cannot match (an
// ALLOW rule with L7 attributes, a clause whose matches are all empty) are
// left out; a policy left with no rule matches nothing.
func compilePolicy(p *model.Policy, ids identities) (*compiledPolicy, error) {
	c := &compiledPolicy{action: actionOf(p)}
	for r := range p.Rules {
		rule := &p.Rules[r]
		if !authz.RuleCanMatch(p, rule) {
			continue
		}
		var clauses [][]*model.PolicyMatch
		never := false
		for ci := range rule.Clauses {
			cl := &rule.Clauses[ci]
			if len(cl.Matches) == 0 {
				continue // matches everything: AND true
			}
			var ms []*model.PolicyMatch
			for mi := range cl.Matches {
				if !authz.Empty(&cl.Matches[mi]) {
					ms = append(ms, &cl.Matches[mi])
				}
			}
			if len(ms) == 0 {
				never = true // only empty matches: the clause, so the rule, never holds
				break
			}
			clauses = append(clauses, ms)
		}
		if never {
			continue
		}
		start := len(c.matches)
		if len(clauses) == 0 {
			c.matches = append(c.matches, bpf.KmeshAuthzMatch{Flags: flagClauseStart | flagClauseEnd | flagRuleEnd})
		}
		for ci, ms := range clauses {
			for mi, m := range ms {
				if len(c.matches) >= maxMatches {
					return nil, fmt.Errorf("policy %s: more than %d matches", p.Key(), maxMatches)
				}
				flags := c.compileMatch(uint16(len(c.matches)), m, ids)
				if mi == 0 {
					flags |= flagClauseStart
				}
				if mi == len(ms)-1 {
					flags |= flagClauseEnd
					if ci == len(clauses)-1 {
						flags |= flagRuleEnd
					}
				}
				c.matches = append(c.matches, bpf.KmeshAuthzMatch{Flags: flags})
			}
		}
		for i := start; i < len(c.matches); i++ {
			c.matches[i].NextRule = uint16(len(c.matches))
		}
	}
	return c, nil
}

// compileMatch writes the table entries of match index and returns its
// test flags.
func (c *compiledPolicy) compileMatch(index uint16, m *model.PolicyMatch, ids identities) uint16 {
	var flags uint16
	if authz.HasIdentity(m) {
		var in, out []uint64
		for h, id := range ids {
			if authz.IdentityMatches(m, id) {
				in = append(in, h)
			} else {
				out = append(out, h)
			}
		}
		// Store the smaller side; the kernel tests membership.
		switch {
		case len(out) == 0: // every source matches: nothing to test
		case len(in) <= len(out):
			flags |= flagIdentity
			c.addVals(index, kindIdentity, in, 1)
		default:
			flags |= flagIdentity | flagIdentityNot
			c.addVals(index, kindIdentity, out, 1)
		}
	}
	if len(m.DestinationPorts)+len(m.NotDestinationPorts) > 0 {
		flags |= flagPort
		if len(m.DestinationPorts) == 0 {
			flags |= flagPortDefault
		}
		labels := map[uint16]uint8{}
		for _, p := range m.DestinationPorts {
			labels[p] = 1
		}
		for _, p := range m.NotDestinationPorts {
			labels[p] = 0
		}
		for _, p := range slices.Sorted(maps.Keys(labels)) {
			c.vals = append(c.vals, valEntry{index: index, kind: kindPort, value: uint64(p), label: labels[p]})
		}
	}
	if len(m.SourceIPs)+len(m.NotSourceIPs) > 0 {
		flags |= flagSrcIP
		c.addIPs(index, kindSrcIP, m.SourceIPs, m.NotSourceIPs)
	}
	if len(m.DestinationIPs)+len(m.NotDestinationIPs) > 0 {
		flags |= flagDstIP
		c.addIPs(index, kindDstIP, m.DestinationIPs, m.NotDestinationIPs)
	}
	return flags
}

func (c *compiledPolicy) addVals(index uint16, kind uint8, values []uint64, label uint8) {
	slices.Sort(values)
	for _, v := range values {
		c.vals = append(c.vals, valEntry{index: index, kind: kind, value: v, label: label})
	}
}

// mapped4 is ::ffff:0:0/96, where the kernel keeps IPv4 addresses.
var mapped4 = netip.PrefixFrom(mappedPrefix, 96)

// addIPs writes the trie entries of one address field: "in a positive
// block (or there are none) and in no negative block". The trie answers
// with the longest block that holds an address, and every block that
// holds an address holds every shorter one that does, so each block's
// label is the answer for the addresses it is the longest match of.
// Blocks of one family never hold addresses of the other: IPv6 blocks that
// hold ::ffff:0:0/96 are fenced off from IPv4 addresses by an entry there,
// and IPv4-mapped blocks (only xDS can send them) hold no address at all,
// as in ztunnel.
func (c *compiledPolicy) addIPs(index uint16, kind uint8, pos, neg []netip.Prefix) {
	def := uint8(0)
	if len(pos) == 0 {
		def = 1
	}
	type block struct {
		p  netip.Prefix // as written, unmapped
		in bool         // positive
	}
	var blocks []block
	for _, p := range pos {
		if !p.Addr().Is4In6() {
			blocks = append(blocks, block{p.Masked(), true})
		}
	}
	for _, p := range neg {
		if !p.Addr().Is4In6() {
			blocks = append(blocks, block{p.Masked(), false})
		}
	}
	labels := map[netip.Prefix]uint8{netip.PrefixFrom(netip.IPv6Unspecified(), 0): def}
	for _, b := range blocks {
		if b.p.Addr().Is6() && b.p.Contains(mappedPrefix) && b.p.Bits() <= 96 {
			labels[mapped4] = def
		}
	}
	for _, b := range blocks {
		inPos, inNeg := len(pos) == 0, false
		for _, o := range blocks {
			if o.p.Addr().Is4() != b.p.Addr().Is4() || o.p.Bits() > b.p.Bits() || !o.p.Contains(b.p.Addr()) {
				continue
			}
			if o.in {
				inPos = true
			} else {
				inNeg = true
			}
		}
		label := uint8(0)
		if inPos && !inNeg {
			label = 1
		}
		labels[wide(b.p)] = label
	}
	keys := slices.SortedFunc(maps.Keys(labels), func(a, b netip.Prefix) int {
		if a.Bits() != b.Bits() {
			return a.Bits() - b.Bits()
		}
		return a.Addr().Compare(b.Addr())
	})
	for _, k := range keys {
		c.ips = append(c.ips, ipEntry{index: index, kind: kind, prefix: k, label: labels[k]})
	}
}

// wide returns p in the kernel's 16-byte form.
func wide(p netip.Prefix) netip.Prefix {
	if p.Addr().Is4() {
		return netip.PrefixFrom(netip.AddrFrom16(p.Addr().As16()), p.Bits()+96)
	}
	return p
}

func matchKey(id uint32, gen uint8, index int) bpf.KmeshAuthzMatchKey {
	return bpf.KmeshAuthzMatchKey{PolicyId: id, Index: uint16(index), Gen: gen}
}

func valKey(id uint32, gen uint8, v valEntry) bpf.KmeshAuthzValKey {
	return bpf.KmeshAuthzValKey{PolicyId: id, Index: v.index, Gen: gen, Kind: v.kind, Value: v.value}
}

func ipKey(id uint32, gen uint8, e ipEntry) bpf.KmeshAuthzIpKey {
	return bpf.KmeshAuthzIpKey{
		Prefixlen: 64 + uint32(e.prefix.Bits()),
		PolicyId:  id, Index: e.index, Gen: gen, Kind: e.kind,
		Addr: bpf.AddrWords(e.prefix.Addr()),
	}
}
