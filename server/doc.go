// Package server is tether's WebSocket fan-out node: the nbio engine, the
// upgrade with admission control and auth, protocol v1, the local channel
// index with recovery, heartbeats, the HTTP API, drain and metrics.
//
// # Concurrency
//
// nbio's poller runs the read side: the bytes of one socket are handled one
// call at a time on its poller goroutine (engine.go), where tether parses
// the HTTP request, upgrades and reads WebSocket frames itself; those
// callbacks never block. HTTP requests other than the upgrade are answered
// on a goroutine each (httpconn.go), at most 256 at once. Writes never
// happen in a caller's goroutine: a frame is appended to the connection's
// bounded queue and the connection is handed to one of the flusher
// goroutines, which writes everything queued in one write (coalescing).
// A frame that answers the client (pong, ack, error) is written ahead of
// the broadcast batch its flusher is in (flusher.pushReply).
// A broadcast is encoded once; the same read-only bytes are queued to every
// subscriber.
//
// # Lock order
//
// Locks are taken in this order, never the reverse:
//
//	channel index shard (indexShard.mu)
//	channel (channel.mu)
//	heartbeat wheel shard (heartbeatShard.mu)
//	connection (conn.mu)
//	flusher queue (flusher.mu)
//
// ownRecords.txMu (a TLS connection's sealing, tls.go) is a leaf: only
// nbio's Write is called under it.
//
// lifetimes.mu (the idle-cut detector) is a leaf: it is taken with none of
// these held, and nothing is called under it.
//
// No lock is held while calling into nbio except conn.mu-free paths: the
// flusher writes with no lock of ours held.
//
// The bus handler runs on the bus's own goroutines (the local bus's
// delivery goroutines, the Redis bus's pub/sub readers) and takes
// channel.mu and below. Bus.Subscribe and Bus.Unsubscribe never block, so
// they may be called under channel.mu. Bus.History and Bus.Publish are never
// called with any of these locks held.
//
// # Where to find
//
//	concern                                               file
//	Server: New, Start, Shutdown, the stop sequence       server.go
//	Config, defaults and the zero value of every bound    config.go
//	every goroutine of the server, counted by name        goroutines.go
//	nbio's callbacks: open, data, close; socket bound     engine.go
//	TLS: handshake goroutine, pipe, decrypting, reload    tls.go
//	TLS 1.3 record layer after the handshake (RFC 8446)   tlsrecord.go
//	HTTP before the upgrade: requests, bodies, answers    httpconn.go
//	the request head parser (RFC 9112)                    httpreq.go
//	the upgrade: handshake checks, admission, 101         upgrade.go
//	JWT, origins, API credentials, glob patterns          auth.go
//	the WebSocket read state machine (RFC 6455)           wsread.go
//	a connection's frames: rate, ping, close, protocol    wsconn.go
//	a connection: state, queue, the connection set        conn.go
//	closing one connection: reasons, slow consumers       close.go
//	token buckets (accept rate, client frame rate)        ratelimit.go
//	writes: flushers, coalescing                          flush.go
//	client frames decoded, server frames encoded          protocol.go
//	error frames                                          errors.go
//	channel index, subscribe, unsubscribe, publish        channels.go
//	server-initiated unsubscribe (unsubscribed + reason)  unsubscribe.go
//	recovery: the subscription's state machine            recovery.go
//	fan-out of one message to a channel's subscribers     fanout.go
//	heartbeats: ping phases, deadlines on a wheel         heartbeat.go
//	token refresh: refresh op, refresh_due on the wheel   refresh.go
//	connection lifetimes, the LB idle-timeout detector    lifetime.go
//	HTTP API, health checks, static files                 api.go
//	idempotent publish: key spaces, checks, metrics       idempotency.go
//	cluster-wide API: users, channels, info, partial      api_cluster.go
//	cluster commands: what each node answers              cluster.go
//	GET /api/history                                      api_history.go
//	presence op, join/leave, GET /api/presence            presence.go
//	the admin page and its data                           admin.go, admin/
//	the admin page's samples of the last minutes          samples.go
//	per-user connection counts (--max-conns-per-user)     userconns.go
//	the private API listener (--api-listen)               apilisten.go
//	drain                                                 drain.go
//	metrics                                               metrics.go
//	race-detector edges for nbio's hand-off               race_on.go, race_off.go
package server
