package fortio

import (
	"os"
	"slices"
	"testing"
	"time"
)

func TestParse(t *testing.T) {
	tests := []struct {
		file          string
		count, errors int
		p50, p99      time.Duration
	}{
		// Real fortio 1.66.5 output, histogram data trimmed, two 503s added.
		{"testdata/http.json", 2000, 2, 176457 * time.Nanosecond, 900 * time.Microsecond},
		{"testdata/tcp.json", 19523, 0, 100546 * time.Nanosecond, 232460 * time.Nanosecond},
	}
	for _, tt := range tests {
		t.Run(tt.file, func(t *testing.T) {
			data, err := os.ReadFile(tt.file)
			if err != nil {
				t.Fatal(err)
			}
			r, err := Parse(data)
			if err != nil {
				t.Fatal(err)
			}
			if r.Count != tt.count || r.Errors != tt.errors {
				t.Errorf("count, errors = %d, %d; want %d, %d", r.Count, r.Errors, tt.count, tt.errors)
			}
			if r.P50 != tt.p50 || r.P99 != tt.p99 {
				t.Errorf("p50, p99 = %v, %v; want %v, %v", r.P50, r.P99, tt.p50, tt.p99)
			}
			if r.P90 < r.P50 || r.P99 < r.P90 || r.ActualQPS <= 0 || r.Elapsed <= 0 {
				t.Errorf("implausible result %+v", r)
			}
		})
	}
}

func TestParse_Rejects(t *testing.T) {
	for _, in := range []string{"", "{", `{"DurationHistogram":{"Count":0}}`,
		`{"DurationHistogram":{"Count":3,"Percentiles":[{"Percentile":50,"Value":1}]}}`} {
		if _, err := Parse([]byte(in)); err == nil {
			t.Errorf("Parse(%q) succeeded", in)
		}
	}
}

func TestArgs(t *testing.T) {
	tests := []struct {
		name string
		test Test
		want []string // must appear, in order, somewhere in the arguments
		not  []string
	}{
		{"fixed rate keep-alive",
			Test{Kind: HTTP, QPS: 1000, Connections: 16, KeepAlive: true, Payload: 1024, Duration: 5 * time.Second},
			[]string{"-qps", "1000", "-c", "16", "-t", "5s", "-payload-size", "1024", "http://10.96.0.10:80/"},
			[]string{"-keepalive=false"}},
		{"connection per request",
			Test{Kind: HTTP, Connections: 1, Payload: 1024, Duration: time.Second},
			[]string{"-qps", "0", "-keepalive=false", "http://10.96.0.10:80/"}, nil},
		{"tcp echo",
			Test{Kind: TCP, Connections: 1, Duration: time.Second},
			[]string{"tcp://10.96.0.10:80"}, []string{"-payload-size", "-keepalive=false"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			args := tt.test.Args("10.96.0.10:80", "/tmp/r.json")
			if args[0] != "load" || !slices.Contains(args, "-json") || !slices.Contains(args, "0.00001") {
				t.Errorf("args %q: want load, -json and -r 0.00001", args)
			}
			if args[len(args)-1] != tt.want[len(tt.want)-1] {
				t.Errorf("args %q: target not last", args)
			}
			for _, w := range tt.want {
				i := slices.Index(args, w)
				if i < 0 {
					t.Errorf("args %q: missing %q", args, w)
					continue
				}
				args = args[i+1:]
			}
			for _, n := range tt.not {
				if slices.Contains(tt.test.Args("x:1", "j"), n) {
					t.Errorf("args contain %q", n)
				}
			}
		})
	}
}
