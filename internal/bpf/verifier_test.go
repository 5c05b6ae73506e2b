package bpf

import (
	"errors"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// verifierBudget is how many instructions the verifier may process for each
// program: about twice what it processed when the budget was set (kernel
// 6.18, clang 14), so a change that doubles a program's verification cost
// fails here long before the kernel's limit of 1M instructions, on a kernel
// whose verifier explores more states than this one. Raise a budget on
// purpose, in the commit that needs it, saying why.
var verifierBudget = map[string]int{
	"km_connect4":     80_000, // 37,332: the authorization walk (bpf_loop callbacks) and the balancer's lb_choose (locality, affinity, Maglev, ejections)
	"km_connect6":     80_000, // 37,330
	"km_ingress":      40_000, // 18,317: the same walk at the destination
	"km_sockops":      4_000,  // 2,601 with outlier detection and the tunnel's dials into applications (2,141 without those)
	"km_skmsg":        1_000,  // 409 with the bound on what the peer holds unread
	"km_lb_outcome":   1_000,  // 355: the tunnel's outlier credit (lb_connect_failed's ejection scan)
	"km_conn_iter":    1_000,  // 480: the live connections, for /connections and byte reports
	"km_getpeername4": 200,    // 19
	"km_getpeername6": 200,    // 20
}

// defaultVerifierBudget holds for a program not yet in verifierBudget.
const defaultVerifierBudget = 10_000

var processedInsns = regexp.MustCompile(`processed (\d+) insns`)

// TestPrograms_PassTheVerifier loads each program of the object on small
// maps and checks how much work the verifier did against the program's
// budget: the authorization walk (bpf_loop callbacks) in the connect and
// ingress programs is the part to watch.
func TestPrograms_PassTheVerifier(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("loading eBPF programs needs root")
		}
		t.Skip("loading eBPF programs needs root")
	}
	limits := Limits{Services: 8, Frontends: 8, Endpoints: 8, Backends: 8, Workloads: 8, Sockets: 8,
		Policies: 8, PolicyMatches: 8, PolicyValues: 8, PolicyIPBlocks: 8, PolicyRefs: 8, WorkloadAddresses: 8, AffinityClients: 8}
	s, err := spec(limits)
	if err != nil {
		t.Fatal(err)
	}
	for name := range s.Programs {
		t.Run(name, func(t *testing.T) {
			one := s.Copy()
			for other := range one.Programs {
				if other != name {
					delete(one.Programs, other)
				}
			}
			coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{Programs: ebpf.ProgramOptions{LogLevel: ebpf.LogLevelStats}})
			var ve *ebpf.VerifierError
			if errors.As(err, &ve) {
				t.Fatalf("%+v", ve)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer coll.Close()
			log := strings.TrimSpace(coll.Programs[name].VerifierLog)
			last := log[strings.LastIndex(log, "\n")+1:]
			t.Log(last)
			m := processedInsns.FindStringSubmatch(last)
			if m == nil {
				t.Fatalf("no instruction count in the verifier's statistics %q", last)
			}
			n, _ := strconv.Atoi(m[1])
			budget, ok := verifierBudget[name]
			if !ok {
				budget = defaultVerifierBudget
			}
			if n > budget {
				t.Errorf("the verifier processed %d instructions of %s, over its budget of %d", n, name, budget)
			}
		})
	}
}
