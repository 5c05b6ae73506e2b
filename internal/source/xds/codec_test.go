package xds

import (
	"fmt"
	"testing"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc/mem"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// firstState is a delta response as istiod sends a first state: n
// workloads, each a resource with a name, a version and an Any.
func firstState(t testing.TB, n int) *discovery.DeltaDiscoveryResponse {
	r := &discovery.DeltaDiscoveryResponse{TypeUrl: AddressType, Nonce: "1", SystemVersionInfo: "2026-12-02T18:00:00Z/1"}
	for i := range n {
		w := xdstest.Workload{Namespace: "default", Name: fmt.Sprintf("hello-%d", i), Node: "node-a", IPs: []string{fmt.Sprintf("10.1.%d.%d", i/250, i%250+1)}}
		name, a := w.Address()
		res, err := anypb.New(a)
		if err != nil {
			t.Fatal(err)
		}
		r.Resources = append(r.Resources, &discovery.Resource{Name: name, Version: "v1", Resource: res})
	}
	r.RemovedResources = []string{"Kubernetes//Pod/default/gone"}
	return r
}

func TestResponseCodec_ReadsFirstStateAsProto(t *testing.T) {
	want := firstState(t, 2000)
	b, err := proto.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var fast discovery.DeltaDiscoveryResponse
	if !decodeDeltaResponse(b, &fast) {
		t.Fatal("the fast path gave a first state up")
	}
	// Through the codec, from frames as gRPC hands them over.
	var data mem.BufferSlice
	for rest := b; len(rest) > 0; {
		n := min(len(rest), 16<<10)
		data = append(data, mem.SliceBuffer(rest[:n]))
		rest = rest[n:]
	}
	var got discovery.DeltaDiscoveryResponse
	if err := (responseCodec{}).Unmarshal(data, &got); err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(&got, want) || !proto.Equal(&fast, want) {
		t.Fatal("the codec read a different response")
	}
}

// FuzzDecodeDeltaResponse: whatever the fast path reads, proto.Unmarshal
// reads too, to an equal message; what it gives up, proto.Unmarshal reads.
func FuzzDecodeDeltaResponse(f *testing.F) {
	b, err := proto.Marshal(firstState(f, 3))
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	for _, extra := range [][]byte{
		protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte{0x1a, 0x01, 0xff}),
		protowire.AppendBytes(protowire.AppendTag(nil, 2, protowire.BytesType), []byte{0x12, 0x00, 0x12, 0x02, 0x12, 0x00}),
		protowire.AppendVarint(protowire.AppendTag(nil, 99, protowire.VarintType), 1),
		protowire.AppendBytes(protowire.AppendTag(nil, 5, protowire.BytesType), []byte("nonce")),
	} {
		f.Add(append(b[:len(b):len(b)], extra...))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var fast discovery.DeltaDiscoveryResponse
		if !decodeDeltaResponse(b, &fast) {
			if !proto.Equal(&fast, &discovery.DeltaDiscoveryResponse{}) {
				t.Fatal("a response given up is not left empty")
			}
			return
		}
		var want discovery.DeltaDiscoveryResponse
		if err := proto.Unmarshal(b, &want); err != nil {
			t.Fatalf("fast path read what proto.Unmarshal refuses: %v", err)
		}
		if !proto.Equal(&fast, &want) {
			t.Fatalf("fast path read\n%v\nproto.Unmarshal read\n%v", &fast, &want)
		}
	})
}
