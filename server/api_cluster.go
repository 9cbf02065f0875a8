package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/VictoriaMetrics/metrics"

	"tether/bus"
	"tether/internal/proto"
)

// The cluster-wide HTTP API (docs/api.md): commands about users and
// channels that every node answers for its own connections, gathered over
// the bus's control plane within Config.ClusterTimeout. An answer always
// says whether some node did not answer ("partial":true, "missing":[…]).

// Defaults and bounds of the API's parameters.
const (
	maxCloseReason       = 123 // bytes of a close frame's reason (RFC 6455)
	defaultChannelsLimit = 1000
	maxChannelsLimit     = 1_000_000
	defaultHistoryLimit  = 100
	maxHistoryLimit      = 1000
	// maxClusterCmds bounds the cluster-wide commands a node gathers at
	// once: each may hold an HTTP request slot for --cluster-timeout while
	// a node does not answer, and every node answers each with a goroutine
	// of its control plane (at most 64 at once, bus/control.go).
	maxClusterCmds = 32
)

// Outcomes of an API command (the outcome label of
// tether_api_commands_total).
var apiOutcomes = []string{"ok", "partial", proto.CodeBadRequest, proto.CodeUnauthorized, proto.CodeNotFound,
	proto.CodeTooLarge, "method_not_allowed", proto.CodeUnavailable, proto.CodeConflict, "internal"}

var apiCommands = []string{cmdPublish, cmdPresence, cmdDisconnect, cmdSubscribe, cmdUnsubscribe, cmdChannels, cmdInfo, cmdHistory, cmdAdmin}

// apiCommandMetrics counts API commands by name and outcome, created once
// in New.
type apiCommandMetrics map[string]*metrics.Counter

func newAPICommandMetrics(set *metrics.Set) apiCommandMetrics {
	m := make(apiCommandMetrics)
	for _, c := range apiCommands {
		for _, o := range apiOutcomes {
			m[c+"/"+o] = set.NewCounter(`tether_api_commands_total{command="` + c + `",outcome="` + o + `"}`)
		}
	}
	return m
}

func (m apiCommandMetrics) count(cmd, outcome string) {
	if c := m[cmd+"/"+outcome]; c != nil {
		c.Inc()
	}
}

// statusWriter records the status of an answer.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(status int) {
	if w.status == 0 {
		w.status = status
	}
	w.ResponseWriter.WriteHeader(status)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// counted returns h, its answers counted in tether_api_commands_total as
// command cmd with the outcome their status gives: for the handlers whose
// every refusal has one code per status (/api/publish, /api/presence).
func (s *Server) counted(cmd string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sw := &statusWriter{ResponseWriter: w}
		h(sw, r)
		outcome := "ok"
		if sw.status != 0 && sw.status != http.StatusOK {
			outcome = codeOfStatus(sw.status)
		}
		s.apiCmds.count(cmd, outcome)
	}
}

// apiCommandOf returns the command of an API path, "" for other paths: the
// HTTP layer counts what it refuses before a handler runs (httpconn.go).
func apiCommandOf(path string) string {
	switch path {
	case "/admin", "/admin/data":
		return cmdAdmin
	}
	if c, ok := strings.CutPrefix(path, "/api/"); ok && c != cmdAdmin && slices.Contains(apiCommands, c) {
		return c
	}
	return ""
}

// clusterRoutes adds the cluster-wide API and the admin page to mux.
func (s *Server) clusterRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/api/disconnect", s.userCommand(cmdDisconnect))
	mux.HandleFunc("/api/subscribe", s.userCommand(cmdSubscribe))
	mux.HandleFunc("/api/unsubscribe", s.userCommand(cmdUnsubscribe))
	mux.HandleFunc("/api/channels", s.apiChannels)
	mux.HandleFunc("/api/info", s.apiInfo)
	mux.HandleFunc("/api/history", s.apiHistory)
	mux.HandleFunc("/admin", s.adminPage)
	mux.HandleFunc("/admin/data", s.adminData)
}

// apiBegin checks r's method and credentials, answering and counting the
// refusal; it reports whether the command may run.
func (s *Server) apiBegin(w http.ResponseWriter, r *http.Request, cmd, method string) bool {
	if r.Method != method && !(method == http.MethodGet && r.Method == http.MethodHead) {
		w.Header().Set("Allow", method)
		s.apiFail(w, cmd, http.StatusMethodNotAllowed, "method_not_allowed", "use "+method)
		return false
	}
	if !s.apiAllowed(r) {
		s.apiFail(w, cmd, http.StatusUnauthorized, proto.CodeUnauthorized, s.apiDeniedMessage())
		return false
	}
	return true
}

// apiFail answers cmd with an error and counts it.
func (s *Server) apiFail(w http.ResponseWriter, cmd string, status int, code, msg string) {
	s.apiCmds.count(cmd, code)
	s.apiError(w, status, code, msg)
}

// apiAnswer writes b, a JSON object without its closing brace, with the
// partial and missing fields of g, and counts cmd's outcome.
func (s *Server) apiAnswer(w http.ResponseWriter, cmd string, b []byte, g bus.Gathered) {
	outcome := "ok"
	if g.Partial() {
		outcome = "partial"
	}
	s.apiCmds.count(cmd, outcome)
	b = append(b, `,"partial":`...)
	b = strconv.AppendBool(b, g.Partial())
	b = append(b, `,"missing":[`...)
	for i, n := range g.Missing {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(b, n)
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(append(b, "]}\n"...))
}

// gather sends cmd to every node and gathers the answers within
// ClusterTimeout, at most maxClusterCmds at once; on failure it answers 503
// itself and returns false.
func (s *Server) gather(w http.ResponseWriter, r *http.Request, cmd clusterCmd) (bus.Gathered, bool) {
	select {
	case s.clusterCmds <- struct{}{}:
		defer func() { <-s.clusterCmds }()
	default:
		w.Header().Set("Retry-After", "1")
		s.apiFail(w, cmd.Cmd, http.StatusServiceUnavailable, proto.CodeUnavailable,
			"too many cluster-wide commands at once on this node, retry later")
		return bus.Gathered{}, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), s.cfg.ClusterTimeout)
	defer cancel()
	raw, _ := json.Marshal(cmd)
	g, err := s.bus.Request(ctx, raw)
	if err != nil {
		w.Header().Set("Retry-After", "1")
		s.apiFail(w, cmd.Cmd, http.StatusServiceUnavailable, proto.CodeUnavailable, "cannot reach the other nodes: "+err.Error())
		return g, false
	}
	return g, true
}

// userRequest is the body of /api/disconnect, /api/subscribe and
// /api/unsubscribe.
type userRequest struct {
	User    string `json:"user"`
	Channel string `json:"channel"`
	Code    int    `json:"code"`
	Reason  string `json:"reason"`
}

// userCommand returns the handler of POST /api/<name>: the command applied
// to every connection of a user on every node.
func (s *Server) userCommand(name string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if !s.apiBegin(w, r, name, http.MethodPost) {
			return
		}
		var req userRequest
		if status, code, msg := s.readJSON(w, r, &req); status != 0 {
			s.apiFail(w, name, status, code, msg)
			return
		}
		cmd, msg := checkUserRequest(name, req)
		if msg != "" {
			s.apiFail(w, name, http.StatusBadRequest, proto.CodeBadRequest, msg)
			return
		}
		g, ok := s.gather(w, r, cmd)
		if !ok {
			return
		}
		var total userReply
		b := append([]byte(nil), `{"user":`...)
		b = appendJSONString(b, req.User)
		nodes := []byte(`,"nodes":[`)
		for i, rep := range g.Replies {
			var u userReply
			_ = json.Unmarshal(rep.Body, &u)
			total.Conns += u.Conns
			total.Changed += u.Changed
			total.Forbidden += u.Forbidden
			if i > 0 {
				nodes = append(nodes, ',')
			}
			nodes = appendJSONString(append(nodes, `{"node":`...), rep.Node)
			nodes = append(nodes, `,"conns":`...)
			nodes = strconv.AppendInt(nodes, int64(u.Conns), 10)
			nodes = append(nodes, `,"changed":`...)
			nodes = strconv.AppendInt(nodes, int64(u.Changed), 10)
			nodes = append(nodes, '}')
		}
		if total.Conns == 0 && !g.Partial() {
			s.apiFail(w, name, http.StatusNotFound, proto.CodeNotFound, "the user has no connection on any node")
			return
		}
		b = append(b, `,"conns":`...)
		b = strconv.AppendInt(b, int64(total.Conns), 10)
		b = append(b, `,"changed":`...)
		b = strconv.AppendInt(b, int64(total.Changed), 10)
		if name == cmdSubscribe {
			b = strconv.AppendInt(append(b, `,"forbidden":`...), int64(total.Forbidden), 10)
		}
		b = append(append(b, nodes...), ']')
		s.apiAnswer(w, name, b, g)
	}
}

// checkUserRequest checks req for command name and returns the cluster
// command, or why req is refused.
func checkUserRequest(name string, req userRequest) (clusterCmd, string) {
	cmd := clusterCmd{Cmd: name, User: req.User}
	if req.User == "" {
		return cmd, "missing user"
	}
	if len(req.User) > maxTokenLen || !utf8.ValidString(req.User) {
		return cmd, "user is not a valid token subject"
	}
	switch name {
	case cmdDisconnect:
		cmd.Code, cmd.Reason = cmp.Or(req.Code, proto.CloseDisconnected), req.Reason
		if cmd.Code < 4000 || cmd.Code > 4999 {
			return cmd, "code must be between 4000 and 4999"
		}
		if len(req.Reason) > maxCloseReason || !utf8.ValidString(req.Reason) {
			return cmd, "reason must be valid UTF-8 of at most 123 bytes"
		}
	default:
		if perr := checkChannel(req.Channel); perr != nil {
			return cmd, perr.msg
		}
		cmd.Channel = req.Channel
	}
	return cmd, ""
}

// readJSON decodes r's body, of at most MaxAPIBody bytes, into v. It
// returns a zero status on success, else the refusal.
func (s *Server) readJSON(w http.ResponseWriter, r *http.Request, v any) (int, string, string) {
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxAPIBody)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, proto.CodeTooLarge, "request body too large"
		}
		return http.StatusBadRequest, proto.CodeBadRequest, "cannot read body"
	}
	if err := json.Unmarshal(body, v); err != nil {
		return http.StatusBadRequest, proto.CodeBadRequest, "malformed JSON body"
	}
	return 0, "", ""
}

// apiChannels handles GET /api/channels?pattern=…&limit=…: the channels
// with subscribers on any node whose name matches the glob pattern, most
// subscribers first, with their subscribers summed over the nodes.
func (s *Server) apiChannels(w http.ResponseWriter, r *http.Request) {
	if !s.apiBegin(w, r, cmdChannels, http.MethodGet) {
		return
	}
	q := r.URL.Query()
	// A pattern is a channel name where '*' and '?' are wild: one that is
	// not could match no channel, which is a caller's mistake to report.
	pattern := cmp.Or(q.Get("pattern"), "*")
	if proto.CheckChannel(pattern) != nil {
		s.apiFail(w, cmdChannels, http.StatusBadRequest, proto.CodeBadRequest, "pattern must be 1 to 255 bytes of printable ASCII without spaces, * and ? wild")
		return
	}
	limit, ok := intParam(q.Get("limit"), defaultChannelsLimit, 1, maxChannelsLimit)
	if !ok {
		s.apiFail(w, cmdChannels, http.StatusBadRequest, proto.CodeBadRequest, "limit must be an integer from 1 to 1000000")
		return
	}
	g, ok := s.gather(w, r, clusterCmd{Cmd: cmdChannels, Pattern: pattern})
	if !ok {
		return
	}
	list, total := mergeChannelCounts(g.Replies, limit)
	b := append([]byte(nil), `{"total":`...)
	b = strconv.AppendInt(b, int64(total), 10)
	b = append(b, `,"channels":[`...)
	for i, c := range list {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(append(b, `{"channel":`...), c.name)
		b = append(b, `,"subscribers":`...)
		b = strconv.AppendInt(b, int64(c.subs), 10)
		b = append(b, '}')
	}
	s.apiAnswer(w, cmdChannels, append(b, ']'), g)
}

// channelCounts is one node's answer to the channels command
// (appendChannelCounts).
type channelCounts struct {
	Names []string `json:"names"`
	Subs  []int    `json:"subs"`
}

// mergeChannelCounts sums the nodes' channel counts and returns the limit
// channels with the most subscribers (most first, then by name), and how
// many channels there are.
func mergeChannelCounts(replies []bus.Reply, limit int) ([]channelCount, int) {
	counts := make([]channelCounts, len(replies))
	n := 0
	for i, rep := range replies {
		_ = json.Unmarshal(rep.Body, &counts[i])
		n = max(n, len(counts[i].Names))
	}
	sum := make(map[string]int, n)
	for _, c := range counts {
		for j, name := range c.Names[:min(len(c.Names), len(c.Subs))] {
			sum[name] += c.Subs[j]
		}
	}
	return topChannels(sum, limit), len(sum)
}

// rankChannels orders channels most subscribers first, then by name.
func rankChannels(a, b channelCount) int {
	return cmp.Or(b.subs-a.subs, cmp.Compare(a.name, b.name))
}

// topChannels returns the limit first channels of sum by rankChannels, in
// O(n log limit): a heap of the best so far, whose root is the worst of
// them, so that most channels are turned away by one comparison.
func topChannels(sum map[string]int, limit int) []channelCount {
	h := make([]channelCount, 0, min(limit, len(sum)))
	for name, subs := range sum {
		c := channelCount{name, subs}
		if len(h) < limit {
			h = append(h, c)
			for i := len(h) - 1; i > 0; {
				p := (i - 1) / 2
				if rankChannels(h[p], h[i]) >= 0 {
					break
				}
				h[p], h[i] = h[i], h[p]
				i = p
			}
			continue
		}
		if len(h) == 0 || rankChannels(c, h[0]) >= 0 {
			continue
		}
		h[0] = c
		for i := 0; ; {
			m := 2*i + 1
			if m >= len(h) {
				break
			}
			if r := m + 1; r < len(h) && rankChannels(h[r], h[m]) > 0 {
				m = r
			}
			if rankChannels(h[i], h[m]) >= 0 {
				break
			}
			h[i], h[m] = h[m], h[i]
			i = m
		}
	}
	slices.SortFunc(h, rankChannels)
	return h
}

// apiInfo handles GET /api/info: every node's state.
func (s *Server) apiInfo(w http.ResponseWriter, r *http.Request) {
	if !s.apiBegin(w, r, cmdInfo, http.MethodGet) {
		return
	}
	g, ok := s.gather(w, r, clusterCmd{Cmd: cmdInfo})
	if !ok {
		return
	}
	b := append([]byte(nil), `{"nodes":[`...)
	for i, rep := range g.Replies {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, rep.Body...)
	}
	s.apiAnswer(w, cmdInfo, append(b, ']'), g)
}

// intParam parses an optional integer query parameter within [lo, hi].
func intParam(v string, def, lo, hi int) (int, bool) {
	if v == "" {
		return def, true
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		return 0, false
	}
	return n, true
}
