package server

import "errors"

// Protocol error codes sent in error frames (docs/protocol.md).
const (
	codeBadRequest   = "bad_request"
	codeUnauthorized = "unauthorized"
	codeForbidden    = "forbidden"
	codeNotFound     = "not_found"
	codeTooLarge     = "too_large"
	codeRateLimited  = "rate_limited"
	codeLimit        = "limit"
	codeUnavailable  = "unavailable"
)

// WebSocket close codes (docs/protocol.md).
const (
	CloseTooBig            = 1009
	CloseRestart           = 1012
	CloseUnauthorized      = 4001
	CloseHeartbeatTimeout  = 4008
	CloseSlowConsumer      = 4009
	CloseRateLimited       = 4029
	CloseProtocolViolation = 4400
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
