package bench

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"tether/internal/wsframe"
	"tether/internal/wstest"
)

// fakeServer is a small stand-in for a tether node, written with the
// standard library: WebSocket upgrade at /ws (welcome, subscribe, ping,
// pong), POST /api/publish (single and batch), /metrics and /healthz. It can
// drop and duplicate deliveries on purpose and refuse upgrades with 503, so
// the bench's accounting can be checked against known damage.
type fakeServer struct {
	t   *testing.T
	ln  net.Listener
	srv *http.Server
	url string

	// Damage, set before use: the k-th delivery (k from 1) to a
	// subscriber is dropped when k%dropEvery == 0, and sent twice when
	// k%dupEvery == 0. Zero disables.
	dropEvery, dupEvery int
	// refuseFirst upgrades are answered 503 with Retry-After: 1.
	refuseFirst int64
	// pingEvery sends {"op":"ping"} to every connection; zero disables.
	pingEvery time.Duration

	refused atomic.Int64
	pongs   atomic.Int64
	mu      sync.Mutex // guards the fields below
	conns   map[*fakeConn]struct{}
	subs    map[string][]*fakeConn
	offsets map[string]int
	wg      sync.WaitGroup
}

type fakeConn struct {
	c     net.Conn
	out   chan []byte
	mu    sync.Mutex // guards count
	count int        // deliveries so far
}

func startFakeServer(t *testing.T, setup func(*fakeServer)) *fakeServer {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{t: t, ln: ln, conns: map[*fakeConn]struct{}{}, subs: map[string][]*fakeConn{}, offsets: map[string]int{}}
	if setup != nil {
		setup(f)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/ws", f.ws)
	mux.HandleFunc("/api/publish", f.publish)
	mux.HandleFunc("/metrics", f.metrics)
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(200) })
	f.srv = &http.Server{Handler: mux}
	f.url = "ws://" + ln.Addr().String() + "/ws"
	go func() { _ = f.srv.Serve(ln) }()
	t.Cleanup(f.close)
	return f
}

func (f *fakeServer) close() {
	_ = f.srv.Close()
	f.mu.Lock()
	for c := range f.conns {
		_ = c.c.Close()
	}
	f.mu.Unlock()
	f.wg.Wait()
}

func (f *fakeServer) ws(w http.ResponseWriter, r *http.Request) {
	if f.refused.Add(1) <= f.refuseFirst {
		w.Header().Set("Retry-After", "1")
		http.Error(w, `{"error":{"code":"unavailable","message":"busy"}}`, http.StatusServiceUnavailable)
		return
	}
	key := r.Header.Get("Sec-WebSocket-Key")
	if r.Header.Get("Upgrade") != "websocket" || key == "" {
		http.Error(w, "bad upgrade", http.StatusBadRequest)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		http.Error(w, "no hijack", http.StatusInternalServerError)
		return
	}
	nc, brw, err := hj.Hijack()
	if err != nil {
		return
	}
	_, _ = brw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: " +
		wsframe.AcceptKey(key) + "\r\n\r\n")
	_ = brw.Flush()
	fc := &fakeConn{c: nc, out: make(chan []byte, 1<<14)}
	f.mu.Lock()
	f.conns[fc] = struct{}{}
	f.mu.Unlock()
	fc.out <- []byte(`{"op":"welcome","node":"fake","conn":"c","ping_interval_ms":25000}`)
	f.wg.Add(2)
	go f.writeLoop(fc)
	go f.readLoop(fc, brw.Reader)
}

func (f *fakeServer) writeLoop(fc *fakeConn) {
	defer f.wg.Done()
	var tick <-chan time.Time
	if f.pingEvery > 0 {
		t := time.NewTicker(f.pingEvery)
		defer t.Stop()
		tick = t.C
	}
	bw := bufio.NewWriter(fc.c)
	var hdr []byte
	write := func(p []byte) error {
		hdr = wsframe.AppendHeader(hdr[:0], wsframe.Header{Fin: true, Opcode: wsframe.OpText, Length: int64(len(p))})
		_, _ = bw.Write(hdr)
		_, err := bw.Write(p)
		return err
	}
	for {
		select {
		case p, ok := <-fc.out:
			if !ok {
				return
			}
			if write(p) != nil {
				return
			}
			// Batch what is queued into one flush.
			for more := true; more; {
				select {
				case p, ok := <-fc.out:
					if !ok {
						_ = bw.Flush()
						return
					}
					if write(p) != nil {
						return
					}
				default:
					more = false
				}
			}
		case <-tick:
			if write([]byte(`{"op":"ping"}`)) != nil {
				return
			}
		}
		if bw.Flush() != nil {
			return
		}
	}
}

func (f *fakeServer) readLoop(fc *fakeConn, r *bufio.Reader) {
	defer f.wg.Done()
	defer func() {
		f.mu.Lock()
		delete(f.conns, fc)
		for ch, list := range f.subs {
			for i, c := range list {
				if c == fc {
					f.subs[ch] = append(list[:i:i], list[i+1:]...)
					break
				}
			}
		}
		f.mu.Unlock()
		close(fc.out)
		_ = fc.c.Close()
	}()
	for {
		h, p, err := wstest.ReadFrame(r, wsframe.FromClient)
		if err != nil || h.Opcode == wsframe.OpClose {
			return
		}
		var m struct {
			Op      string `json:"op"`
			Channel string `json:"channel"`
		}
		if json.Unmarshal(p, &m) != nil {
			return
		}
		switch m.Op {
		case "subscribe":
			f.mu.Lock()
			f.subs[m.Channel] = append(f.subs[m.Channel], fc)
			off := f.offsets[m.Channel]
			f.mu.Unlock()
			fc.out <- []byte(fmt.Sprintf(`{"op":"subscribed","channel":%q,"offset":%d,"epoch":"e1","recovered":false}`, m.Channel, off))
		case "pong":
			f.pongs.Add(1)
		case "ping":
			fc.out <- []byte(`{"op":"pong"}`)
		}
	}
}

func (f *fakeServer) publish(w http.ResponseWriter, r *http.Request) {
	type pub struct {
		Channel string          `json:"channel"`
		Data    json.RawMessage `json:"data"`
	}
	var body struct {
		pub
		Messages []pub `json:"messages"`
	}
	if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
		http.Error(w, `{"error":{"code":"bad_request","message":"bad json"}}`, http.StatusBadRequest)
		return
	}
	msgs := body.Messages
	if msgs == nil {
		msgs = []pub{body.pub}
	}
	f.mu.Lock()
	for _, m := range msgs {
		f.offsets[m.Channel]++
		frame := []byte(fmt.Sprintf(`{"op":"message","channel":%q,"offset":%d,"data":%s}`, m.Channel, f.offsets[m.Channel], m.Data))
		for _, fc := range f.subs[m.Channel] {
			fc.mu.Lock()
			fc.count++
			k := fc.count
			fc.mu.Unlock()
			if f.dropEvery > 0 && k%f.dropEvery == 0 {
				continue
			}
			fc.out <- frame
			if f.dupEvery > 0 && k%f.dupEvery == 0 {
				fc.out <- frame
			}
		}
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write([]byte(`{"offset":1,"epoch":"e1"}`))
}

func (f *fakeServer) metrics(w http.ResponseWriter, r *http.Request) {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	cpu := float64(ru.Utime.Sec+ru.Stime.Sec) + float64(ru.Utime.Usec+ru.Stime.Usec)/1e6
	fmt.Fprintf(w, "# HELP process_cpu_seconds_total x\nprocess_cpu_seconds_total %s\nprocess_resident_memory_bytes %d\n",
		strconv.FormatFloat(cpu, 'f', 3, 64), ru.Maxrss*1024)
}
