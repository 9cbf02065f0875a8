package proto

import "tether/internal/wsframe"

// Close codes tether uses: the RFC 6455 codes its peers send or react to
// (defined in internal/wsframe, named again here so that the table below is
// complete), and tether's own codes in the 4000–4999 range for
// applications. Each is described in the table of Closes; docs/protocol.md's
// "Close codes" table mirrors it, and a test keeps the two in step.
const (
	CloseNormal         = wsframe.CloseNormal
	CloseProtocolError  = wsframe.CloseProtocolError
	CloseNoStatus       = wsframe.CloseNoStatus
	CloseAbnormal       = wsframe.CloseAbnormal
	CloseInvalidPayload = wsframe.CloseInvalidPayload
	CloseTooBig         = wsframe.CloseTooBig
	CloseRestart        = wsframe.CloseServiceRestart

	CloseDisconnected      = 4000 // the default of POST /api/disconnect
	CloseUnauthorized      = 4001
	CloseHeartbeatTimeout  = 4008
	CloseSlowConsumer      = 4009
	CloseRateLimited       = 4029
	CloseProtocolViolation = 4400
)

// Senders of a close code, for CloseInfo.Sender.
const (
	SentByServer = "server"
	SentByClient = "client"
	SentByBoth   = "server, client"
	SentByNone   = "none" // a status reported locally, never on the wire
)

// CloseInfo describes one close code.
type CloseInfo struct {
	Code    int
	Name    string // short identifier, as in metrics and logs
	Meaning string // why the connection ends with this code
	Sender  string // who sends it: one of the SentBy constants
}

// closes is the table of close codes: the one place to add one (then add
// its row to docs/protocol.md when the server sends it).
var closes = [...]CloseInfo{
	{CloseNormal, "normal", "the client is done with the connection", SentByClient},
	{CloseProtocolError, "protocol_error", "the peer sent a malformed WebSocket frame or, to a client, a frame that breaks the protocol", SentByClient},
	{CloseNoStatus, "no_status", "the close frame carried no code", SentByNone},
	{CloseAbnormal, "abnormal", "the connection ended without a close frame", SentByNone},
	{CloseInvalidPayload, "invalid_payload", "a text message that is not UTF-8", SentByClient},
	{CloseTooBig, "too_big", "a frame larger than the receiver's bound (the server's: --max-message-size plus 1 KiB of room for the envelope)", SentByBoth},
	{CloseRestart, "restart", "node restarting / draining (preceded by reconnect)", SentByServer},
	{CloseDisconnected, "disconnected", "the application disconnected the user (POST /api/disconnect without a code; it may give any code from 4000 to 4999)", SentByServer},
	{CloseUnauthorized, "unauthorized", "unauthorized or token expired", SentByServer},
	{CloseHeartbeatTimeout, "heartbeat_timeout", "heartbeat timeout: no inbound frame for ping interval + pong timeout (a client's watchdog sends it too)", SentByBoth},
	{CloseSlowConsumer, "slow_consumer", "slow consumer: more than --max-conn-buffer bytes pending", SentByServer},
	{CloseRateLimited, "rate_limited", "rate limited: kept sending over --client-msg-rate after an error", SentByServer},
	{CloseProtocolViolation, "protocol_violation", "protocol violation: a binary frame", SentByServer},
}

// Closes returns the table of close codes tether knows, by code.
func Closes() []CloseInfo { return append([]CloseInfo(nil), closes[:]...) }

// LookupClose returns the description of a close code, and false when
// tether does not know it.
func LookupClose(code int) (CloseInfo, bool) {
	for _, c := range closes {
		if c.Code == code {
			return c, true
		}
	}
	return CloseInfo{}, false
}

// ServerSends reports whether the server may end a connection with the code.
func (c CloseInfo) ServerSends() bool {
	return c.Sender == SentByServer || c.Sender == SentByBoth
}
