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
