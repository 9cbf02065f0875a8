package testutil

import (
	"testing"
	"time"
)

func TestRedisLifecycle(t *testing.T) {
	CheckGoroutines(t)
	r := StartRedis(t)
	r.Do(t, "SET", "k", "v")
	if got := r.Do(t, "GET", "k"); got != "v" {
		t.Fatalf("GET k = %v", got)
	}
	if keys := r.Keys(t, "*"); len(keys) != 1 {
		t.Fatalf("keys %v", keys)
	}
	if v := r.Info(t, "redis_version"); v == "" {
		t.Fatal("no redis_version in INFO")
	}

	r.Pause()
	start := time.Now()
	if _, err := r.DoErr("PING"); err == nil {
		t.Fatal("a paused server answered")
	}
	t.Logf("paused server: PING failed after %v", time.Since(start))
	r.Resume()
	r.Do(t, "PING")

	r.Stop()
	if _, err := r.DoErr("PING"); err == nil {
		t.Fatal("a stopped server answered")
	}
	r.Restart()
	if got, err := r.DoErr("GET", "k"); err != nil || got != nil {
		t.Fatalf("after restart GET k = %v, %v; want empty data", got, err)
	}
	if n := r.NumSub(t, "none"); n != 0 {
		t.Fatalf("NUMSUB = %d", n)
	}
}

func TestWaitFor(t *testing.T) {
	n := 0
	if !WaitFor(time.Second, func() bool { n++; return n == 3 }) {
		t.Fatal("WaitFor gave up")
	}
	if WaitFor(10*time.Millisecond, func() bool { return false }) {
		t.Fatal("WaitFor reported a false condition true")
	}
}
