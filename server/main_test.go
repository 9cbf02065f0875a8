package server

import (
	"context"
	"os"
	"testing"

	"github.com/lesismal/nbio/logging"
	"github.com/redis/go-redis/v9"
)

func TestMain(m *testing.M) {
	logging.SetLevel(logging.LevelNone)
	// go-redis logs every failed dial of the outage tests to stderr; the
	// bus reports what matters through its slog.Logger.
	redis.SetLogger(quietRedisLog{})
	os.Exit(m.Run())
}

type quietRedisLog struct{}

func (quietRedisLog) Printf(context.Context, string, ...any) {}
