package main

import (
	"fmt"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// writeSoakPlot draws three panels over the run's time: tx/s and p99 per
// second, and each node's RSS at every poll.
func writeSoakPlot(path string, rep *soakReport) error {
	title := fmt.Sprintf("%d clients, %d participants", rep.Config.Clients, rep.Config.Participants)
	if k := rep.Kill; k != nil && k.KilledAtS > 0 {
		title += fmt.Sprintf("; node %d killed at %.0f s, restarted at %.0f s", k.Node, k.KilledAtS, k.RestartedS)
	}
	var tx, p99 plotter.XYs
	prevEnd := 0.0
	for i, s := range rep.Seconds {
		short := i > 0 && s.EndS-prevEnd < 0.25 // a run's last sliver: noise
		prevEnd = s.EndS
		if short {
			continue
		}
		tx = append(tx, plotter.XY{X: s.EndS, Y: s.TxPerSec})
		if s.Tx > 0 {
			p99 = append(p99, plotter.XY{X: s.EndS, Y: s.P99Ms})
		}
	}
	rss := make([]plotter.XYs, len(rep.Nodes))
	for _, p := range rep.Polls {
		for _, n := range p.Nodes {
			if i := int(n.ID - 1); n.Answered && i >= 0 && i < len(rss) {
				rss[i] = append(rss[i], plotter.XY{X: p.TS, Y: mibf(n.RSSBytes)})
			}
		}
	}
	var rssLines []plotLine
	for i, xys := range rss {
		if len(xys) > 0 {
			rssLines = append(rssLines, plotLine{fmt.Sprintf("node %d", i+1), xys, plotColors[i%len(plotColors)]})
		}
	}
	var plots []*plot.Plot
	for _, panel := range []struct {
		title, y string
		lines    []plotLine
	}{
		{"throughput: " + title, "tx/s", []plotLine{{"tx/s", tx, plotColors[0]}}},
		{"latency p99 per second", "p99 (ms)", []plotLine{{"p99", p99, plotColors[1]}}},
		{"resident memory", "RSS (MiB)", rssLines},
	} {
		p := plot.New()
		p.Title.Text = panel.title
		p.X.Label.Text, p.Y.Label.Text = "time (s)", panel.y
		p.X.Min, p.Y.Min = 0, 0
		p.Add(plotter.NewGrid())
		var lines []plotLine
		for _, l := range panel.lines {
			if len(l.xys) > 0 {
				lines = append(lines, l)
			}
		}
		if err := addLines(p, lines...); err != nil {
			return err
		}
		plots = append(plots, p)
	}
	return writePanels(path, 11*vg.Inch, plots...)
}
