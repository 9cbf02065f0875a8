package bench

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"

	"github.com/lesismal/nbio/logging"
)

// A worker holds a share of the connections. The coordinator starts it as
// `tether bench worker` from its own binary and talks to it over its
// stdin/stdout, one JSON object (workerMsg) per line:
//
//	coordinator → worker            worker → coordinator
//	setup {setup}                   ready {pid, cpu}
//	connect {t0}                    progress {progress} (every 200 ms, any time)
//	                                connected {conn}
//	churn {rate}                    connected {conn}
//	soak {rate}                     (churn starts; soak mode)
//	calm                            calm (churn stopped)
//	report {acked}                  report {deliv, conn, soak}
//	close                           closed {cpu}; then the worker exits
//	                                fatal {error} when it cannot go on
//
// The coordinator sends the same connect (with the same t0) to every worker
// only once all are ready: that is the start barrier.

// errBadConfig reports an unusable setup.
var errBadConfig = errors.New("bench: bad configuration")

// workerMsg is one line of the worker protocol; Op selects the fields used.
type workerMsg struct {
	Op       string         `json:"op"`
	Setup    *poolConfig    `json:"setup,omitempty"`
	T0       int64          `json:"t0,omitempty"`
	Rate     float64        `json:"rate,omitempty"`
	PID      int            `json:"pid,omitempty"`
	Progress *progressStats `json:"progress,omitempty"`
	Conn     *connStats     `json:"conn,omitempty"`
	Deliv    *deliveryStats `json:"deliv,omitempty"`
	CPU      *cpuUsage      `json:"cpu,omitempty"`
	Error    string         `json:"error,omitempty"`
	Acked    []uint64       `json:"acked,omitempty"` // report in a soak: acknowledged publishes
	Soak     *soakStats     `json:"soak,omitempty"`
}

// poolConfig is what a pool needs; it comes from the coordinator.
type poolConfig struct {
	Targets     []string `json:"targets"` // host:port of each node
	Path        string   `json:"path"`    // WebSocket path, "/ws"
	Token       string   `json:"token,omitempty"`
	Srcs        []string `json:"srcs,omitempty"` // source IPs, shared by all workers
	First       int      `json:"first"`          // global index of this pool's first connection
	Count       int      `json:"count"`
	Channels    int      `json:"channels"`
	ChanPrefix  string   `json:"chan_prefix"`
	Subscribe   bool     `json:"subscribe"`
	Messages    int      `json:"messages"`    // sequence numbers 0..Messages-1 are expected
	Concurrency int      `json:"concurrency"` // in-flight handshakes
	Retries     int      `json:"retries"`     // extra attempts per connection per phase
	TimeoutNS   int64    `json:"timeout_ns"`  // per attempt
	PhaseNS     int64    `json:"phase_ns"`    // a phase stops retrying after this
	Pollers     int      `json:"pollers"`
	Soak        bool     `json:"soak,omitempty"` // soak mode: see soakpool.go
}

// connStats are the connection figures of one phase (connect, or the
// reconnect of a churn). Merged by the coordinator.
type connStats struct {
	Target    int               `json:"target"`
	Up        int               `json:"up"`     // connections that got up in this phase
	Failed    int               `json:"failed"` // connections that gave up in this phase
	Attempts  int               `json:"attempts"`
	Refused   int               `json:"refused"` // attempts answered 503
	Failures  map[string]int    `json:"failures"`
	Handshake *Hist             `json:"handshake"` // dial start to 101, ns
	Subscribe *Hist             `json:"subscribe"` // subscribe sent to subscribed, ns
	FirstUp   int64             `json:"first_up"`  // unix ns
	LastUp    int64             `json:"last_up"`   // unix ns
	Extra     map[string]uint64 `json:"extra,omitempty"`
}

// deliveryStats are the delivery figures of a pool.
type deliveryStats struct {
	Subscribers  int      `json:"subscribers"` // connections counted (were up at least once)
	Messages     int      `json:"messages"`
	Expected     uint64   `json:"expected"`
	Delivered    uint64   `json:"delivered"` // unique (connection, sequence) pairs
	Missing      uint64   `json:"missing"`
	Duplicates   uint64   `json:"duplicates"`
	Unexpected   uint64   `json:"unexpected"`    // sequence out of range or payload without t/s
	Latency      *Hist    `json:"latency"`       // ns, one value per unique delivery
	Timeline     []uint64 `json:"timeline"`      // unique deliveries per timelineInterval since t0
	LastDelivery int64    `json:"last_delivery"` // unix ns
	Dropped      int      `json:"dropped"`       // connections closed by the server or network after up
}

// progressStats is a worker's live state, sent several times a second.
type progressStats struct {
	Up        int    `json:"up"`
	Failed    int    `json:"failed"`
	Refused   int    `json:"refused"`
	Errors    int    `json:"errors"` // failed attempts of this phase
	Delivered uint64 `json:"delivered"`
	Dups      uint64 `json:"dups"`
	Pending   int    `json:"pending"`
}

// workerMain is `tether bench worker`: it serves the worker protocol on
// stdin/stdout.
func workerMain() int {
	// nbio logs to stdout by default, which is our protocol channel.
	logging.Output = os.Stderr
	logging.SetLevel(logging.LevelNone)
	if _, err := raiseNoFile(); err != nil {
		fmt.Fprintf(os.Stderr, "tether bench worker: cannot raise the open-file limit: %v\n", err)
	}
	if err := runWorker(os.Stdin, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "tether bench worker: %v\n", err)
		return 1
	}
	return 0
}

// runWorker serves the worker protocol until "close" or the end of in.
func runWorker(in io.Reader, out io.Writer) error {
	var wmu sync.Mutex
	enc := json.NewEncoder(out)
	send := func(m workerMsg) {
		wmu.Lock()
		defer wmu.Unlock()
		_ = enc.Encode(m)
	}
	var p *pool
	stopProgress := make(chan struct{})
	var bg sync.WaitGroup
	stopBackground := sync.OnceFunc(func() {
		close(stopProgress)
		bg.Wait()
	})
	defer func() {
		stopBackground()
		if p != nil {
			p.close()
		}
	}()
	// waitPhase reports "connected" when a phase of p ends.
	waitPhase := func(p *pool, done <-chan struct{}) {
		bg.Add(1)
		go func() {
			defer bg.Done()
			select {
			case <-done:
			case <-stopProgress:
				return
			}
			st := p.phaseStats()
			cpu := selfUsage()
			send(workerMsg{Op: "connected", Conn: &st, CPU: &cpu})
		}()
	}
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 64<<10), 16<<20)
	for sc.Scan() {
		var m workerMsg
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			send(workerMsg{Op: "fatal", Error: fmt.Sprintf("cannot decode command: %v", err)})
			return fmt.Errorf("cannot decode command: %w", err)
		}
		switch m.Op {
		case "setup":
			if p != nil || m.Setup == nil {
				send(workerMsg{Op: "fatal", Error: "bad setup"})
				return errBadConfig
			}
			var err error
			p, err = newPool(*m.Setup)
			if err != nil {
				send(workerMsg{Op: "fatal", Error: err.Error()})
				return err
			}
			bg.Add(1)
			go func(p *pool) {
				defer bg.Done()
				t := time.NewTicker(200 * time.Millisecond)
				defer t.Stop()
				for {
					select {
					case <-t.C:
						pr := p.progress()
						send(workerMsg{Op: "progress", Progress: &pr})
					case <-stopProgress:
						return
					}
				}
			}(p)
			cpu := selfUsage()
			send(workerMsg{Op: "ready", PID: os.Getpid(), CPU: &cpu})
		case "connect", "churn":
			if p == nil {
				send(workerMsg{Op: "fatal", Error: "no setup"})
				return errBadConfig
			}
			if m.T0 != 0 {
				p.t0.Store(m.T0)
			}
			waitPhase(p, p.startPhase(m.Rate, m.Op == "churn"))
		case "report":
			if p == nil {
				send(workerMsg{Op: "fatal", Error: "no setup"})
				return errBadConfig
			}
			d := p.deliveries()
			st := p.phaseStats()
			cpu := selfUsage()
			r := workerMsg{Op: "report", Deliv: &d, Conn: &st, CPU: &cpu}
			if p.cfg.Soak {
				ss := p.soakDeliveries(m.Acked)
				r.Soak = &ss
			}
			send(r)
		case "soak", "calm":
			if p == nil || !p.cfg.Soak {
				send(workerMsg{Op: "fatal", Error: "not a soak pool"})
				return errBadConfig
			}
			if m.Op == "soak" {
				p.startChurn(m.Rate)
			} else {
				p.stopChurn()
				send(workerMsg{Op: "calm"})
			}
		case "close":
			stopBackground()
			if p != nil {
				p.close()
				p = nil
			}
			cpu := selfUsage()
			send(workerMsg{Op: "closed", CPU: &cpu})
			return nil
		default:
			send(workerMsg{Op: "fatal", Error: "unknown command " + m.Op})
			return fmt.Errorf("unknown command %q: %w", m.Op, errBadConfig)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("cannot read commands: %w", err)
	}
	return nil
}
