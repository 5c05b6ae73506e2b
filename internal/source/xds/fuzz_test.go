package xds

import (
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"github.com/kmesh-go/kmesh/internal/source/xds/xdstest"
)

// FuzzTranslateWorkload feeds two arbitrary Address resources (a workload
// and a service, say) through the handler and the mesh build: neither may
// panic, and whatever they accept must make a mesh that passes Validate.
func FuzzTranslateWorkload(f *testing.F) {
	seed := func(_ string, a proto.Message) []byte {
		b, err := proto.Marshal(a)
		if err != nil {
			f.Fatal(err)
		}
		return b
	}
	svc := seed(xdstest.Service("default", "hello", []string{"10.96.0.10", "fd00:96::10"}, xdstest.Port{Service: 80, Target: 8080}))
	other := seed(xdstest.Service("default", "other", []string{"10.96.0.10"}, xdstest.Port{Service: 80}))
	w1 := seed(hello1.Address())
	w3 := seed(hello3.Address())
	f.Add(svc, w1)
	f.Add(w1, svc)
	f.Add(svc, other)
	f.Add(w3, w1)
	f.Add([]byte{}, []byte{0x0a, 0x00})

	f.Fuzz(func(t *testing.T, a, b []byte) {
		st := newStore()
		for i, raw := range [][]byte{a, b} {
			v, err := convertResource(addressHandler{}, "", &anypb.Any{TypeUrl: AddressType, Value: raw}, nil)
			if err != nil {
				continue
			}
			st.put(AddressType, string(rune('a'+i)), "", v)
		}
		built := buildWorkloadMesh(st)
		if err := built.mesh.Validate(); err != nil {
			t.Fatalf("accepted resources make an invalid mesh: %v\n%s", err, meshString(built.mesh))
		}
	})
}
