package client_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/lesismal/nbio/logging"

	"tether/bus"
	"tether/server"
)

func TestMain(m *testing.M) {
	logging.SetLevel(logging.LevelNone)
	os.Exit(m.Run())
}

// testLogger returns a logger that writes to the test log when -v is set.
func testLogger(t testing.TB) *slog.Logger {
	if !testing.Verbose() {
		return slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t testing.TB }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Log(string(p))
	return len(p), nil
}

// startServer starts a real tether node on 127.0.0.1 with cfg (Listen and
// short test timings filled in where unset) and stops it when the test
// ends.
func startServer(t testing.TB, cfg server.Config, b *bus.Bus) *server.Server {
	t.Helper()
	if cfg.Listen == "" {
		cfg.Listen = "127.0.0.1:0"
	}
	if cfg.ClientMsgRate == 0 {
		cfg.ClientMsgRate = -1
	}
	if cfg.Pollers == 0 {
		cfg.Pollers = 1
	}
	if cfg.Flushers == 0 {
		cfg.Flushers = 1
	}
	if cfg.StaticFS == nil {
		// What main.go embeds, plus the test harness in js/testdata.
		cfg.StaticFS = os.DirFS("js")
	}
	srv, err := server.New(cfg, b, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			t.Errorf("cannot shut down server: %v", err)
		}
	})
	return srv
}

// newBus returns a local bus closed when the test ends.
func newBus(t testing.TB) *bus.Bus {
	b := bus.NewLocal(bus.Config{HistorySize: 10000})
	t.Cleanup(func() { b.Close() })
	return b
}

func wsURL(srv *server.Server) string { return "ws://" + srv.Addr().String() + "/ws" }

// httpClient keeps no idle connections, so that none outlives a test.
var httpClient = &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

// apiPost posts body as JSON to the node's HTTP API at path and returns the
// status and the response body.
func apiPost(t testing.TB, srv *server.Server, path string, body any) (int, string) {
	t.Helper()
	b, _ := json.Marshal(body)
	resp, err := httpClient.Post("http://"+srv.Addr().String()+path, "application/json", bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(out)
}
