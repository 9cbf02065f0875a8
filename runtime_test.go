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
