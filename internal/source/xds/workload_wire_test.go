package xds

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
	"istio.io/istio/pkg/workloadapi"
)

// istiodWorkload is a workload with every field the conversion reads, and
// some it ignores, set as istiod sets them.
func istiodWorkload() *workloadapi.Address {
	_, a := hello1.Address()
	w := a.GetWorkload()
	w.Network = "net-1"
	w.TunnelProtocol = workloadapi.TunnelProtocol_HBONE
	w.Locality = &workloadapi.Locality{Region: "r1", Zone: "z1"}
	w.Capacity = wrapperspb.UInt32(3)
	w.Waypoint = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Hostname{
		Hostname: &workloadapi.NamespacedHostname{Namespace: "default", Hostname: "waypoint.default.svc.cluster.local"},
	}, HboneMtlsPort: 15008}
	w.NetworkGateway = &workloadapi.GatewayAddress{Destination: &workloadapi.GatewayAddress_Address{
		Address: &workloadapi.NetworkAddress{Network: "net-2", Address: []byte{10, 9, 9, 9}},
	}}
	w.CanonicalName, w.CanonicalRevision, w.WorkloadName, w.ClusterId = "hello", "v1", "hello", "Kubernetes"
	w.WorkloadType = workloadapi.WorkloadType_POD
	w.Services["default/other.default.svc.cluster.local"] = &workloadapi.PortList{Ports: []*workloadapi.Port{
		{ServicePort: 80, TargetPort: 8080}, {ServicePort: 443, TargetPort: 8443}, {ServicePort: 80, TargetPort: 9090},
	}}
	return a
}

func TestDecodeWorkload_TakesIstiodsShape(t *testing.T) {
	for _, tc := range []struct {
		name string
		a    *workloadapi.Address
	}{
		{"plain", func() *workloadapi.Address { _, a := hello1.Address(); return a }()},
		{"unhealthy", func() *workloadapi.Address { _, a := hello3.Address(); return a }()},
		{"every field", istiodWorkload()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b, err := proto.Marshal(tc.a)
			if err != nil {
				t.Fatal(err)
			}
			uid := tc.a.GetWorkload().GetUid()
			var d decoder
			got, ok := d.decodeWorkload(b, uid, &slab{})
			if !ok {
				t.Fatal("the fast path gave the workload up")
			}
			want, err := convertWorkload(tc.a.GetWorkload(), uid, nil)
			if err != nil {
				t.Fatal(err)
			}
			if diff := workloadDiff(got, want); diff != "" {
				t.Error(diff)
			}
		})
	}
}

// FuzzDecodeWorkload feeds arbitrary and mutated Address payloads to the
// fast path: whatever it accepts, proto.Unmarshal and convertWorkload
// must accept and convert to the same workload. What it gives up goes to
// them anyway, so the two paths take and refuse the same resources.
func FuzzDecodeWorkload(f *testing.F) {
	for _, a := range []proto.Message{istiodWorkload(), func() proto.Message { _, a := hello3.Address(); return a }()} {
		b, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, "Kubernetes//Pod/default/hello-1")
		// The same with an unknown field, a field of the wrong wire type
		// and a string that is not UTF-8 appended to the workload.
		wl := a.(*workloadapi.Address).GetWorkload()
		wb, _ := proto.Marshal(wl)
		for _, extra := range [][]byte{
			protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 7),
			protowire.AppendVarint(protowire.AppendTag(nil, 1, protowire.VarintType), 7),
			protowire.AppendBytes(protowire.AppendTag(nil, 6, protowire.BytesType), []byte{0xff}),
			protowire.AppendBytes(protowire.AppendTag(nil, 24, protowire.BytesType), []byte{0x0a, 0x01, 'x'}),
		} {
			f.Add(protowire.AppendBytes(protowire.AppendTag(nil, 1, protowire.BytesType), append(slices.Clip(wb), extra...)), "")
		}
	}
	f.Add([]byte{0x0a, 0x00}, "")

	f.Fuzz(func(t *testing.T, b []byte, name string) {
		var d decoder
		got, ok := d.decodeWorkload(b, name, &slab{})
		if !ok {
			return
		}
		var a workloadapi.Address
		if err := proto.Unmarshal(b, &a); err != nil {
			t.Fatalf("fast path took what proto.Unmarshal refuses: %v", err)
		}
		if a.GetWorkload() == nil {
			t.Fatalf("fast path took an address that is no workload: %v", &a)
		}
		want, err := convertWorkload(a.GetWorkload(), name, nil)
		if err != nil {
			t.Fatalf("fast path took what convertWorkload refuses: %v", err)
		}
		if diff := workloadDiff(got, want); diff != "" {
			t.Fatal(diff)
		}
	})
}

// workloadDiff compares two converted workloads; memberships come in any
// order (the generated message holds them in a map).
func workloadDiff(got, want *workload) string {
	sorted := func(ms []membership) []membership {
		ms = slices.Clone(ms)
		slices.SortFunc(ms, func(a, b membership) int { return strings.Compare(a.host, b.host) })
		if len(ms) == 0 {
			return nil
		}
		return ms
	}
	if !reflect.DeepEqual(*got.w, *want.w) {
		return fmt.Sprintf("model workload:\n got %+v\nwant %+v", *got.w, *want.w)
	}
	g, w := *got, *want
	g.w, w.w = nil, nil
	g.services, w.services = sorted(g.services), sorted(w.services)
	if !reflect.DeepEqual(g, w) {
		return fmt.Sprintf("workload:\n got %+v\nwant %+v", g, w)
	}
	return ""
}
