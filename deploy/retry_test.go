package deploy_test

import (
	"testing"
	"time"
)

// TestRefusalRetried checks that a refused upgrade never reaches a client
// through either shipped config: one node admits one upgrade per second
// (--accept-rate 1), so it answers almost every upgrade sent to it with 503
// and Retry-After while its /readyz stays 200 and the load balancer keeps
// sending it work (leastconn prefers it: it holds the fewest
// connections). Every client dials once, with no retry of its own (Dial
// fails on a 503), so 0 failed dials means the load balancer retried each
// refusal on the other node (HAProxy's retry-on 503 with redispatch,
// nginx's proxy_next_upstream http_503).
func TestRefusalRetried(t *testing.T) {
	t.Parallel()
	const clients = 200
	for _, lb := range lbKinds {
		t.Run(lb.name, func(t *testing.T) {
			slow := startNode(t, "--node-id", "slow", "--accept-rate", "1", "--accept-burst", "1")
			open := startNode(t, "--node-id", "open")
			l := lb.start(t, nil, slow, open)
			start := time.Now()
			f := dialFleet(t, "ws://"+l.Addr()+"/ws", clients, "r", nil) // fails the test on any refused dial
			refused := slow.metric(`tether_connections_rejected_total{reason="accept_rate"}`)
			onSlow, onOpen := slow.metric("tether_connections"), open.metric("tether_connections")
			t.Logf("%s: %d clients connected in %v, 0 failed; the slow node refused %.0f upgrades and holds %.0f, the other %.0f",
				lb.name, clients, time.Since(start).Round(time.Millisecond), refused, onSlow, onOpen)
			if refused == 0 {
				t.Fatal("the slow node refused nothing: the test did not exercise the load balancer's retry")
			}
			if int(onSlow+onOpen) != clients {
				t.Fatalf("nodes hold %.0f + %.0f connections, want %d", onSlow, onOpen, clients)
			}
			f.close()
		})
	}
}
