package ring_test

import (
	"fmt"
	"time"

	"tether/ring"
)

// conn stands for a connection that embeds its heartbeat entry, so that
// scheduling it allocates nothing.
type conn struct {
	name      string
	heartbeat ring.Entry[*conn]
}

func Example() {
	const timeout = 3 * time.Second
	w := ring.New[*conn](time.Second, 64)
	start := time.Unix(1_700_000_000, 0)

	alice := &conn{name: "alice"}
	bob := &conn{name: "bob"}
	for _, c := range []*conn{alice, bob} {
		c.heartbeat.Value = c
		w.Add(&c.heartbeat, start.Add(timeout))
	}

	for s := 1; s <= 6; s++ {
		now := start.Add(time.Duration(s) * time.Second)
		if s == 2 {
			// Alice pings: push her deadline back.
			w.Reset(&alice.heartbeat, now.Add(timeout))
		}
		w.Advance(now, func(e *ring.Entry[*conn]) {
			fmt.Printf("t=%ds: %s timed out (deadline t=%ds)\n",
				s, e.Value.name, e.Deadline().Sub(start)/time.Second)
		})
	}
	fmt.Println("scheduled:", w.Len())
	// Output:
	// t=3s: bob timed out (deadline t=3s)
	// t=5s: alice timed out (deadline t=5s)
	// scheduled: 0
}
