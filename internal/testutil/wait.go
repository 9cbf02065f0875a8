package testutil

import (
	"runtime"
	"testing"
	"time"
)

// Eventually polls cond every few milliseconds until it returns true, and
// fails the test with msg when it has not within timeout.
func Eventually(tb testing.TB, timeout time.Duration, cond func() bool, msg string) {
	tb.Helper()
	if !WaitFor(timeout, cond) {
		tb.Fatalf("after %v: %s", timeout, msg)
	}
}

// WaitFor polls cond until it returns true or timeout passes, and reports
// whether it returned true.
func WaitFor(timeout time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(timeout)
	sleep := time.Millisecond
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(sleep)
		if sleep < 20*time.Millisecond {
			sleep *= 2
		}
	}
}

// goroutineGrace is how long CheckGoroutines waits for goroutines to end.
const goroutineGrace = 5 * time.Second

// CheckGoroutines fails the test when, at its end, more goroutines run than
// when CheckGoroutines was called; it waits up to a few seconds for them to
// finish first, and dumps every goroutine's stack on failure. Call it first
// in the test, so that its cleanup runs after every other cleanup, and do
// not use it in parallel tests.
func CheckGoroutines(tb testing.TB) {
	tb.Helper()
	before := runtime.NumGoroutine()
	tb.Cleanup(func() {
		var n int
		if WaitFor(goroutineGrace, func() bool {
			n = runtime.NumGoroutine()
			return n <= before
		}) {
			return
		}
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		tb.Errorf("goroutine leak: %d goroutines at start, %d after %v:\n%s", before, n, goroutineGrace, buf)
	})
}
