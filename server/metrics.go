package server

import (
	"io"
	"strconv"
	"sync/atomic"

	"github.com/VictoriaMetrics/metrics"
	"tether/internal/proto"
	"tether/internal/wsframe"
)

// serverMetrics holds every metric of a Server, created once in New. The
// names are part of tether's interface (docs and dashboards rely on them).
type serverMetrics struct {
	set *metrics.Set

	conns         atomic.Int64
	handshakes    atomic.Int64 // sockets in their HTTP phase (engine.go)
	channels      atomic.Int64
	subscriptions atomic.Int64
	accepted      *metrics.Counter
	rejected      map[string]*metrics.Counter
	disconnects   map[string]*metrics.Counter
	protoErrs     map[string]*metrics.Counter
	httpRejects   map[string]*metrics.Counter
	frameErrors   map[string]*metrics.Counter

	published          *metrics.Counter
	fannedOut          *metrics.Counter
	delivered          *metrics.Counter
	deliveredBytes     *metrics.Counter
	fanoutDuration     *metrics.Histogram
	heartbeatTimeouts  *metrics.Counter
	pingsSkipped       *metrics.Counter
	slowConsumers      *metrics.Counter
	coalescedWrites    *metrics.Counter
	socketWrites       *metrics.Counter
	recovered          *metrics.Counter
	notRecovered       *metrics.Counter
	apiErrors          *metrics.Counter
	tlsHandshakeErrors *metrics.Counter
	tlsRecordLayer     map[string]*metrics.Counter // by mode (tls.go)
	tlsRecordErrors    map[string]*metrics.Counter // by reason (tls.go)

	presenceEntries     atomic.Int64 // this node's presence members (presence.go)
	joinLeaveEmitted    *metrics.Counter
	joinLeaveSuppressed *metrics.Counter
	// token refresh (refresh.go)
	refreshOK     *metrics.Counter
	refreshFailed *metrics.Counter
	refreshDue    *metrics.Counter
	// idempotency keys (idempotency.go)
	idemHits      *metrics.Counter
	idemMisses    *metrics.Counter
	idemConflicts *metrics.Counter
}

var (
	rejectReasons     = []string{"max_conns", "accept_rate", "draining", "unauthorized", "origin", "bad_request", "max_conns_per_user"}
	disconnectReasons = []string{"client", "heartbeat_timeout", "slow_consumer", "rate_limited", "protocol", "token_expired", "drain", "too_large", "shutdown", "eof", "reset", "error", "api"}
	protoErrorCodes   = []string{proto.CodeBadRequest, proto.CodeUnauthorized, proto.CodeForbidden, proto.CodeNotFound, proto.CodeTooLarge, proto.CodeRateLimited, proto.CodeLimit, proto.CodeUnavailable, proto.CodeConflict, "binary"}
)

func newServerMetrics(set *metrics.Set) *serverMetrics {
	m := &serverMetrics{
		set:         set,
		rejected:    make(map[string]*metrics.Counter),
		disconnects: make(map[string]*metrics.Counter),
		protoErrs:   make(map[string]*metrics.Counter),
		httpRejects: make(map[string]*metrics.Counter),
		frameErrors: make(map[string]*metrics.Counter),
	}
	set.NewGauge("tether_handshakes", func() float64 { return float64(m.handshakes.Load()) })
	for _, r := range httpRejectReasons {
		m.httpRejects[r] = set.NewCounter(`tether_http_rejected_total{reason="` + r + `"}`)
	}
	for _, e := range wsframe.Errors() {
		if _, ok := m.frameErrors[e.Reason]; !ok {
			m.frameErrors[e.Reason] = set.NewCounter(`tether_ws_frame_errors_total{close_code="` +
				strconv.Itoa(e.Code) + `",reason="` + e.Reason + `"}`)
		}
	}
	set.NewGauge("tether_connections", func() float64 { return float64(m.conns.Load()) })
	set.NewGauge("tether_channels", func() float64 { return float64(m.channels.Load()) })
	set.NewGauge("tether_subscriptions", func() float64 { return float64(m.subscriptions.Load()) })
	m.accepted = set.NewCounter("tether_connections_accepted_total")
	for _, r := range rejectReasons {
		m.rejected[r] = set.NewCounter(`tether_connections_rejected_total{reason="` + r + `"}`)
	}
	for _, r := range disconnectReasons {
		m.disconnects[r] = set.NewCounter(`tether_disconnects_total{reason="` + r + `"}`)
	}
	for _, c := range protoErrorCodes {
		m.protoErrs[c] = set.NewCounter(`tether_protocol_errors_total{code="` + c + `"}`)
	}
	m.published = set.NewCounter("tether_messages_published_total")
	m.fannedOut = set.NewCounter("tether_messages_fanned_out_total")
	m.delivered = set.NewCounter("tether_messages_delivered_total")
	m.deliveredBytes = set.NewCounter("tether_delivered_bytes_total")
	m.fanoutDuration = set.NewHistogram("tether_fanout_duration_seconds")
	m.heartbeatTimeouts = set.NewCounter("tether_heartbeat_timeouts_total")
	m.pingsSkipped = set.NewCounter("tether_heartbeat_pings_skipped_total")
	m.slowConsumers = set.NewCounter("tether_slow_consumer_disconnects_total")
	m.coalescedWrites = set.NewCounter("tether_coalesced_writes_total")
	m.socketWrites = set.NewCounter("tether_socket_writes_total")
	m.recovered = set.NewCounter(`tether_recoveries_total{result="recovered"}`)
	m.notRecovered = set.NewCounter(`tether_recoveries_total{result="not_recovered"}`)
	m.apiErrors = set.NewCounter("tether_api_errors_total")
	m.tlsHandshakeErrors = set.NewCounter("tether_tls_handshake_errors_total")
	m.tlsRecordLayer = make(map[string]*metrics.Counter)
	for _, mode := range []string{recordLayerOwn, recordLayerCryptoTLS, recordLayerFallback} {
		m.tlsRecordLayer[mode] = set.NewCounter(`tether_tls_record_layer_total{mode="` + mode + `"}`)
	}
	m.tlsRecordErrors = make(map[string]*metrics.Counter)
	for _, r := range []string{"bad_record_mac", "record_overflow", "unexpected_message", "alert", "key_update_rate"} {
		m.tlsRecordErrors[r] = set.NewCounter(`tether_tls_record_errors_total{reason="` + r + `"}`)
	}
	set.NewGauge("tether_presence_entries", func() float64 { return float64(m.presenceEntries.Load()) })
	m.joinLeaveEmitted = set.NewCounter(`tether_join_leave_events_total{result="emitted"}`)
	m.joinLeaveSuppressed = set.NewCounter(`tether_join_leave_events_total{result="suppressed"}`)
	m.refreshOK = set.NewCounter(`tether_token_refreshes_total{result="ok"}`)
	m.refreshFailed = set.NewCounter(`tether_token_refreshes_total{result="failed"}`)
	m.refreshDue = set.NewCounter("tether_refresh_due_sent_total")
	m.idemHits = set.NewCounter("tether_idempotent_hits_total")
	m.idemMisses = set.NewCounter("tether_idempotent_misses_total")
	m.idemConflicts = set.NewCounter("tether_idempotent_conflicts_total")
	return m
}

func (m *serverMetrics) protocolErrors(code string) *metrics.Counter {
	if c, ok := m.protoErrs[code]; ok {
		return c
	}
	return m.protoErrs[proto.CodeBadRequest]
}

func (m *serverMetrics) reject(reason string) { m.rejected[reason].Inc() }

// httpReject counts a request refused before any handler ran
// (httpreq.go's reasons).
func (m *serverMetrics) httpReject(reason string) {
	if c, ok := m.httpRejects[reason]; ok {
		c.Inc()
	}
}

// frameError counts a client frame or frame sequence that broke RFC 6455.
func (m *serverMetrics) frameError(e *wsframe.Error) {
	if c, ok := m.frameErrors[e.Reason]; ok {
		c.Inc()
	}
}

func (m *serverMetrics) disconnect(reason string) {
	c, ok := m.disconnects[reason]
	if !ok {
		c = m.disconnects["error"]
	}
	c.Inc()
}

// write writes the server's metrics and the process metrics (memory, CPU,
// file descriptors, Go runtime) in Prometheus text format.
func (m *serverMetrics) write(w io.Writer) {
	m.set.WritePrometheus(w)
	metrics.WriteProcessMetrics(w)
}
