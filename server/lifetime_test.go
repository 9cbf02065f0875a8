package server

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	"tether/internal/proto"
)

func TestIdleClusters(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC).UnixNano()
	sec := int64(time.Second)
	rng := rand.New(rand.NewPCG(1, 2))
	// spread returns an idle time log-uniform between 1s and 1h: closes
	// that have nothing to do with a timeout.
	spread := func() time.Duration {
		return time.Duration(float64(time.Second) * math.Exp(rng.Float64()*math.Log(3600)))
	}
	// cut returns 3s plus the jitter of a coarse clock.
	cut := func() time.Duration {
		return 3*time.Second + time.Duration(rng.Int64N(int64(300*time.Millisecond))) - 150*time.Millisecond
	}
	f := func(name string, closes func(d *idleClusters), at int64, want time.Duration, wantN int) {
		t.Run(name, func(t *testing.T) {
			var d idleClusters
			closes(&d)
			got, n := d.suspect(at)
			if math.Abs(got.Seconds()-want.Seconds()) > 0.05 || (wantN >= 0 && n != wantN) {
				t.Fatalf("suspect = %v, %d closes; want %v, %d", got, n, want, wantN)
			}
		})
	}
	f("none", func(*idleClusters) {}, t0, 0, 0)
	f("a cut at 3s", func(d *idleClusters) {
		for i := range 100 {
			d.add(t0+int64(i)*sec/10, cut())
		}
	}, t0+10*sec, 3*time.Second, 100)
	f("too few", func(d *idleClusters) {
		for i := range idleClusterMin - 1 {
			d.add(t0+int64(i)*sec, 3*time.Second)
		}
	}, t0+20*sec, 0, 0)
	f("spread", func(d *idleClusters) {
		for i := range 500 {
			d.add(t0+int64(i)*sec/10, spread())
		}
	}, t0+50*sec, 0, 0)
	f("a cut among fewer others", func(d *idleClusters) {
		for i := range 100 {
			d.add(t0+int64(i)*sec/10, cut())
			if i%2 == 0 {
				d.add(t0+int64(i)*sec/10, spread())
			}
		}
	}, t0+10*sec, 3*time.Second, -1)
	f("a cut among more others", func(d *idleClusters) {
		for i := range 100 {
			d.add(t0+int64(i)*sec/10, cut())
			d.add(t0+int64(i)*sec/10, spread())
			d.add(t0+int64(i)*sec/10, spread())
		}
	}, t0+10*sec, 0, 0)
	f("short-lived closes count against a cluster", func(d *idleClusters) {
		for i := range 100 {
			d.add(t0, 60*time.Second)
			d.add(t0, time.Duration(i)*time.Millisecond)
			d.add(t0, time.Duration(i)*time.Millisecond)
		}
	}, t0, 0, 0)
	f("a cut at 60s", func(d *idleClusters) {
		for i := range 30 {
			d.add(t0+int64(i)*sec, 60*time.Second+time.Duration(i)*10*time.Millisecond)
		}
	}, t0+30*sec, 60145*time.Millisecond, 30)
	f("forgotten after the window", func(d *idleClusters) {
		for range 100 {
			d.add(t0, 3*time.Second)
		}
	}, t0+int64(idleClusterWindow)+sec, 0, 0)
	f("the window slides", func(d *idleClusters) {
		// 100 cuts at 3s, then, 4 minutes later, 60 at 5s: while both
		// are in the window the 3s cluster wins; after it the 5s one.
		for range 100 {
			d.add(t0, 3*time.Second)
		}
		for range 60 {
			d.add(t0+240*sec, 5*time.Second)
		}
		if got, _ := d.suspect(t0 + 250*sec); got != 3*time.Second {
			t.Errorf("within the window: suspect = %v, want 3s", got)
		}
	}, t0+int64(idleClusterWindow)+10*sec, 5*time.Second, 60)
}

func TestIdleBin(t *testing.T) {
	f := func(idle time.Duration, want int) {
		t.Helper()
		if got := idleBin(idle); got != want {
			t.Errorf("idleBin(%v) = %d, want %d", idle, got, want)
		}
	}
	f(999*time.Millisecond, -1)
	f(time.Second, 0)
	f(1099*time.Millisecond, 0)
	f(1101*time.Millisecond, 1)
	f(2*time.Hour, idleClusterBins-1)
	f(3*time.Hour, -1)
}

// TestLifetimes checks the metrics and the warning: clean closes do not
// feed the detector, abnormal ones at one idle time set the gauge and log
// one warning that names the flag, and resumes count within their window.
func TestLifetimes(t *testing.T) {
	set := metrics.NewSet()
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	l := newLifetimes(set, log, 10*time.Second, disconnectReasons)
	now := time.Now().UnixNano()
	for range 50 {
		l.observe(now, 3*time.Second, 3*time.Second, reasonCloseFrame)
	}
	if g := metricValue(set, "tether_lb_idle_timeout_suspected_seconds"); g != 0 {
		t.Fatalf("clean closes set the gauge to %v", g)
	}
	for i := range 50 {
		reason := []string{reasonEOF, reasonReset}[i%2]
		l.observe(now+int64(i)*int64(30*time.Millisecond), 3*time.Second, 3*time.Second, reason)
	}
	if g := metricValue(set, "tether_lb_idle_timeout_suspected_seconds"); g != 3 {
		t.Fatalf("gauge = %v, want 3", g)
	}
	if n := strings.Count(logs.String(), "level=WARN"); n != 1 {
		t.Fatalf("%d warnings, want 1:\n%s", n, logs.String())
	}
	if !strings.Contains(logs.String(), `suggested_flag="--ping-interval=1.5s"`) || !strings.Contains(logs.String(), "idle=3s") {
		t.Fatalf("the warning does not name the timeout and the fix:\n%s", logs.String())
	}
	if n := metricValue(set, `tether_connection_lifetime_seconds_count{reason="client"}`); n != 50 {
		t.Fatalf("client (close frame) lifetimes: %v, want 50", n)
	}
	if n := metricValue(set, `tether_connection_lifetime_seconds_count{reason="eof"}`); n != 25 {
		t.Fatalf("eof lifetimes: %v, want 25", n)
	}
	l.observe(now, time.Second, time.Second, "no such reason")
	if n := metricValue(set, `tether_connection_lifetime_seconds_count{reason="error"}`); n != 1 {
		t.Fatalf("unknown reason lifetimes: %v, want 1 under error", n)
	}

	l.resumed(now, now-int64(time.Second))
	l.resumed(now, now-int64(resumeWindow)-1)
	if n := metricValue(set, "tether_resumes_total"); n != 1 {
		t.Fatalf("resumes = %v, want 1", n)
	}
}

// TestLifetimesWarnWhenPingsAreFaster checks the warning for a cut that
// pings already beat: it must not advise a ping interval.
func TestLifetimesWarnWhenPingsAreFaster(t *testing.T) {
	var logs bytes.Buffer
	l := newLifetimes(metrics.NewSet(), slog.New(slog.NewTextHandler(&logs, nil)), time.Second, nil)
	now := time.Now().UnixNano()
	for range idleClusterMin {
		l.observe(now, 3*time.Second, 3*time.Second, reasonEOF)
	}
	l.observe(now+int64(time.Second), 3*time.Second, 3*time.Second, reasonEOF)
	if !strings.Contains(logs.String(), "only one direction") || strings.Contains(logs.String(), "suggested_flag") {
		t.Fatalf("wrong warning:\n%s", logs.String())
	}
}

// TestIdleCutThroughServer checks the wiring on a real server: clients that
// go idle and vanish without a close frame after the same time set the
// gauge, and a client that resumes counts.
func TestIdleCutThroughServer(t *testing.T) {
	ts := startServer(t, Config{PingInterval: 10 * time.Second})
	const n = idleClusterMin + 5
	var cs []*testClient
	for range n {
		cs = append(cs, mustDial(t, ts.addr))
	}
	time.Sleep(1500 * time.Millisecond)
	for _, c := range cs {
		c.conn.Close()
	}
	var g float64
	eventually(t, 5*time.Second, func() bool {
		g = ts.metric(t, "tether_lb_idle_timeout_suspected_seconds")
		return g > 0
	}, "the gauge stays 0")
	if g < 1.2 || g > 1.8 {
		t.Fatalf("gauge = %v, want 1.5 ± 0.3", g)
	}
	// The client vanished without a close frame: eof (or reset).
	got := 0.0
	for _, r := range []string{reasonEOF, reasonReset} {
		got += ts.metric(t, `tether_connection_lifetime_seconds_count{reason="`+r+`"}`)
	}
	if got != n {
		t.Fatalf("lifetimes observed: %v, want %d", got, n)
	}

	c := mustDial(t, ts.addr)
	c.send(map[string]any{"op": proto.OpSubscribe, "id": 1, "channel": "x", "since": map[string]any{"offset": 0, "epoch": "gone"}})
	c.expect(proto.OpSubscribed)
	c.send(map[string]any{"op": proto.OpSubscribe, "id": 2, "channel": "y", "since": map[string]any{"offset": 0, "epoch": "gone"}})
	c.expect(proto.OpSubscribed)
	if got := ts.metric(t, "tether_resumes_total"); got != 1 {
		t.Fatalf("resumes = %v, want 1 (once per connection)", got)
	}
}

// metricValue returns the value of the line of set named name, or -1.
func metricValue(set *metrics.Set, name string) float64 {
	var b bytes.Buffer
	set.WritePrometheus(&b)
	for _, line := range strings.Split(b.String(), "\n") {
		if rest, ok := strings.CutPrefix(line, name+" "); ok {
			var v float64
			if _, err := fmt.Sscan(rest, &v); err == nil {
				return v
			}
		}
	}
	return -1
}
