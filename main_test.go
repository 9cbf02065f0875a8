package main

import (
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"tether/internal/proto"
	"tether/internal/wsframe"
	"tether/internal/wstest"
)

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
	buildDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

// buildBinary builds tether once per test run.
func buildBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "tether-bin")
		if buildErr != nil {
			return
		}
		builtBin = filepath.Join(buildDir, "tether")
		out, err := exec.Command("go", "build", "-o", builtBin, ".").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("cannot build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// node is a running tether process.
type node struct {
	cmd    *exec.Cmd
	addr   string
	notify *net.UnixConn
	exited chan error
}

func startNode(t *testing.T, bin string, args ...string) *node {
	t.Helper()
	addr := freeAddr(t)
	sock := filepath.Join(t.TempDir(), "notify.sock")
	nc, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: sock, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--log-level", "warn"}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n := &node{cmd: cmd, addr: addr, notify: nc, exited: make(chan error, 1)}
	go func() { n.exited <- cmd.Wait() }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-n.exited
	})
	if got := n.nextNotify(t); !strings.Contains(got, "READY=1") {
		t.Fatalf("first notification %q", got)
	}
	return n
}

func (n *node) nextNotify(t *testing.T) string {
	t.Helper()
	buf := make([]byte, 512)
	_ = n.notify.SetReadDeadline(time.Now().Add(15 * time.Second))
	k, err := n.notify.Read(buf)
	if err != nil {
		t.Fatalf("no sd_notify message: %v", err)
	}
	return string(buf[:k])
}

func (n *node) exitCode(t *testing.T, within time.Duration) int {
	t.Helper()
	select {
	case err := <-n.exited:
		n.exited <- err // for the cleanup
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode()
		}
		if err != nil {
			t.Fatal(err)
		}
		return 0
	case <-time.After(within):
		t.Fatalf("tether did not exit within %v", within)
		return -1
	}
}

// wsConn opens a WebSocket (internal/wstest).
func wsConn(t *testing.T, addr string) *wstest.Conn {
	t.Helper()
	c, resp, err := wstest.Dial(addr, "/ws", nil)
	if err != nil {
		t.Fatalf("upgrade: %v %v", resp, err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestBinaryServesAndDrainsOnSIGTERM(t *testing.T) {
	bin := buildBinary(t)
	n := startNode(t, bin, "--drain-window", "500ms")
	resp, err := http.Get("http://" + n.addr + "/healthz")
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("healthz: %v %v", resp, err)
	}
	resp.Body.Close()
	c := wsConn(t, n.addr)
	_ = c.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, p, err := c.ReadFrame(); err != nil || !strings.Contains(string(p), `"welcome"`) {
		t.Fatalf("welcome: %q %v", p, err)
	}
	if err := n.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if got := n.nextNotify(t); !strings.Contains(got, "STOPPING=1") {
		t.Fatalf("notification after SIGTERM: %q", got)
	}
	var sawReconnect bool
	for {
		h, p, err := c.ReadFrame()
		if err != nil {
			t.Fatalf("before close: %v", err)
		}
		if h.Opcode == wsframe.OpClose {
			if code, _, err := wsframe.DecodeClose(p); code != proto.CloseRestart || err != nil || !sawReconnect {
				t.Fatalf("close %d (%v), reconnect seen %v", code, err, sawReconnect)
			}
			break
		}
		sawReconnect = sawReconnect || strings.Contains(string(p), `"reconnect"`)
	}
	if code := n.exitCode(t, 10*time.Second); code != exitOK {
		t.Fatalf("exit code %d", code)
	}
}

func TestBinarySecondSignalExitsAtOnce(t *testing.T) {
	bin := buildBinary(t)
	n := startNode(t, bin, "--drain-window", "1h")
	wsConn(t, n.addr) // keeps the drain from finishing
	_ = n.cmd.Process.Signal(syscall.SIGTERM)
	n.nextNotify(t)
	time.Sleep(100 * time.Millisecond)
	_ = n.cmd.Process.Signal(syscall.SIGINT)
	if code := n.exitCode(t, 5*time.Second); code != exitFailure {
		t.Fatalf("exit code %d", code)
	}
}

func TestBinaryBadFlags(t *testing.T) {
	bin := buildBinary(t)
	for _, args := range [][]string{
		{"--no-such-flag"},
		{"--log-level", "loud"},
		{"--log-format", "xml"},
		{"--redis", "redis://a", "--redis-cluster", "b:1"},
		{"--jwt-secret-file", "/nonexistent/secret"},
		{"--max-conn-buffer", "1000", "--max-message-size", "65536"},
		{"--memory-limit", "lots"},
		{"--memory-limit", "-1GiB"},
		{"stray"},
	} {
		out, err := exec.Command(bin, args...).CombinedOutput()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() != exitUsage {
			t.Errorf("%v: %v\n%s", args, err, out)
		}
	}
}
