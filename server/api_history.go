package server

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

// apiHistory handles GET /api/history?channel=…&since=…&epoch=…&limit=…:
// a channel's messages from its history (the bus's, shared by every node,
// so no other node is asked).
//
// With since, it returns the first limit messages after offset since (in
// epoch, if given, else the channel's current one), and "more":true when
// there are more; "recovered":false when the history no longer reaches
// back to since (or the epoch changed): then no message is returned, and
// the caller resyncs from "offset"/"epoch". Without since, it returns the
// last limit messages the history holds (fewer when it holds fewer).
func (s *Server) apiHistory(w http.ResponseWriter, r *http.Request) {
	if !s.apiBegin(w, r, cmdHistory, http.MethodGet) {
		return
	}
	q := r.URL.Query()
	channel := q.Get("channel")
	if perr := checkChannel(channel); perr != nil {
		s.apiFail(w, cmdHistory, http.StatusBadRequest, proto.CodeBadRequest, perr.msg)
		return
	}
	limit, ok := intParam(q.Get("limit"), defaultHistoryLimit, 1, maxHistoryLimit)
	if !ok {
		s.apiFail(w, cmdHistory, http.StatusBadRequest, proto.CodeBadRequest, "limit must be an integer from 1 to 1000")
		return
	}
	var since *uint64
	if v := q.Get("since"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			s.apiFail(w, cmdHistory, http.StatusBadRequest, proto.CodeBadRequest, "since must be an offset (an unsigned integer)")
			return
		}
		since = &n
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	h, more, err := s.readHistory(ctx, channel, since, q.Get("epoch"), limit)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		s.apiFail(w, cmdHistory, http.StatusServiceUnavailable, proto.CodeUnavailable, "cannot read history now: "+err.Error())
		return
	}
	b := appendJSONString(append([]byte(nil), `{"channel":`...), channel)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, h.Top.Offset, 10)
	b = appendJSONString(append(b, `,"epoch":`...), h.Top.Epoch)
	b = strconv.AppendBool(append(b, `,"recovered":`...), h.Recovered)
	b = strconv.AppendBool(append(b, `,"more":`...), more)
	b = append(b, `,"messages":[`...)
	for i, m := range h.Messages {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(append(b, `{"offset":`...), m.Offset, 10)
		b = append(append(append(b, `,"data":`...), m.Data...), '}')
	}
	s.apiCmds.count(cmdHistory, "ok")
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, "]}\n"...))
}

// readHistory reads what apiHistory returns: h.Messages holds at most
// limit messages, and more says whether the history holds more after them.
func (s *Server) readHistory(ctx context.Context, channel string, since *uint64, epoch string, limit int) (h bus.History, more bool, err error) {
	top, err := s.bus.History(ctx, channel, nil)
	if err != nil {
		return h, false, err
	}
	if epoch == "" {
		epoch = top.Top.Epoch
	}
	if since != nil {
		h, err = s.bus.History(ctx, channel, &bus.Position{Offset: *since, Epoch: epoch})
		if err == nil && len(h.Messages) > limit {
			h.Messages, more = h.Messages[:limit], true
		}
		return h, more, err
	}
	// The last n messages, for the largest n ≤ limit the history holds:
	// the bus answers "recovered" or not for a position, so search for it
	// (at most log2(limit)+1 reads).
	lo, hi := 0, min(uint64(limit), top.Top.Offset)
	best := bus.History{Top: top.Top, Recovered: true}
	for lo <= int(hi) {
		n := (lo + int(hi)) / 2
		got, err := s.bus.History(ctx, channel, &bus.Position{Offset: top.Top.Offset - uint64(n), Epoch: top.Top.Epoch})
		if err != nil {
			return h, false, err
		}
		if got.Recovered {
			best, lo = got, n+1
		} else {
			hi = uint64(n) - 1
			if n == 0 {
				break
			}
		}
	}
	if len(best.Messages) > limit {
		best.Messages = best.Messages[len(best.Messages)-limit:]
	}
	return best, false, nil
}
