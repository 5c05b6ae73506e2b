package model

import (
	"strings"
	"testing"
)

// A workload key given twice is refused, naming it; two keys are not.
func TestMesh_ValidateWorkloadDefinedTwice(t *testing.T) {
	m := &Mesh{Workloads: []Workload{{Name: "hello-1", Namespace: "default", Weight: 1}, {Name: "hello-2", Namespace: "default", Weight: 1}}}
	if err := m.Validate(); err != nil {
		t.Fatalf("two workloads: %v", err)
	}
	m.Workloads[1].Name = "hello-1"
	if err := m.Validate(); err == nil || !strings.Contains(err.Error(), "workload default/hello-1: defined twice") {
		t.Fatalf("Validate = %v, want workload default/hello-1 defined twice", err)
	}
}
