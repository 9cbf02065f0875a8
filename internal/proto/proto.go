package proto

// Op names: the "op" field of every protocol frame (docs/protocol.md,
// "Client → server" and "Server → client").
const (
	// Sent by clients.
	OpSubscribe   = "subscribe"
	OpUnsubscribe = "unsubscribe"
	OpPublish     = "publish"
	OpPresence    = "presence" // also the server's answer
	OpRefresh     = "refresh"  // a new token for the open connection

	// Sent by both sides: a liveness probe and its answer.
	OpPing = "ping"
	OpPong = "pong"

	// Sent by the server.
	OpWelcome      = "welcome"
	OpMessage      = "message"
	OpSubscribed   = "subscribed"
	OpUnsubscribed = "unsubscribed"
	OpAck          = "ack"
	OpError        = "error"
	OpResync       = "resync"
	OpReconnect    = "reconnect"
	OpJoin         = "join"
	OpLeave        = "leave"
	OpRefreshed    = "refreshed"   // answer to refresh: the new expiry
	OpRefreshDue   = "refresh_due" // the token expires soon: send refresh
)

// Reasons of a server-initiated unsubscribed frame: the "reason" field of
// {"op":"unsubscribed","channel":…,"reason":…}, sent when the server ends a
// subscription the client did not ask to end (docs/protocol.md). An
// unsubscribed frame that answers the client's own unsubscribe has no
// reason.
const (
	// ReasonForbidden: the connection's claims no longer allow the channel
	// (a refreshed token dropped it).
	ReasonForbidden = "forbidden"
	// ReasonServer: the application ended the subscription through the
	// HTTP API.
	ReasonServer = "server"
)

// Error codes: the "code" field of an error frame, and of the JSON body of
// a refused HTTP request (docs/protocol.md, "Error codes").
const (
	CodeBadRequest   = "bad_request"
	CodeUnauthorized = "unauthorized"
	CodeForbidden    = "forbidden"
	CodeNotFound     = "not_found"
	CodeTooLarge     = "too_large"
	CodeRateLimited  = "rate_limited"
	CodeLimit        = "limit"
	CodeUnavailable  = "unavailable"
	// CodeConflict: a publish's idempotency_key was used for another
	// channel within the idempotency window (HTTP 409).
	CodeConflict = "conflict"
)

// Temporary reports whether a request that failed with the error code may
// succeed when retried later, unchanged.
func Temporary(code string) bool {
	return code == CodeUnavailable || code == CodeRateLimited
}

// MaxIDLen is the longest string a request's "id" may hold, in bytes.
const MaxIDLen = 64

// MaxIdempotencyKeyLen is the longest "idempotency_key" a publish may
// carry, in bytes.
const MaxIdempotencyKeyLen = 128
