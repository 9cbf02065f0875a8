package main

import (
	"io"
	"log/slog"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/VictoriaMetrics/metrics"
	rtmetrics "runtime/metrics"
)

func TestParseByteSize(t *testing.T) {
	f := func(in string, want int64, ok bool) {
		t.Helper()
		got, err := parseByteSize(in)
		if (err == nil) != ok || got != want {
			t.Errorf("parseByteSize(%q) = %d, %v; want %d (ok %v)", in, got, err, want, ok)
		}
	}
	f("1048576", 1<<20, true)
	f("512MiB", 512<<20, true)
	f("2GiB", 2<<30, true)
	f("1 TiB", 1<<40, true)
	f("64KiB", 64<<10, true)
	f("100B", 100, true)
	f("0", 0, true)
	f("", 0, false)
	f("2GB", 0, false)
	f("-1MiB", 0, false)
	f("9999999999TiB", 0, false)
}

// TestBinaryDensityFlags starts the binary with the density mode and the
// profiling listener, and reads a profile index from the latter.
func TestBinaryDensityFlags(t *testing.T) {
	bin := buildBinary(t)
	pp := freeAddr(t)
	startNode(t, bin, "--memory-limit", "1GiB", "--gc-percent", "25", "--pprof-listen", pp)
	resp, err := http.Get("http://" + pp + "/debug/pprof/")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "heap") {
		t.Fatalf("pprof index: %d %.200s", resp.StatusCode, body)
	}
}

// TestReleaseMemory checks --memory-release: heap that stayed free for a
// whole period after a peak is not held. The runtime's own scavenger may
// return part of it first, so the test asserts the end state (the peak's
// pages are back with the kernel) and logs the policy's part.
func TestReleaseMemory(t *testing.T) {
	set := metrics.NewSet()
	done := make(chan struct{})
	defer close(done)
	peak := make([][]byte, 0, 256)
	for range 256 {
		peak = append(peak, make([]byte, 256<<10)) // 64 MiB, then garbage
	}
	peak = nil
	runtime.GC()
	go releaseMemory(240*time.Millisecond, set, slog.New(slog.DiscardHandler), done)
	released := set.GetOrCreateCounter("tether_memory_released_bytes_total")
	free := []rtmetrics.Sample{{Name: "/memory/classes/heap/free:bytes"}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		rtmetrics.Read(free)
		if free[0].Value.Uint64() < 16<<20 { // a quarter of the peak: other tests allocate too
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after 10 s: %d bytes free and not returned, %d returned by the policy; want the 64 MiB peak back", free[0].Value.Uint64(), released.Get())
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Logf("the policy returned %d bytes", released.Get())
}

// TestReleasePeriod checks the --memory-release decision: an idle node
// returns free pages that stayed free all period; a busy node (it
// collected meanwhile) returns only pages beyond what its heap grows into
// before the goal, so that a steady heap does not saw RSS up and down.
func TestReleasePeriod(t *testing.T) {
	const mib = 1 << 20
	cases := []struct {
		name     string
		readings []heapReading // the period's readings; the first opens it
		want     bool
	}{
		{"idle after a peak", []heapReading{
			{free: 9 * mib, inUse: 11 * mib, goal: 30 * mib, cycles: 4},
			{free: 9 * mib, inUse: 11 * mib, goal: 30 * mib, cycles: 4},
			{free: 8 * mib, inUse: 11 * mib, goal: 30 * mib, cycles: 4},
		}, true},
		{"idle, little free", []heapReading{
			{free: 1 * mib, inUse: 11 * mib, goal: 22 * mib, cycles: 4},
			{free: 1 * mib, inUse: 11 * mib, goal: 22 * mib, cycles: 4},
		}, false},
		{"busy and steady: free pages are the heap's growth to its goal", []heapReading{
			{free: 8 * mib, inUse: 12 * mib, goal: 20 * mib, cycles: 4},
			{free: 4 * mib, inUse: 16 * mib, goal: 20 * mib, cycles: 4},
			{free: 10 * mib, inUse: 11 * mib, goal: 20 * mib, cycles: 5},
			{free: 9 * mib, inUse: 13 * mib, goal: 20 * mib, cycles: 5},
		}, false},
		{"busy after a peak: the goal fell under the pages held", []heapReading{
			{free: 9 * mib, inUse: 14 * mib, goal: 18 * mib, cycles: 7},
			{free: 8 * mib, inUse: 15 * mib, goal: 18 * mib, cycles: 8},
			{free: 9 * mib, inUse: 14 * mib, goal: 18 * mib, cycles: 9},
		}, true},
		{"busy, a free minimum under an eighth of the heap in use", []heapReading{
			{free: 9 * mib, inUse: 14 * mib, goal: 18 * mib, cycles: 7},
			{free: 1 * mib, inUse: 14 * mib, goal: 14 * mib, cycles: 8},
		}, false},
	}
	for _, tc := range cases {
		var p releasePeriod
		p.reset(tc.readings[0])
		for _, h := range tc.readings[1:] {
			p.add(h)
		}
		if got := p.release(tc.readings[len(tc.readings)-1]); got != tc.want {
			t.Errorf("%s: release = %v, want %v (%+v)", tc.name, got, tc.want, p)
		}
	}
}
