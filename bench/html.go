package bench

import (
	"bytes"
	"fmt"
	"html"
	"math"
	"os"
	"strings"
)

// writeHTMLFile writes a self-contained report page: the table, the latency
// histogram and the series over time as inline SVG. It loads nothing from
// the network.
func writeHTMLFile(path string, r *Result) error {
	var b bytes.Buffer
	var table bytes.Buffer
	writeTable(&table, r)
	fmt.Fprintf(&b, `<!doctype html>
<html><head><meta charset="utf-8"><title>tether bench %s</title>
<style>
body{font:14px system-ui,sans-serif;margin:2em;max-width:1000px;color:#222}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:12px}
svg{background:#fff;border:1px solid #ddd;margin:.5em 0}
.ax{stroke:#888;stroke-width:1}.grid{stroke:#eee}.lbl{font:11px sans-serif;fill:#555}
.bar{fill:#4a7bd0}.line{fill:none;stroke:#4a7bd0;stroke-width:1.5}.line2{fill:none;stroke:#d0784a;stroke-width:1.5}
</style></head><body>
<h1>tether bench %s</h1>
<p>Started %s, %.1f s. Result: <b>%s</b></p>
<pre>%s</pre>
`, html.EscapeString(r.Scenario), html.EscapeString(r.Scenario), r.Started.Format("2006-01-02 15:04:05 UTC"),
		r.DurationS, passText(r), html.EscapeString(table.String()))

	switch {
	case r.Delivery != nil && r.Delivery.Latency.Hist != nil && r.Delivery.Latency.Count > 0:
		b.WriteString("<h2>Delivery latency (publish stamp → received)</h2>\n")
		b.WriteString(histSVG(r.Delivery.Latency.Hist))
	case r.Churn != nil && r.Churn.Handshake.Count > 0:
		b.WriteString("<h2>Handshake latency during the storm (TCP dial → HTTP 101)</h2>\n")
		b.WriteString(histSVG(r.Churn.Handshake.Hist))
	case r.Connect != nil && r.Connect.Handshake.Count > 0:
		b.WriteString("<h2>Handshake latency (TCP dial → HTTP 101)</h2>\n")
		b.WriteString(histSVG(r.Connect.Handshake.Hist))
	}
	if n := len(r.Timeline.Deliveries); n > 0 {
		iv := r.Timeline.IntervalS
		xs := make([]float64, n)
		ys := make([]float64, n)
		for i, v := range r.Timeline.Deliveries {
			xs[i] = float64(i) * iv
			ys[i] = float64(v) / iv
		}
		fmt.Fprintf(&b, "<h2>Deliveries per second over time (%.1f s buckets, since the connect start)</h2>\n", iv)
		b.WriteString(lineSVG(xs, ys, nil, "s since connect start", "deliveries/s", ""))
	}
	if n := len(r.Timeline.Samples); n > 0 {
		xs := make([]float64, n)
		up := make([]float64, n)
		errs := make([]float64, n)
		for i, s := range r.Timeline.Samples {
			xs[i], up[i], errs[i] = s.T, float64(s.Up), float64(s.Errors)
		}
		b.WriteString("<h2>Connections up (blue) and failed attempts (orange) over time</h2>\n")
		b.WriteString(lineSVG(xs, up, errs, "s since start", "connections", "failed attempts"))
	}
	if r.Soak != nil {
		writeSoakHTML(&b, r.Soak)
	}
	b.WriteString("</body></html>\n")
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		return fmt.Errorf("cannot write HTML report: %w", err)
	}
	return nil
}

func passText(r *Result) string {
	if r.Pass {
		return "PASS"
	}
	return "FAIL: " + html.EscapeString(strings.Join(r.Problems, "; "))
}

const (
	svgW, svgH             = 900, 320
	padL, padR, padT, padB = 70, 20, 15, 45
)

// histSVG draws h on a log latency axis: each bar is the share of values
// in one of about 60 log-spaced bins.
func histSVG(h *Hist) string {
	if h == nil || h.Count() == 0 {
		return ""
	}
	lo := math.Log10(math.Max(float64(h.Min()), 1e3)) // at least 1 µs
	hi := math.Log10(math.Max(float64(h.Max()), 1e3))
	lo, hi = math.Floor(lo), math.Ceil(hi)
	if hi <= lo {
		hi = lo + 1
	}
	const bins = 60
	var counts [bins]float64
	h.EachBucket(func(blo, bhi int64, n uint64) {
		v := math.Log10(math.Max(float64(blo+(bhi-blo)/2), 1e3))
		i := int((v - lo) / (hi - lo) * bins)
		counts[min(max(i, 0), bins-1)] += float64(n)
	})
	var peak float64
	for _, c := range counts {
		peak = math.Max(peak, c)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%d" height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">`, svgW, svgH, svgW, svgH)
	pw, ph := float64(svgW-padL-padR), float64(svgH-padT-padB)
	bw := pw / bins
	for i, c := range counts {
		if c == 0 {
			continue
		}
		hgt := c / peak * ph
		fmt.Fprintf(&b, `<rect class="bar" x="%.1f" y="%.1f" width="%.1f" height="%.1f"><title>%.0f values</title></rect>`,
			padL+float64(i)*bw, padT+ph-hgt, math.Max(bw-1, 1), hgt, c)
	}
	for d := lo; d <= hi; d++ {
		x := padL + (d-lo)/(hi-lo)*pw
		fmt.Fprintf(&b, `<line class="grid" x1="%.1f" y1="%d" x2="%.1f" y2="%.1f"/>`, x, padT, x, padT+ph)
		fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%.1f" text-anchor="middle">%s</text>`, x, padT+ph+15, nsLabel(math.Pow(10, d)))
	}
	// Percentile markers.
	for _, q := range []struct {
		q    float64
		name string
	}{{0.5, "p50"}, {0.99, "p99"}, {0.999, "p99.9"}} {
		v := math.Log10(math.Max(float64(h.Quantile(q.q)), 1e3))
		x := padL + (v-lo)/(hi-lo)*pw
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#c33" stroke-dasharray="3,3"/>`, x, padT, x, padT+ph)
		fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%d" fill="#c33">%s</text>`, x+3, padT+10, q.name)
	}
	fmt.Fprintf(&b, `<line class="ax" x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`, padL, padT+ph, padL+pw, padT+ph)
	fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%d" text-anchor="middle">latency (log scale), n=%d</text>`, padL+pw/2, svgH-8, h.Count())
	fmt.Fprintf(&b, `<text class="lbl" x="12" y="%.1f" transform="rotate(-90 12 %.1f)" text-anchor="middle">share of values</text>`, padT+ph/2, padT+ph/2)
	b.WriteString("</svg>\n")
	return b.String()
}

// nsLabel formats a nanosecond value for an axis.
func nsLabel(ns float64) string {
	switch {
	case ns >= 1e9:
		return fmt.Sprintf("%g s", ns/1e9)
	case ns >= 1e6:
		return fmt.Sprintf("%g ms", ns/1e6)
	case ns >= 1e3:
		return fmt.Sprintf("%g µs", ns/1e3)
	}
	return fmt.Sprintf("%g ns", ns)
}

// lineSVG draws ys (and optionally ys2, scaled to the same axis) over xs.
func lineSVG(xs, ys, ys2 []float64, xlabel, ylabel, y2label string) string {
	if len(xs) == 0 {
		return ""
	}
	xmax := math.Max(xs[len(xs)-1], 1e-9)
	var ymax float64
	for i := range ys {
		ymax = math.Max(ymax, ys[i])
		if ys2 != nil {
			ymax = math.Max(ymax, ys2[i])
		}
	}
	if ymax == 0 {
		ymax = 1
	}
	pw, ph := float64(svgW-padL-padR), float64(svgH-padT-padB)
	pt := func(x, y float64) string {
		return fmt.Sprintf("%.1f,%.1f", padL+x/xmax*pw, padT+ph-y/ymax*ph)
	}
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%d" height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">`, svgW, svgH, svgW, svgH)
	writeGrid(&b, xmax, ymax, "%.1f")
	series := func(ys []float64, class string) {
		b.WriteString(`<polyline class="` + class + `" points="`)
		for i := range xs {
			b.WriteString(pt(xs[i], ys[i]))
			b.WriteByte(' ')
		}
		b.WriteString(`"/>`)
	}
	series(ys, "line")
	if ys2 != nil {
		series(ys2, "line2")
	}
	fmt.Fprintf(&b, `<line class="ax" x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`, padL, padT+ph, padL+pw, padT+ph)
	fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%d" text-anchor="middle">%s</text>`, padL+pw/2, svgH-8, html.EscapeString(xlabel))
	label := ylabel
	if y2label != "" {
		label += " / " + y2label
	}
	fmt.Fprintf(&b, `<text class="lbl" x="12" y="%.1f" transform="rotate(-90 12 %.1f)" text-anchor="middle">%s</text>`, padT+ph/2, padT+ph/2, html.EscapeString(label))
	b.WriteString("</svg>\n")
	return b.String()
}

// writeGrid draws the horizontal grid lines with their y labels and the x
// labels (formatted with xfmt) of a plot over [0,xmax]×[0,ymax].
func writeGrid(b *strings.Builder, xmax, ymax float64, xfmt string) {
	pw, ph := float64(svgW-padL-padR), float64(svgH-padT-padB)
	for i := 0; i <= 4; i++ {
		y := padT + ph - float64(i)/4*ph
		fmt.Fprintf(b, `<line class="grid" x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`, padL, y, padL+pw, y)
		fmt.Fprintf(b, `<text class="lbl" x="%d" y="%.1f" text-anchor="end">%s</text>`, padL-5, y+4, shortNum(ymax*float64(i)/4))
		x := padL + float64(i)/4*pw
		fmt.Fprintf(b, `<text class="lbl" x="%.1f" y="%.1f" text-anchor="middle">`+xfmt+`</text>`, x, padT+ph+15, xmax*float64(i)/4)
	}
}

func shortNum(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%.1fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%.1fk", v/1e3)
	}
	return fmt.Sprintf("%.0f", v)
}
