package main

import (
	"testing"

	"github.com/kmesh-go/kmesh/internal/flagdoc"
)

// TestWaypointDoc_FlagTableNamesEveryFlag: docs/waypoint.md's table is the
// reference for kmesh-waypoint; every flag it takes is there.
func TestWaypointDoc_FlagTableNamesEveryFlag(t *testing.T) {
	missing, err := flagdoc.Undocumented("../../docs/waypoint.md", "| flag | default | meaning |", newCommand().Flags())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range missing {
		t.Errorf("flag %s of kmesh-waypoint is not in docs/waypoint.md's flag table", f)
	}
}
