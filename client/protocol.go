package client

import (
	"encoding/json"
	"time"
)

// position is a channel's stream position as sent in "since".
type position struct {
	Offset uint64 `json:"offset"`
	Epoch  string `json:"epoch"`
}

// outFrame is every frame the client sends (docs/protocol.md,
// "Client → server"); unused fields are omitted.
type outFrame struct {
	Op      string          `json:"op"`
	Channel string          `json:"channel,omitempty"`
	Since   *position       `json:"since,omitempty"`
	Data    json.RawMessage `json:"data,omitempty"`
	ID      uint64          `json:"id,omitempty"`
	Token   string          `json:"token,omitempty"` // refresh
	// IdempotencyKey makes a publish happen once (PublishIdempotent).
	IdempotencyKey string `json:"idempotency_key,omitempty"`
}

// inFrame is every frame the server sends (docs/protocol.md,
// "Server → client"); fields absent from a frame keep their zero value.
type inFrame struct {
	Op        string          `json:"op"`
	ID        uint64          `json:"id"`
	Channel   string          `json:"channel"`
	Offset    uint64          `json:"offset"`
	Epoch     string          `json:"epoch"`
	Recovered bool            `json:"recovered"`
	Replayed  bool            `json:"replayed"` // ack
	Data      json.RawMessage `json:"data"`
	Code      string          `json:"code"`
	Message   string          `json:"message"`
	AfterMS   int64           `json:"after_ms"`

	// presence answers, join and leave (presence.go)
	Clients   int      `json:"clients"`
	Users     int      `json:"users"`
	Members   []Member `json:"members"`
	Truncated bool     `json:"truncated"`
	User      string   `json:"user"`
	Conn      string   `json:"conn"`
	Exp       int64    `json:"exp"`    // refresh_due, refreshed
	Reason    string   `json:"reason"` // unsubscribed by the server
}

// welcomeFrame is the server's first frame.
type welcomeFrame struct {
	Op             string `json:"op"`
	Node           string `json:"node"`
	Conn           string `json:"conn"`
	PingIntervalMS int64  `json:"ping_interval_ms"`
}

// pingInterval returns the server's ping interval, or def when the
// welcome frame did not carry a usable one.
func (w *welcomeFrame) pingInterval(def time.Duration) time.Duration {
	if w.PingIntervalMS <= 0 {
		return def
	}
	return time.Duration(w.PingIntervalMS) * time.Millisecond
}

// Pre-encoded control messages.
var (
	pingJSON = []byte(`{"op":"ping"}`)
	pongJSON = []byte(`{"op":"pong"}`)
)
