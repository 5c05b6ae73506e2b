package xds

import (
	"testing"

	"istio.io/istio/pkg/workloadapi"

	"github.com/kmesh-go/kmesh/internal/model"
)

func TestConvertWorkload_TunnelProtocol(t *testing.T) {
	for _, tc := range []struct {
		in   workloadapi.TunnelProtocol
		want model.TunnelProtocol
	}{
		{workloadapi.TunnelProtocol_HBONE, model.TunnelHBONE},
		{workloadapi.TunnelProtocol_NONE, model.TunnelNone},
		// Sidecar mTLS is not spoken (ztunnel does not either): plaintext.
		{workloadapi.TunnelProtocol_LEGACY_ISTIO_MTLS, model.TunnelNone},
	} {
		w, err := convertWorkload(&workloadapi.Workload{Uid: "c//Pod/ns/p", Name: "p", Namespace: "ns", TunnelProtocol: tc.in}, "", nil)
		if err != nil {
			t.Fatal(err)
		}
		if w.w.TunnelProtocol != tc.want {
			t.Errorf("tunnel_protocol %v: got %q, want %q", tc.in, w.w.TunnelProtocol, tc.want)
		}
	}
}
