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
// The WebSocket layer is github.com/coder/websocket: framing, masking,
// control frames, the close handshake, and TLS and the upgrade through
// net/http. The client adds what tether needs: Options.Proxy with CONNECT
// tunnels for ws:// and wss:// (HTTP_PROXY, HTTPS_PROXY and NO_PROXY by
// default), custom upgrade headers, and reading every message into one
// reused buffer, so that a message costs no allocation below the JSON
// decoding. The protocol's vocabulary (ops, close and error codes, the
// channel-name rule) is tether/internal/proto's, shared with the server.
//
// Where to find:
//
//	client.go     Client and Subscription: Dial/Connect, Subscribe,
//	              Publish, Unsubscribe, Close; the pending requests
//	options.go    Options and their defaults
//	events.go     Event, EventType, the resync reasons, Message
//	reconnect.go  the run goroutine: serving a connection and its
//	              watchdog, reconnects with backoff and full jitter,
//	              restoring subscriptions (attach/detach)
//	apply.go      the reader goroutine: applying server frames, a
//	              subscription's position, recovery and resync events
//	dispatch.go   the delivery goroutine: the queue of messages and
//	              events handed to handlers and OnEvent
//	conn.go       one connection: reading into the reused buffer, writes,
//	              close, mapping read failures to the client's errors
//	dial.go       one attempt: proxy tunnel (CONNECT), TLS and upgrade
//	              through the library, welcome frame, refused upgrades
//	refresh.go    token refresh in place: refresh_due → GetToken → refresh
//	serversubs.go subscriptions the server makes and ends on its own
//	presence.go   presence requests, join and leave events
//	protocol.go   the JSON frames
//	errors.go     the client's error types
//
// A Client runs three goroutines (besides one of the library's per
// connection): one reads the current connection, one
// runs the watchdog and reconnects, and one hands messages and events to
// user code, so that a slow handler never stalls the other two. That is
// fine for the few connections a service holds.
package client
