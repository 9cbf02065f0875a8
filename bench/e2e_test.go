package bench

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// runBench runs `tether bench args…` with the coordinator in this process
// and workers as child processes, and decodes the --json result.
func runBench(t *testing.T, args ...string) (*Result, int, string) {
	t.Helper()
	dir := t.TempDir()
	jf, hf := filepath.Join(dir, "r.json"), filepath.Join(dir, "r.html")
	var out, errb bytes.Buffer
	code := run(append(args, "--json", jf, "--html", hf), &out, &errb)
	if errb.Len() > 0 {
		t.Logf("stderr:\n%s", errb.String())
	}
	if strings.Contains(errb.String(), "DATA RACE") {
		t.Error("a worker reported a data race")
	}
	t.Logf("stdout:\n%s", out.String())
	b, err := os.ReadFile(jf)
	if err != nil {
		t.Fatalf("exit %d, no JSON result: %v", code, err)
	}
	var r Result
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("bad JSON result: %v", err)
	}
	page, err := os.ReadFile(hf)
	// Self-contained: no scripts, links or images to load.
	if err != nil || !bytes.Contains(page, []byte("</html>")) || bytes.Contains(page, []byte("src=")) || bytes.Contains(page, []byte("href=")) {
		t.Errorf("bad HTML report: %v", err)
	}
	return &r, code, out.String()
}

// checkNoGoroutineLeak waits for the goroutine count to come back.
func checkNoGoroutineLeak(t *testing.T, before int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		buf := make([]byte, 1<<20)
		t.Fatalf("%d goroutines leaked:\n%s", n-before, buf[:runtime.Stack(buf, true)])
	}
}

func TestScenariosAgainstFakeServer(t *testing.T) {
	f := startFakeServer(t, func(f *fakeServer) { f.pingEvery = 300 * time.Millisecond })
	common := []string{"--url", f.url, "-n", "120", "--workers", "2", "--timeout", "20s"}

	t.Run("connect", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"connect"}, common...)...)
		if code != exitOK || r.Connect.Established != 120 || r.Connect.Handshake.Count != 120 || r.Connect.Subscribe.Count != 120 {
			t.Fatalf("exit %d, connect %+v", code, r.Connect)
		}
		if r.Tool.Workers != 2 || len(r.Tool.WorkerCPU) != 2 {
			t.Errorf("tool %+v", r.Tool)
		}
	})
	t.Run("idle", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"idle", "--hold", "1s"}, common...)...)
		if code != exitOK || r.Idle == nil || r.Idle.StillUp != 120 || r.Idle.HoldS < 1 || r.Idle.MetricsError != "" {
			t.Fatalf("exit %d, idle %+v", code, r.Idle)
		}
		if r.Connect.Events["pings_answered"] == 0 || f.pongs.Load() == 0 {
			t.Errorf("no pings answered: events %v, server saw %d pongs", r.Connect.Events, f.pongs.Load())
		}
	})
	t.Run("broadcast", func(t *testing.T) {
		r, code, out := runBench(t, append([]string{"broadcast", "--messages", "30", "--rate", "200", "--channels", "3", "--payload", "200"}, common...)...)
		d := r.Delivery
		if code != exitOK || d.Expected != 120*30 || d.Delivered != d.Expected || d.Missing != 0 || d.Duplicates != 0 || d.Latency.Count != d.Delivered {
			t.Fatalf("exit %d, delivery %+v", code, d)
		}
		if r.Publish.OK != 90 || !strings.Contains(out, "p99.9") {
			t.Errorf("publish %+v", r.Publish)
		}
		var sum uint64
		for _, v := range r.Timeline.Deliveries {
			sum += v
		}
		if sum != d.Delivered {
			t.Errorf("timeline holds %d deliveries, want %d", sum, d.Delivered)
		}
	})
	t.Run("throughput", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"throughput", "--messages", "200", "--batch", "50"}, common...)...)
		d := r.Delivery
		if code != exitOK || d.Delivered != 120*200 || d.Missing != 0 || d.Duplicates != 0 || d.PerS <= 0 {
			t.Fatalf("exit %d, delivery %+v", code, d)
		}
		if r.Publish.Requests != 4 {
			t.Errorf("requests %d, want 4 batches", r.Publish.Requests)
		}
	})
	t.Run("churn", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"churn"}, common...)...)
		c := r.Churn
		if code != exitOK || c.Clients != 120 || c.Back != 120 || c.AllBackS <= 0 || c.Healthz.Count == 0 {
			t.Fatalf("exit %d, churn %+v", code, c)
		}
	})
}

// TestDamageIsCountedExactly runs broadcast against a server that drops and
// duplicates deliveries on purpose and refuses some upgrades.
func TestDamageIsCountedExactly(t *testing.T) {
	before := runtime.NumGoroutine()
	const n, msgs, drop, dup = 50, 40, 7, 5
	f := startFakeServer(t, func(f *fakeServer) {
		f.dropEvery, f.dupEvery, f.refuseFirst = drop, dup, 3
	})
	r, code, _ := runBench(t, "broadcast", "--url", f.url, "-n", "50", "--messages", "40", "--rate", "500",
		"--drain", "1s", "--in-process")
	wantMissing := uint64(n * (msgs / drop))
	var dupsPer int
	for k := 1; k <= msgs; k++ {
		if k%dup == 0 && k%drop != 0 {
			dupsPer++
		}
	}
	d := r.Delivery
	if code != exitCheck || r.Pass {
		t.Errorf("exit %d pass %v, want exit %d and FAIL", code, r.Pass, exitCheck)
	}
	if d.Missing != wantMissing || d.Duplicates != uint64(n*dupsPer) || d.Delivered != uint64(n*msgs)-wantMissing {
		t.Fatalf("missing %d duplicates %d delivered %d, want %d %d %d", d.Missing, d.Duplicates, d.Delivered,
			wantMissing, n*dupsPer, uint64(n*msgs)-wantMissing)
	}
	if r.Connect.Refused503 != 3 || r.Connect.Established != n {
		t.Errorf("connect %+v, want 3 refusals and all up", r.Connect)
	}
	f.close()
	checkNoGoroutineLeak(t, before)
}
