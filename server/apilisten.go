package server

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"time"
)

// apiListener is the private listener of Config.APIListen: the HTTP API,
// /metrics, /healthz and /readyz on a plain net/http server (a goroutine
// per request is fine for an admin port), apart from the engine that
// serves WebSocket clients.
type apiListener struct {
	// immutable after listenAPI
	srv *http.Server
	ln  net.Listener
}

// listenAPI opens Config.APIListen, or returns nil when it is empty.
func (s *Server) listenAPI() (*apiListener, error) {
	if s.cfg.APIListen == "" {
		return nil, nil
	}
	ln, err := net.Listen("tcp", s.cfg.APIListen)
	if err != nil {
		return nil, fmt.Errorf("cannot listen on %s (api): %w", s.cfg.APIListen, err)
	}
	return &apiListener{
		ln: ln,
		srv: &http.Server{
			Handler:           s.apiHandler,
			ReadHeaderTimeout: s.cfg.HandshakeTimeout,
			IdleTimeout:       2 * time.Minute,
			ErrorLog:          slog.NewLogLogger(s.log.Handler(), slog.LevelDebug),
		},
	}, nil
}

// serve runs the listener until close; call it on its own goroutine.
func (a *apiListener) serve(log *slog.Logger) {
	if err := a.srv.Serve(a.ln); !errors.Is(err, http.ErrServerClosed) {
		log.Error("api listener stopped", "addr", a.ln.Addr().String(), "err", err)
	}
}

// close stops the listener and closes its connections, requests in flight
// included (they are short: a publish is bounded by a 10 s timeout).
func (a *apiListener) close() { _ = a.srv.Close() }

// APIAddr returns the address of the private API listener, or nil when
// Config.APIListen is empty or before Start.
func (s *Server) APIAddr() net.Addr {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.api == nil {
		return nil
	}
	return s.api.ln.Addr()
}
