package xds

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"unsafe"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// TestConvertAll_SlabAsOneByOne converts a response large enough for
// slabs and checks each workload against its conversion alone: equal in
// value, the UID the resource name's string, and no slice with room to
// grow into its neighbour's part of a slab array.
func TestConvertAll_SlabAsOneByOne(t *testing.T) {
	var rs []*discovery.Resource
	for i := range 3 * slabSize {
		w := xdstest.Workload{Namespace: "default", Name: fmt.Sprintf("pod-%d", i), Node: "node-a",
			IPs:      []string{fmt.Sprintf("10.1.%d.%d", i/250, 1+i%250)},
			Services: map[string][]xdstest.Port{fmt.Sprintf("default/svc-%d", i%7): {{Service: 80, Target: 8080}}}}
		if i%5 == 0 { // two addresses, two services
			w.IPs = append(w.IPs, fmt.Sprintf("fd00::%x", i+1))
			w.Services["default/other"] = []xdstest.Port{{Service: 81, Target: 9090}, {Service: 82, Target: 9091}}
		}
		name, a := w.Address()
		res, err := anypb.New(a)
		if err != nil {
			t.Fatal(err)
		}
		rs = append(rs, &discovery.Resource{Name: name, Version: "1", Resource: res})
	}
	values, errs := convertAll(addressHandler{}, rs)
	for i, r := range rs {
		if errs[i] != nil {
			t.Fatalf("%s: %v", r.GetName(), errs[i])
		}
		got := values[i].(*workload)
		v, err := convertResource(addressHandler{}, r.GetName(), r.GetResource(), nil)
		if err != nil {
			t.Fatal(err)
		}
		want := v.(*workload)
		if !reflect.DeepEqual(*got.w, *want.w) || !reflect.DeepEqual(byHost(got.services), byHost(want.services)) || got.key != want.key {
			t.Fatalf("%s: converted with the slab %+v %+v, alone %+v %+v", r.GetName(), *got.w, got.services, *want.w, want.services)
		}
		if got.w.UID != r.GetName() || unsafe.StringData(got.w.UID) != unsafe.StringData(r.GetName()) {
			t.Errorf("%s: UID %q is a second string, not the resource name's", r.GetName(), got.w.UID)
		}
		if cap(got.w.Addresses) != len(got.w.Addresses) || cap(got.services) != len(got.services) {
			t.Errorf("%s: addresses %d/%d, services %d/%d (len/cap): an append would write into another workload's", r.GetName(),
				len(got.w.Addresses), cap(got.w.Addresses), len(got.services), cap(got.services))
		}
	}
}

// byHost is ms in host order (a workload's services come from a protobuf
// map, in no order).
func byHost(ms []membership) []membership {
	return slices.SortedFunc(slices.Values(ms), func(a, b membership) int { return strings.Compare(a.host, b.host) })
}
