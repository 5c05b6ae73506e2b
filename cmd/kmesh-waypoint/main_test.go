package main

import (
	"strings"
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

// TestCommand_XDSTokenNeedsTLS: a token for istiod without its root
// certificate is refused before anything connects, naming both flags.
func TestCommand_XDSTokenNeedsTLS(t *testing.T) {
	cmd := newCommand()
	cmd.SetArgs([]string{"--gateway", "apps/waypoint", "--kubeconfig", "/nonexistent", "--xds-address", "127.0.0.1:1",
		"--xds-token-file", "/nonexistent/token"})
	err := cmd.Execute()
	if err == nil || !strings.Contains(err.Error(), "--xds-token-file needs --xds-root-cert") {
		t.Fatalf("error %v, want one naming --xds-token-file and --xds-root-cert", err)
	}
}
