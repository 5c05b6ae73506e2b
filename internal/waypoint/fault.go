package waypoint

import (
	"context"
	"math/rand/v2"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/kmesh-go/kmesh/internal/model"
)

// faultRule is one VirtualService http[] entry with a fault.
type faultRule struct {
	name    string
	matches []vsMatch // any; none matches every request
	fault   *model.Fault
}

// vsMatch is a compiled Istio HTTPMatchRequest.
type vsMatch struct {
	uri, method *stringMatcher
	headers     []valueMatcher
}

func (m *vsMatch) matches(r *http.Request) bool {
	if m.uri != nil && !m.uri.match(r.URL.Path) {
		return false
	}
	if m.method != nil && !m.method.match(r.Method) {
		return false
	}
	for _, h := range m.headers {
		v := r.Header.Get(h.name)
		if v == "" || !h.match(v) {
			return false
		}
	}
	return true
}

// fault returns the first fault rule whose match the request meets, as
// Istio takes the first matching http[] entry.
func (svc *service) fault(r *http.Request) *faultRule {
	for i := range svc.faults {
		fr := &svc.faults[i]
		if len(fr.matches) == 0 {
			return fr
		}
		for j := range fr.matches {
			if fr.matches[j].matches(r) {
				return fr
			}
		}
	}
	return nil
}

// roll reports true for percent of calls.
func roll(percent float64) bool { return percent > 0 && rand.Float64()*100 < percent }

// applyFault delays the request and reports whether it was aborted (the
// answer is then written). A delay ends early when the client goes away.
func applyFault(ctx context.Context, f *model.Fault, w http.ResponseWriter, grpc bool) (aborted bool, code int) {
	if d := f.Delay; d != nil && roll(d.Percent) {
		t := time.NewTimer(d.Fixed)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
		}
	}
	a := f.Abort
	if a == nil || !roll(a.Percent) {
		return false, 0
	}
	if grpc && a.GRPCStatus != "" {
		w.Header().Set("Content-Type", "application/grpc")
		w.Header().Set("Grpc-Status", strconv.Itoa(grpcCode(a.GRPCStatus)))
		w.Header().Set("Grpc-Message", "fault filter abort")
		w.WriteHeader(http.StatusOK)
		return true, http.StatusOK
	}
	http.Error(w, "fault filter abort", a.HTTPStatus)
	return true, a.HTTPStatus
}

// grpcCodes are gRPC's status names (Istio accepts names).
var grpcCodes = []string{"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
	"ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE",
	"UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"}

// grpcCode returns the number of a gRPC status name or number.
func grpcCode(s string) int {
	for i, n := range grpcCodes {
		if strings.EqualFold(n, s) {
			return i
		}
	}
	if n, err := strconv.Atoi(s); err == nil {
		return n
	}
	return 2 // UNKNOWN
}

// GRPCStatusName reports whether s names a gRPC status; the file source
// validates with it.
func GRPCStatusName(s string) bool {
	for _, n := range grpcCodes {
		if n == s {
			return true
		}
	}
	return false
}
