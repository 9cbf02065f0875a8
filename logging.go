package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/lesismal/nbio/logging"
)

// rateLimited writes a library's log lines to slog, at most logBurst lines
// a second; the rest are counted and reported with the next line that gets
// through. nbio and go-redis both log per-connection failures.
type rateLimited struct {
	log *slog.Logger

	mu         sync.Mutex
	second     int64
	lines      int
	suppressed int
}

const logBurst = 10

func (l *rateLimited) emit(level slog.Level, component, format string, v ...any) {
	if !l.log.Enabled(context.Background(), level) {
		return
	}
	l.mu.Lock()
	now := time.Now().Unix()
	if now != l.second {
		l.second, l.lines = now, 0
	}
	l.lines++
	if l.lines > logBurst {
		l.suppressed++
		l.mu.Unlock()
		return
	}
	suppressed := l.suppressed
	l.suppressed = 0
	l.mu.Unlock()
	args := []any{"component", component}
	if suppressed > 0 {
		args = append(args, "suppressed", suppressed)
	}
	l.log.Log(context.Background(), level, strings.TrimSpace(fmt.Sprintf(format, v...)), args...)
}

// nbioLogger routes nbio's global logger into slog. nbio's own info lines
// (engine start and stop) are demoted to debug: tether logs those events
// itself.
type nbioLogger struct{ rateLimited }

func (l *nbioLogger) Debug(format string, v ...any) { l.emit(slog.LevelDebug, "nbio", format, v...) }
func (l *nbioLogger) Info(format string, v ...any)  { l.emit(slog.LevelDebug, "nbio", format, v...) }
func (l *nbioLogger) Warn(format string, v ...any)  { l.emit(slog.LevelWarn, "nbio", format, v...) }
func (l *nbioLogger) Error(format string, v ...any) { l.emit(slog.LevelError, "nbio", format, v...) }

func useNbioLogger(log *slog.Logger) {
	logging.SetLogger(&nbioLogger{rateLimited{log: log}})
	logging.SetLevel(logging.LevelDebug)
}
