package bench

import (
	"fmt"
	"html"
	"io"
	"math"
	"strings"
	"time"
)

// This file holds the soak's result: its series, its checks, its rows in
// the text report and its plots in the HTML report.

// SoakResult is the outcome of a soak. Times (_s) count from the start of
// publishing and churn.
type SoakResult struct {
	DurationS       float64 `json:"duration_s"`
	ChurnRate       float64 `json:"churn_rate"`
	Nodes           int     `json:"nodes"`
	RedisRestartAtS float64 `json:"redis_restart_at_s"`
	NodeRestartAtS  float64 `json:"node_restart_at_s"`
	RedisRestartS   float64 `json:"redis_restart_s"` // when it happened; 0 if not
	SampleEveryS    float64 `json:"sample_every_s"`
	LogDir          string  `json:"log_dir"`

	// Churned counts the connections the bench dropped (RST) and dialed
	// again; Recovered and NotRecovered the subscribes with since by
	// answer; Resyncs the resync frames. LossEvents are NotRecovered plus
	// Resyncs; LossOutsideWindow those more than 5 s before or 60 s after
	// the Redis restart.
	Churned           uint64 `json:"churned"`
	Recovered         uint64 `json:"recovered"`
	NotRecovered      uint64 `json:"not_recovered"`
	Resyncs           uint64 `json:"resyncs"`
	LossOutsideWindow uint64 `json:"loss_outside_window"`

	// AckedPublishes were acknowledged by the API; Expected is the pairs
	// (subscriber, acknowledged message of its channel). Missing never
	// arrived at a subscriber that was never told of a loss, or arrived
	// outside the gap it was told of; Excused never arrived at one of
	// ExcusedConns that was told (recovered:false or resync), inside the
	// gap between its last delivery before and its first after.
	AckedPublishes int    `json:"acked_publishes"`
	Expected       uint64 `json:"expected"`
	Missing        uint64 `json:"missing"`
	Excused        uint64 `json:"excused"`
	ExcusedConns   int    `json:"excused_conns"`
	Duplicates     uint64 `json:"duplicates"`
	Unexpected     uint64 `json:"unexpected"`
	UnackedArrived uint64 `json:"unacked_arrived"`
	UpAtEnd        int    `json:"up_at_end"`

	// Disconnects are the nodes' tether_disconnects_total by reason,
	// summed over nodes and restarts; ClientDrops the bench's own count of
	// connections closed by the other side, by reason.
	Disconnects map[string]float64 `json:"disconnects"`
	ClientDrops map[string]uint64  `json:"client_drops"`
	// Attempts counts the bench's connection attempts over the soak and
	// FailedAttempts the failed ones by reason (refused while a node was
	// down, 503s, closed during the handshake…); Frames the frames the
	// bench counted (pings answered, error, reconnect, malformed).
	Attempts       int               `json:"attempts"`
	FailedAttempts map[string]int    `json:"failed_attempts"`
	Frames         map[string]uint64 `json:"frames"`

	// Reference is the sample at 20 % of the run (minute 2 of 10), End the
	// last; the ratios compare their sums over nodes.
	ReferenceT float64 `json:"reference_t_s"`
	RSSRatio   float64 `json:"rss_ratio"`
	// AnonRatio is RSSRatio for anonymous memory alone: what the node
	// allocated, without the binary's pages (reported, not a gate).
	AnonRatio       float64 `json:"rss_anon_ratio"`
	GoroutinesRatio float64 `json:"goroutines_ratio"`
	FDsRatio        float64 `json:"fds_ratio"`

	Samples []SoakSample `json:"samples"`
	Events  []SoakEvent  `json:"events"`
}

// SoakSample is one reading of every node and Redis.
type SoakSample struct {
	T         float64    `json:"t_s"`
	Up        int        `json:"up"` // bench connections up
	Nodes     []SoakNode `json:"nodes"`
	RedisUsed float64    `json:"redis_used_memory_bytes"`
	RedisRSS  float64    `json:"redis_rss_bytes"`
}

// SoakNode is one node's reading; OK is false when /metrics did not answer.
type SoakNode struct {
	OK         bool    `json:"ok"`
	RSS        float64 `json:"rss_bytes"`
	Anon       float64 `json:"rss_anon_bytes"` // RSS less file-backed pages (the binary's text)
	Heap       float64 `json:"heap_inuse_bytes"`
	HeapAlloc  float64 `json:"heap_alloc_bytes"` // heap objects; Heap − HeapAlloc is free space in spans in use
	Goroutines float64 `json:"goroutines"`
	FDs        float64 `json:"fds"`
	Conns      float64 `json:"conns"`
}

// SoakEvent is a fault or step, at T seconds.
type SoakEvent struct {
	T    float64 `json:"t_s"`
	What string  `json:"what"`
}

// judge fills the soak's figures and states the problems.
func (r *soakRun) judge(ss soakStats, nAcked, up int, final connStats) {
	sr := r.sr
	sr.Churned, sr.Recovered, sr.NotRecovered, sr.Resyncs = ss.Churned, ss.Recovered, ss.NotRecovered, ss.Resyncs
	sr.AckedPublishes, sr.Expected, sr.Missing, sr.Excused, sr.ExcusedConns = nAcked, ss.Acked, ss.Missing, ss.Excused, ss.ExcusedConns
	sr.Duplicates, sr.Unexpected, sr.UnackedArrived, sr.UpAtEnd = ss.Duplicates, ss.Unexpected, ss.UnackedArrived, up
	var lo, hi int64 = math.MaxInt64, math.MaxInt64
	if sr.RedisRestartS > 0 {
		at := r.start.Add(time.Duration(sr.RedisRestartS * float64(time.Second))).Unix()
		lo, hi = at-5, at+60
	}
	for sec, n := range ss.LossAt {
		if sec < lo || sec > hi {
			sr.LossOutsideWindow += n
		}
	}
	r.mu.Lock()
	for i := range r.counts {
		for k, v := range r.counts[i] {
			sr.Disconnects[k] += v
		}
		for k, v := range r.bases[i] {
			sr.Disconnects[k] += v
		}
	}
	r.mu.Unlock()
	sr.ClientDrops, sr.Frames = map[string]uint64{}, map[string]uint64{}
	for k, v := range final.Extra {
		if strings.HasPrefix(k, "dropped_") {
			sr.ClientDrops[k] = v
		} else {
			sr.Frames[k] = v
		}
	}
	sr.Attempts, sr.FailedAttempts = final.Attempts, final.Failures
	if ref, end, ok := r.refAndEnd(); ok {
		sr.ReferenceT = ref.T
		sum := func(s SoakSample, f func(SoakNode) float64) (t float64) {
			for _, n := range s.Nodes {
				t += f(n)
			}
			return t
		}
		ratio := func(f func(SoakNode) float64) float64 { return sum(end, f) / math.Max(sum(ref, f), 1) }
		sr.RSSRatio = ratio(func(n SoakNode) float64 { return n.RSS })
		sr.AnonRatio = ratio(func(n SoakNode) float64 { return n.Anon })
		sr.GoroutinesRatio = ratio(func(n SoakNode) float64 { return n.Goroutines })
		sr.FDsRatio = ratio(func(n SoakNode) float64 { return n.FDs })
		if sr.RSSRatio > 1+r.so.rssTolerance {
			r.problem("RSS grew to %.3f× the reading at %.0f s (tolerance %.0f %%)", sr.RSSRatio, ref.T, r.so.rssTolerance*100)
		}
		if g, g0 := sum(end, func(n SoakNode) float64 { return n.Goroutines }), sum(ref, func(n SoakNode) float64 { return n.Goroutines }); g > g0*1.1+10 {
			r.problem("goroutines grew from %.0f to %.0f", g0, g)
		}
		if f, f0 := sum(end, func(n SoakNode) float64 { return n.FDs }), sum(ref, func(n SoakNode) float64 { return n.FDs }); f > f0*1.1+20 {
			r.problem("descriptors grew from %.0f to %.0f", f0, f)
		}
	} else {
		r.problem("no complete node readings at 20 %% of the run and at the end")
	}
	switch {
	case sr.Missing > 0:
		r.problem("%d acknowledged deliveries missing at subscribers never told of a loss", sr.Missing)
	case sr.Duplicates > 0:
		r.problem("%d duplicate deliveries", sr.Duplicates)
	case sr.Unexpected > 0:
		r.problem("%d unexpected messages", sr.Unexpected)
	}
	if sr.LossOutsideWindow > 0 {
		r.problem("%d recovered:false or resync outside the Redis restart", sr.LossOutsideWindow)
	}
	if sr.Disconnects["eof"] > 0 {
		r.problem("the nodes counted %.0f disconnects with reason eof", sr.Disconnects["eof"])
	}
	if sr.ClientDrops["dropped_eof"] > 0 {
		r.problem("%d client connections closed with EOF without a close frame", sr.ClientDrops["dropped_eof"])
	}
	if up < r.o.conns {
		r.problem("%d of %d clients were not up at the end", r.o.conns-up, r.o.conns)
	}
}

// refAndEnd returns the first sample at 20 % of the run or later and the
// last sample, both with every node read.
func (r *soakRun) refAndEnd() (ref, end SoakSample, ok bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	complete := func(s SoakSample) bool {
		for _, n := range s.Nodes {
			if !n.OK {
				return false
			}
		}
		return len(s.Nodes) > 0
	}
	at := 0.2 * r.so.duration.Seconds()
	found := false
	for _, s := range r.sr.Samples {
		if s.T >= at && complete(s) {
			ref, found = s, true
			break
		}
	}
	if n := len(r.sr.Samples); found && n > 0 && complete(r.sr.Samples[n-1]) {
		return ref, r.sr.Samples[n-1], true
	}
	return ref, end, false
}

// writeSoakRows writes the soak's rows of the text report.
func writeSoakRows(w io.Writer, s *SoakResult) {
	row := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-12s "+format+"\n", append([]any{label}, args...)...)
	}
	row("soak", "%.0f s, %d nodes, churn %.0f/s (%d dropped and back), Redis restart at %.0f s, node restart at %.0f s; logs in %s",
		s.DurationS, s.Nodes, s.ChurnRate, s.Churned, s.RedisRestartAtS, s.NodeRestartAtS, s.LogDir)
	row("exactly once", "%d acknowledged publishes, %d (subscriber, message) pairs expected: %d missing, %d duplicate, %d unexpected; %d arrived of unacknowledged publishes",
		s.AckedPublishes, s.Expected, s.Missing, s.Duplicates, s.Unexpected, s.UnackedArrived)
	row("recovery", "%d subscribes with since: %d recovered, %d recovered:false; %d resync frames; %d of them outside the Redis restart window; %d pairs lost on %d connections that were told",
		s.Recovered+s.NotRecovered, s.Recovered, s.NotRecovered, s.Resyncs, s.LossOutsideWindow, s.Excused, s.ExcusedConns)
	row("disconnects", "nodes:%s; bench saw:%s", fmtFloatReasons(s.Disconnects), fmtUintReasons(s.ClientDrops))
	row("attempts", "%d connection attempts; failed:%s; frames:%s", s.Attempts, fmtReasons(s.FailedAttempts), fmtUintReasons(s.Frames))
	row("flat", "at %.0f s → end: RSS ×%.3f (anonymous ×%.3f), goroutines ×%.3f, fds ×%.3f (sums over nodes)", s.ReferenceT, s.RSSRatio, s.AnonRatio, s.GoroutinesRatio, s.FDsRatio)
	for _, e := range s.Events {
		row("", "%6.1f s  %s", e.T, e.What)
	}
}

func fmtFloatReasons(m map[string]float64) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		if m[k] != 0 {
			fmt.Fprintf(&b, " %s=%.0f", k, m[k])
		}
	}
	return b.String()
}

func fmtUintReasons(m map[string]uint64) string {
	var b strings.Builder
	for _, k := range sortedKeys(m) {
		fmt.Fprintf(&b, " %s=%d", k, m[k])
	}
	if b.Len() == 0 {
		return " none"
	}
	return b.String()
}

// soakColors are the series colours of the soak plots, one per node.
var soakColors = []string{"#4a7bd0", "#d0784a", "#4aa05a", "#9a4ad0", "#c0a030", "#30a0c0"}

// writeSoakHTML writes the soak's plots: per node RSS, heap, goroutines and
// descriptors, and Redis memory, with the faults marked.
func writeSoakHTML(b io.Writer, s *SoakResult) {
	if len(s.Samples) == 0 {
		return
	}
	xs := make([]float64, len(s.Samples))
	for i, sm := range s.Samples {
		xs[i] = sm.T
	}
	perNode := func(f func(SoakNode) float64) ([][]float64, []string) {
		var ys [][]float64
		var names []string
		for n := 0; n < s.Nodes; n++ {
			y := make([]float64, len(s.Samples))
			for i, sm := range s.Samples {
				y[i] = math.NaN()
				if n < len(sm.Nodes) && sm.Nodes[n].OK {
					y[i] = f(sm.Nodes[n])
				}
			}
			ys = append(ys, y)
			names = append(names, fmt.Sprintf("node%d", n+1))
		}
		return ys, names
	}
	plot := func(title string, ys [][]float64, names []string, scale float64, unit string) {
		fmt.Fprintf(b, "<h2>%s</h2>\n", html.EscapeString(title))
		io.WriteString(b, multiSVG(xs, ys, names, scale, unit, s.Events))
	}
	ys, names := perNode(func(n SoakNode) float64 { return n.RSS })
	plot("RSS per node (MiB)", ys, names, 1<<20, "MiB")
	ys, names = perNode(func(n SoakNode) float64 { return n.Anon })
	plot("Anonymous RSS per node (MiB): RSS less the binary's pages", ys, names, 1<<20, "MiB")
	ys, names = perNode(func(n SoakNode) float64 { return n.Heap })
	plot("Heap in use per node (MiB)", ys, names, 1<<20, "MiB")
	ys, names = perNode(func(n SoakNode) float64 { return n.Heap - n.HeapAlloc })
	plot("Free space in the heap's spans in use per node (MiB): heap in use − objects", ys, names, 1<<20, "MiB")
	ys, names = perNode(func(n SoakNode) float64 { return n.Goroutines })
	plot("Goroutines per node", ys, names, 1, "")
	ys, names = perNode(func(n SoakNode) float64 { return n.FDs })
	plot("Open descriptors per node", ys, names, 1, "")
	ru, rr := make([]float64, len(xs)), make([]float64, len(xs))
	for i, sm := range s.Samples {
		ru[i], rr[i] = sm.RedisUsed, sm.RedisRSS
	}
	plot("Redis memory (MiB)", [][]float64{ru, rr}, []string{"used_memory", "used_memory_rss"}, 1<<20, "MiB")
}

// multiSVG draws several series over xs (NaN: no reading), divided by
// scale, with the events as dashed vertical lines.
func multiSVG(xs []float64, ys [][]float64, names []string, scale float64, unit string, events []SoakEvent) string {
	xmax := 1e-9
	for _, x := range xs {
		xmax = math.Max(xmax, x)
	}
	for _, e := range events {
		xmax = math.Max(xmax, e.T)
	}
	var ymax float64
	for _, y := range ys {
		for _, v := range y {
			if !math.IsNaN(v) {
				ymax = math.Max(ymax, v/scale)
			}
		}
	}
	if ymax == 0 {
		ymax = 1
	}
	ymax *= 1.1
	pw, ph := float64(svgW-padL-padR), float64(svgH-padT-padB)
	px := func(x float64) float64 { return padL + x/xmax*pw }
	py := func(y float64) float64 { return padT + ph - y/ymax*ph }
	var b strings.Builder
	fmt.Fprintf(&b, `<svg width="%d" height="%d" viewBox="0 0 %d %d" xmlns="http://www.w3.org/2000/svg">`, svgW, svgH, svgW, svgH)
	writeGrid(&b, xmax, ymax, "%.0f")
	for _, e := range events {
		fmt.Fprintf(&b, `<line x1="%.1f" y1="%d" x2="%.1f" y2="%.1f" stroke="#c33" stroke-dasharray="4 3"><title>%s</title></line>`,
			px(e.T), padT, px(e.T), padT+ph, html.EscapeString(fmt.Sprintf("%.0f s: %s", e.T, e.What)))
	}
	for k, y := range ys {
		color := soakColors[k%len(soakColors)]
		b.WriteString(`<polyline fill="none" stroke-width="1.5" stroke="` + color + `" points="`)
		for i := range xs {
			if math.IsNaN(y[i]) {
				continue
			}
			fmt.Fprintf(&b, "%.1f,%.1f ", px(xs[i]), py(y[i]/scale))
		}
		b.WriteString(`"/>`)
		fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%d" fill="%s" style="fill:%s">%s</text>`,
			padL+10+float64(k)*110, padT-4, color, color, html.EscapeString(names[k]))
	}
	fmt.Fprintf(&b, `<line class="ax" x1="%d" y1="%.1f" x2="%.1f" y2="%.1f"/>`, padL, padT+ph, padL+pw, padT+ph)
	fmt.Fprintf(&b, `<text class="lbl" x="%.1f" y="%d" text-anchor="middle">s since the soak started (dashed: faults and steps)</text>`, padL+pw/2, svgH-8)
	fmt.Fprintf(&b, `<text class="lbl" x="12" y="%.1f" transform="rotate(-90 12 %.1f)" text-anchor="middle">%s</text>`, padT+ph/2, padT+ph/2, html.EscapeString(unit))
	b.WriteString("</svg>\n")
	return b.String()
}
