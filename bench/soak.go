package bench

import (
	"context"
	"flag"
	"fmt"
	"math"
	"net/http"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"
)

// This file is the soak scenario: the bench starts one redis-server and
// --nodes tether nodes itself (it must restart them), connects -n clients,
// then for --duration publishes --rate messages per second over --channels
// channels through the HTTP API while --churn-rate clients per second drop
// and come back with since; Redis is restarted empty at --redis-restart-at
// and the last node gets SIGTERM and is started again at
// --node-restart-at. Every --sample-every it reads each node's RSS, heap,
// goroutines and descriptors and Redis's memory. At the end it counts every
// acknowledged message against every subscriber (soakpool.go) and checks
// that memory, goroutines and descriptors stayed flat.

// soakOptions are the soak's own flags.
type soakOptions struct {
	duration       time.Duration
	churnRate      float64
	nodes          int
	tetherBin      string
	redisBin       string
	redisRestartAt time.Duration
	nodeRestartAt  time.Duration
	sampleEvery    time.Duration
	settle         time.Duration
	nodeArgs       listFlag
	dir            string
	rssTolerance   float64
}

func (so *soakOptions) flags(fs *flag.FlagSet) {
	fs.DurationVar(&so.duration, "duration", 10*time.Minute, "soak: how long to publish and churn")
	fs.Float64Var(&so.churnRate, "churn-rate", 300, "soak: clients dropped and reconnected (with since) per second")
	fs.IntVar(&so.nodes, "nodes", 3, "soak: tether nodes to start")
	fs.StringVar(&so.tetherBin, "tether", "", "soak: tether `binary` for the nodes (default: this executable)")
	fs.StringVar(&so.redisBin, "redis-server", "redis-server", "soak: redis-server `binary`")
	fs.DurationVar(&so.redisRestartAt, "redis-restart-at", 5*time.Minute, "soak: restart Redis (empty) this long into the run; negative = never")
	fs.DurationVar(&so.nodeRestartAt, "node-restart-at", 7*time.Minute, "soak: SIGTERM the last node and start it again this long into the run; negative = never")
	fs.DurationVar(&so.sampleEvery, "sample-every", 10*time.Second, "soak: read the nodes' and Redis's figures this often")
	fs.DurationVar(&so.settle, "settle", 5*time.Second, "soak: after the churn stops and all clients are back, wait until no delivery arrived for this long")
	fs.Var(&so.nodeArgs, "node-args", "soak: extra `flags` for every node, comma-separated (e.g. --drain-window=5s)")
	fs.Float64Var(&so.rssTolerance, "rss-tolerance", 0.10, "soak: fail when the nodes' RSS at the end exceeds the reading at 20 % of --duration by more than this fraction")
	fs.StringVar(&so.dir, "dir", "", "soak: directory for the processes' logs, made if missing (default: a new temporary directory, kept)")
}

// check validates the soak flags and derives the run's message count.
func (so *soakOptions) check(o *options, urls int) error {
	switch {
	case urls > 0:
		return fmt.Errorf("soak starts its own nodes: --url is not used: %w", errBadConfig)
	case so.duration <= 0 || so.nodes < 1 || so.churnRate < 0 || so.sampleEvery <= 0:
		return fmt.Errorf("--duration, --nodes, --churn-rate or --sample-every out of range: %w", errBadConfig)
	}
	if o.rate == 0 {
		o.rate = 200
	}
	if so.tetherBin == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("cannot find own executable: %w", err)
		}
		so.tetherBin = exe
	}
	if p, err := exec.LookPath(so.redisBin); err == nil {
		so.redisBin = p
	} else {
		return fmt.Errorf("cannot find %s: %w", so.redisBin, err)
	}
	total := so.total(o.rate)
	o.messages = max((total+o.channels-1)/o.channels, 1)
	if o.messages > 1<<20 {
		return fmt.Errorf("--rate × --duration / --channels is over 1048576 messages per channel: %w", errBadConfig)
	}
	return nil
}

// total is the number of messages published over the run.
func (so *soakOptions) total(rate float64) int { return max(int(rate*so.duration.Seconds()), 1) }

// soakRun is one soak's state.
type soakRun struct {
	*scenarioRun
	so     *soakOptions
	redis  *redisProc
	nodes  []*nodeProc
	start  time.Time // publishing and churn start: origin of the series
	sr     *SoakResult
	mu     sync.Mutex // guards sr.Samples, sr.Events, counters
	counts []map[string]float64
	bases  []map[string]float64
}

// runSoak runs the soak scenario.
func runSoak(o *options) (*Result, error) {
	so := &o.soak
	if so.dir == "" {
		d, err := os.MkdirTemp("", "tether-soak-")
		if err != nil {
			return nil, fmt.Errorf("cannot create the soak directory: %w", err)
		}
		so.dir = d
	} else if err := os.MkdirAll(so.dir, 0o755); err != nil {
		return nil, fmt.Errorf("cannot create the soak directory: %w", err)
	}
	client := &http.Client{Timeout: 5 * time.Second}
	r := &soakRun{so: so, sr: &SoakResult{
		DurationS: so.duration.Seconds(), ChurnRate: so.churnRate, Nodes: so.nodes,
		RedisRestartAtS: so.redisRestartAt.Seconds(), NodeRestartAtS: so.nodeRestartAt.Seconds(),
		SampleEveryS: so.sampleEvery.Seconds(), LogDir: so.dir, Disconnects: map[string]float64{},
	}}
	defer r.stopAll()
	var err error
	if r.redis, err = newRedisProc(so.dir, so.redisBin); err != nil {
		return nil, err
	}
	if err := r.redis.startAndWait(); err != nil {
		return nil, err
	}
	o.nodes = o.nodes[:0]
	for i := 0; i < so.nodes; i++ {
		n, err := newNodeProc(so.dir, i, so.tetherBin, r.redis.addr, so.nodeArgs)
		if err != nil {
			return nil, err
		}
		r.nodes = append(r.nodes, n)
		if err := n.startAndWait(client); err != nil {
			return nil, err
		}
		nd, err := parseNode("ws://" + n.addr + "/ws")
		if err != nil {
			return nil, err
		}
		o.nodes = append(o.nodes, nd)
		r.counts = append(r.counts, map[string]float64{})
		r.bases = append(r.bases, map[string]float64{})
	}
	res := &Result{
		Schema: ResultSchema, Scenario: o.scenario, Started: time.Now().UTC(), Pass: true, Problems: []string{},
		Params: Params{Conns: o.conns, Channels: o.channels, Messages: o.messages, Rate: o.rate,
			Publishers: o.publishers, Batch: 1, PublishTo: "all", Concurrency: o.concurrency},
	}
	for _, n := range o.nodes {
		res.Params.URLs = append(res.Params.URLs, n.URL)
	}
	for _, a := range o.srcs {
		res.Params.Sources = append(res.Params.Sources, a.String())
	}
	c, err := newCoordinator(o, true)
	if err != nil {
		return nil, err
	}
	res.Params.Workers = len(c.workers)
	r.scenarioRun = &scenarioRun{o: o, c: c, res: res, client: client}
	err = r.run()
	c.close()
	client.CloseIdleConnections()
	res.Tool = c.toolUsage()
	c.mu.Lock()
	res.Timeline.Samples = c.samples
	c.mu.Unlock()
	res.Timeline.IntervalS = timelineInterval.Seconds()
	if res.Timeline.Samples == nil {
		res.Timeline.Samples = []Sample{}
	}
	res.Timeline.Deliveries = []uint64{}
	res.DurationS = time.Since(c.start).Seconds()
	res.Soak = r.sr
	return res, err
}

// stopAll ends every process the soak started.
func (r *soakRun) stopAll() {
	for _, n := range r.nodes {
		n.stop(syscall.SIGKILL, 10*time.Second)
		_ = n.log.Close()
	}
	if r.redis != nil {
		r.redis.stop(syscall.SIGKILL, 10*time.Second)
		_ = r.redis.log.Close()
	}
}

// event records something that happened, at the time since the start.
func (r *soakRun) event(format string, args ...any) {
	r.mu.Lock()
	r.sr.Events = append(r.sr.Events, SoakEvent{T: time.Since(r.start).Seconds(), What: fmt.Sprintf(format, args...)})
	r.mu.Unlock()
}

// sample reads every node and Redis once.
func (r *soakRun) sample() {
	s := SoakSample{T: time.Since(r.start).Seconds(), Up: r.c.totals().Up}
	for i, n := range r.nodes {
		rd := readNode(r.client, "http://"+n.addr, r.o.apiKey)
		if rd.OK && n.cmd != nil && n.cmd.Process != nil {
			rd.FDs = float64(openFDs(n.cmd.Process.Pid)) // tether's /metrics has no process_open_fds
		}
		s.Nodes = append(s.Nodes, SoakNode{OK: rd.OK, RSS: rd.RSS, Anon: rd.Anon, Heap: rd.Heap, HeapAlloc: rd.HeapAlloc, Goroutines: rd.Goroutines, FDs: rd.FDs, Conns: rd.Conns})
		if rd.OK {
			r.noteCounters(i, rd.Disconnects)
		}
	}
	s.RedisUsed, s.RedisRSS, _ = r.redis.memory()
	r.mu.Lock()
	r.sr.Samples = append(r.sr.Samples, s)
	r.mu.Unlock()
}

// noteCounters keeps node i's disconnect counters across its restarts: a
// counter that went down belongs to a new process.
func (r *soakRun) noteCounters(i int, d map[string]float64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	for k, v := range d {
		if v < r.counts[i][k] {
			r.bases[i][k] += r.counts[i][k]
		}
		r.counts[i][k] = v
	}
}

// run carries out the soak once the workers are ready.
func (r *soakRun) run() error {
	o, so := r.o, r.so
	r.c.setStatus("connecting")
	t0 := time.Now()
	cs, err := r.c.phase("connect", 0)
	if err != nil {
		return err
	}
	r.res.Connect = connectResult(cs, t0)
	if cs.Up < cs.Target {
		r.problem("%d of %d connections did not get up", cs.Target-cs.Up, cs.Target)
	}
	r.start = time.Now()
	r.sample()
	stop := make(chan struct{})
	var bg sync.WaitGroup
	bg.Add(2)
	go func() {
		defer bg.Done()
		t := time.NewTicker(so.sampleEvery)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				r.sample()
			}
		}
	}()
	go func() { defer bg.Done(); r.faults(stop) }()

	r.c.setStatus("soaking")
	for _, w := range r.c.workers {
		if err := w.send(workerMsg{Op: "soak", Rate: so.churnRate / float64(len(r.c.workers))}); err != nil {
			close(stop)
			bg.Wait()
			return err
		}
	}
	total := so.total(o.rate)
	pb := newPublisher(o, r.c.chanPre)
	pb.acked = newAckedBits(total)
	var targets []string
	for _, n := range o.nodes {
		targets = append(targets, n.API)
	}
	ctx, cancel := context.WithTimeout(context.Background(), so.duration+time.Minute)
	pb.run(ctx, total, 1, o.publishers, o.rate, targets)
	cancel()
	pb.client.CloseIdleConnections()
	pubDur := time.Since(r.start)
	r.event("publishing ended")

	r.c.setStatus("calming")
	for _, w := range r.c.workers {
		if err := w.send(workerMsg{Op: "calm"}); err != nil {
			close(stop)
			bg.Wait()
			return err
		}
	}
	for _, w := range r.c.workers {
		if _, err := w.await("calm", 30*time.Second); err != nil {
			close(stop)
			bg.Wait()
			return err
		}
	}
	close(stop)
	bg.Wait()
	deadline := time.Now().Add(60 * time.Second)
	for r.c.totals().Up < o.conns && time.Now().Before(deadline) {
		time.Sleep(100 * time.Millisecond)
	}
	r.c.setStatus("settling")
	o.drain = so.settle
	r.c.waitDeliveries(math.MaxUint64)
	r.sample()

	acked, nAcked := pb.acked.snapshot()
	for _, w := range r.c.workers {
		if err := w.send(workerMsg{Op: "report", Acked: acked}); err != nil {
			return err
		}
	}
	var ss soakStats
	final := connStats{Failures: map[string]int{}, Handshake: new(Hist), Subscribe: new(Hist), Extra: map[string]uint64{}}
	var up int
	for _, w := range r.c.workers {
		m, err := w.await("report", 60*time.Second)
		if err != nil {
			return err
		}
		mergeSoak(&ss, m.Soak)
		mergeConnStats(&final, m.Conn)
	}
	up = r.c.totals().Up
	r.res.Connect.Events = final.Extra
	r.res.Publish = &PublishResult{
		Messages: total, OK: pb.okMsgs.Load(), Failed: pb.failMsgs.Load(), Requests: pb.requests.Load(),
		Retried: pb.retried.Load(), Statuses: pb.statuses, DurationS: pubDur.Seconds(),
		PerS: float64(pb.okMsgs.Load()) / pubDur.Seconds(), TargetPerS: o.rate, API: summarize(&pb.api),
	}
	r.judge(ss, nAcked, up, final)
	return nil
}

// faults restarts Redis and a node at their times.
func (r *soakRun) faults(stop <-chan struct{}) {
	so := r.so
	type fault struct {
		at time.Duration
		do func()
	}
	var fs []fault
	if so.redisRestartAt >= 0 && so.redisRestartAt < so.duration {
		fs = append(fs, fault{so.redisRestartAt, r.restartRedis})
	}
	if so.nodeRestartAt >= 0 && so.nodeRestartAt < so.duration {
		fs = append(fs, fault{so.nodeRestartAt, r.restartNode})
	}
	if len(fs) == 2 && fs[1].at < fs[0].at {
		fs[0], fs[1] = fs[1], fs[0]
	}
	for _, f := range fs {
		select {
		case <-stop:
			return
		case <-time.After(time.Until(r.start.Add(f.at))):
		}
		f.do()
	}
}

// restartRedis stops Redis (its data is gone: no persistence) and starts it
// again on the same port.
func (r *soakRun) restartRedis() {
	r.event("redis: SIGTERM")
	r.mu.Lock()
	r.sr.RedisRestartS = time.Since(r.start).Seconds()
	r.mu.Unlock()
	r.redis.stop(syscall.SIGTERM, 10*time.Second)
	if err := r.redis.startAndWait(); err != nil {
		r.event("redis: cannot restart: %v", err)
		return
	}
	r.event("redis: up again (empty)")
}

// restartNode sends SIGTERM to the last node, reads its counters while it
// drains, and starts it again on the same address.
func (r *soakRun) restartNode() {
	i := len(r.nodes) - 1
	n := r.nodes[i]
	r.event("%s: SIGTERM", n.name)
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	deadline := time.Now().Add(2 * time.Minute)
	for exited := false; !exited; {
		if rd := readNode(r.client, "http://"+n.addr, r.o.apiKey); rd.OK {
			r.noteCounters(i, rd.Disconnects)
		}
		select {
		case <-n.exited:
			exited = true
		case <-time.After(250 * time.Millisecond):
			if time.Now().After(deadline) {
				r.event("%s: did not exit in 2 minutes: killed", n.name)
				n.stop(syscall.SIGKILL, 10*time.Second)
				exited = true
			}
		}
	}
	r.event("%s: exited", n.name)
	r.mu.Lock()
	for k, v := range r.counts[i] {
		r.bases[i][k] += v
	}
	r.counts[i] = map[string]float64{}
	r.mu.Unlock()
	if err := n.startAndWait(r.client); err != nil {
		r.event("%s: cannot restart: %v", n.name, err)
		return
	}
	r.event("%s: up again", n.name)
}
