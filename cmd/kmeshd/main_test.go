package main

import (
	"testing"

	"github.com/kmesh-go/kmesh/internal/flagdoc"
)

// TestREADME_FlagTableNamesEveryFlag: the README's kmeshd flag table is
// where a user looks a flag up; every flag of kmeshd is in it.
func TestREADME_FlagTableNamesEveryFlag(t *testing.T) {
	missing, err := flagdoc.Undocumented("../../README.md", "## kmeshd", newCommand().Flags())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range missing {
		t.Errorf("flag %s is not in the README's kmeshd flag table", f)
	}
}

// TestHBONEDoc_FlagTableNamesEveryTunnelFlag: docs/hbone.md's table is the
// reference for `kmeshd tunnel`; every flag it takes is there.
func TestHBONEDoc_FlagTableNamesEveryTunnelFlag(t *testing.T) {
	missing, err := flagdoc.Undocumented("../../docs/hbone.md", "| flag (`kmeshd tunnel`)", newTunnelCommand().Flags())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range missing {
		t.Errorf("flag %s of kmeshd tunnel is not in docs/hbone.md's flag table", f)
	}
}
