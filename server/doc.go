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
// lifetimes.mu (the idle-cut detector) is a leaf: it is taken with none of
// these held, and nothing is called under it.
//
// No lock is held while calling into nbio except conn.mu-free paths: the
// flusher writes with no lock of ours held.
//
// The bus handler is called with the bus's own channel lock held; it takes
// channel.mu and below. Bus.Subscribe and Bus.Unsubscribe never block, so
// they may be called under channel.mu. Bus.History and Bus.Publish are never
// called with any of these locks held.
package server
