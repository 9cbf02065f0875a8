package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"runtime"
	"sync"
	"sync/atomic"
	"time"
)

// errWorker reports a worker that failed or went away.
var errWorker = errors.New("bench: worker failed")

// workerConn is the coordinator's side of one worker.
type workerConn struct {
	id     int
	cfg    poolConfig
	cmd    *exec.Cmd // nil for an in-process worker
	in     io.WriteCloser
	enc    *json.Encoder
	inMu   sync.Mutex
	rep    chan workerMsg // replies other than progress; closed at EOF
	prog   atomic.Pointer[progressStats]
	cpu    atomic.Pointer[cpuUsage]
	ended  chan struct{} // closed when the worker is gone
	stderr io.Writer
}

// startWorker starts worker id with cfg as a child process running
// `<this binary> bench worker`, or as goroutines with inProcess.
func startWorker(id int, cfg poolConfig, inProcess bool, stderr io.Writer) (*workerConn, error) {
	w := &workerConn{id: id, cfg: cfg, rep: make(chan workerMsg, 16), ended: make(chan struct{}), stderr: stderr}
	var out io.ReadCloser
	if inProcess {
		cmdR, cmdW := io.Pipe()
		outR, outW := io.Pipe()
		w.in, out = cmdW, outR
		go func() {
			err := runWorker(cmdR, outW)
			if err != nil {
				fmt.Fprintf(stderr, "worker %d: %v\n", id, err)
			}
			_ = outW.Close()
			_ = cmdR.Close()
		}()
	} else {
		exe, err := os.Executable()
		if err != nil {
			return nil, fmt.Errorf("cannot find own executable for workers: %w", err)
		}
		w.cmd = exec.Command(exe, "bench", "worker")
		w.cmd.Stderr = stderr
		if w.in, err = w.cmd.StdinPipe(); err != nil {
			return nil, fmt.Errorf("cannot start worker: %w", err)
		}
		if out, err = w.cmd.StdoutPipe(); err != nil {
			return nil, fmt.Errorf("cannot start worker: %w", err)
		}
		if err := w.cmd.Start(); err != nil {
			return nil, fmt.Errorf("cannot start worker %s: %w", exe, err)
		}
	}
	w.enc = json.NewEncoder(w.in)
	go w.read(out)
	if err := w.send(workerMsg{Op: "setup", Setup: &cfg}); err != nil {
		w.kill()
		return nil, err
	}
	return w, nil
}

// read dispatches the worker's lines until its stdout ends.
func (w *workerConn) read(out io.ReadCloser) {
	defer close(w.ended)
	defer close(w.rep)
	sc := bufio.NewScanner(out)
	sc.Buffer(make([]byte, 64<<10), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var m workerMsg
		if len(line) == 0 || line[0] != '{' || json.Unmarshal(line, &m) != nil {
			fmt.Fprintf(w.stderr, "worker %d: %s\n", w.id, line)
			continue
		}
		if m.CPU != nil {
			w.cpu.Store(m.CPU)
		}
		if m.Op == "progress" {
			w.prog.Store(m.Progress)
			continue
		}
		w.rep <- m
	}
	_ = out.Close()
}

func (w *workerConn) send(m workerMsg) error {
	w.inMu.Lock()
	defer w.inMu.Unlock()
	if err := w.enc.Encode(m); err != nil {
		return fmt.Errorf("cannot send %s to worker %d: %w", m.Op, w.id, err)
	}
	return nil
}

// await waits for the reply op.
func (w *workerConn) await(op string, timeout time.Duration) (workerMsg, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	for {
		select {
		case m, ok := <-w.rep:
			if !ok {
				return m, fmt.Errorf("worker %d exited while waiting for %s: %w", w.id, op, errWorker)
			}
			if m.Op == "fatal" {
				return m, fmt.Errorf("worker %d: %s: %w", w.id, m.Error, errWorker)
			}
			if m.Op == op {
				return m, nil
			}
		case <-t.C:
			return workerMsg{}, fmt.Errorf("worker %d: no %s within %v: %w", w.id, op, timeout, errWorker)
		}
	}
}

// stop asks the worker to close and waits for it, killing it if it does not
// go in time.
func (w *workerConn) stop() {
	if err := w.send(workerMsg{Op: "close"}); err == nil {
		_, _ = w.await("closed", 30*time.Second)
	}
	_ = w.in.Close()
	select {
	case <-w.ended:
	case <-time.After(10 * time.Second):
		w.kill()
	}
	if w.cmd != nil {
		done := make(chan struct{})
		go func() { _ = w.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			w.kill()
			<-done
		}
	}
}

// kill ends a child worker by its PID.
func (w *workerConn) kill() {
	if w.cmd != nil && w.cmd.Process != nil {
		_ = w.cmd.Process.Kill()
	}
}

// coordinator runs a scenario over its workers.
type coordinator struct {
	o       *options
	workers []*workerConn
	start   time.Time
	chanPre string

	mu      sync.Mutex // guards samples and status
	samples []Sample
	status  string

	stopBG chan struct{}
	bg     sync.WaitGroup
}

// planWorkers splits n connections over worker processes each below the
// open-file limit, keeping headroom for the process's other files and for
// attempts in flight.
func planWorkers(n, want, concurrency int, limit uint64) []int {
	per := int(limit) - 1000 - concurrency
	if per < 100 {
		per = 100
	}
	k := max(want, (n+per-1)/per, 1)
	k = min(k, n)
	out := make([]int, k)
	for i := range out {
		out[i] = n / k
		if i < n%k {
			out[i]++
		}
	}
	return out
}

// newCoordinator starts the workers and waits until all are ready.
func newCoordinator(o *options, subscribe bool) (*coordinator, error) {
	limit, err := raiseNoFile()
	if err != nil {
		fmt.Fprintf(o.stderr, "tether bench: cannot raise the open-file limit (%d): %v\n", limit, err)
	}
	c := &coordinator{
		o:       o,
		start:   time.Now(),
		chanPre: fmt.Sprintf("bench.%x.", time.Now().UnixNano()&0xffffffffff),
		stopBG:  make(chan struct{}),
	}
	targets := make([]string, len(o.nodes))
	for i, n := range o.nodes {
		targets[i] = n.Addr
	}
	srcs := make([]string, len(o.srcs))
	for i, a := range o.srcs {
		srcs[i] = a.String()
	}
	pollers := o.pollers
	if pollers <= 0 {
		pollers = min(runtime.NumCPU(), 4)
	}
	plan := planWorkers(o.conns, o.workers, o.concurrency, limit)
	first := 0
	for i, count := range plan {
		cfg := poolConfig{
			Targets:     targets,
			Path:        o.nodes[0].Path,
			Token:       o.token,
			Srcs:        srcs,
			First:       first,
			Count:       count,
			Channels:    o.channels,
			ChanPrefix:  c.chanPre,
			Subscribe:   subscribe,
			Messages:    o.messages,
			Concurrency: o.concurrency,
			Retries:     o.retries,
			TimeoutNS:   int64(o.attemptTimeout),
			PhaseNS:     int64(o.phaseTimeout),
			Pollers:     pollers,
		}
		if o.scenario == "churn" {
			cfg.Retries = 1 << 20 // until the phase deadline
		}
		if o.scenario == "soak" {
			cfg.Soak, cfg.Retries = true, 1<<20
			cfg.PhaseNS = int64(o.soak.duration + 10*time.Minute)
		}
		if o.scenario != "broadcast" && o.scenario != "throughput" && o.scenario != "soak" {
			cfg.Messages = 0 // nothing is published: no bitsets
		}
		first += count
		w, err := startWorker(i, cfg, o.inProcess, o.stderr)
		if err != nil {
			c.close()
			return nil, err
		}
		c.workers = append(c.workers, w)
	}
	for _, w := range c.workers {
		if _, err := w.await("ready", 30*time.Second); err != nil {
			c.close()
			return nil, err
		}
	}
	c.bg.Add(1)
	go c.sampleLoop()
	return c, nil
}

// close stops the background sampler and every worker.
func (c *coordinator) close() {
	select {
	case <-c.stopBG:
	default:
		close(c.stopBG)
	}
	c.bg.Wait()
	var wg sync.WaitGroup
	for _, w := range c.workers {
		wg.Add(1)
		go func() { defer wg.Done(); w.stop() }()
	}
	wg.Wait()
	if c.o.progress {
		fmt.Fprint(c.o.stdout, "\r\x1b[K")
	}
}

// setStatus names the current step for the progress line.
func (c *coordinator) setStatus(s string) {
	c.mu.Lock()
	c.status = s
	c.mu.Unlock()
}

// totals sums the workers' latest progress.
func (c *coordinator) totals() progressStats {
	var t progressStats
	for _, w := range c.workers {
		if p := w.prog.Load(); p != nil {
			t.Up += p.Up
			t.Failed += p.Failed
			t.Refused += p.Refused
			t.Errors += p.Errors
			t.Delivered += p.Delivered
			t.Dups += p.Dups
			t.Pending += p.Pending
		}
	}
	return t
}

// sampleLoop records the progress series and draws the progress line.
func (c *coordinator) sampleLoop() {
	defer c.bg.Done()
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	var last progressStats
	lastT := time.Now()
	for {
		select {
		case <-c.stopBG:
			return
		case now := <-t.C:
			p := c.totals()
			rate := float64(p.Delivered-last.Delivered) / now.Sub(lastT).Seconds()
			last, lastT = p, now
			c.mu.Lock()
			c.samples = append(c.samples, Sample{T: now.Sub(c.start).Seconds(), Up: p.Up, Delivered: p.Delivered, Errors: p.Errors})
			status := c.status
			c.mu.Unlock()
			if c.o.progress {
				fmt.Fprintf(c.o.stdout, "\r[%s %s] conns %d/%d  delivered %d (%.0f/s)  dups %d  errors %d  refused %d\x1b[K",
					c.o.scenario, status, p.Up, c.o.conns, p.Delivered, rate, p.Dups, p.Errors, p.Refused)
			}
		}
	}
}

// phase runs a connect phase on every worker ("connect", or "churn" which
// drops first) and merges the results. rate is the total attempts per second
// (0: unlimited).
func (c *coordinator) phase(op string, rate float64) (connStats, error) {
	t0 := time.Now().UnixNano()
	m := workerMsg{Op: op, Rate: rate / float64(len(c.workers))}
	if op == "connect" {
		m.T0 = t0
	}
	for _, w := range c.workers {
		if err := w.send(m); err != nil {
			return connStats{}, err
		}
	}
	var out connStats
	out.Failures = map[string]int{}
	out.Handshake, out.Subscribe = new(Hist), new(Hist)
	out.Extra = map[string]uint64{}
	wait := c.o.phaseTimeout + c.o.attemptTimeout + 30*time.Second
	for _, w := range c.workers {
		r, err := w.await("connected", wait)
		if err != nil {
			return out, err
		}
		mergeConnStats(&out, r.Conn)
	}
	return out, nil
}

// mergeConnStats adds s to dst.
func mergeConnStats(dst *connStats, s *connStats) {
	if s == nil {
		return
	}
	dst.Target += s.Target
	dst.Up += s.Up
	dst.Failed += s.Failed
	dst.Attempts += s.Attempts
	dst.Refused += s.Refused
	for k, v := range s.Failures {
		dst.Failures[k] += v
	}
	for k, v := range s.Extra {
		dst.Extra[k] += v
	}
	dst.Handshake.Merge(s.Handshake)
	dst.Subscribe.Merge(s.Subscribe)
	if s.FirstUp != 0 && (dst.FirstUp == 0 || s.FirstUp < dst.FirstUp) {
		dst.FirstUp = s.FirstUp
	}
	dst.LastUp = max(dst.LastUp, s.LastUp)
}

// report collects the delivery figures of every worker.
func (c *coordinator) report() (deliveryStats, connStats, error) {
	for _, w := range c.workers {
		if err := w.send(workerMsg{Op: "report"}); err != nil {
			return deliveryStats{}, connStats{}, err
		}
	}
	d := deliveryStats{Latency: new(Hist)}
	cs := connStats{Failures: map[string]int{}, Handshake: new(Hist), Subscribe: new(Hist), Extra: map[string]uint64{}}
	for _, w := range c.workers {
		r, err := w.await("report", 60*time.Second)
		if err != nil {
			return d, cs, err
		}
		mergeDeliv(&d, r.Deliv)
		mergeConnStats(&cs, r.Conn)
	}
	return d, cs, nil
}

// mergeDeliv adds s to dst. Counts add exactly; timelines add per bucket.
func mergeDeliv(dst *deliveryStats, s *deliveryStats) {
	if s == nil {
		return
	}
	dst.Subscribers += s.Subscribers
	dst.Messages = s.Messages
	dst.Expected += s.Expected
	dst.Delivered += s.Delivered
	dst.Missing += s.Missing
	dst.Duplicates += s.Duplicates
	dst.Unexpected += s.Unexpected
	dst.Dropped += s.Dropped
	dst.Latency.Merge(s.Latency)
	dst.LastDelivery = max(dst.LastDelivery, s.LastDelivery)
	if len(s.Timeline) > len(dst.Timeline) {
		dst.Timeline = append(dst.Timeline, make([]uint64, len(s.Timeline)-len(dst.Timeline))...)
	}
	for i, v := range s.Timeline {
		dst.Timeline[i] += v
	}
}

// toolUsage sums the workers' and the coordinator's CPU.
func (c *coordinator) toolUsage() ToolResult {
	t := ToolResult{Workers: len(c.workers)}
	for _, w := range c.workers {
		if u := w.cpu.Load(); u != nil {
			t.WorkerCPU = append(t.WorkerCPU, *u)
			t.WorkersCPUS += u.UserS + u.SysS
		}
	}
	if c.o.inProcess {
		t.WorkerCPU = nil
		t.WorkersCPUS = 0
	}
	self := selfUsage()
	t.CoordinatorCPUS = self.UserS + self.SysS
	return t
}

// waitDeliveries waits until want unique deliveries arrived, or none came
// for the drain time. It reports whether all arrived.
func (c *coordinator) waitDeliveries(want uint64) bool {
	last := c.totals().Delivered
	lastChange := time.Now()
	for {
		d := c.totals().Delivered
		if d >= want {
			return true
		}
		if d != last {
			last, lastChange = d, time.Now()
		}
		if time.Since(lastChange) > c.o.drain {
			return false
		}
		time.Sleep(50 * time.Millisecond)
	}
}
