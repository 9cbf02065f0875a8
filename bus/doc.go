// Package bus carries published messages between tether nodes.
//
// A Bus assigns every message its channel's next offset, keeps a bounded
// history per channel so that reconnecting clients can recover what they
// missed, and hands each message to the node's handler in offset order.
// The in-process bus (NewLocal) serves a single node; the Redis bus
// (NewRedis) lets several nodes share channels. docs/cluster.md explains
// the Redis design.
//
// Where to find:
//
//	concern                                          file
//	Bus, Handler, History, Position: the contract    bus.go
//	the in-process bus                               local.go
//	idempotency keys: the in-process table, checks   idempotency.go
//	idempotency keys on Redis: claims, cost          redis_idempotency.go
//	history retention: by count, by time, byte cap   retention.go
//	its delivery goroutines and bounded queues       local_delivery.go
//	Redis bus: config, construction, health, close   redis.go
//	publishing: bounded queue, pipelined flusher     redis_publish.go
//	interest: subscribe, unsubscribe, linger,        redis_interest.go
//	  routing a channel to its pub/sub connection
//	the pub/sub connections, their writer and        redis_link.go
//	  reader loops, reconnect backoff
//	delivery in offset order, gap detection and      redis_repair.go
//	  repair from history
//	history reads for subscribers: answered from     redis_history.go
//	  the node's position, one shared read per channel
//	the node's window of recent history (storms)     redis_window.go
//	janitor: cluster routing retries, TTL keepalive  redis_janitor.go
//	Redis key layout, payload format, Lua scripts    redis_wire.go
package bus
