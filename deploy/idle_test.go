package deploy_test

import (
	"context"
	"errors"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"tether/client"
	"tether/internal/proto"
	"tether/internal/testutil"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// lbIdle is the idle timeout the idle tests give each load balancer.
const lbIdle = 3 * time.Second

// idleEdits set the shipped configs' idle timeout of an upgraded
// connection to lbIdle.
var idleEdits = map[string][]edit{
	"haproxy": {{"    timeout tunnel  1h\n", "    timeout tunnel  3s\n"}},
	"nginx": {
		{"            proxy_read_timeout 75s;\n", "            proxy_read_timeout 3s;\n"},
		{"            proxy_send_timeout 75s;\n", "            proxy_send_timeout 3s;\n"},
	},
}

// TestIdleTimeoutKept checks, through each load balancer cutting idle
// connections after 3s, that clients of a node pinging every second keep
// their connections: no disconnect in 15s, and no suspected idle timeout.
func TestIdleTimeoutKept(t *testing.T) {
	t.Parallel()
	const clients, watch = 100, 15 * time.Second
	for _, lb := range lbKinds {
		t.Run(lb.name, func(t *testing.T) {
			t.Parallel()
			n := startNode(t, "--ping-interval", "1s")
			l := lb.start(t, idleEdits[lb.name], n)
			start := time.Now()
			f := dialFleet(t, "ws://"+l.Addr()+"/ws", clients, "idle", nil)
			time.Sleep(watch - time.Since(start))
			if d := f.count(client.EventDisconnected, start); d != 0 {
				t.Errorf("%d disconnects in %v with pings every 1s and a %v idle timeout", d, watch, lbIdle)
			}
			if g := n.metric("tether_lb_idle_timeout_suspected_seconds"); g != 0 {
				t.Errorf("suspected idle timeout %vs, want 0", g)
			}
			t.Logf("%s: %d clients, %d disconnects in %v (pings 1s, idle timeout %v)",
				lb.name, clients, f.count(client.EventDisconnected, start), time.Since(start).Round(time.Millisecond), lbIdle)
		})
	}
}

// TestIdleTimeoutBusyNotPinged checks the pings a node skips (conn.takePing):
// a client that publishes to its own channel every 5ms, so that frames go
// both ways within every heartbeat tick, is not pinged, and yet neither the
// load balancer (3s idle timeout) nor the client's watchdog (1s interval +
// 100ms grace) nor the node's own watchdog (pong timeout) cuts it in 10s.
func TestIdleTimeoutBusyNotPinged(t *testing.T) {
	t.Parallel()
	const watch = 10 * time.Second
	for _, lb := range lbKinds {
		t.Run(lb.name, func(t *testing.T) {
			t.Parallel()
			n := startNode(t, "--ping-interval", "1s", "--allow-client-publish", "--client-msg-rate", "-1")
			l := lb.start(t, idleEdits[lb.name], n)
			ctx, cancel := context.WithTimeout(context.Background(), watch+30*time.Second)
			defer cancel()
			var mu sync.Mutex
			var evs []client.Event
			c, err := client.Dial(ctx, "ws://"+l.Addr()+"/ws", client.Options{
				WatchdogGrace: 100 * time.Millisecond,
				OnEvent: func(ev client.Event) {
					mu.Lock()
					evs = append(evs, ev)
					mu.Unlock()
				},
			})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if _, err := c.Subscribe("busy", func(client.Message) {}); err != nil {
				t.Fatal(err)
			}
			skipped0 := n.metric("tether_heartbeat_pings_skipped_total")
			start := time.Now()
			published := 0
			for time.Since(start) < watch {
				if _, err := c.Publish(ctx, "busy", published); err != nil {
					t.Fatalf("publish %d after %v: %v", published, time.Since(start), err)
				}
				published++
				time.Sleep(5 * time.Millisecond)
			}
			skipped := n.metric("tether_heartbeat_pings_skipped_total") - skipped0
			mu.Lock()
			disconnects := 0
			for _, ev := range evs {
				if ev.Type == client.EventDisconnected {
					disconnects++
					t.Errorf("disconnected: %v", ev.Err)
				}
			}
			mu.Unlock()
			if to := n.metric("tether_heartbeat_timeouts_total"); to != 0 {
				t.Errorf("%v heartbeat timeouts", to)
			}
			t.Logf("%s: %d publishes in %v, %v of ~%d pings skipped, %d disconnects", lb.name, published,
				time.Since(start).Round(time.Millisecond), skipped, int(watch/time.Second), disconnects)
			if skipped == 0 {
				t.Errorf("no ping skipped although frames went both ways every few ms")
			}
		})
	}
}

// TestIdleTimeoutNamed is the control of TestIdleTimeoutKept: with pings
// every 10s the load balancer cuts every connection after 3s idle, and the
// node names the cut: tether_lb_idle_timeout_suspected_seconds reads 3 ±
// 0.5, a warning names the --ping-interval that fixes it (half the
// timeout), and the clients
// that reconnect show up in tether_resumes_total.
func TestIdleTimeoutNamed(t *testing.T) {
	t.Parallel()
	const rawClients, goClients = 60, 20
	for _, lb := range lbKinds {
		t.Run(lb.name, func(t *testing.T) {
			t.Parallel()
			n := startNode(t, "--ping-interval", "10s")
			l := lb.start(t, idleEdits[lb.name], n)
			start := time.Now()
			idles := make(chan time.Duration, rawClients)
			var wg sync.WaitGroup
			for range rawClients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					idles <- idleUntilCut(t, l.Addr())
				}()
			}
			f := dialFleet(t, "ws://"+l.Addr()+"/ws", goClients, "idle", nil)
			t.Logf("%s: %d Go clients connected after %v", lb.name, goClients, time.Since(start).Round(time.Millisecond))
			wg.Wait()
			t.Logf("%s: %d raw clients cut after %v", lb.name, rawClients, time.Since(start).Round(time.Millisecond))
			close(idles)
			var cut []time.Duration
			for d := range idles {
				cut = append(cut, d)
			}
			sort.Slice(cut, func(i, j int) bool { return cut[i] < cut[j] })
			t.Logf("%s: %d raw clients cut after %v … %v idle (median %v)", lb.name, len(cut),
				cut[0].Round(time.Millisecond), cut[len(cut)-1].Round(time.Millisecond), cut[len(cut)/2].Round(time.Millisecond))
			// The idle times clients measure are a figure, not a check: on
			// a starved machine a client reads its frames late and its
			// measure is off by seconds (and nginx re-arms a timer only
			// when it moves by more than 300ms, NGX_TIMER_LAZY_DELAY). The
			// node measures the same cut on its side, and the gauge below
			// is the check.

			var g float64
			ok := testutil.WaitFor(10*time.Second, func() bool {
				g = n.metric("tether_lb_idle_timeout_suspected_seconds")
				return g != 0
			})
			t.Logf("%s: tether_lb_idle_timeout_suspected_seconds %v, %v after the first dial", lb.name, g, time.Since(start).Round(time.Millisecond))
			if !ok || g < 2.5 || g > 3.5 {
				t.Fatalf("suspected idle timeout %vs, want 3 ± 0.5", g)
			}
			if !testutil.WaitFor(5*time.Second, func() bool { return strings.Contains(n.output(), `suggested_flag="--ping-interval=1.`) }) {
				t.Errorf("no warning naming a --ping-interval of about 1.5s in the node's log:\n%s", n.output())
			}
			resumes := n.metric("tether_resumes_total")
			accepted := n.metric("tether_connections_accepted_total")
			t.Logf("%s: %d Go clients: %d disconnects, tether_resumes_total %v of %v upgrades after %v", lb.name, goClients,
				f.count(client.EventDisconnected, start), resumes, accepted, time.Since(start).Round(time.Millisecond))
			if resumes == 0 {
				t.Errorf("tether_resumes_total is 0 although the Go clients reconnected")
			}
		})
	}
}

// idleUntilCut upgrades through addr, reads frames (answering pings) and
// returns how long the connection had been idle when it was cut.
func idleUntilCut(t testing.TB, addr string) time.Duration {
	c, _, err := wstest.Dial(addr, "/ws", nil)
	if err != nil {
		t.Errorf("cannot upgrade: %v", err)
		return 0
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(15 * time.Second))
	last := time.Now()
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Errorf("not cut within 15s")
				return 0
			}
			return time.Since(last)
		}
		if h.Opcode == wsframe.OpClose {
			t.Errorf("the node closed the connection: %q", p)
			return 0
		}
		last = time.Now()
		if strings.Contains(string(p), `"op":"`+proto.OpPing+`"`) {
			if err := c.WriteFrame(wsframe.OpText, []byte(`{"op":"`+proto.OpPong+`"}`)); err != nil {
				return time.Since(last)
			}
		}
	}
}
