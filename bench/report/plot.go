package report

import (
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"math"
	"slices"
)

// Colours of the modes, in the order of Results.Modes (measured or not, so
// a mode keeps its colour from run to run); direct is grey.
var palette = []color.RGBA{
	{0x70, 0x70, 0x70, 0xff}, // direct
	{0x1f, 0x77, 0xb4, 0xff}, // kmesh
	{0x2c, 0xa0, 0x2c, 0xff},
	{0xff, 0x7f, 0x0e, 0xff},
	{0xd6, 0x27, 0x28, 0xff},
	{0x94, 0x67, 0xbd, 0xff},
	// As many as the modes, so none repeats another's: direct, kmesh,
	// kmesh-accel, iptables, haproxy, haproxy-http, kmesh-waypoint,
	// haproxy-mtls, kmesh-mtls.
	{0x8c, 0x56, 0x4b, 0xff},
	{0xe3, 0x77, 0xc2, 0xff},
	{0x17, 0xbe, 0xcf, 0xff},
	{0xbc, 0xbd, 0x22, 0xff},
}

var (
	white = color.RGBA{0xff, 0xff, 0xff, 0xff}
	black = color.RGBA{0x20, 0x20, 0x20, 0xff}
	grid  = color.RGBA{0xe4, 0xe4, 0xe4, 0xff}
)

// PNG draws latency by percentile and mode: one panel per topology (rows)
// and latency test (columns), in each the p50, p90 and p99 of every mode as
// bars of the median over rounds, with min–max whiskers.
func PNG(w io.Writer, r *Results) error {
	var tests []Named
	for _, t := range r.Tests {
		if t.Group == GroupLatency {
			tests = append(tests, t)
		}
	}
	var topos []Named
	var modes []string
	for _, row := range r.Summary {
		if !slices.ContainsFunc(tests, func(t Named) bool { return t.Name == row.Test }) {
			continue
		}
		if !slices.ContainsFunc(topos, func(t Named) bool { return t.Name == row.Topology }) {
			topos = append(topos, Named{Name: row.Topology})
		}
		if !slices.Contains(modes, row.Mode) {
			modes = append(modes, row.Mode)
		}
	}
	if len(tests) == 0 || len(topos) == 0 {
		return fmt.Errorf("plot: no latency results")
	}

	const (
		width, margin, panelH = 1400, 20, 340
	)
	keys := legend(modes, width, margin)
	top := keys[len(keys)-1].Y + 32
	height := top + len(topos)*panelH + margin
	img := image.NewRGBA(image.Rect(0, 0, width, height))
	fillRect(img, 0, 0, width, height, white)

	drawText(img, margin, 16, "Kmesh benchmark: latency by percentile and mode", 3, black)
	sub := fmt.Sprintf("median of %s, whiskers min-max; %d CPUs %s; %s", plural(r.Settings.Rounds, "round"), r.Machine.CPUs,
		r.Machine.CPU, r.Started.UTC().Format("2006-01-02"))
	drawText(img, margin, 50, sub, 2, black)
	colour := func(mode string) color.RGBA {
		i := slices.IndexFunc(r.Modes, func(m Mode) bool { return m.Name == mode })
		if i < 0 {
			i = len(r.Modes) + slices.Index(modes, mode)
		}
		return palette[i%len(palette)]
	}
	for i, m := range modes {
		k := keys[i]
		fillRect(img, k.X, k.Y, k.X+14, k.Y+14, colour(m))
		drawText(img, k.X+20, k.Y, m, 2, black)
	}

	panelW := (width - 2*margin) / len(tests)
	for ti, topo := range topos {
		for ci, test := range tests {
			px, py := margin+ci*panelW, top+ti*panelH
			var bars []bar
			for _, m := range modes {
				row, _ := Find(r.Summary, test.Name, topo.Name, m)
				bars = append(bars, bar{colour(m), [3]Stat{row.P50, row.P90, row.P99}})
			}
			title := topo.Name + ", " + label(r.Tests, test.Name) + " (µs)"
			drawPanel(img, image.Rect(px, py, px+panelW-10, py+panelH-12), title, bars)
		}
	}
	return png.Encode(w, img)
}

// legend places each mode's key (a swatch and its name) in rows from y=80,
// starting a new row where the next key would cross the right margin.
func legend(modes []string, width, margin int) []image.Point {
	keys := make([]image.Point, len(modes))
	x, y := margin, 80
	for i, m := range modes {
		w := 20 + textWidth(m, 2)
		if x > margin && x+w > width-margin {
			x, y = margin, y+24
		}
		keys[i] = image.Pt(x, y)
		x += w + 30
	}
	if len(keys) == 0 {
		return []image.Point{{margin, 80}}
	}
	return keys
}

// bar is one mode in a panel: its colour and its p50, p90 and p99.
type bar struct {
	colour color.RGBA
	p      [3]Stat
}

// drawPanel draws one group of bars per percentile inside area.
func drawPanel(img *image.RGBA, area image.Rectangle, title string, bars []bar) {
	drawText(img, area.Min.X+64, area.Min.Y, title, 2, black)
	plot := image.Rect(area.Min.X+64, area.Min.Y+30, area.Max.X-6, area.Max.Y-28)

	hi := 0.0
	for _, b := range bars {
		for _, s := range b.p {
			hi = math.Max(hi, math.Max(s.Max, s.Median))
		}
	}
	step := niceStep(hi / 5)
	ymax := math.Max(step, math.Ceil(hi/step)*step)
	yOf := func(v float64) int {
		return plot.Max.Y - int(math.Round(v/ymax*float64(plot.Dy())))
	}
	for v := 0.0; v <= ymax+step/2; v += step {
		y := yOf(v)
		fillRect(img, plot.Min.X, y, plot.Max.X, y+1, grid)
		lbl := fmt.Sprintf("%g", v)
		drawText(img, plot.Min.X-8-textWidth(lbl, 2), y-7, lbl, 2, black)
	}
	fillRect(img, plot.Min.X, plot.Min.Y, plot.Min.X+1, plot.Max.Y+1, black)
	fillRect(img, plot.Min.X, plot.Max.Y, plot.Max.X, plot.Max.Y+1, black)

	groupW := plot.Dx() / 3
	barW := max(2, groupW*3/4/max(1, len(bars)))
	for g, name := range []string{"p50", "p90", "p99"} {
		gx := plot.Min.X + g*groupW + (groupW-barW*len(bars))/2
		for i, b := range bars {
			s := b.p[g]
			if s.N == 0 {
				continue
			}
			x0 := gx + i*barW
			fillRect(img, x0+1, yOf(s.Median), x0+barW-1, plot.Max.Y, b.colour)
			if s.N > 1 {
				cx := x0 + barW/2
				fillRect(img, cx-1, yOf(s.Max), cx+1, yOf(s.Min)+1, black)
				fillRect(img, cx-barW/4, yOf(s.Max), cx+barW/4+1, yOf(s.Max)+2, black)
				fillRect(img, cx-barW/4, yOf(s.Min)-1, cx+barW/4+1, yOf(s.Min)+1, black)
			}
		}
		lx := plot.Min.X + g*groupW + (groupW-textWidth(name, 2))/2
		drawText(img, lx, plot.Max.Y+8, name, 2, black)
	}
}

// niceStep rounds x up to 1, 2 or 5 times a power of ten.
func niceStep(x float64) float64 {
	if x <= 0 || math.IsNaN(x) {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(x)))
	for _, m := range []float64{1, 2, 5, 10} {
		if m*p >= x {
			return m * p
		}
	}
	return 10 * p
}
