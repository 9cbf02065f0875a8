package bench

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// This file holds the processes a soak owns: one redis-server and the
// tether nodes, started from the given binaries on loopback ports chosen
// once, so that a restart comes back on the same address; and the readings
// of their memory, goroutines and descriptors.

// ownedProc is a child process the soak started.
type ownedProc struct {
	name   string
	bin    string
	args   []string
	log    *os.File
	cmd    *exec.Cmd
	exited chan struct{}
}

// freePort returns a loopback TCP port that was free a moment ago.
func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("cannot find a free port: %w", err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// start starts the process, its output appended to its log file.
func (p *ownedProc) start() error {
	p.cmd = exec.Command(p.bin, p.args...)
	p.cmd.Stdout, p.cmd.Stderr = p.log, p.log
	if err := p.cmd.Start(); err != nil {
		return fmt.Errorf("cannot start %s (%s): %w", p.name, p.bin, err)
	}
	p.exited = make(chan struct{})
	cmd, exited := p.cmd, p.exited
	go func() { _ = cmd.Wait(); close(exited) }()
	return nil
}

// stop sends sig and waits up to wait for the exit, then kills the process
// by its PID. It reports whether the process left by itself.
func (p *ownedProc) stop(sig syscall.Signal, wait time.Duration) bool {
	if p.cmd == nil || p.cmd.Process == nil {
		return true
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		return true
	case <-time.After(wait):
		_ = p.cmd.Process.Kill()
		<-p.exited
		return false
	}
}

// newOwnedProc prepares a process whose output goes to dir/name.log.
func newOwnedProc(dir, name, bin string, args ...string) (*ownedProc, error) {
	f, err := os.OpenFile(filepath.Join(dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, fmt.Errorf("cannot open the log of %s: %w", name, err)
	}
	return &ownedProc{name: name, bin: bin, args: args, log: f}, nil
}

// redisProc is the soak's redis-server: no persistence, so a restart comes
// back empty, as a failed cache does.
type redisProc struct {
	*ownedProc
	addr string
}

func newRedisProc(dir, bin string) (*redisProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	p, err := newOwnedProc(dir, "redis", bin, "--port", strconv.Itoa(port), "--bind", "127.0.0.1",
		"--save", "", "--appendonly", "no", "--protected-mode", "no")
	if err != nil {
		return nil, err
	}
	return &redisProc{ownedProc: p, addr: "127.0.0.1:" + strconv.Itoa(port)}, nil
}

// startAndWait starts redis and waits until it answers PING.
func (r *redisProc) startAndWait() error {
	if err := r.start(); err != nil {
		return err
	}
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if _, err := redisCommand(r.addr, "PING"); err == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("cannot start redis on %s: no answer to PING", r.addr)
}

// memory returns used_memory and used_memory_rss from INFO memory.
func (r *redisProc) memory() (used, rss float64, err error) {
	info, err := redisCommand(r.addr, "INFO", "memory")
	if err != nil {
		return 0, 0, err
	}
	for _, line := range strings.Split(info, "\r\n") {
		k, v, _ := strings.Cut(line, ":")
		switch k {
		case "used_memory":
			used, _ = strconv.ParseFloat(v, 64)
		case "used_memory_rss":
			rss, _ = strconv.ParseFloat(v, 64)
		}
	}
	return used, rss, nil
}

// redisCommand sends one command and returns a simple or bulk string reply.
func redisCommand(addr string, args ...string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(args))
	for _, a := range args {
		fmt.Fprintf(&b, "$%d\r\n%s\r\n", len(a), a)
	}
	if _, err := io.WriteString(c, b.String()); err != nil {
		return "", err
	}
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil {
		return "", err
	}
	line = strings.TrimRight(line, "\r\n")
	switch {
	case strings.HasPrefix(line, "+"):
		return line[1:], nil
	case strings.HasPrefix(line, "$"):
		n, err := strconv.Atoi(line[1:])
		if err != nil || n < 0 {
			return "", fmt.Errorf("bad redis reply %q", line)
		}
		buf := make([]byte, n+2)
		if _, err := io.ReadFull(br, buf); err != nil {
			return "", err
		}
		return string(buf[:n]), nil
	}
	return "", fmt.Errorf("redis replied %q", line)
}

// nodeProc is one tether node of the soak.
type nodeProc struct {
	*ownedProc
	addr string // 127.0.0.1:port
}

func newNodeProc(dir string, i int, bin, redisAddr string, extra []string) (*nodeProc, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	addr := "127.0.0.1:" + strconv.Itoa(port)
	args := append([]string{"--listen", addr, "--redis", "redis://" + redisAddr, "--log-level", "warn"}, extra...)
	p, err := newOwnedProc(dir, "node"+strconv.Itoa(i+1), bin, args...)
	if err != nil {
		return nil, err
	}
	return &nodeProc{ownedProc: p, addr: addr}, nil
}

// startAndWait starts the node and waits until /healthz answers 200.
func (n *nodeProc) startAndWait(client *http.Client) error {
	if err := n.start(); err != nil {
		return err
	}
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-n.exited:
			return fmt.Errorf("cannot start %s: it exited (see %s)", n.name, n.log.Name())
		default:
		}
		resp, err := client.Get("http://" + n.addr + "/healthz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("cannot start %s: /healthz did not answer", n.name)
}

// nodeReading is one reading of a node's /metrics.
type nodeReading struct {
	OK         bool
	RSS        float64 // process_resident_memory_bytes
	Heap       float64 // go_memstats_heap_inuse_bytes
	Anon       float64 // process_resident_memory_anon_bytes: RSS less the binary's mapped pages
	HeapAlloc  float64 // go_memstats_heap_alloc_bytes: objects, live and not yet collected
	Goroutines float64 // go_goroutines
	FDs        float64 // process_open_fds
	Conns      float64 // tether_connections
	// Disconnects are tether_disconnects_total by reason.
	Disconnects map[string]float64
}

// readNode scrapes a node's /metrics.
func readNode(client *http.Client, api, apiKey string) nodeReading {
	r := nodeReading{Disconnects: map[string]float64{}}
	_ = readMetrics(client, api, apiKey, func(body io.Reader) {
		eachMetric(body, func(name string, v float64) {
			switch {
			case name == "process_resident_memory_bytes":
				r.RSS, r.OK = v, true
			case name == "go_memstats_heap_inuse_bytes":
				r.Heap = v
			case name == "process_resident_memory_anon_bytes":
				r.Anon = v
			case name == "go_memstats_heap_alloc_bytes":
				r.HeapAlloc = v
			case name == "go_goroutines":
				r.Goroutines = v
			case name == "process_open_fds":
				r.FDs = v
			case name == "tether_connections":
				r.Conns = v
			case strings.HasPrefix(name, `tether_disconnects_total{reason="`):
				r.Disconnects[strings.TrimSuffix(strings.TrimPrefix(name, `tether_disconnects_total{reason="`), `"}`)] = v
			}
		})
	})
	return r
}
