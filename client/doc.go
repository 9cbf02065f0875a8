// Package client is the Go client of tether (docs/protocol.md) for services
// and for tether's own tests.
//
// A Client holds one WebSocket connection to a tether node and keeps it:
//
//   - it answers the server's pings and runs a watchdog: when no frame has
//     arrived for the server's ping interval it sends a ping of its own, and
//     when nothing has arrived for the interval plus Options.WatchdogGrace
//     it drops the connection as dead;
//   - it reconnects with exponential backoff and full jitter, honouring the
//     server's reconnect advice (the after_ms of a draining node) and the
//     Retry-After of a refused upgrade;
//   - it restores every subscription on the new connection with the last
//     offset and epoch it delivered, so that handlers see every message
//     exactly once and in order, or are told (EventResyncNeeded) that
//     history could not cover the gap.
//
// The WebSocket layer is a small RFC 6455 client of its own over net.Conn.
// A Client runs three goroutines: one reads the current connection, one
// runs the watchdog and reconnects, and one hands messages and events to
// user code, so that a slow handler never stalls the other two. That is
// fine for the few connections a service holds.
package client
