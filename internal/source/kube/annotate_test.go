package kube

import "testing"

func TestAnnotationPatch(t *testing.T) {
	kmesh := map[string]string{RedirectionAnnotation: RedirectionEnabled}
	both := map[string]string{RedirectionAnnotation: RedirectionEnabled, AmbientRedirectionAnnotation: RedirectionEnabled}
	istioOnly := map[string]string{AmbientRedirectionAnnotation: RedirectionEnabled}
	for _, tc := range []struct {
		name            string
		ann             map[string]string
		enrolled, hbone bool
		want            string
	}{
		{"enrolled, no CA", nil, true, false, `{"metadata":{"annotations":{"kmesh.net/redirection":"enabled"}}}`},
		{"enrolled, HBONE", nil, true, true, `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled","kmesh.net/redirection":"enabled"}}}`},
		{"already both", both, true, true, ""},
		{"already kmesh's", kmesh, true, false, ""},
		{"CA removed", both, true, false, `{"metadata":{"annotations":{"ambient.istio.io/redirection":null}}}`},
		{"CA added", kmesh, true, true, `{"metadata":{"annotations":{"ambient.istio.io/redirection":"enabled"}}}`},
		{"left the mesh", both, false, true, `{"metadata":{"annotations":{"ambient.istio.io/redirection":null,"kmesh.net/redirection":null}}}`},
		{"someone else's pod", istioOnly, false, true, ""},
		{"never enrolled", nil, false, true, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := annotationPatch(tc.ann, tc.enrolled, tc.hbone); got != tc.want {
				t.Fatalf("patch = %s, want %s", got, tc.want)
			}
		})
	}
}
