// Package deploy_test runs the shipped load balancer configs (haproxy.cfg,
// nginx.conf) with real haproxy and nginx processes in front of real
// tether processes, built once from this checkout, and checks what an
// operator relies on: idle sockets are kept or the cut is named, a crashed
// node costs no failed reconnect, a Redis outage never empties the pool,
// browsers on a non-default port can upgrade, and neither the API nor the
// metrics reach the public. The configs are rendered with test ports and
// descriptor limits; every other line is the shipped one.
package deploy_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tether/client"
	"tether/internal/testutil"
)

// tetherBin is the tether binary, built once by TestMain.
var tetherBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "tether-deploy")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	tetherBin = filepath.Join(dir, "tether")
	if out, err := exec.Command("go", "build", "-o", tetherBin, "tether").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "cannot build tether: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// node is a tether process owned by one test, killed when the test ends.
type node struct {
	t    testing.TB
	args []string
	addr string // public listener: /ws and /
	api  string // --api-listen, or addr when the node has none
	log  string // the file the process writes its stdout and stderr to

	mu     sync.Mutex
	cmd    *exec.Cmd
	exited chan struct{}
}

// startNode starts tether on free ports of 127.0.0.1 with a private API
// listener and args, and waits until it answers /healthz.
func startNode(t testing.TB, args ...string) *node {
	t.Helper()
	n := &node{t: t, addr: freeAddr(t), log: filepath.Join(t.TempDir(), "tether.log")}
	n.api = freeAddr(t)
	n.args = append([]string{"--listen", n.addr, "--api-listen", n.api, "--log-level", "warn"}, args...)
	n.start()
	t.Cleanup(n.kill)
	return n
}

// startPublicNode starts tether without --api-listen: the API and the
// metrics are on the public listener, as on a node set up carelessly.
func startPublicNode(t testing.TB, args ...string) *node {
	t.Helper()
	n := &node{t: t, addr: freeAddr(t), log: filepath.Join(t.TempDir(), "tether.log")}
	n.api = n.addr
	n.args = append([]string{"--listen", n.addr, "--log-level", "warn"}, args...)
	n.start()
	t.Cleanup(n.kill)
	return n
}

// start runs the process with n.args and waits until it is healthy.
func (n *node) start() {
	n.t.Helper()
	out, err := os.OpenFile(n.log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		n.t.Fatal(err)
	}
	defer out.Close() // the child holds its own copy
	cmd := exec.Command(tetherBin, n.args...)
	cmd.Stdout, cmd.Stderr = out, out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		n.t.Fatalf("cannot start tether: %v", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait()
		close(exited)
	}()
	n.mu.Lock()
	n.cmd, n.exited = cmd, exited
	n.mu.Unlock()
	ok := testutil.WaitFor(15*time.Second, func() bool {
		resp, err := http.Get("http://" + n.api + "/healthz")
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == 200
	})
	if !ok {
		n.kill()
		n.t.Fatalf("tether %v is not healthy after 15s:\n%s", n.args, n.output())
	}
}

// kill sends SIGKILL and waits for the process to exit. It is safe to
// call more than once.
func (n *node) kill() { n.signal(syscall.SIGKILL, true) }

// signal sends sig to the process; with wait, it waits for it to exit.
func (n *node) signal(sig syscall.Signal, wait bool) {
	n.mu.Lock()
	cmd, exited := n.cmd, n.exited
	n.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(sig)
	if wait {
		select {
		case <-exited:
		case <-time.After(time.Minute):
			n.t.Errorf("tether did not exit on %v", sig)
		}
	}
}

// output returns what the process (and any earlier process of n) wrote.
func (n *node) output() string {
	b, _ := os.ReadFile(n.log)
	return string(b)
}

// waitExit waits up to d for the process to exit by itself.
func (n *node) waitExit(d time.Duration) bool {
	n.mu.Lock()
	exited := n.exited
	n.mu.Unlock()
	select {
	case <-exited:
		return true
	case <-time.After(d):
		return false
	}
}

// backend is n as the load balancer sees it: health checks go to the API
// listener.
func (n *node) backend() testutil.LBBackend {
	_, port, _ := net.SplitHostPort(n.api)
	p, _ := strconv.Atoi(port)
	return testutil.LBBackend{Addr: n.addr, CheckPort: p}
}

// metric returns the value of the metric line name (with its labels) from
// the node's /metrics, or 0 when there is none.
func (n *node) metric(name string) float64 {
	resp, err := http.Get("http://" + n.api + "/metrics")
	if err != nil {
		n.t.Errorf("cannot read metrics: %v", err)
		return 0
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}

// publish publishes data to channel through n's API and returns the
// offset, or an error for anything but 200.
func (n *node) publish(channel, data string) (uint64, error) {
	body := `{"channel":"` + channel + `","data":` + data + `}`
	resp, err := http.Post("http://"+n.api+"/api/publish", "application/json", strings.NewReader(body))
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 {
		return 0, fmt.Errorf("publish: %s: %s", resp.Status, b)
	}
	var off uint64
	if _, err := fmt.Sscanf(string(b), `{"offset":%d`, &off); err != nil {
		return 0, fmt.Errorf("publish: cannot read %q: %v", b, err)
	}
	return off, nil
}

func freeAddr(t testing.TB) string {
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(testutil.FreePort(t)))
}

// edit replaces the one occurrence of old in a shipped config with new.
type edit struct{ old, new string }

// shipped returns deploy/<name> with edits applied, each of which must
// match exactly once, so that a change to the shipped file that a test
// relies on fails loudly instead of testing something else.
func shipped(t testing.TB, name string, edits ...edit) string {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, e := range edits {
		if n := strings.Count(s, e.old); n != 1 {
			t.Fatalf("%s: %q occurs %d times, want once", name, e.old, n)
		}
		s = strings.Replace(s, e.old, e.new, 1)
	}
	return s
}

// haproxyTest are the edits that run deploy/haproxy.cfg in a test: its
// ports and nodes, and a maxconn within the test's descriptor limit
// (20,000 per process).
var haproxyTest = []edit{
	{"    maxconn 500000\n", "    maxconn 8000\n"},
	{"    bind :80\n", "    bind 127.0.0.1:{{.Port}}\n"},
	{"    server node1 10.0.0.11:8080 check\n    server node2 10.0.0.12:8080 check\n    server node3 10.0.0.13:8080 check\n",
		"{{range $i, $b := .Backends}}    server node{{$i}} {{$b.Addr}} check port {{$b.CheckPort}}\n{{end}}"},
}

// nginxTest are the edits that run deploy/nginx.conf in a test: its ports
// and nodes, temporary paths a test may write, one worker, and limits
// within the test's descriptor limit.
var nginxTest = []edit{
	{"worker_processes auto;\n", "worker_processes 1;\n"},
	{"worker_rlimit_nofile 1048576;\n", "worker_rlimit_nofile 19000;\n"},
	{"events { worker_connections 500000; }\n", "events { worker_connections 8000; }\n"},
	{"http {\n", "http {\n    client_body_temp_path {{.Dir}}/body;\n    proxy_temp_path {{.Dir}}/proxy;\n    access_log off;\n"},
	{"        server 10.0.0.11:8080 max_fails=1 fail_timeout=5s;\n        server 10.0.0.12:8080 max_fails=1 fail_timeout=5s;\n        server 10.0.0.13:8080 max_fails=1 fail_timeout=5s;\n",
		"{{range .Backends}}        server {{.Addr}} max_fails=1 fail_timeout=5s;\n{{end}}"},
	{"        listen 80;\n", "        listen 127.0.0.1:{{.Port}};\n"},
}

// lbKind is one of the two shipped load balancers.
type lbKind struct {
	name  string
	start func(t testing.TB, extra []edit, nodes ...*node) *testutil.LB
}

var lbKinds = []lbKind{
	{"haproxy", startHAProxy},
	{"nginx", startNginx},
}

// startHAProxy runs the shipped haproxy.cfg (with extra edits) in front of
// nodes.
func startHAProxy(t testing.TB, extra []edit, nodes ...*node) *testutil.LB {
	t.Helper()
	cfg := shipped(t, "haproxy.cfg", append(append([]edit(nil), haproxyTest...), extra...)...)
	return testutil.StartHAProxy(t, cfg, backends(nodes)...)
}

// startNginx runs the shipped nginx.conf (with extra edits) in front of
// nodes.
func startNginx(t testing.TB, extra []edit, nodes ...*node) *testutil.LB {
	t.Helper()
	cfg := shipped(t, "nginx.conf", append(append([]edit(nil), nginxTest...), extra...)...)
	return testutil.StartNginx(t, cfg, backends(nodes)...)
}

func backends(nodes []*node) []testutil.LBBackend {
	var bs []testutil.LBBackend
	for _, n := range nodes {
		bs = append(bs, n.backend())
	}
	return bs
}

// fleet is n Go clients (tether/client) subscribed to one channel, with
// every state event and message recorded with its time.
type fleet struct {
	clients []*client.Client

	mu     sync.Mutex
	events [][]timedEvent // per client
}

type timedEvent struct {
	at time.Time
	client.Event
}

// dialFleet connects n clients to url (at most 32 dials at a time) and
// subscribes each to channel; onMsg, if not nil, is client i's handler.
func dialFleet(t testing.TB, url string, n int, channel string, onMsg func(i int, m client.Message)) *fleet {
	t.Helper()
	f := &fleet{
		clients: make([]*client.Client, n),
		events:  make([][]timedEvent, n),
	}
	t.Cleanup(f.close)
	sem := make(chan struct{}, 32)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			c, err := client.Dial(ctx, url, client.Options{
				OnEvent: func(ev client.Event) {
					f.mu.Lock()
					f.events[i] = append(f.events[i], timedEvent{time.Now(), ev})
					f.mu.Unlock()
				},
			})
			if err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
				return
			}
			f.mu.Lock()
			f.clients[i] = c
			f.mu.Unlock()
			if _, err := c.Subscribe(channel, func(m client.Message) {
				if onMsg != nil {
					onMsg(i, m)
				}
			}); err != nil {
				errs <- fmt.Errorf("client %d: %w", i, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	return f
}

func (f *fleet) close() {
	f.mu.Lock()
	cs := f.clients
	f.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range cs {
		if c != nil {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_ = c.Close()
			}()
		}
	}
	wg.Wait()
}

// count returns how many events of type typ clients saw after since.
func (f *fleet) count(typ client.EventType, since time.Time) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, evs := range f.events {
		for _, e := range evs {
			if e.Type == typ && !e.at.Before(since) {
				n++
			}
		}
	}
	return n
}
