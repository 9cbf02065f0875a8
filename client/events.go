package client

import (
	"encoding/json"
	"time"
)

// EventType names a state event. The names match tether.js's events.
type EventType string

// State events.
const (
	// EventConnecting: an attempt to connect starts (Attempt).
	EventConnecting EventType = "connecting"
	// EventConnected: the server's welcome arrived (Node, Conn,
	// PingInterval). Subscriptions are being restored.
	EventConnected EventType = "connected"
	// EventDisconnected: a connection ended or an attempt failed (Err);
	// the next attempt follows after Delay unless Final is set.
	EventDisconnected EventType = "disconnected"
	// EventRecovered: after a reconnect, every message the channel missed
	// will be delivered before live ones (Channel, Offset, Epoch).
	EventRecovered EventType = "recovered"
	// EventResyncNeeded: messages of Channel were lost; refetch its state
	// by other means (Reason; After for a server resync). Delivery
	// continues from Offset/Epoch.
	EventResyncNeeded EventType = "resync_needed"
	// EventSubscribeFailed: the server refused to restore a subscription
	// after a reconnect (Channel, Err); it has been removed.
	EventSubscribeFailed EventType = "subscribe_failed"
	// EventJoin and EventLeave: a connection (Conn, of User) joined or
	// left Channel, a subscribed channel whose joins and leaves the server
	// announces (--join-leave).
	EventJoin  EventType = "join"
	EventLeave EventType = "leave"
	// EventSubscribed: the server subscribed the client to Channel on its
	// own (Offset, Epoch: the channel's position): the application called
	// POST /api/subscribe for the user. The subscription is the client's
	// like any other (Client.Subscription finds it): restored after a
	// reconnect, ended by its Unsubscribe; its messages go to
	// Options.OnServerMessage.
	EventSubscribed EventType = "subscribed"
	// EventUnsubscribed: the server ended a subscription on its own
	// (Channel, Reason: "forbidden" when a refreshed token no longer allows
	// the channel, "server" when the application unsubscribed the user);
	// it has been removed and is not restored on reconnect.
	EventUnsubscribed EventType = "unsubscribed"
	// EventTokenRefreshed: after the server's refresh_due, GetToken's new
	// token was accepted without a reconnect (Exp).
	EventTokenRefreshed EventType = "token_refreshed"
	// EventRefreshFailed: a refresh after refresh_due failed (Err):
	// GetToken failed or the server refused its token. The connection
	// keeps its old token and is closed with 4001 when it expires; the
	// client then reconnects with a token from GetToken.
	EventRefreshFailed EventType = "refresh_failed"
)

// Reasons of an EventResyncNeeded.
const (
	// ReasonNotRecovered: history no longer covers the gap after a
	// reconnect (subscribed with recovered:false).
	ReasonNotRecovered = "not_recovered"
	// ReasonResync: the server sent a resync frame.
	ReasonResync = "resync"
	// ReasonGap: an offset was skipped.
	ReasonGap = "gap"
)

// Event is a state change of a Client. Only the fields listed for its Type
// are set.
type Event struct {
	Type EventType
	// Attempt counts attempts since the last successful connection,
	// starting at 1 (EventConnecting).
	Attempt int
	// Node and Conn identify the connection; PingInterval is the server's
	// ping interval (EventConnected).
	Node, Conn   string
	PingInterval time.Duration
	// Exp is the accepted token's expiry (EventTokenRefreshed).
	Exp time.Time
	// Err says why (EventDisconnected, EventSubscribeFailed,
	// EventRefreshFailed).
	Err error
	// Delay is the wait before the next attempt (EventDisconnected).
	Delay time.Duration
	// Final reports that the client will not reconnect: it was closed, or
	// its credentials were refused and GetToken is nil (EventDisconnected).
	Final bool
	// Channel, Offset and Epoch are the channel and its position after the
	// event (EventRecovered, EventResyncNeeded, EventSubscribeFailed,
	// EventSubscribed, EventUnsubscribed).
	Channel string
	Offset  uint64
	Epoch   string
	// Reason is ReasonNotRecovered, ReasonResync or ReasonGap
	// (EventResyncNeeded), or the server's reason (EventUnsubscribed).
	Reason string
	// User is the user of a joining or leaving connection (EventJoin,
	// EventLeave; Conn is its connection id).
	User string
	// After is the server's advice to wait before refetching (jitter),
	// zero unless Reason is ReasonResync.
	After time.Duration
}

// Message is one message of a subscribed channel.
type Message struct {
	Channel string
	// Offset is the message's position in the channel; offsets grow by one
	// per message within an Epoch.
	Offset uint64
	Epoch  string
	// Data is the published JSON value. The handler may keep it.
	Data json.RawMessage
}
