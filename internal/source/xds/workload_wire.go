package xds

import (
	"bytes"
	"slices"
	"unicode/utf8"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
)

// A first state of 100,000 workloads spent a fifth of its CPU decoding
// the generated messages: each workload's message, strings, map and port
// lists are fresh heap (malloc and page faults) that the conversion
// drops at once. decodeWorkload reads an istio.workload.Address that
// holds a workload straight from the wire into the converted workload.
//
// It is a fast path, not a second parser: it handles the shape istiod
// sends and gives up (ok false) on anything else, and the caller then
// runs proto.Unmarshal and convertWorkload, which decide and word every
// error. So what it accepts must convert exactly as that path converts
// it (FuzzDecodeWorkload checks), and nothing it accepts may be refused
// there: every field is checked as proto.Unmarshal checks it (UTF-8 of
// strings, well-formed unknown fields), fields of the wrong wire type
// are unknown fields, and a message field that comes twice (which
// protobuf merges) or a service named twice gives up.

// wireWorkload is one decoded workload: slices of the payload, and
// lists that a slab's decoder reuses.
type wireWorkload struct {
	uid, name, namespace, network, serviceAccount, node []byte
	tunnel, status                                      int32
	addresses, policies                                 [][]byte
	services                                            []wireMembership
	locality                                            bool
	region, zone, subzone                               []byte
	waypoint                                            []byte // the GatewayAddress, nil if none
	capacity                                            []byte // the UInt32Value, nil if none
	seen                                                uint32 // message fields met, by number
}

type wireMembership struct {
	key   []byte
	value [][]byte // the PortList's occurrences, merged in order
}

// decoder is what one converting goroutine reuses from one workload to
// the next.
type decoder struct {
	w wireWorkload
	// interned holds the strings interned so far, so that looking one up
	// takes no conversion of its bytes.
	interned map[string]string
	// hosts holds the service hosts a slab's decoder met (host).
	hosts  map[string]string
	places map[string]model.Locality
	buf    []byte
}

// host is intern for the service host of a membership. A first state
// names each of its services' hosts from all their workloads (50,000 hosts
// of 10 workloads each in the bench's mesh): a slab's decoder keeps them
// in a map of their own, made once per converting goroutine and not
// interned, where unique.Make for each host new to a goroutine (its global
// map and a weak handle each) and one map of 50,000 hosts beside the few
// namespaces, nodes and service accounts every workload looks up were
// ~0.37 s of the 500,000 workloads' conversion (pprof of kmeshd's first
// sync). A change's workloads (no slab) intern theirs.
func (d *decoder) host(b []byte, sl *slab) string {
	if sl == nil {
		return d.intern(b)
	}
	if s, ok := d.hosts[string(b)]; ok {
		return s
	}
	s := string(b)
	if d.hosts == nil {
		d.hosts = map[string]string{}
	}
	d.hosts[s] = s
	return s
}

func (d *decoder) intern(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	if s, ok := d.interned[string(b)]; ok {
		return s
	}
	s := intern(string(b))
	if d.interned == nil {
		d.interned = map[string]string{}
	}
	d.interned[s] = s
	return s
}

func (d *decoder) locality(region, zone, subzone []byte) model.Locality {
	d.buf = append(append(append(append(append(d.buf[:0], region...), 0), zone...), 0), subzone...)
	if l, ok := d.places[string(d.buf)]; ok {
		return l
	}
	l := model.NewLocality(string(region), string(zone), string(subzone))
	if d.places == nil {
		d.places = map[string]model.Locality{}
	}
	d.places[string(d.buf)] = l
	return l
}

// field is one field of a message on the wire.
type field struct {
	num protowire.Number
	typ protowire.Type
	v   uint64 // a varint's value
	b   []byte // a length-delimited field's bytes
}

// fields calls fn for each field of msg, as proto.Unmarshal reads them;
// it returns false if msg is malformed or fn returns false.
func fields(msg []byte, fn func(f field) bool) bool {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 || num > protowire.MaxValidNumber {
			return false
		}
		msg = msg[n:]
		f := field{num: num, typ: typ}
		switch typ {
		case protowire.VarintType:
			f.v, n = protowire.ConsumeVarint(msg)
		case protowire.BytesType:
			f.b, n = protowire.ConsumeBytes(msg)
		case protowire.EndGroupType:
			return false
		default:
			n = protowire.ConsumeFieldValue(num, typ, msg)
		}
		if n < 0 || !fn(f) {
			return false
		}
		msg = msg[n:]
	}
	return true
}

// str is a proto3 string field: UTF-8, as proto.Unmarshal requires.
func (f field) str(dst *[]byte) bool {
	if f.typ != protowire.BytesType {
		return true // unknown
	}
	*dst = f.b
	return utf8.Valid(f.b)
}

func (f field) enum(dst *int32) {
	if f.typ == protowire.VarintType {
		*dst = int32(f.v)
	}
}

// once records that message field f came; false if it came before.
func (w *wireWorkload) once(f field) bool {
	bit := uint32(1) << (f.num & 31)
	if w.seen&bit != 0 {
		return false
	}
	w.seen |= bit
	return true
}

// valid says whether b decodes as m (a field the conversion ignores).
func valid(b []byte, m proto.Message) bool {
	return proto.Unmarshal(b, m) == nil
}

func (w *wireWorkload) decode(b []byte) bool {
	addresses, policies, services := w.addresses[:0], w.policies[:0], w.services[:0]
	*w = wireWorkload{addresses: addresses, policies: policies, services: services}
	return fields(b, func(f field) bool {
		switch f.num {
		case 20:
			return f.str(&w.uid)
		case 1:
			return f.str(&w.name)
		case 2:
			return f.str(&w.namespace)
		case 4:
			return f.str(&w.network)
		case 7:
			return f.str(&w.serviceAccount)
		case 9:
			return f.str(&w.node)
		case 6, 10, 11, 13, 18, 21: // trust domain, canonical names, workload name, cluster, hostname
			var s []byte
			return f.str(&s)
		case 5:
			f.enum(&w.tunnel)
		case 17:
			f.enum(&w.status)
		case 3:
			if f.typ == protowire.BytesType {
				w.addresses = append(w.addresses, f.b)
			}
		case 16:
			if f.typ == protowire.BytesType {
				w.policies = append(w.policies, f.b)
				return utf8.Valid(f.b)
			}
		case 24:
			if f.typ == protowire.BytesType {
				w.locality = true
				return w.once(f) && fields(f.b, func(f field) bool {
					switch f.num {
					case 1:
						return f.str(&w.region)
					case 2:
						return f.str(&w.zone)
					case 3:
						return f.str(&w.subzone)
					}
					return true
				})
			}
		case 8:
			if f.typ == protowire.BytesType {
				w.waypoint = f.b // checked when converted
				return w.once(f)
			}
		case 27:
			if f.typ == protowire.BytesType {
				w.capacity = f.b // checked when converted
				return w.once(f)
			}
		case 19:
			return f.typ != protowire.BytesType || valid(f.b, &workloadapi.GatewayAddress{})
		case 23:
			return f.typ != protowire.BytesType || valid(f.b, &workloadapi.ApplicationTunnel{})
		case 26:
			return f.typ != protowire.BytesType || valid(f.b, &workloadapi.Extension{})
		case 22:
			if f.typ == protowire.BytesType {
				return w.member(f.b)
			}
		}
		return true
	})
}

// member reads one entry of the services map.
func (w *wireWorkload) member(entry []byte) bool {
	var m wireMembership
	if len(w.services) < cap(w.services) {
		m.value = w.services[:len(w.services)+1][len(w.services)].value[:0]
	}
	ok := fields(entry, func(f field) bool {
		switch f.num {
		case 1:
			return f.str(&m.key)
		case 2:
			if f.typ == protowire.BytesType {
				m.value = append(m.value, f.b)
				return fields(f.b, func(f field) bool {
					if f.num == 1 && f.typ == protowire.BytesType {
						return fields(f.b, func(f field) bool { return true })
					}
					return true
				})
			}
		}
		return true
	})
	if !ok {
		return false
	}
	for _, o := range w.services {
		if string(o.key) == string(m.key) {
			return false // the last entry wins: leave it to the map
		}
	}
	w.services = append(w.services, m)
	return true
}

// wirePort is one Port of a PortList.
func wirePort(b []byte) (sp, tp uint32) {
	fields(b, func(f field) bool {
		if f.typ == protowire.VarintType {
			switch f.num {
			case 1:
				sp = uint32(f.v)
			case 2:
				tp = uint32(f.v)
			}
		}
		return true
	})
	return sp, tp
}

// decodeWorkload converts the Address b if it is a workload in the
// shape this fast path takes; ok false leaves it to convertWorkload.
func (d *decoder) decodeWorkload(b []byte, name string, sl *slab) (out *workload, ok bool) {
	var body []byte
	n := 0
	if !fields(b, func(f field) bool {
		if (f.num == 1 || f.num == 2) && f.typ == protowire.BytesType {
			n++
			if f.num == 2 {
				return false // a service
			}
			body = f.b
		}
		return true
	}) || n != 1 {
		return nil, false
	}
	pw := &d.w
	if !pw.decode(body) {
		return nil, false
	}
	return d.convert(pw, name, sl)
}

// convert is convertWorkload over the wire form; each refusal there is
// a give-up here.
func (d *decoder) convert(pw *wireWorkload, name string, sl *slab) (*workload, bool) {
	if len(pw.uid) == 0 {
		return nil, false
	}
	w := sl.modelWorkload()
	*w = model.Workload{
		Namespace:      d.intern(pw.namespace),
		Node:           d.intern(pw.node),
		Network:        d.intern(pw.network),
		ServiceAccount: d.intern(pw.serviceAccount),
		Weight:         1,
		TunnelProtocol: model.TunnelNone,
	}
	if pw.tunnel == int32(workloadapi.TunnelProtocol_HBONE) {
		w.TunnelProtocol = model.TunnelHBONE
	}
	if string(pw.uid) == name {
		w.UID = name
	} else {
		w.UID = string(pw.uid)
	}
	key, ok := model.KeyInUID(w.UID, w.Namespace, pw.name)
	switch {
	case len(pw.name) == 0: // a UID never ends in itself
		w.Name = w.UID
		key = w.Key()
	case ok:
		w.Name = key[len(w.Namespace)+1:]
	default:
		w.Name = string(pw.name)
		key = w.Key()
	}
	if pw.locality {
		w.Locality = d.locality(pw.region, pw.zone, pw.subzone)
	}
	w.Addresses = sl.addrs(len(pw.addresses))
	for _, b := range pw.addresses {
		a, err := parseIP(b)
		if err != nil {
			return nil, false
		}
		if !slices.Contains(w.Addresses, a) {
			w.Addresses = append(w.Addresses, a)
		}
	}
	for _, p := range pw.policies {
		if bytes.IndexByte(p, '/') < 0 {
			return nil, false
		}
		w.Policies = append(w.Policies, d.intern(p))
	}
	out := sl.workload()
	*out = workload{w: w, key: key, healthy: pw.status == int32(workloadapi.WorkloadStatus_HEALTHY), endpoint: true}
	if pw.waypoint != nil {
		var g workloadapi.GatewayAddress
		if proto.Unmarshal(pw.waypoint, &g) != nil {
			return nil, false
		}
		wp, err := convertWaypoint(&g)
		if err != nil {
			return nil, false
		}
		out.waypoint = wp
	}
	if pw.capacity != nil {
		var c uint32
		if !fields(pw.capacity, func(f field) bool {
			if f.num == 1 && f.typ == protowire.VarintType {
				c = uint32(f.v)
			}
			return true
		}) {
			return nil, false
		}
		if c == 0 {
			out.endpoint = false
		}
		out.w.Weight = min(max(c, 1), model.MaxWeight)
	}
	out.services = sl.memberships(len(pw.services))
	for _, m := range pw.services {
		if ns, host, ok := bytes.Cut(m.key, []byte("/")); !ok || len(ns) == 0 || len(host) == 0 || bytes.IndexByte(host, '/') >= 0 {
			return nil, false
		}
		var ports portMap
		for _, pl := range m.value {
			ok := fields(pl, func(f field) bool {
				if f.num != 1 || f.typ != protowire.BytesType {
					return true
				}
				sp, tp := wirePort(f.b)
				if sp == 0 || sp > 65535 || tp > 65535 {
					return false
				}
				ports = slices.DeleteFunc(ports, func(pp portPair) bool { return pp.service == uint16(sp) })
				ports = append(ports, portPair{uint16(sp), uint16(tp)})
				return true
			})
			if !ok {
				return nil, false
			}
		}
		out.services = append(out.services, membership{d.host(m.key, sl), ports})
	}
	return out, true
}
