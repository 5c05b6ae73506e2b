package bpf

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
)

// TestPrograms_PassTheVerifier loads each program of the object on small
// maps and reports how much work the verifier did: the authorization walk
// (bpf_loop callbacks) in the connect and ingress programs is the part to
// watch against the verifier's limit of 1M instructions.
func TestPrograms_PassTheVerifier(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("KMESH_REQUIRE_PRIVILEGED") == "1" {
			t.Fatal("loading eBPF programs needs root")
		}
		t.Skip("loading eBPF programs needs root")
	}
	limits := Limits{Services: 8, Frontends: 8, Endpoints: 8, Backends: 8, Workloads: 8, Sockets: 8,
		Policies: 8, PolicyMatches: 8, PolicyValues: 8, PolicyIPBlocks: 8, PolicyRefs: 8, WorkloadAddresses: 8}
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
			t.Log(log[strings.LastIndex(log, "\n")+1:])
		})
	}
}
