package model

import (
	"fmt"
	"slices"
	"testing"
)

func TestLabelIndex_SelectsLikeSelectorMatches(t *testing.T) {
	var ws []Workload
	for i := range 60 {
		ws = append(ws, Workload{
			Name:      fmt.Sprint("w", i),
			Namespace: []string{"a", "b"}[i%2],
			Labels:    map[string]string{"app": fmt.Sprint("app", i%3), "tier": fmt.Sprint("t", i%4)},
		})
	}
	ix := NewLabelIndex(ws)
	for _, tc := range []struct {
		name      string
		namespace string
		selector  map[string]string
	}{
		{"one label", "a", map[string]string{"app": "app1"}},
		{"two labels", "b", map[string]string{"app": "app2", "tier": "t1"}},
		{"no match", "a", map[string]string{"app": "nope"}},
		{"empty selector matches nothing", "a", nil},
		{"other namespace", "c", map[string]string{"app": "app1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want []int
			for i, w := range ws {
				if w.Namespace == tc.namespace && SelectorMatches(tc.selector, w.Labels) {
					want = append(want, i)
				}
			}
			if got := ix.Select(tc.namespace, tc.selector); !slices.Equal(got, want) {
				t.Fatalf("Select = %v, want %v", got, want)
			}
		})
	}
}
