package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"
)

// ResultSchema is the version of the JSON result format. Field names are
// stable within a version; docs/BENCHMARKS.md documents them.
const ResultSchema = 1

// Result is the outcome of one run, as written by --json. Units are in the
// field names: _s seconds, _ms milliseconds, _bytes bytes, _per_s per
// second.
type Result struct {
	Schema    int       `json:"schema"`
	Scenario  string    `json:"scenario"`
	Started   time.Time `json:"started"`
	DurationS float64   `json:"duration_s"`
	// Pass is false when deliveries were missing or duplicated, publishes
	// failed, or connections did not get up; Problems says which.
	Pass     bool            `json:"pass"`
	Problems []string        `json:"problems"`
	Params   Params          `json:"params"`
	Connect  *ConnectResult  `json:"connect,omitempty"`
	Idle     *IdleResult     `json:"idle,omitempty"`
	Publish  *PublishResult  `json:"publish,omitempty"`
	Delivery *DeliveryResult `json:"delivery,omitempty"`
	Churn    *ChurnResult    `json:"churn,omitempty"`
	Soak     *SoakResult     `json:"soak,omitempty"`
	Server   *ServerResult   `json:"server,omitempty"`
	Tool     ToolResult      `json:"tool"`
	Timeline Timeline        `json:"timeline"`
}

// Params are the settings of a run.
type Params struct {
	URLs         []string `json:"urls"`
	Conns        int      `json:"conns"`
	Channels     int      `json:"channels"`
	Messages     int      `json:"messages"`
	Rate         float64  `json:"rate"`
	PayloadBytes int      `json:"payload_bytes"`
	Publishers   int      `json:"publishers"`
	Batch        int      `json:"batch"`
	HoldS        float64  `json:"hold_s"`
	PublishTo    string   `json:"publish_to"`
	Sources      []string `json:"sources"`
	Concurrency  int      `json:"concurrency"`
	Workers      int      `json:"workers"`
}

// Latency summarizes a latency histogram in milliseconds; Hist holds the
// whole histogram in nanoseconds (see Hist's JSON form).
type Latency struct {
	Count  uint64  `json:"count"`
	MinMS  float64 `json:"min_ms"`
	MeanMS float64 `json:"mean_ms"`
	P50MS  float64 `json:"p50_ms"`
	P90MS  float64 `json:"p90_ms"`
	P99MS  float64 `json:"p99_ms"`
	P999MS float64 `json:"p999_ms"`
	MaxMS  float64 `json:"max_ms"`
	Hist   *Hist   `json:"hist_ns,omitempty"`
}

func summarize(h *Hist) Latency {
	if h == nil {
		h = new(Hist)
	}
	ms := func(v int64) float64 { return float64(v) / 1e6 }
	return Latency{
		Count: h.Count(), MinMS: ms(h.Min()), MeanMS: h.Mean() / 1e6,
		P50MS: ms(h.Quantile(0.5)), P90MS: ms(h.Quantile(0.9)), P99MS: ms(h.Quantile(0.99)),
		P999MS: ms(h.Quantile(0.999)), MaxMS: ms(h.Max()), Hist: h,
	}
}

// ConnectResult describes a connect phase.
type ConnectResult struct {
	Target           int               `json:"target"`
	Established      int               `json:"established"`
	Failed           int               `json:"failed"`
	Attempts         int               `json:"attempts"`
	Refused503       int               `json:"refused_503"`
	FailuresByReason map[string]int    `json:"failures_by_reason"`
	DurationS        float64           `json:"duration_s"` // first attempt to last connection up
	PerS             float64           `json:"per_s"`      // established / duration_s
	Handshake        Latency           `json:"handshake"`  // TCP dial start to HTTP 101
	Subscribe        Latency           `json:"subscribe"`  // subscribe sent to subscribed
	Events           map[string]uint64 `json:"events"`     // frames seen: pings answered, errors, …
}

func connectResult(cs connStats, t0 time.Time) *ConnectResult {
	r := &ConnectResult{
		Target: cs.Target, Established: cs.Up, Failed: cs.Failed, Attempts: cs.Attempts,
		Refused503: cs.Refused, FailuresByReason: cs.Failures,
		Handshake: summarize(cs.Handshake), Subscribe: summarize(cs.Subscribe), Events: cs.Extra,
	}
	if cs.LastUp > 0 {
		r.DurationS = time.Duration(cs.LastUp - t0.UnixNano()).Seconds()
		if r.DurationS > 0 {
			r.PerS = float64(cs.Up) / r.DurationS
		}
	}
	return r
}

// IdleResult describes an idle hold.
type IdleResult struct {
	HoldS            float64 `json:"hold_s"`
	Conns            int     `json:"conns"`            // connections up at the start of the hold
	StillUp          int     `json:"still_up"`         // connections up at the end
	RSSBeforeBytes   float64 `json:"rss_before_bytes"` // before connecting, summed over nodes
	RSSAfterBytes    float64 `json:"rss_after_bytes"`  // at the end of the hold
	RSSPerConnBytes  float64 `json:"rss_per_conn_bytes"`
	HeapPerConnBytes float64 `json:"heap_per_conn_bytes,omitempty"`
	CPUS             float64 `json:"cpu_s"`       // server CPU during the hold
	CPUSPerS         float64 `json:"cpu_s_per_s"` // cpu_s / hold_s: heartbeats and timers alone
	MetricsError     string  `json:"metrics_error,omitempty"`
}

// PublishResult describes the publishing side.
type PublishResult struct {
	Messages   int            `json:"messages"` // messages to publish (per channel × channels)
	OK         int64          `json:"ok"`
	Failed     int64          `json:"failed"`
	Requests   int64          `json:"requests"`
	Retried    int64          `json:"retried"` // requests refused with 503/429 and retried
	Statuses   map[string]int `json:"statuses"`
	DurationS  float64        `json:"duration_s"`
	PerS       float64        `json:"per_s"` // messages accepted per second
	TargetPerS float64        `json:"target_per_s,omitempty"`
	API        Latency        `json:"api"` // request latency of POST /api/publish
}

// DeliveryResult describes deliveries, counted exactly per subscriber.
type DeliveryResult struct {
	Subscribers int    `json:"subscribers"`
	Messages    int    `json:"messages_per_subscriber"`
	Expected    uint64 `json:"expected"` // subscribers × messages
	Delivered   uint64 `json:"delivered"`
	Missing     uint64 `json:"missing"`
	Duplicates  uint64 `json:"duplicates"`
	Unexpected  uint64 `json:"unexpected"`
	Complete    bool   `json:"complete"` // all arrived before --drain ran out
	// DurationS runs from the first publish to the last delivery.
	DurationS    float64 `json:"duration_s"`
	PerS         float64 `json:"per_s"`   // delivered / duration_s
	Latency      Latency `json:"latency"` // publish stamp to receive, per unique delivery
	DroppedConns int     `json:"dropped_conns"`
}

// ChurnResult describes a reconnect storm.
type ChurnResult struct {
	Clients          int            `json:"clients"`
	Back             int            `json:"back"`
	Failed           int            `json:"failed"`
	AllBackS         float64        `json:"all_back_s"` // drop until the last client was subscribed again
	Rate             float64        `json:"rate"`       // reconnects per second, 0 = all at once
	Attempts         int            `json:"attempts"`
	Refused503       int            `json:"refused_503"`
	FailuresByReason map[string]int `json:"failures_by_reason"`
	Handshake        Latency        `json:"handshake"`
	Healthz          Latency        `json:"healthz"`
	HealthzFailed    int64          `json:"healthz_failed"`
}

// NodeSample is one node's process figures from /metrics.
type NodeSample struct {
	URL            string  `json:"url"`
	RSSBeforeBytes float64 `json:"rss_before_bytes"`
	RSSAfterBytes  float64 `json:"rss_after_bytes"`
	CPUS           float64 `json:"cpu_s"`
	Error          string  `json:"error,omitempty"`
}

// ServerResult is the servers' cost over the measured interval.
type ServerResult struct {
	IntervalS                float64      `json:"interval_s"`
	CPUS                     float64      `json:"cpu_s"` // summed over nodes
	CPUSPerMillionDeliveries float64      `json:"cpu_s_per_million_deliveries,omitempty"`
	Nodes                    []NodeSample `json:"nodes"`
}

// ToolResult is the bench's own cost, so a reader can judge whether the
// tool was the bottleneck.
type ToolResult struct {
	Workers         int        `json:"workers"`
	WorkerCPU       []cpuUsage `json:"worker_cpu"`
	WorkersCPUS     float64    `json:"workers_cpu_s"`
	CoordinatorCPUS float64    `json:"coordinator_cpu_s"`
}

// Timeline holds the series for the HTML report.
type Timeline struct {
	// Deliveries are unique deliveries per interval by receive time,
	// starting at the connect start.
	IntervalS     float64  `json:"interval_s"`
	Deliveries    []uint64 `json:"deliveries"`
	PublishStartS float64  `json:"publish_start_s"`
	// Samples are the coordinator's progress samples, 4 per second.
	Samples []Sample `json:"samples"`
}

// Sample is a progress sample.
type Sample struct {
	T         float64 `json:"t_s"` // since the run started
	Up        int     `json:"up"`
	Delivered uint64  `json:"delivered"`
	Errors    int     `json:"errors"`
}

func writeJSONFile(path string, r *Result) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("cannot encode result: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("cannot write result: %w", err)
	}
	return nil
}

// fmtLat formats a latency summary on one line.
func fmtLat(l Latency) string {
	if l.Count == 0 {
		return "no samples"
	}
	return fmt.Sprintf("p50 %s  p90 %s  p99 %s  p99.9 %s  max %s ms  (n=%d)",
		fmtMS(l.P50MS), fmtMS(l.P90MS), fmtMS(l.P99MS), fmtMS(l.P999MS), fmtMS(l.MaxMS), l.Count)
}

func fmtMS(v float64) string {
	switch {
	case v < 1:
		return fmt.Sprintf("%.3f", v)
	case v < 100:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.0f", v)
}

func fmtBytes(v float64) string {
	switch {
	case v >= 1<<30 || v <= -(1<<30):
		return fmt.Sprintf("%.2f GiB", v/(1<<30))
	case v >= 1<<20 || v <= -(1<<20):
		return fmt.Sprintf("%.1f MiB", v/(1<<20))
	case v >= 1<<10 || v <= -(1<<10):
		return fmt.Sprintf("%.1f KiB", v/(1<<10))
	}
	return fmt.Sprintf("%.0f B", v)
}

func fmtReasons(m map[string]int) string {
	if len(m) == 0 {
		return ""
	}
	var parts []string
	for _, k := range sortedKeys(m) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, m[k]))
	}
	return " (" + strings.Join(parts, ", ") + ")"
}

// writeTable prints the human-readable result; every figure says what it
// measured.
func writeTable(w io.Writer, r *Result) {
	p := r.Params
	fmt.Fprintf(w, "tether bench %s: %d connections to %d node(s), %d worker process(es), %.1f s total\n",
		r.Scenario, p.Conns, len(p.URLs), p.Workers, r.DurationS)
	row := func(label, format string, args ...any) {
		fmt.Fprintf(w, "  %-12s "+format+"\n", append([]any{label}, args...)...)
	}
	if c := r.Connect; c != nil {
		row("connections", "%d/%d up in %.2f s = %.0f conn/s (dial start → subscribed); %d attempts, %d failed, %d refused with 503%s",
			c.Established, c.Target, c.DurationS, c.PerS, c.Attempts, c.Failed, c.Refused503, fmtReasons(c.FailuresByReason))
		row("handshake", "%s  [TCP dial → HTTP 101]", fmtLat(c.Handshake))
		row("subscribe", "%s  [subscribe → subscribed]", fmtLat(c.Subscribe))
	}
	if i := r.Idle; i != nil {
		row("idle", "%d connections held %.1f s; %d still up at the end", i.Conns, i.HoldS, i.StillUp)
		if i.MetricsError != "" {
			row("server", "no /metrics: %s", i.MetricsError)
		} else {
			row("memory", "server RSS %s → %s = %s per connection (Δ RSS / %d connections)",
				fmtBytes(i.RSSBeforeBytes), fmtBytes(i.RSSAfterBytes), fmtBytes(i.RSSPerConnBytes), i.Conns)
			if i.HeapPerConnBytes != 0 {
				row("heap", "%s per connection (Δ go_memstats_heap_inuse_bytes / connections)", fmtBytes(i.HeapPerConnBytes))
			}
			row("heartbeats", "server CPU %.3f s over %.1f s idle = %.4f CPU-s/s (%d connections)", i.CPUS, i.HoldS, i.CPUSPerS, i.Conns)
		}
	}
	if pb := r.Publish; pb != nil {
		target := "as fast as accepted"
		if pb.TargetPerS > 0 {
			target = fmt.Sprintf("target %.0f req/s", pb.TargetPerS)
		}
		row("publish", "%d/%d messages accepted in %.2f s = %.0f msg/s (%s); %d requests, %d retried, %d failed%s",
			pb.OK, pb.Messages, pb.DurationS, pb.PerS, target, pb.Requests, pb.Retried, pb.Failed, fmtReasons(pb.Statuses))
		row("api", "%s  [POST /api/publish round trip]", fmtLat(pb.API))
	}
	if d := r.Delivery; d != nil {
		row("deliveries", "%d expected (%d subscribers × %d messages): %d delivered, %d missing, %d duplicate, %d unexpected",
			d.Expected, d.Subscribers, d.Messages, d.Delivered, d.Missing, d.Duplicates, d.Unexpected)
		row("latency", "%s  [publish stamp → received]", fmtLat(d.Latency))
		row("rate", "%.0f deliveries/s over %.2f s (first publish → last delivery)", d.PerS, d.DurationS)
		if d.DroppedConns > 0 {
			row("dropped", "%d connections were closed by the server or network", d.DroppedConns)
		}
	}
	if c := r.Churn; c != nil {
		how := "all at once"
		if c.Rate > 0 {
			how = fmt.Sprintf("at %.0f/s", c.Rate)
		}
		row("churn", "%d/%d clients back %.2f s after dropping %s; %d attempts, %d failed, %d refused with 503%s",
			c.Back, c.Clients, c.AllBackS, how, c.Attempts, c.Failed, c.Refused503, fmtReasons(c.FailuresByReason))
		row("handshake", "%s  [during the storm]", fmtLat(c.Handshake))
		row("healthz", "%s  [GET /healthz during the storm; %d failed]", fmtLat(c.Healthz), c.HealthzFailed)
	}
	if s := r.Soak; s != nil {
		writeSoakRows(w, s)
	}
	if s := r.Server; s != nil {
		line := fmt.Sprintf("CPU %.3f s over %.2f s (process_cpu_seconds_total, all nodes)", s.CPUS, s.IntervalS)
		if s.CPUSPerMillionDeliveries > 0 {
			line += fmt.Sprintf(" = %.2f CPU-s per million deliveries", s.CPUSPerMillionDeliveries)
		}
		row("server", "%s", line)
		for _, n := range s.Nodes {
			if n.Error != "" {
				row("", "%s: %s", n.URL, n.Error)
			} else {
				row("", "%s: RSS %s → %s, CPU %.3f s", n.URL, fmtBytes(n.RSSBeforeBytes), fmtBytes(n.RSSAfterBytes), n.CPUS)
			}
		}
	}
	t := r.Tool
	row("tool", "%d worker(s) used %.2f CPU-s (user+sys), coordinator %.2f CPU-s", t.Workers, t.WorkersCPUS, t.CoordinatorCPUS)
	if r.Pass {
		row("result", "PASS")
	} else {
		row("result", "FAIL: %s", strings.Join(r.Problems, "; "))
	}
}

// sortedKeys returns m's keys in order.
func sortedKeys[V any](m map[string]V) []string {
	ks := make([]string, 0, len(m))
	for k := range m {
		ks = append(ks, k)
	}
	sort.Strings(ks)
	return ks
}
