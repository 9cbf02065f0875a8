package server

import (
	"errors"
	"strconv"

	"tether/bus"
	"tether/internal/proto"
)

// Idempotent publish: a publish with "idempotency_key" is published at
// most once per --idempotency-window (the bus keeps the keys, across nodes
// with Redis: bus/idempotency.go). Keys live in separate spaces, so that
// no one can spend or replay a key of someone else: the HTTP API has one,
// each user (token sub) has one, and clients without a token share one.

var (
	errKeyTooLong = errf(proto.CodeBadRequest,
		"idempotency_key is longer than "+strconv.Itoa(proto.MaxIdempotencyKeyLen)+" bytes")
	errConflict = errf(proto.CodeConflict,
		"idempotency_key was used for another channel within the idempotency window")
	errPublishUnavailable = errf(proto.CodeUnavailable, "cannot publish now, retry later")
)

// checkIdempotencyKey refuses a key over proto.MaxIdempotencyKeyLen.
func checkIdempotencyKey(key string) *protoError {
	if len(key) > proto.MaxIdempotencyKeyLen {
		return errKeyTooLong
	}
	return nil
}

// apiIdempotencyKey returns the bus key of an HTTP API key ("" for none).
func apiIdempotencyKey(key string) string {
	if key == "" {
		return ""
	}
	return "a:" + key
}

// idempotencyKey returns the bus key of a key c's client gave: in the
// space of c's user. The sub is length-prefixed, so that no sub and key
// pair can spell another's.
func (c *conn) idempotencyKey(key string) string {
	sub := ""
	if c.auth != nil {
		sub = c.auth.sub // refresh keeps the sub
	}
	return "u:" + strconv.Itoa(len(sub)) + ":" + sub + ":" + key
}

// publishError returns the error frame of a failed client publish.
func (s *Server) publishError(err error) *protoError {
	if errors.Is(err, bus.ErrIdempotencyConflict) {
		s.m.idemConflicts.Inc()
		return errConflict
	}
	return errPublishUnavailable
}

// idempotent counts a keyed publish: a hit when it was answered from the
// key's first result.
func (m *serverMetrics) idempotent(replayed bool) {
	if replayed {
		m.idemHits.Inc()
	} else {
		m.idemMisses.Inc()
	}
}

// countPublished counts the messages of an API publish and its keys, and
// returns how many were replayed.
func (s *Server) countPublished(pubs []bus.Publication, pos []bus.Position) (replayed int) {
	for i, p := range pos {
		if pubs[i].IdempotencyKey != "" {
			s.m.idempotent(p.Replayed)
		}
		if p.Replayed {
			replayed++
		}
	}
	s.m.published.Add(len(pos) - replayed)
	return replayed
}
