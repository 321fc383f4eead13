package main

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// writeBenchPlot draws two panels into one PNG or SVG file: p50 and p99
// latency per second of the run, and the histogram of all latencies up to
// p99.9 (the rest would squash it against the axis).
func writeBenchPlot(path string, r *benchResult) error {
	over, err := latencyOverTimePlot(r)
	if err != nil {
		return err
	}
	hist, err := latencyHistogramPlot(r)
	if err != nil {
		return err
	}
	return writePanels(path, 9*vg.Inch, over, hist)
}

// writePanels draws plots one above the other into a PNG or SVG file
// (by path's extension), 8 inches wide and height high.
func writePanels(path string, height vg.Length, plots ...*plot.Plot) error {
	format := strings.ToLower(strings.TrimPrefix(filepath.Ext(path), "."))
	c, err := draw.NewFormattedCanvas(8*vg.Inch, height, format)
	if err != nil {
		return fmt.Errorf("plot canvas: %w", err)
	}
	tiles := draw.Tiles{Rows: len(plots), Cols: 1, PadTop: vg.Points(8), PadBottom: vg.Points(8),
		PadLeft: vg.Points(8), PadRight: vg.Points(12), PadY: vg.Points(24)}
	rows := make([][]*plot.Plot, len(plots))
	for i, p := range plots {
		rows[i] = []*plot.Plot{p}
	}
	panels := plot.Align(rows, tiles, draw.New(c))
	for i, p := range plots {
		p.Draw(panels[i][0])
	}
	out, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("create plot: %w", err)
	}
	if _, err := c.WriteTo(out); err != nil {
		out.Close()
		return fmt.Errorf("write plot: %w", err)
	}
	if err := out.Close(); err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	return nil
}

// plotLine is one named series of a line chart.
type plotLine struct {
	name string
	xys  plotter.XYs
	c    color.Color
}

// plotColors are the lines' colours, in order.
var plotColors = []color.Color{
	color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff},
	color.RGBA{R: 0xd6, G: 0x27, B: 0x28, A: 0xff},
	color.RGBA{R: 0x2c, G: 0xa0, B: 0x2c, A: 0xff},
	color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff},
}

// addLines adds lines with points and a legend entry each to p.
func addLines(p *plot.Plot, lines ...plotLine) error {
	for _, l := range lines {
		line, points, err := plotter.NewLinePoints(l.xys)
		if err != nil {
			return fmt.Errorf("plot %s: %w", l.name, err)
		}
		line.Color, points.Color = l.c, l.c
		points.Radius = vg.Points(1.5)
		p.Add(line, points)
		p.Legend.Add(l.name, line, points)
	}
	p.Legend.Top = true
	return nil
}

func latencyOverTimePlot(r *benchResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("latency over time: %d clients, %d participants, %.0f tx/s", r.Clients, r.Participants, r.TxPerSec)
	p.X.Label.Text = "time (s)"
	p.Y.Label.Text = "latency (ms)"
	p.X.Min, p.Y.Min = 0, 0
	p.Add(plotter.NewGrid())
	var p50, p99 plotter.XYs
	prevEnd := 0.0
	for i, s := range r.LatencyPerSecs {
		short := s.EndS-prevEnd < 0.25 && i > 0 // a run's last sliver: noise
		prevEnd = s.EndS
		if s.Tx == 0 || short {
			continue
		}
		p50 = append(p50, plotter.XY{X: s.EndS, Y: s.P50Ms})
		p99 = append(p99, plotter.XY{X: s.EndS, Y: s.P99Ms})
	}
	if len(p50) == 0 {
		p.Title.Text += " (no transactions)"
		return p, nil
	}
	if err := addLines(p, plotLine{"p50", p50, plotColors[0]}, plotLine{"p99", p99, plotColors[1]}); err != nil {
		return nil, err
	}
	return p, nil
}

func latencyHistogramPlot(r *benchResult) (*plot.Plot, error) {
	p := plot.New()
	p.X.Label.Text = "latency (ms)"
	p.Y.Label.Text = "transactions"
	limit := r.hist.ValueAtQuantile(99.9)
	var xys plotter.XYs
	var shown, total int64
	for _, b := range r.hist.Distribution() {
		if b.Count == 0 {
			continue
		}
		total += b.Count
		if b.From > limit {
			continue
		}
		shown += b.Count
		xys = append(xys, plotter.XY{X: micros(b.From+b.To) / 2, Y: float64(b.Count)})
	}
	p.Title.Text = fmt.Sprintf("latency histogram: %d of %d transactions (up to p99.9 = %.2f ms)", shown, total, micros(limit))
	if len(xys) == 0 {
		p.Title.Text = "latency histogram (no transactions)"
		return p, nil
	}
	h, err := plotter.NewHistogram(xys, 60)
	if err != nil {
		return nil, fmt.Errorf("plot histogram: %w", err)
	}
	h.FillColor = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xc0}
	p.Add(h)
	return p, nil
}
