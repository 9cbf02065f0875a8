package server

import (
	"strconv"
	"testing"

	"tether/bus"
)

// BenchmarkMergeChannelCounts merges three nodes' answers to the channels
// command, 100,000 channels in all: the asking node's share of GET
// /api/channels.
func BenchmarkMergeChannelCounts(b *testing.B) {
	var replies []bus.Reply
	for n := range 3 {
		body := []byte(`{"names":[`)
		for k := n; k < 100_000; k += 3 {
			if k > n {
				body = append(body, ',')
			}
			body = appendJSONString(body, "m."+strconv.Itoa(k))
		}
		body = append(body, `],"subs":[`...)
		for k := n; k < 100_000; k += 3 {
			if k > n {
				body = append(body, ',')
			}
			body = strconv.AppendInt(body, int64(1+k%7), 10)
		}
		replies = append(replies, bus.Reply{Node: "node-" + strconv.Itoa(n), Body: append(body, "]}"...)})
	}
	b.ReportAllocs()
	for b.Loop() {
		if top, total := mergeChannelCounts(replies, 10); total != 100_000 || len(top) != 10 {
			b.Fatalf("%d channels, %d listed", total, len(top))
		}
	}
}

// BenchmarkEachUserConn finds the 2 connections of one user among 100,000
// of 50,000 users: what a user command (/api/disconnect, /api/subscribe,
// /api/unsubscribe) costs each node before it acts.
func BenchmarkEachUserConn(b *testing.B) {
	s := &Server{}
	for i := range 100_000 {
		c := &conn{id: uint64(i), auth: &claims{sub: "user-" + strconv.Itoa(i/2)}}
		s.conns.add(c)
	}
	b.ReportAllocs()
	for b.Loop() {
		if r := s.eachUserConn("user-31337", func(*conn) bool { return true }); r.Conns != 2 {
			b.Fatalf("%d connections found", r.Conns)
		}
	}
}
