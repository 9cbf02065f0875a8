//go:build !race

package ring_test

import (
	"testing"
	"time"

	"tether/ring"
)

func TestZeroAllocs(t *testing.T) {
	const n = 1024
	w := ring.New[int](time.Millisecond, 256)
	es := make([]ring.Entry[int], n)
	now := time.Unix(1_700_000_000, 0)
	w.Advance(now, nil)
	for i := range es {
		w.Add(&es[i], now.Add(time.Duration(i)*time.Millisecond))
	}
	i := 0
	f := func(name string, fn func()) {
		t.Helper()
		if avg := testing.AllocsPerRun(1000, fn); avg != 0 {
			t.Errorf("%s allocates %v times per call, want 0", name, avg)
		}
	}
	f("Reset", func() {
		i = (i + 1) % n
		w.Reset(&es[i], now.Add(time.Duration(i*7)*time.Millisecond))
	})
	f("Remove+Add", func() {
		i = (i + 1) % n
		w.Remove(&es[i])
		w.Add(&es[i], now.Add(time.Duration(i*3)*time.Millisecond))
	})
	f("NextDeadline", func() { w.NextDeadline() })
	fired := 0
	reschedule := func(e *ring.Entry[int]) {
		fired++
		w.Add(e, now.Add(2*time.Second))
	}
	f("Advance", func() {
		now = now.Add(time.Millisecond)
		w.Advance(now, reschedule)
	})
	f("Advance after a long pause", func() {
		now = now.Add(time.Hour)
		w.Advance(now, reschedule)
	})
	if fired == 0 || w.Len() != n {
		t.Fatalf("fired %d entries, Len() = %d; want some fired and %d scheduled", fired, w.Len(), n)
	}
}
