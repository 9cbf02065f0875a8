package client

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	"tether/internal/proto"
)

// Errors returned by a Client. Check them with errors.Is.
var (
	// ErrClosed means the client has been closed.
	ErrClosed = errors.New("client: closed")
	// ErrDisconnected means the connection was lost before the server
	// answered a request. A publish may or may not have been stored.
	ErrDisconnected = errors.New("client: disconnected before the reply")
	// ErrWatchdog means no frame arrived from the server within its ping
	// interval plus Options.WatchdogGrace, so the client gave up on the
	// connection.
	ErrWatchdog = errors.New("client: no frame from the server within ping interval + grace")
	// ErrUnauthorized matches a refused upgrade (HTTP 401) or a close with
	// 4001: the server does not accept the token.
	ErrUnauthorized = errors.New("client: unauthorized")
	// ErrAlreadySubscribed means the client already holds a subscription to
	// the channel.
	ErrAlreadySubscribed = errors.New("client: already subscribed")
	// ErrSlowHandler means handlers fell more than Options.QueueSize
	// messages behind; the client reconnects and recovers the rest.
	ErrSlowHandler = errors.New("client: handlers fell behind")
	// ErrProtocol means the server sent something that breaks
	// docs/protocol.md (a malformed frame or JSON object).
	ErrProtocol = errors.New("client: protocol violation by the server")
)

// Error is a request failure reported by the server in an error frame
// (docs/protocol.md, "Error codes"). The connection stays open.
type Error struct {
	// Code is the protocol's error code, such as "forbidden" or "too_large".
	Code string
	// Message is the server's human-readable explanation.
	Message string
}

// Error returns the code and the message.
func (e *Error) Error() string { return e.Code + ": " + e.Message }

// Is reports whether an "unauthorized" error matches ErrUnauthorized.
func (e *Error) Is(target error) bool {
	return target == ErrUnauthorized && e.Code == proto.CodeUnauthorized
}

// temporary reports whether retrying the same request later may succeed.
func (e *Error) temporary() bool { return proto.Temporary(e.Code) }

// CloseError is a connection ended by a WebSocket close frame from the
// server (or, with Code 1006, without one).
type CloseError struct {
	// Code is the close code (docs/protocol.md, "Close codes").
	Code int
	// Reason is the close frame's reason text.
	Reason string
}

// Error describes the close.
func (e *CloseError) Error() string {
	if e.Reason == "" {
		return "client: connection closed with " + strconv.Itoa(e.Code)
	}
	return fmt.Sprintf("client: connection closed with %d (%s)", e.Code, e.Reason)
}

// Is reports whether a 4001 close matches ErrUnauthorized.
func (e *CloseError) Is(target error) bool {
	return target == ErrUnauthorized && e.Code == proto.CloseUnauthorized
}

// HandshakeError is an upgrade the server refused with an HTTP status.
type HandshakeError struct {
	// StatusCode is the HTTP status (401, 403, 503, …).
	StatusCode int
	// RetryAfter is the server's Retry-After advice, zero if it sent none.
	RetryAfter time.Duration
	// Code and Message come from the JSON error body when there is one.
	Code, Message string
}

// Error describes the refusal.
func (e *HandshakeError) Error() string {
	s := "client: upgrade refused with HTTP " + strconv.Itoa(e.StatusCode)
	if e.Code != "" {
		s += ": " + e.Code
	}
	if e.Message != "" {
		s += ": " + e.Message
	}
	return s
}

// Is reports whether a 401 refusal matches ErrUnauthorized.
func (e *HandshakeError) Is(target error) bool {
	return target == ErrUnauthorized && e.StatusCode == 401
}
