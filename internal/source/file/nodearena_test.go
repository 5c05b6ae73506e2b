package file

import (
	"reflect"
	"testing"

	"go.yaml.in/yaml/v3"
)

// TestParsedItems_KeepNoNodes: a reader of many files reuses the nodes of
// a file whose part has only services and workloads (release), so those
// must not hold a node; a field that did would read the next file's.
func TestParsedItems_KeepNoNodes(t *testing.T) {
	node := reflect.TypeFor[yaml.Node]()
	seen := map[reflect.Type]bool{}
	var holds func(reflect.Type) bool
	holds = func(typ reflect.Type) bool {
		if typ == node {
			return true
		}
		if seen[typ] {
			return false
		}
		seen[typ] = true
		switch typ.Kind() {
		case reflect.Pointer, reflect.Slice, reflect.Array, reflect.Chan:
			return holds(typ.Elem())
		case reflect.Map:
			return holds(typ.Key()) || holds(typ.Elem())
		case reflect.Struct:
			for i := range typ.NumField() {
				if holds(typ.Field(i).Type) {
					return true
				}
			}
		case reflect.Interface, reflect.Func:
			t.Errorf("%v: cannot tell what it holds", typ)
		}
		return false
	}
	for _, typ := range []reflect.Type{reflect.TypeFor[service](), reflect.TypeFor[workload]()} {
		if holds(typ) {
			t.Errorf("%v holds a yaml.Node", typ)
		}
	}
}

// TestDirSource_ReusedNodes: files read one after another through the same
// arenas parse as each alone does.
func TestDirSource_ReusedNodes(t *testing.T) {
	files := []string{
		"services:\n- {name: a, addresses: [10.96.0.1], ports: [{port: 80}], selector: {app: a}}\n" +
			"workloads:\n- {name: a-1, labels: {app: a}, addresses: [10.1.0.1], node: n}\n",
		"workloads:\n- {name: b-1, namespace: other, labels: {app: b, v: x}, addresses: [10.1.0.2, fd00::2], node: m}\n" +
			"- {name: b-2, labels: {app: b}, addresses: [10.1.0.3], node: m, weight: 3}\n",
		"services:\n- name: c\n  addresses: [10.96.0.3]\n  ports:\n  - port: 81\n    targetPort: 9090\n",
	}
	d := newDir("")
	var want []*part
	for i, f := range files {
		pt, err := d.parsePart("f.yaml", []byte(f))
		if err != nil {
			t.Fatalf("file %d: %v", i, err)
		}
		want = append(want, pt)
	}
	for round := range 3 {
		for i, f := range files {
			pt, err := d.parsePart("f.yaml", []byte(f))
			if err != nil {
				t.Fatalf("round %d file %d: %v", round, i, err)
			}
			if !reflect.DeepEqual(pt, want[i]) {
				t.Fatalf("round %d file %d: parsed differently after other files", round, i)
			}
		}
	}
}
