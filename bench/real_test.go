package bench

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// The tests in this file run the bench against real tether nodes: the
// repository's binary, built once per test run.

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// tetherBinary builds the tether binary from the repository root.
func tetherBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "tether-bench-test-")
		if err != nil {
			buildErr = err
			return
		}
		builtBin = filepath.Join(dir, "tether")
		cmd := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "build", "-o", builtBin, ".")
		cmd.Dir = ".."
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("cannot build tether: %v", buildErr)
	}
	return builtBin
}

// startNode starts `tether --listen 127.0.0.1:<free port> args…` and waits
// until /healthz answers. The node is killed when the test ends.
func startNode(t *testing.T, args ...string) string {
	t.Helper()
	bin := tetherBinary(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	var logs bytes.Buffer
	cmd := exec.Command(bin, append([]string{"--listen", addr, "--log-level", "warn"}, args...)...)
	cmd.Stdout, cmd.Stderr = &logs, &logs
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("node log:\n%s", logs.String())
		}
	})
	client := &http.Client{Timeout: time.Second}
	defer client.CloseIdleConnections()
	for deadline := time.Now().Add(15 * time.Second); ; {
		resp, err := client.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return addr
			}
		}
		select {
		case <-exited:
			t.Fatalf("node exited: %s", logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("node did not answer /healthz: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestScenariosAgainstRealNode(t *testing.T) {
	addr := startNode(t, "--ping-interval", "1s")
	common := []string{"--url", addr, "-n", "150", "--workers", "2", "--timeout", "30s"}
	t.Run("connect", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"connect"}, common...)...)
		if code != exitOK || r.Connect.Established != 150 {
			t.Fatalf("exit %d, %+v", code, r.Connect)
		}
	})
	t.Run("idle", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"idle", "--hold", "2s"}, common...)...)
		if code != exitOK || r.Idle.StillUp != 150 || r.Idle.MetricsError != "" || r.Idle.RSSAfterBytes <= 0 {
			t.Fatalf("exit %d, %+v", code, r.Idle)
		}
		if r.Connect.Events["pings_answered"] == 0 {
			t.Errorf("no server pings answered: %v", r.Connect.Events)
		}
	})
	t.Run("broadcast", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"broadcast", "--messages", "20", "--rate", "100", "--channels", "2"}, common...)...)
		d := r.Delivery
		if code != exitOK || d.Expected != 150*20 || d.Delivered != d.Expected || d.Missing != 0 || d.Duplicates != 0 {
			t.Fatalf("exit %d, %+v", code, d)
		}
	})
	t.Run("throughput", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"throughput", "--messages", "100", "--batch", "25"}, common...)...)
		d := r.Delivery
		if code != exitOK || d.Delivered != 150*100 || d.Missing != 0 || d.Duplicates != 0 || r.Server.CPUS < 0 {
			t.Fatalf("exit %d, %+v", code, d)
		}
	})
	t.Run("churn", func(t *testing.T) {
		r, code, _ := runBench(t, append([]string{"churn"}, common...)...)
		if code != exitOK || r.Churn.Back != 150 {
			t.Fatalf("exit %d, %+v", code, r.Churn)
		}
	})
}

// TestChurnRefusedAndRetried storms a node whose accept rate is low: some
// upgrades are refused with 503 and retried after Retry-After.
func TestChurnRefusedAndRetried(t *testing.T) {
	addr := startNode(t, "--accept-rate", "200", "--accept-burst", "40", "--reconnect-jitter", "1s")
	r, code, _ := runBench(t, "churn", "--url", addr, "-n", "120", "--timeout", "30s")
	c := r.Churn
	if code != exitOK || c.Back != 120 || c.Refused503 == 0 || c.FailuresByReason["http_503"] != c.Refused503 {
		t.Fatalf("exit %d, churn %+v", code, c)
	}
	if c.AllBackS < 1 {
		t.Errorf("all back after %.2f s; refused clients must wait for Retry-After (1 s)", c.AllBackS)
	}
}

// TestRealBinaryBench runs `tether bench connect` as the real binary, so the
// coordinator starts its workers from that binary (`tether bench worker`).
func TestRealBinaryBench(t *testing.T) {
	addr := startNode(t)
	jf := filepath.Join(t.TempDir(), "r.json")
	cmd := exec.Command(tetherBinary(t), "bench", "connect", "--url", addr, "-n", "100", "--workers", "2", "--json", jf)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	if !strings.Contains(string(out), "100/100 up") || !strings.Contains(string(out), "2 worker(s)") {
		t.Fatalf("unexpected output:\n%s", out)
	}
	var r Result
	b, _ := os.ReadFile(jf)
	if err := json.Unmarshal(b, &r); err != nil || r.Connect.Established != 100 || len(r.Tool.WorkerCPU) != 2 {
		t.Fatalf("result %v: %s", err, b)
	}
}

// hs256 signs claims as a JWT with the standard library.
func hs256(t *testing.T, secret []byte, claims map[string]any) string {
	t.Helper()
	enc := base64.RawURLEncoding
	body, err := json.Marshal(claims)
	if err != nil {
		t.Fatal(err)
	}
	msg := enc.EncodeToString([]byte(`{"alg":"HS256","typ":"JWT"}`)) + "." + enc.EncodeToString(body)
	mac := hmac.New(sha256.New, secret)
	mac.Write([]byte(msg))
	return msg + "." + enc.EncodeToString(mac.Sum(nil))
}

func TestTokenAgainstAuthNode(t *testing.T) {
	secret := []byte("bench-test-secret-0123456789abcdef")
	sf := filepath.Join(t.TempDir(), "jwt")
	if err := os.WriteFile(sf, secret, 0o600); err != nil {
		t.Fatal(err)
	}
	addr := startNode(t, "--jwt-secret-file", sf)
	tok := hs256(t, secret, map[string]any{"sub": "bench", "exp": time.Now().Add(time.Hour).Unix(), "channels": []string{"bench.*"}})
	r, code, _ := runBench(t, "connect", "--url", addr, "-n", "30", "--token", tok)
	if code != exitOK || r.Connect.Established != 30 {
		t.Fatalf("with token: exit %d, %+v", code, r.Connect)
	}
	r, code, _ = runBench(t, "connect", "--url", addr, "-n", "30")
	if code != exitCheck || r.Connect.Established != 0 || r.Connect.FailuresByReason["http_401"] != 30 || r.Connect.Attempts != 30 {
		t.Fatalf("without token: exit %d, %+v", code, r.Connect)
	}
}
