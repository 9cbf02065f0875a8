package bus

import "time"

// retention says which messages a channel's history keeps: the last size
// messages whatever their age and size, and beyond them every message
// younger than window, as long as all the messages kept hold at most
// maxBytes of data. See Config.
type retention struct {
	size     int
	window   time.Duration // 0: by count only
	maxBytes int
}

func (c Config) retention() retention {
	return retention{size: c.HistorySize, window: c.HistoryWindow, maxBytes: c.HistoryMaxBytes}
}

// msgQueue is a channel's retained messages, oldest first, with consecutive
// offsets in one epoch. Elements of msgs are never written after they are
// appended, so slices of msgs handed out stay valid while the queue goes on.
// Not safe for concurrent use.
type msgQueue struct {
	msgs  []Message
	at    []int64 // when each message was appended, in Unix nanoseconds
	bytes int     // data bytes of msgs
}

// push appends m, appended at now, and trims the queue to r.
func (q *msgQueue) push(m Message, now int64, r retention) {
	if r.size <= 0 && r.window <= 0 {
		return
	}
	q.msgs = append(q.msgs, m)
	q.at = append(q.at, now)
	q.bytes += len(m.Data)
	q.trim(now, r)
}

// trim drops the oldest messages while more than r.size are held and the
// oldest is at least r.window old or the queue holds more than r.maxBytes.
func (q *msgQueue) trim(now int64, r retention) {
	drop := 0
	for len(q.msgs)-drop > max(r.size, 0) {
		if r.window > 0 && now-q.at[drop] < int64(r.window) && q.bytes <= r.maxBytes {
			break
		}
		q.bytes -= len(q.msgs[drop].Data)
		drop++
	}
	if drop > 0 {
		q.msgs, q.at = q.msgs[drop:], q.at[drop:]
	}
	if len(q.msgs) == 0 {
		*q = msgQueue{}
	}
}

// replace makes msgs, all appended at now, the queue's content, trimmed
// to r.
func (q *msgQueue) replace(msgs []Message, now int64, r retention) {
	*q = msgQueue{msgs: msgs, at: make([]int64, len(msgs))}
	for i, m := range msgs {
		q.at[i] = now
		q.bytes += len(m.Data)
	}
	q.trim(now, r)
}

// historyAfter answers a History for since from msgs, consecutive messages
// ending at top. Recovered is false when msgs do not reach back to since.
// The returned messages share msgs' array.
func historyAfter(msgs []Message, top Position, since *Position) History {
	h := History{Top: top}
	if since == nil || since.Epoch != top.Epoch || since.Offset > top.Offset {
		return h
	}
	n := top.Offset - since.Offset
	if n > uint64(len(msgs)) {
		return h
	}
	h.Recovered = true
	if n > 0 {
		h.Messages = msgs[len(msgs)-int(n) : len(msgs) : len(msgs)]
	}
	return h
}
