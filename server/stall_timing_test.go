package server

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// BenchmarkPingDuringFanout measures whether a client's publish to a large
// channel stalls the other connections of its poller: one connection
// publishes to a channel of TETHER_STALL_SUBS subscribers (15,000 if unset),
// one fan-out at a time, while another connection of the same poller (the
// node runs one) pings in a loop. It reports the ping round trip's p50, p99
// and maximum during the fan-outs, the median over publishes of the longest
// ping of each, its p99 before any publish, and the publisher's median wait
// for its ack. The subscribers live
// in a child process (TestFanoutStallHolder), so that each process stays
// under a 20,000 file limit.
//
//	go test -run '^$' -bench PingDuringFanout -benchtime 200x ./server/
func BenchmarkPingDuringFanout(b *testing.B) {
	n := 15000
	if v := os.Getenv("TETHER_STALL_SUBS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	ts := startServer(b, Config{
		Pollers: 1, MaxConns: -1, AcceptRate: -1, ClientMsgRate: -1, AllowClientPublish: true,
		PingInterval: time.Hour, // the holder does not answer pings
	})
	t0 := time.Now()
	startStallHolder(b, ts.addr, n)
	b.Logf("holder ready after %v", time.Since(t0))
	eventually(b, 60*time.Second, func() bool { return ts.m.subscriptions.Load() == int64(n) }, "subscribers to subscribe")
	b.Logf("subscribed after %v", time.Since(t0))

	pub := mustDial(b, ts.addr)
	pinger := mustDial(b, ts.addr)
	idle := pingRTTs(b, pinger, 200)
	b.Logf("idle pings done after %v", time.Since(t0))

	b.Run("subs="+strconv.Itoa(n), func(b *testing.B) {
		stop := make(chan struct{})
		var pings []ping
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			pings = pingLoop(b, pinger, -1, stop)
		}()
		var acks []time.Duration
		windows := make([]time.Time, 0, b.N+1) // publish i runs from windows[i] to windows[i+1]
		delivered0, writes0 := ts.m.delivered.Get(), ts.m.socketWrites.Get()
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			start := time.Now()
			windows = append(windows, start)
			pub.sendRaw(`{"op":"publish","channel":"stall","data":{"i":` + strconv.Itoa(i) + `},"id":` + strconv.Itoa(i+1) + `}`)
			pub.expect("ack")
			acks = append(acks, time.Since(start))
			// One fan-out at a time: wait until every subscriber's frame
			// is written (watching counters, which costs the node nothing),
			// then leave the pinger a quiet moment.
			eventually(b, time.Minute, func() bool {
				return ts.m.delivered.Get()-delivered0 >= uint64((i+1)*n) && ts.m.socketWrites.Get()-writes0 >= uint64((i+1)*n)
			}, "the fan-out")
			time.Sleep(5 * time.Millisecond)
		}
		windows = append(windows, time.Now())
		b.StopTimer()
		close(stop)
		wg.Wait()
		// The longest any ping waited in each publish's window.
		worst := make([]time.Duration, b.N)
		rtts := make([]time.Duration, 0, len(pings))
		for _, p := range pings {
			rtts = append(rtts, p.rtt)
			i, _ := slices.BinarySearchFunc(windows, p.start, func(w, t time.Time) int { return w.Compare(t) })
			if i > 0 && i <= b.N {
				worst[i-1] = max(worst[i-1], p.rtt)
			}
		}
		slices.Sort(worst)
		// Let the last fan-outs reach the subscribers before the next run.
		ts.waitFlushed()
		slices.Sort(rtts)
		q := func(p float64) float64 { return float64(rtts[int(p*float64(len(rtts)-1))]) / 1e6 }
		b.ReportMetric(q(0.5), "ping-p50-ms")
		b.ReportMetric(q(0.99), "ping-p99-ms")
		b.ReportMetric(q(1), "ping-max-ms")
		b.ReportMetric(float64(idle[int(0.99*float64(len(idle)-1))])/1e6, "idle-ping-p99-ms")
		b.ReportMetric(float64(len(rtts)), "pings")
		b.ReportMetric(float64(worst[len(worst)/2])/1e6, "worst-ping-per-publish-p50-ms")
		slices.Sort(acks)
		b.ReportMetric(float64(acks[len(acks)/2])/1e6, "ack-p50-ms")
	})
}

// ping is one ping's send time and round trip.
type ping struct {
	start time.Time
	rtt   time.Duration
}

// pingRTTs pings on c count times and returns the sorted round trips.
func pingRTTs(b testing.TB, c *testClient, count int) []time.Duration {
	var rtts []time.Duration
	for _, p := range pingLoop(b, c, count, nil) {
		rtts = append(rtts, p.rtt)
	}
	slices.Sort(rtts)
	return rtts
}

// pingLoop pings on c, one ping in flight, count times or until stop is
// closed.
func pingLoop(b testing.TB, c *testClient, count int, stop chan struct{}) []ping {
	var pings []ping
	for i := 0; i != count; i++ {
		select {
		case <-stop:
			return pings
		default:
		}
		start := time.Now()
		if err := c.writeFrame(wsframe.OpText, []byte(`{"op":"ping"}`)); err != nil {
			b.Error(err)
			return pings
		}
		for {
			m, _, err := c.next(10 * time.Second)
			if err != nil {
				b.Error(err)
				return pings
			}
			if m["op"] == "pong" {
				break
			}
		}
		pings = append(pings, ping{start, time.Since(start)})
	}
	return pings
}

// startStallHolder starts TestFanoutStallHolder in a child process with n
// subscribers of "stall" on addr, and waits until it has dialed them all.
func startStallHolder(b testing.TB, addr string, n int) {
	b.Helper()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(exe, "-test.run=^TestFanoutStallHolder$", "-test.bench=^$")
	cmd.Env = append(os.Environ(), "TETHER_STALL_ADDR="+addr, "TETHER_STALL_SUBS="+strconv.Itoa(n))
	cmd.Stderr = os.Stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		b.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		stdin.Close()
		_ = cmd.Wait()
	})
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		if sc.Text() == "ready" {
			go func() { _, _ = io.Copy(io.Discard, stdout) }()
			return
		}
	}
	b.Fatalf("subscriber holder exited before it was ready: %v", sc.Err())
}

// TestFanoutStallHolder is BenchmarkPingDuringFanout's child process: it
// holds TETHER_STALL_SUBS subscribers of "stall" on TETHER_STALL_ADDR,
// discarding what they receive, until its stdin closes. Without
// TETHER_STALL_ADDR it skips.
func TestFanoutStallHolder(t *testing.T) {
	addr := os.Getenv("TETHER_STALL_ADDR")
	if addr == "" {
		t.Skip("the child process of BenchmarkPingDuringFanout")
	}
	n, _ := strconv.Atoi(os.Getenv("TETHER_STALL_SUBS"))
	var wg sync.WaitGroup
	conns := make(chan *wstest.Conn, n)
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < n; i += 8 {
				c, _, err := wstest.Dial(addr, "/ws", nil)
				if err != nil {
					t.Errorf("cannot dial: %v", err)
					return
				}
				_ = c.SetDeadline(time.Time{})
				if err := c.WriteFrame(wsframe.OpText, []byte(`{"op":"subscribe","channel":"stall"}`)); err != nil {
					t.Errorf("cannot subscribe: %v", err)
					return
				}
				go func() { _, _ = io.Copy(io.Discard, c.Reader) }()
				conns <- c
			}
		}()
	}
	wg.Wait()
	close(conns)
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	for c := range conns {
		c.Close()
	}
}
