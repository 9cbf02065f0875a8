package server

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"time"

	"tether/internal/wsframe"
)

// TestStressChurn runs clients that subscribe, unsubscribe, publish and
// drop their connections at random while the API publishes to the same
// channels, then checks per-channel ordering on every client and that the
// node's channel index and gauges return to zero. Under -race it checks the
// locking of the channel index, fan-out, flushers and heartbeats.
func TestStressChurn(t *testing.T) {
	ts := startServer(t, Config{
		AllowClientPublish: true, ClientMsgRate: -1, AcceptRate: -1,
		PingInterval: 50 * time.Millisecond, PongTimeout: time.Second,
		FanoutChunk: 4, // force the multi-worker fan-out path on small channels
	})
	const (
		clients  = 24
		channels = 6
		rounds   = 60
	)
	chName := func(i int) string { return "stress." + strconv.Itoa(i) }
	stop := make(chan struct{})
	var pubWG sync.WaitGroup
	for p := 0; p < 2; p++ {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				body := fmt.Sprintf(`{"messages":[{"channel":%q,"data":%d},{"channel":%q,"data":%d}]}`,
					chName(i%channels), i, chName((i+1)%channels), i)
				resp, err := httpPost(ts.addr, body)
				if err != nil {
					t.Error(err)
					return
				}
				if resp != 200 {
					t.Errorf("publish status %d", resp)
					return
				}
			}
		}()
	}
	var wg sync.WaitGroup
	for k := 0; k < clients; k++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewPCG(uint64(k), 1))
			for round := 0; round < rounds/6; round++ {
				c, err := dialRetry(ts.addr)
				if err != nil {
					t.Error(err)
					return
				}
				c.t = t
				last := map[string]uint64{}
				subscribed := map[string]bool{}
				for op := 0; op < 6; op++ {
					ch := chName(r.IntN(channels))
					switch r.IntN(4) {
					case 0, 1:
						if !subscribed[ch] {
							_ = c.writeFrame(wsframe.OpText, []byte(`{"op":"subscribe","channel":"`+ch+`"}`))
							subscribed[ch] = true
						}
					case 2:
						if subscribed[ch] {
							_ = c.writeFrame(wsframe.OpText, []byte(`{"op":"unsubscribe","channel":"`+ch+`"}`))
							delete(subscribed, ch)
							delete(last, ch)
						}
					case 3:
						_ = c.writeFrame(wsframe.OpText, []byte(`{"op":"publish","channel":"`+ch+`","data":{"k":1}}`))
					}
					// Read whatever arrived for a moment, checking order.
					deadline := time.Now().Add(10 * time.Millisecond)
					for time.Now().Before(deadline) {
						m, _, err := c.next(time.Until(deadline))
						if err != nil {
							break
						}
						if m["op"] == "ping" {
							_ = c.writeFrame(wsframe.OpText, []byte(`{"op":"pong"}`))
						}
						if m["op"] == "subscribed" {
							// A new subscription's stream starts here; frames of an
							// earlier one on the same channel may still arrive first.
							last[m["channel"].(string)] = num(m["offset"])
						}
						if m["op"] != "message" {
							continue
						}
						name, off := m["channel"].(string), num(m["offset"])
						if !subscribed[name] {
							continue // in flight before an unsubscribe
						}
						if prev, ok := last[name]; ok && off != prev+1 {
							t.Errorf("%s: offset %d after %d", name, off, prev)
						}
						last[name] = off
					}
				}
				c.conn.Close() // abrupt: no unsubscribe, no close frame
			}
		}()
	}
	wg.Wait()
	close(stop)
	pubWG.Wait()
	defer func() {
		if t.Failed() {
			t.Logf("conns %d index %d subs %v channels %v handshakes %d", ts.Connections(), ts.index.count(),
				ts.metric(t, "tether_subscriptions"), ts.metric(t, "tether_channels"), ts.m.handshakes.Load())
			for _, c := range ts.conns.snapshot() {
				c.mu.Lock()
				t.Logf("conn %d closing %v closed %v queued %v pending %d disconnect %q hardClose %d", c.id, c.closing, c.closed, c.queued, len(c.pending), c.disconnect, c.hardClose)
				c.mu.Unlock()
			}
		}
	}()
	eventually(t, 5*time.Second, func() bool {
		return ts.Connections() == 0 && ts.index.count() == 0 &&
			ts.metric(t, "tether_subscriptions") == 0 && ts.metric(t, "tether_channels") == 0
	}, "connections, channels and subscriptions back to zero")
}

// dialRetry dials, retrying an upgrade the server closed before answering.
// nbio v1.6.12 can apply a stale epoll error event of a socket closed on
// another goroutine (a write that hit a reset peer) to a new connection that
// the kernel gave the same descriptor number; under this test's churn that
// closes a fresh connection now and then, before its upgrade is answered. A
// real client reconnects; so does this one, at most three times.
func dialRetry(addr string) (*testClient, error) {
	var err error
	for range 3 {
		var c *testClient
		if c, _, err = dialWS(addr, "/ws", nil); err == nil {
			return c, nil
		}
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) && !errors.Is(err, syscall.ECONNRESET) {
			return nil, err
		}
	}
	return nil, err
}
