// Command kmesh-chart lints and renders Kmesh's Helm chart with Helm's own
// Go packages (the same loader, schema validation, template engine and
// lint rules `helm lint` and `helm template` use), so the tests need no
// helm binary:
//
//	kmesh-chart lint     CHART [-f VALUES]... [--set K=V]...
//	kmesh-chart template CHART [-f VALUES]... [--set K=V]... [-n NAMESPACE]
//	kmesh-chart check    CHART   # lint + template: default values and every CHART/examples/*.yaml
//
// template prints the manifests as one YAML stream, in the order of the
// template files; values that break values.schema.json are refused with
// the schema's message. docs/install.md lists the documented examples.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"helm.sh/helm/v4/pkg/chart/common"
	"helm.sh/helm/v4/pkg/chart/common/util"
	"helm.sh/helm/v4/pkg/chart/v2/lint"
	"helm.sh/helm/v4/pkg/chart/v2/lint/support"
	"helm.sh/helm/v4/pkg/chart/v2/loader"
	"helm.sh/helm/v4/pkg/engine"
	"helm.sh/helm/v4/pkg/strvals"
)

type stringList []string

func (s *stringList) String() string     { return strings.Join(*s, ",") }
func (s *stringList) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	if err := run(os.Args[1:], os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kmesh-chart:", err)
		os.Exit(1)
	}
}

func run(args []string, out io.Writer) error {
	if len(args) < 2 {
		return errors.New("usage: kmesh-chart lint|template|check CHART [-f VALUES]... [--set K=V]... [-n NAMESPACE]")
	}
	cmd, chartDir := args[0], args[1]
	fs := flag.NewFlagSet(cmd, flag.ContinueOnError)
	var files, sets stringList
	fs.Var(&files, "f", "values file (repeatable; later files win)")
	fs.Var(&sets, "set", "a value K=V, as helm --set (repeatable; wins over files)")
	namespace := fs.String("n", "istio-system", "release namespace")
	release := fs.String("name", "kmesh", "release name")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	vals, err := readValues(files, sets)
	if err != nil {
		return err
	}
	switch cmd {
	case "lint":
		return lintChart(chartDir, vals, *namespace, out)
	case "template":
		manifests, err := render(chartDir, vals, *release, *namespace)
		if err != nil {
			return err
		}
		_, err = io.WriteString(out, manifests)
		return err
	case "check":
		return check(chartDir, *release, *namespace, out)
	}
	return fmt.Errorf("unknown command %q: want lint, template or check", cmd)
}

// readValues merges values files and --set values as helm does.
func readValues(files, sets []string) (map[string]any, error) {
	vals := map[string]any{}
	for _, f := range files {
		v, err := common.ReadValuesFile(f)
		if err != nil {
			return nil, fmt.Errorf("values file %s: %w", f, err)
		}
		vals = mergeMaps(vals, v)
	}
	for _, s := range sets {
		if err := strvals.ParseInto(s, vals); err != nil {
			return nil, fmt.Errorf("--set %s: %w", s, err)
		}
	}
	return vals, nil
}

// mergeMaps merges b into a, nested maps key by key, as helm merges -f
// files.
func mergeMaps(a, b map[string]any) map[string]any {
	out := make(map[string]any, len(a))
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		if bm, ok := v.(map[string]any); ok {
			if am, ok := out[k].(map[string]any); ok {
				out[k] = mergeMaps(am, bm)
				continue
			}
		}
		out[k] = v
	}
	return out
}

// lintChart runs helm lint's rules; any error-level finding fails.
func lintChart(chartDir string, vals map[string]any, namespace string, out io.Writer) error {
	l := lint.RunAll(chartDir, vals, namespace)
	var errs []string
	for _, m := range l.Messages {
		fmt.Fprintln(out, m.Error())
		if m.Severity >= support.ErrorSev {
			errs = append(errs, m.Error())
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("lint %s: %s", chartDir, strings.Join(errs, "; "))
	}
	return nil
}

// render is helm template: schema validation, then the templates.
func render(chartDir string, vals map[string]any, release, namespace string) (string, error) {
	ch, err := loader.Load(chartDir)
	if err != nil {
		return "", fmt.Errorf("load chart %s: %w", chartDir, err)
	}
	top, err := util.ToRenderValuesWithSchemaValidation(ch, vals, common.ReleaseOptions{
		Name: release, Namespace: namespace, Revision: 1, IsInstall: true,
	}, nil, false)
	if err != nil {
		return "", err
	}
	files, err := engine.Render(ch, top)
	if err != nil {
		return "", err
	}
	names := make([]string, 0, len(files))
	for n := range files {
		if strings.HasSuffix(n, ".yaml") && strings.TrimSpace(files[n]) != "" {
			names = append(names, n)
		}
	}
	sort.Strings(names)
	var b strings.Builder
	for _, n := range names {
		fmt.Fprintf(&b, "---\n# Source: %s\n%s\n", n, strings.TrimSpace(files[n]))
	}
	return b.String(), nil
}

// check lints and renders the default values and every documented
// example.
func check(chartDir, release, namespace string, out io.Writer) error {
	examples, err := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if err != nil {
		return err
	}
	cases := append([]string{""}, examples...)
	for _, ex := range cases {
		var files []string
		what := "default values"
		if ex != "" {
			files, what = []string{ex}, ex
		}
		vals, err := readValues(files, nil)
		if err != nil {
			return err
		}
		if err := lintChart(chartDir, vals, namespace, io.Discard); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if _, err := render(chartDir, vals, release, namespace); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		fmt.Fprintf(out, "ok %s\n", what)
	}
	return nil
}
