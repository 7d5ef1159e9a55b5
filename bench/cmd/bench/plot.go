package main

import (
	"fmt"
	"image/color"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// Colours: Caddy's own policies, the plugin's, HAProxy's.
var (
	colCaddy   = color.RGBA{R: 0x8c, G: 0x8c, B: 0x8c, A: 0xff}
	colPlugin  = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	colHAProxy = color.RGBA{R: 0xff, G: 0x7f, B: 0x0e, A: 0xff}
	colIdeal   = color.RGBA{A: 0xff}
)

func legendName(k *benchCase) string {
	switch caseColor(k) {
	case colHAProxy:
		return "HAProxy"
	case colPlugin:
		return "caddy-affinity"
	}
	return "Caddy built-in"
}

func caseColor(k *benchCase) color.Color {
	switch {
	case k.Server == "haproxy":
		return colHAProxy
	case k.ID == "sticky_insert" || k.ID == "sticky_rewrite" || k.ID == "ip_affinity":
		return colPlugin
	}
	return colCaddy
}

// savePanels draws plots side by side into one PNG of w x h points.
func savePanels(path string, w, h vg.Length, plots ...*plot.Plot) error {
	img := vgimg.NewWith(vgimg.UseWH(w, h), vgimg.UseDPI(120))
	dc := draw.New(img)
	// A white background: PNGs are otherwise transparent, unreadable on
	// dark themes.
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())
	tiles := draw.Tiles{Rows: 1, Cols: len(plots), PadX: vg.Points(24), PadTop: vg.Points(8),
		PadBottom: vg.Points(8), PadLeft: vg.Points(8), PadRight: vg.Points(12)}
	canvases := plot.Align([][]*plot.Plot{plots}, tiles, dc)
	for i, p := range plots {
		p.Draw(canvases[0][i])
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// plotThroughput draws req/s per case (bars labelled with the ratio to the
// baseline) and p50/p99 latency per case.
func plotThroughput(path string, r *results) error {
	n := len(r.cases)
	names := make([]string, n)
	// The first case goes on top: horizontal bars count upwards.
	row := func(i int) float64 { return float64(n - 1 - i) }
	for i, k := range r.cases {
		names[n-1-i] = k.Name
	}

	rps := plot.New()
	rps.Title.Text = "Throughput (median req/s; label: ratio to baseline)"
	rps.X.Label.Text = "requests per second"
	rps.X.Min = 0
	var lbl plotter.XYLabels
	maxRPS := 0.0
	legend := map[color.Color]bool{}
	for i, k := range r.cases {
		s := k.stats()
		maxRPS = max(maxRPS, s.RPS)
		bar, err := plotter.NewBarChart(plotter.Values{s.RPS}, vg.Points(14))
		if err != nil {
			return err
		}
		bar.Horizontal, bar.XMin = true, row(i)
		bar.Color, bar.LineStyle.Width = caseColor(k), 0
		rps.Add(bar)
		if c := caseColor(k); !legend[c] {
			legend[c] = true
			rps.Legend.Add(legendName(k), bar)
		}
		x, _ := r.ratios(k)
		lbl.XYs = append(lbl.XYs, plotter.XY{X: s.RPS, Y: row(i)})
		lbl.Labels = append(lbl.Labels, fmt.Sprintf(" %.3fx", x))
	}
	labels, err := plotter.NewLabels(lbl)
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].YAlign = draw.YCenter
		labels.TextStyle[i].Font.Size = vg.Points(8)
	}
	rps.Add(labels)
	rps.X.Max = maxRPS * 1.18 // room for the labels
	if base := caseByID(r.cases, baselineID); base != nil {
		bx := base.stats().RPS
		line, err := plotter.NewLine(plotter.XYs{{X: bx, Y: -0.5}, {X: bx, Y: float64(n) - 0.5}})
		if err != nil {
			return err
		}
		// Light, so that the ratio labels crossing it stay legible.
		line.Dashes = []vg.Length{vg.Points(3), vg.Points(3)}
		line.Color = color.RGBA{R: 0x60, G: 0x60, B: 0x60, A: 0xff}
		line.Width = vg.Points(0.7)
		rps.Add(line)
		rps.Legend.Add("baseline", line)
	}
	rps.NominalY(names...)
	rps.Add(plotter.NewGrid())
	rps.Legend.Top = true
	rps.Y.Max = float64(n) + 1.1 // empty rows on top for the legend

	lat := plot.New()
	lat.Title.Text = "Latency (median over rounds)"
	lat.X.Label.Text = "milliseconds"
	lat.X.Min = 0
	p50, p99 := make(plotter.Values, n), make(plotter.Values, n)
	for i, k := range r.cases {
		s := k.stats()
		p50[n-1-i], p99[n-1-i] = ms(s.P50), ms(s.P99)
	}
	b50, err := plotter.NewBarChart(p50, vg.Points(7))
	if err != nil {
		return err
	}
	b99, err := plotter.NewBarChart(p99, vg.Points(7))
	if err != nil {
		return err
	}
	b50.Horizontal, b99.Horizontal = true, true
	b50.Color, b99.Color = colPlugin, colHAProxy
	b50.LineStyle.Width, b99.LineStyle.Width = 0, 0
	b50.Offset, b99.Offset = vg.Points(3.5), vg.Points(-3.5)
	lat.Add(b50, b99, plotter.NewGrid())
	lat.Legend.Add("p50", b50)
	lat.Legend.Add("p99", b99)
	lat.Legend.Top = true
	lat.NominalY(names...)
	lat.Y.Max = float64(n) + 0.6
	maxP99 := 0.0
	for _, v := range p99 {
		maxP99 = max(maxP99, v)
	}
	lat.X.Max = maxP99 * 1.05

	return savePanels(path, vg.Points(1000), vg.Points(22*float64(n)+120), rps, lat)
}

// plotIP draws the IP affinity distribution and disruption figures.
func plotIP(path string, f ipFigures) error {
	fair := float64(f.Clients) / float64(f.Upstreams)

	dist := plot.New()
	dist.Title.Text = fmt.Sprintf("%d random IPv4 clients over %d upstreams", f.Clients, f.Upstreams)
	dist.Y.Label.Text = "deviation from fair share (%)"
	dist.X.Label.Text = "upstream"
	tv, rv := make(plotter.Values, f.Upstreams), make(plotter.Values, f.Upstreams)
	names := make([]string, f.Upstreams)
	for i := range f.Upstreams {
		tv[i], rv[i] = dev(f.Table[i], fair), dev(f.Rendezvous[i], fair)
		names[i] = strconv.Itoa(i + 1)
	}
	bt, err := plotter.NewBarChart(tv, vg.Points(9))
	if err != nil {
		return err
	}
	br, err := plotter.NewBarChart(rv, vg.Points(9))
	if err != nil {
		return err
	}
	bt.Color, br.Color = colPlugin, colCaddy
	bt.LineStyle.Width, br.LineStyle.Width = 0, 0
	bt.Offset, br.Offset = vg.Points(-4.5), vg.Points(4.5)
	dist.Add(bt, br, plotter.NewGrid())
	dist.Legend.Add("ip_affinity table", bt)
	dist.Legend.Add("Caddy client_ip_hash", br)
	dist.Legend.Top = true
	dist.NominalX(names...)
	// Symmetric range, with room on top for the legend.
	m := 1.0
	for _, v := range append(append(plotter.Values{}, tv...), rv...) {
		m = max(m, v, -v)
	}
	dist.Y.Min, dist.Y.Max = -1.2*m, 1.8*m

	ticks := make([]plot.Tick, 0, len(f.Disruption))
	for _, d := range f.Disruption {
		ticks = append(ticks, plot.Tick{Value: float64(d.N), Label: strconv.Itoa(d.N)})
	}
	series := func(p *plot.Plot, name string, c color.Color, dashed bool, y func(d disruption) float64) error {
		xys := make(plotter.XYs, len(f.Disruption))
		for i, d := range f.Disruption {
			xys[i] = plotter.XY{X: float64(d.N), Y: y(d)}
		}
		l, s, err := plotter.NewLinePoints(xys)
		if err != nil {
			return err
		}
		l.Color, s.Color = c, c
		if dashed {
			l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		}
		p.Add(l, s)
		p.Legend.Add(name, l, s)
		return nil
	}
	logX := func(p *plot.Plot) {
		p.X.Scale = plot.LogScale{}
		p.X.Tick.Marker = plot.ConstantTicks(ticks)
		p.X.Label.Text = "N upstreams, one removed"
		p.Legend.Top = true
		p.Add(plotter.NewGrid())
	}

	moved := plot.New()
	moved.Title.Text = "Clients moved when one of N upstreams leaves"
	moved.Y.Label.Text = "% of all clients"
	logX(moved)
	if err := series(moved, "ideal 1/N", colIdeal, true, func(d disruption) float64 { return d.Ideal }); err != nil {
		return err
	}
	if err := series(moved, "ip_affinity table", colPlugin, false, func(d disruption) float64 { return d.Table }); err != nil {
		return err
	}
	if err := series(moved, "Caddy client_ip_hash", colCaddy, false, func(d disruption) float64 { return d.Rendezvous }); err != nil {
		return err
	}
	moved.Y.Min = 0
	moved.Legend.Left = false

	excess := plot.New()
	excess.Title.Text = "Of which needlessly moved (not on the removed one)"
	excess.Y.Label.Text = "% of all clients"
	logX(excess)
	if err := series(excess, "ip_affinity table", colPlugin, false, func(d disruption) float64 { return d.TableExcess }); err != nil {
		return err
	}
	if err := series(excess, "Caddy client_ip_hash", colCaddy, false, func(d disruption) float64 { return d.RendezvousExcess }); err != nil {
		return err
	}
	excess.Y.Min = 0
	excess.Y.Max = 1
	for _, d := range f.Disruption {
		excess.Y.Max = max(excess.Y.Max, d.TableExcess*1.3)
	}
	return savePanels(path, vg.Points(1200), vg.Points(380), dist, moved, excess)
}
