package bench

import "testing"

// TestFailoverTargetSpreads checks that a node's clients try their home
// first and, when it fails, spread evenly over the other nodes, and that
// repeated failures visit every other node.
func TestFailoverTargetSpreads(t *testing.T) {
	const n = 3
	count := make([]int, n)
	for gi := 2; gi < 3000; gi += n { // the clients of node 2
		if got := failoverTarget(gi, 1, n); got != 2 {
			t.Fatalf("first attempt of %d went to %d, want home 2", gi, got)
		}
		count[failoverTarget(gi, 2, n)]++
		seen := map[int]bool{}
		for a := 2; a <= n; a++ {
			seen[failoverTarget(gi, a, n)] = true
		}
		if len(seen) != n-1 || seen[2] {
			t.Fatalf("client %d's retries visit %v, want the %d other nodes", gi, seen, n-1)
		}
	}
	if count[2] != 0 || count[0] != 500 || count[1] != 500 {
		t.Fatalf("second attempts per node %v, want 500 and 500 on the other two", count)
	}
	if got := failoverTarget(7, 5, 1); got != 0 {
		t.Fatalf("one node: got %d", got)
	}
}
