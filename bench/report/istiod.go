package report

import (
	"fmt"
	"strings"
)

// Istiod is the Istio tier at scale: the stock istiod against a real
// kube-apiserver holding Services, Pods and EndpointSlices (no pod runs),
// and one kmeshd on a node of its own taking the whole mesh over delta
// xDS into its maps.
type Istiod struct {
	Services   int `json:"services"`
	Pods       int `json:"pods"`
	Namespaces int `json:"namespaces"`
	Nodes      int `json:"nodes"` // Nodes the pods are on (kmeshd's not among them)
	// NotMeasured says why the tier did not run (tools not built).
	NotMeasured string `json:"not_measured,omitempty"`
	// istiod's push debounce as set in its environment.
	DebounceAfterMs float64 `json:"debounce_after_ms"`
	DebounceMaxMs   float64 `json:"debounce_max_ms"`
	RegisterMs      float64 `json:"register_ms"`     // writing every object to the API server
	IstiodReadyMs   float64 `json:"istiod_ready_ms"` // istiod exec to /ready, with the objects in place
	KmeshdReadyMs   float64 `json:"kmeshd_ready_ms"` // kmeshd exec to /healthz/ready
	ConvergeMs      float64 `json:"converge_ms"`     // kmeshd exec to every service's ready pods in the maps
	// A flip: one pod's Ready condition written (status update) to its
	// service's slot count in the pinned maps.
	FlipMs    Stat    `json:"flip_ms"`
	FlipP99Ms float64 `json:"flip_p99_ms,omitempty"`
	// FlipSeriesMs is every flip in order (the first comes right after
	// kmeshd converged, while istiod may still be busy with the start).
	FlipSeriesMs []float64 `json:"flip_series_ms,omitempty"`
	Flips        int       `json:"flips,omitempty"`
	// The flips split at istiod's log (its debounce line for the pod):
	// ToIstiod is the status write until istiod's ambient index has the
	// change (the API server's write and watch, istiod's informer);
	// FromIstiod from then to the maps (istiod's debounce, its push,
	// kmeshd); PushToMaps from istiod's push (the debounce's end) to the
	// maps; SendToMaps from istiod's send of the push (its "WDS: PUSH"
	// line, after it built the push) to the maps: the gRPC transport,
	// kmeshd, and the bench's poll of the maps, none of it istiod's.
	FlipsSplit      int     `json:"flips_split,omitempty"`
	ToIstiodMs      Stat    `json:"to_istiod_ms"`
	ToIstiodP99Ms   float64 `json:"to_istiod_p99_ms,omitempty"`
	FromIstiodMs    Stat    `json:"from_istiod_ms"`
	FromIstiodP99Ms float64 `json:"from_istiod_p99_ms,omitempty"`
	// DebounceMs is istiod's debounce of each split flip as its log gives
	// it ("since last change"): at least the configured debounce, longer
	// when istiod's timer fires late or a push before it is still running.
	DebounceMs      Stat    `json:"debounce_ms"`
	PushToMapsMs    Stat    `json:"push_to_maps_ms"`
	PushToMapsP99Ms float64 `json:"push_to_maps_p99_ms,omitempty"`
	SendToMapsMs    Stat    `json:"send_to_maps_ms"`
	SendToMapsP99Ms float64 `json:"send_to_maps_p99_ms,omitempty"`
	KmeshdRSS       float64 `json:"kmeshd_rss_mib,omitempty"`
	KmeshdPeak      float64 `json:"kmeshd_peak_mib,omitempty"`
	IstiodRSS       float64 `json:"istiod_rss_mib,omitempty"`
	// LoadAvg is /proc/loadavg before the flips and after them.
	LoadAvg string `json:"loadavg,omitempty"`
}

// IstiodTable is the Istio tier's table.
func IstiodTable(s *Istiod) string {
	var b strings.Builder
	b.WriteString("## Control plane: stock istiod at scale\n\n")
	if s.NotMeasured != "" {
		fmt.Fprintf(&b, "Not measured: %s.\n", s.NotMeasured)
		return b.String()
	}
	fmt.Fprintf(&b, "%d Services and %d Pods (%d per service) in %d ambient namespaces on %d Nodes, registered in a real kube-apiserver "+
		"as kubelet and the controllers would write them (no pod runs); the stock istiod (pilot-discovery, PILOT_DEBOUNCE_AFTER=%.0fms, "+
		"PILOT_DEBOUNCE_MAX=%.0fms) watches it; one kmeshd on a node of its own takes the mesh over delta xDS. "+
		"Converged: every service's ready pods in kmeshd's pinned maps. A flip: one pod's Ready condition written to the API server "+
		"(false, then true again) to its service's new slot count in the maps.\n\n",
		s.Services, s.Pods, s.Pods/max(1, s.Services), s.Namespaces, s.Nodes, s.DebounceAfterMs, s.DebounceMaxMs)
	b.WriteString("| register objects | istiod ready | kmeshd ready | converged | readiness flip in the maps: p50 (min–max) | p99 | flips | kmeshd RSS (peak) | istiod RSS | load |\n")
	b.WriteString("|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|\n")
	fmt.Fprintf(&b, "| %.1f s | %.1f s | %.1f s | %.1f s | %s ms | %.0f ms | %d | %.0f MiB (%.0f) | %.0f MiB | %s |\n",
		s.RegisterMs/1000, s.IstiodReadyMs/1000, s.KmeshdReadyMs/1000, s.ConvergeMs/1000, cell(s.FlipMs, 0), s.FlipP99Ms, s.Flips,
		s.KmeshdRSS, s.KmeshdPeak, s.IstiodRSS, s.LoadAvg)
	if s.FlipsSplit > 0 {
		fmt.Fprintf(&b, "\nThe flips split at istiod's log (its \"Push debounce stable\" line for the pod; istiod, kmeshd and the bench share "+
			"the host's clock; %d of %d flips pushed alone): *to istiod* is the status write until istiod's ambient index has the change "+
			"(the API server's write and watch, istiod's informer), *istiod → maps* from then to the maps (istiod's debounce, its push, "+
			"kmeshd), *push → maps* from the end of istiod's debounce to the maps (istiod building the push, its transport and kmeshd), "+
			"*istiod's debounce* as its log gives it (at least the configured debounce; longer when istiod's timer fires late or a push before it still runs), "+
			"*send → maps* from istiod's send of the push (its \"WDS: PUSH\" line) to the maps (the transport, kmeshd and the bench's poll).\n\n", s.FlipsSplit, s.Flips)
		b.WriteString("| to istiod: p50 (min–max) | p99 | istiod → maps: p50 (min–max) | p99 | istiod's debounce: p50 (min–max) | push → maps: p50 (min–max) | p99 | send → maps: p50 (min–max) | p99 |\n")
		b.WriteString("|--:|--:|--:|--:|--:|--:|--:|--:|--:|\n")
		fmt.Fprintf(&b, "| %s ms | %.0f ms | %s ms | %.0f ms | %s ms | %s ms | %.1f ms | %s ms | %.1f ms |\n",
			cell(s.ToIstiodMs, 0), s.ToIstiodP99Ms, cell(s.FromIstiodMs, 0), s.FromIstiodP99Ms, cell(s.DebounceMs, 1), cell(s.PushToMapsMs, 1), s.PushToMapsP99Ms,
			cell(s.SendToMapsMs, 1), s.SendToMapsP99Ms)
	}
	return b.String()
}
