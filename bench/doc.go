// Package bench is tether's load tool, run as `tether bench <scenario>`.
//
// Scenarios: connect (connections per second and handshake latency), idle
// (server memory per connection and heartbeat CPU), broadcast (delivery
// latency with exact missing and duplicate counts), throughput (sustained
// deliveries per second and server CPU per million deliveries) and churn
// (a reconnect storm: time until all clients are back, 503 refusals, and
// /healthz latency meanwhile). Every scenario takes several --url values to
// measure a cluster. The soak starts its own redis-server and nodes (it
// restarts them) and runs for minutes: continuous churn with recovery
// (since), publishes through the API, exactly-once counted against the
// acknowledged publishes, and the nodes' memory, goroutines and descriptors
// sampled and plotted.
//
// The coordinator (Main) starts worker processes from its own binary
// (`tether bench worker`, hidden) so that the connections can exceed one
// process's open-file limit; workers talk JSON lines over stdin/stdout (see
// worker.go), start together at a barrier and send mergeable results:
// counts add, and latencies travel as histograms (Hist) with bounded
// relative error, never as averaged percentiles.
//
// A worker runs its own minimal WebSocket client on nbio's poller (no
// goroutine per connection), on internal/wsframe's codec: each connection is a few hundred bytes of
// state plus a bitset of the sequence numbers it received, so missing and
// duplicate deliveries are counted exactly. Connections are spread over
// source addresses (127.0.0.2… on loopback) so that ephemeral ports do not
// run out.
//
// docs/BENCHMARKS.md describes the scenarios, the output and the JSON
// fields, and holds the measured figures with the commands that produced
// them.
//
// Where to find:
//
//	| what                                                  | file           |
//	|-------------------------------------------------------|----------------|
//	| flags, Main, exit codes                               | options.go     |
//	| the scenarios (connect, idle, broadcast, …)           | scenarios.go   |
//	| publishing via the API, /metrics scraping, /healthz   | publish.go     |
//	| the coordinator: starting workers, phases, merging    | coord.go       |
//	| the worker protocol and its message types             | worker.go      |
//	| a worker's connection pool, its state and figures     | pool.go        |
//	| dialing: dialer goroutines, retries, failure reasons  | dial.go        |
//	| receiving: upgrade response, frames, delivery counts  | receive.go     |
//	| the upgrade request and response, frame header check  | frame.go       |
//	| scanning tether's JSON frames without decoding        | jsonscan.go    |
//	| latency histograms (Hist)                             | hist.go        |
//	| the JSON result and the text report                   | report.go      |
//	| the HTML report                                       | html.go        |
//	| soak: the run, its faults and samples                 | soak.go        |
//	| soak: the redis-server and nodes it owns              | soakproc.go    |
//	| soak: a pool's churn, since, acknowledged accounting  | soakpool.go    |
//	| soak: its result, checks, rows and plots              | soakreport.go  |
//	| source-port binding, open-file limit, CPU usage       | sys_linux.go   |
//	| measuring sticks (commands of their own, not tether): |                |
//	| the kernel's floor for one connect                    | floor/         |
//	| time the scheduler takes a spinning thread off a CPU  | hiccup/        |
//
// The WebSocket framing is internal/wsframe's and the protocol vocabulary
// internal/proto's; the bench owns neither.
package bench
