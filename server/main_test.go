package server

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lesismal/nbio/logging"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) {
	logging.SetLevel(logging.LevelNone)
	// go-redis logs every failed dial of the outage tests to stderr; the
	// bus reports what matters through its slog.Logger.
	redis.SetLogger(quietRedisLog{})
	code := m.Run()
	if code == 0 {
		if leaked := leakedGoroutines(5 * time.Second); leaked != "" {
			fmt.Fprintf(os.Stderr, "goroutines of the server or the engine outlived every test:\n%s\n", leaked)
			code = 1
		}
	}
	os.Exit(code)
}

// leakedGoroutines waits up to wait for every goroutine running server or
// nbio code to end, and returns the stacks of those that did not.
func leakedGoroutines(wait time.Duration) string {
	deadline := time.Now().Add(wait)
	for {
		buf := make([]byte, 1<<20)
		buf = buf[:runtime.Stack(buf, true)]
		var leaked []string
		for _, g := range strings.Split(string(buf), "\n\n") {
			if strings.Contains(g, "tether/server.") && !strings.Contains(g, "tether/server.TestMain") ||
				strings.Contains(g, "github.com/lesismal/nbio.") {
				leaked = append(leaked, g)
			}
		}
		if len(leaked) == 0 || time.Now().After(deadline) {
			return strings.Join(leaked, "\n\n")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}
