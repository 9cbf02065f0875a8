package server

import (
	"errors"

	"tether/internal/proto"
)

// Close codes the server sends, for callers that check a connection's end;
// internal/proto describes each.
const (
	CloseTooBig            = proto.CloseTooBig
	CloseRestart           = proto.CloseRestart
	CloseUnauthorized      = proto.CloseUnauthorized
	CloseHeartbeatTimeout  = proto.CloseHeartbeatTimeout
	CloseSlowConsumer      = proto.CloseSlowConsumer
	CloseRateLimited       = proto.CloseRateLimited
	CloseProtocolViolation = proto.CloseProtocolViolation
)

// Errors returned by a Server. Check them with errors.Is.
var (
	// ErrServerClosed is returned by Start after Shutdown.
	ErrServerClosed = errors.New("server: closed")
	// ErrInvalidConfig wraps every configuration error from New.
	ErrInvalidConfig = errors.New("server: invalid config")
)

// protoError is a request failure reported to the client in an error frame
// (or, in the HTTP API, as a JSON error body).
type protoError struct {
	code string
	msg  string
}

func (e *protoError) Error() string { return e.code + ": " + e.msg }

func errf(code, msg string) *protoError { return &protoError{code: code, msg: msg} }
