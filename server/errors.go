package server

import "errors"

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
