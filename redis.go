package main

import (
	"context"
	"log/slog"
	"strings"

	"github.com/VictoriaMetrics/metrics"
	"github.com/redis/go-redis/v9"

	"tether/bus"
)

func newRedisBus(ctx context.Context, o *options, log *slog.Logger, set *metrics.Set) (*bus.Bus, error) {
	redis.SetLogger(&redisLogger{rateLimited{log: log}})
	cfg := bus.RedisConfig{
		Config:      o.busCfg,
		URL:         o.redisURL,
		Linger:      o.busLinger,
		Shards:      o.busShards,
		QueueSize:   o.busQueue,
		PresenceTTL: o.presTTL,
	}
	if o.redisNodes != "" {
		for _, a := range strings.Split(o.redisNodes, ",") {
			if a = strings.TrimSpace(a); a != "" {
				cfg.ClusterAddrs = append(cfg.ClusterAddrs, a)
			}
		}
	}
	return bus.NewRedis(ctx, cfg, log, set)
}

// redisLogger routes go-redis' global logger (dial failures and the like,
// repeated many times a second while Redis is down) into slog at warn,
// rate limited.
type redisLogger struct{ rateLimited }

func (l *redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.emit(slog.LevelWarn, "redis", format, v...)
}
