// Command hiccup is a measuring stick, not part of tether: one thread
// spins on the monotonic clock for a while and counts the gaps between two
// readings, that is the time the thread did not run although it never
// blocked. On an idle machine that is the scheduler's doing, the guest's
// or the host's; docs/BENCHMARKS.md reads GC pauses against it.
//
//	go build -o /tmp/hiccup ./bench/hiccup && taskset -c 1 nice -n -20 /tmp/hiccup 60s
package main

import (
	"fmt"
	"os"
	"runtime"
	"time"
)

func main() {
	d, err := time.ParseDuration(os.Args[len(os.Args)-1])
	if len(os.Args) != 2 || err != nil {
		fmt.Fprintln(os.Stderr, "usage: hiccup duration")
		os.Exit(2)
	}
	runtime.LockOSThread()
	limits := []time.Duration{100 * time.Microsecond, 250 * time.Microsecond, 500 * time.Microsecond,
		time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond}
	counts := make([]int, len(limits))
	var longest time.Duration
	start := time.Now()
	last := start
	for last.Sub(start) < d {
		now := time.Now()
		gap := now.Sub(last)
		last = now
		longest = max(longest, gap)
		for i, l := range limits {
			if gap >= l {
				counts[i]++
			}
		}
	}
	for i, l := range limits {
		fmt.Printf("gaps >= %v: %d\n", l, counts[i])
	}
	fmt.Printf("longest %v in %v\n", longest, d)
}
