package bench

import (
	"bufio"
	"encoding/json"
	"io"
	"net"
	"testing"
	"time"
)

// TestWorkerStopsWhenCoordinatorGoes checks that a worker in the middle of
// a connect phase (here: endless retries against a closed port) exits
// promptly when its stdin ends, as it does when the coordinator dies.
func TestWorkerStopsWhenCoordinatorGoes(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close() // nothing listens there any more
	cmdR, cmdW := io.Pipe()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- runWorker(cmdR, outW)
		_ = outW.Close()
	}()
	replies := make(chan workerMsg, 64)
	go func() {
		sc := bufio.NewScanner(outR)
		for sc.Scan() {
			var m workerMsg
			if json.Unmarshal(sc.Bytes(), &m) == nil && m.Op != "progress" {
				replies <- m
			}
		}
		close(replies)
	}()
	enc := json.NewEncoder(cmdW)
	cfg := poolConfig{Targets: []string{addr}, Count: 20, Subscribe: true, Concurrency: 4, Retries: 1000,
		TimeoutNS: int64(time.Second), PhaseNS: int64(time.Minute), Pollers: 1}
	if err := enc.Encode(workerMsg{Op: "setup", Setup: &cfg}); err != nil {
		t.Fatal(err)
	}
	if m := <-replies; m.Op != "ready" {
		t.Fatalf("got %+v, want ready", m)
	}
	if err := enc.Encode(workerMsg{Op: "connect", T0: time.Now().UnixNano()}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(300 * time.Millisecond)
	_ = cmdW.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("worker did not stop after its input ended")
	}
	for range replies {
	}
}

func TestWorkerRejectsBadCommands(t *testing.T) {
	for _, in := range []string{"not json\n", `{"op":"connect"}` + "\n", `{"op":"frobnicate"}` + "\n"} {
		var out bufioBuffer
		if err := runWorker(stringsReader(in), &out); err == nil {
			t.Errorf("%q: no error", in)
		}
	}
}

// bufioBuffer is a minimal io.Writer sink.
type bufioBuffer struct{ b []byte }

func (w *bufioBuffer) Write(p []byte) (int, error) { w.b = append(w.b, p...); return len(p), nil }
