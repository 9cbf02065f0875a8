package main

import (
	"io"
	"net/http"
	"strings"
	"testing"
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
