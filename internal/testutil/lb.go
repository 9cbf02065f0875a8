package testutil

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// LBBackend is one tether node behind a load balancer.
type LBBackend struct {
	// Addr is the node's public listener, host:port.
	Addr string
	// CheckPort is the port the load balancer health-checks (the node's
	// --api-listen port). If zero, the check goes to Addr's port.
	CheckPort int
}

// LBConfig is the data a load balancer config template is executed with.
type LBConfig struct {
	// Port is the free port of 127.0.0.1 the load balancer must listen on.
	Port int
	// Dir is a temporary directory the load balancer may write to (pid
	// file, nginx's temp paths).
	Dir string
	// Backends are the tether nodes, in order.
	Backends []LBBackend
}

// LB is a load balancer process (haproxy or nginx) owned by one test,
// started in the foreground from a config template and killed by PID when
// the test ends. Its methods are safe for concurrent use.
type LB struct {
	// Immutable after start.
	tb   testing.TB
	name string
	file string // the generated config
	cfg  LBConfig
	out  *syncBuffer

	mu  sync.Mutex // guards cmd
	cmd *exec.Cmd
}

// StartHAProxy starts haproxy with the config that tmpl (a text/template of
// an haproxy.cfg, executed with an LBConfig) yields for backends, and
// waits until it accepts connections. Without haproxy on PATH (or in
// /usr/sbin) the test is skipped, or failed when CI is "true".
func StartHAProxy(tb testing.TB, tmpl string, backends ...LBBackend) *LB {
	tb.Helper()
	bin := lbPath(tb, "haproxy", "haproxy")
	l, cfg := newLB(tb, "haproxy", "haproxy.cfg", tmpl, backends)
	if out, err := exec.Command(bin, "-c", "-q", "-f", cfg).CombinedOutput(); err != nil {
		tb.Fatalf("haproxy rejects its config: %v\n%s\n%s", err, out, l.config())
	}
	l.start(exec.Command(bin, "-db", "-f", cfg))
	return l
}

// StartNginx starts nginx in the foreground with the config that tmpl (a
// text/template of a whole nginx.conf, executed with an LBConfig) yields for
// backends, and waits until it accepts connections. The template must set
// nginx's temp paths under .Dir when the test may run as a user other than
// root. Without nginx on PATH (or in /usr/sbin) the test is skipped, or
// failed when CI is "true".
func StartNginx(tb testing.TB, tmpl string, backends ...LBBackend) *LB {
	tb.Helper()
	bin := lbPath(tb, "nginx", "nginx-light")
	l, cfg := newLB(tb, "nginx", "nginx.conf", tmpl, backends)
	args := []string{"-e", "stderr", "-p", l.cfg.Dir, "-c", cfg,
		"-g", "daemon off; pid " + filepath.Join(l.cfg.Dir, "nginx.pid") + ";"}
	if out, err := exec.Command(bin, append([]string{"-t", "-q"}, args...)...).CombinedOutput(); err != nil {
		tb.Fatalf("nginx rejects its config: %v\n%s\n%s", err, out, l.config())
	}
	l.start(exec.Command(bin, args...))
	return l
}

// lbPath returns the path of a load balancer binary, or skips the test
// (fails it when CI=true) when there is none. Debian installs both in
// /usr/sbin, which is not on every user's PATH.
func lbPath(tb testing.TB, name, pkg string) string {
	tb.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := "/usr/sbin/" + name; fileExists(p) {
		return p
	}
	msg := fmt.Sprintf("%s not found on PATH or in /usr/sbin: install it (Debian: apt-get install %s) to run this test", name, pkg)
	if os.Getenv("CI") == "true" {
		tb.Fatal(msg)
	}
	tb.Skip(msg)
	return ""
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

// newLB writes the config that tmpl yields into file in a new temporary
// directory and returns the LB, not started, and the config's path.
func newLB(tb testing.TB, name, file, tmpl string, backends []LBBackend) (*LB, string) {
	tb.Helper()
	l := &LB{
		tb:   tb,
		name: name,
		cfg:  LBConfig{Port: FreePort(tb), Dir: tb.TempDir(), Backends: backends},
		out:  new(syncBuffer),
	}
	t, err := template.New(name).Option("missingkey=error").Parse(tmpl)
	if err != nil {
		tb.Fatalf("cannot parse %s config template: %v", name, err)
	}
	var b bytes.Buffer
	if err := t.Execute(&b, l.cfg); err != nil {
		tb.Fatalf("cannot execute %s config template: %v", name, err)
	}
	path := filepath.Join(l.cfg.Dir, file)
	if err := os.WriteFile(path, b.Bytes(), 0o644); err != nil {
		tb.Fatal(err)
	}
	l.file = path
	return l, path
}

// config returns the generated config, for error messages.
func (l *LB) config() string {
	b, _ := os.ReadFile(l.file)
	return string(b)
}

func (l *LB) start(cmd *exec.Cmd) {
	l.tb.Helper()
	cmd.Stdout, cmd.Stderr = l.out, l.out
	// Own process group: nginx's workers die with the master in Stop.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	if err := cmd.Start(); err != nil {
		l.tb.Fatalf("cannot start %s: %v", l.name, err)
	}
	l.mu.Lock()
	l.cmd = cmd
	l.mu.Unlock()
	l.tb.Cleanup(l.Stop)
	deadline := time.Now().Add(startTimeout)
	for {
		c, err := net.DialTimeout("tcp", l.Addr(), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		if time.Now().After(deadline) {
			l.Stop()
			l.tb.Fatalf("%s did not listen on %s: %v\n%s", l.name, l.Addr(), err, l.Output())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Addr returns the load balancer's address, 127.0.0.1:port.
func (l *LB) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(l.cfg.Port)) }

// Output returns what the process wrote to stdout and stderr so far.
func (l *LB) Output() string { return l.out.String() }

// Stop kills the load balancer (its whole process group) and waits for it.
// It is safe to call more than once.
func (l *LB) Stop() {
	l.mu.Lock()
	cmd := l.cmd
	l.cmd = nil
	l.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	_ = cmd.Wait()
}

// syncBuffer is a bytes.Buffer safe for concurrent use.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
