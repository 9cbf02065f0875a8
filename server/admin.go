package server

import (
	"crypto/subtle"
	_ "embed"
	"encoding/json"
	"net/http"
	"strconv"
)

// The admin page (docs/api.md, "Admin page"): read-only, one HTML file
// with inline CSS, JavaScript and SVG (no external assets), served at
// /admin on the listener of the API (the private one with --api-listen),
// behind the API key. It polls /admin/data every 2 s.

//go:embed admin/admin.html
var adminHTML []byte

// adminTop is how many of its busiest channels each node reports.
const adminTop = 10

// adminPage handles GET /admin. A browser cannot set an Authorization
// header on a page load, so the key may come as ?key=; the page then keeps
// it in the tab's sessionStorage, removes it from the address bar and
// sends it as a bearer token to /admin/data.
func (s *Server) adminPage(w http.ResponseWriter, r *http.Request) {
	if !s.apiBegin(w, withQueryKey(r, s.cfg.APIKey), cmdAdmin, http.MethodGet) {
		return
	}
	s.apiCmds.count(cmdAdmin, "ok")
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'")
	w.Header().Set("X-Frame-Options", "DENY")
	_, _ = w.Write(adminHTML)
}

// withQueryKey returns r, with ?key= turned into a bearer token when it
// matches key.
func withQueryKey(r *http.Request, key string) *http.Request {
	k := r.URL.Query().Get("key")
	if key == "" || k == "" || subtle.ConstantTimeCompare([]byte(k), []byte(key)) != 1 {
		return r
	}
	r2 := r.Clone(r.Context())
	r2.Header.Set("Authorization", "Bearer "+k)
	return r2
}

// adminReply is one node's answer to the admin command.
type adminReply struct {
	Info     nodeInfo        `json:"info"`
	Channels json.RawMessage `json:"top"`
}

// adminNode answers the admin command on this node: its state with the
// samples, and its busiest channels.
func (s *Server) adminNode() adminReply {
	return adminReply{Info: s.info(true), Channels: s.appendChannelCounts(nil, "", adminTop)}
}

// adminData handles GET /admin/data: every node's state with its samples,
// and the busiest channels (each node's adminTop, summed).
func (s *Server) adminData(w http.ResponseWriter, r *http.Request) {
	if !s.apiBegin(w, r, cmdAdmin, http.MethodGet) {
		return
	}
	g, ok := s.gather(w, r, clusterCmd{Cmd: cmdAdmin})
	if !ok {
		return
	}
	b := append([]byte(nil), `{"nodes":[`...)
	for i, rep := range g.Replies {
		var a adminReply
		if err := json.Unmarshal(rep.Body, &a); err != nil {
			s.apiFail(w, cmdAdmin, http.StatusInternalServerError, "internal", "malformed answer from node "+rep.Node)
			return
		}
		g.Replies[i].Body = a.Channels
		info, _ := json.Marshal(a.Info)
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, info...)
	}
	b = append(b, `],"channels":[`...)
	top, _ := mergeChannelCounts(g.Replies, adminTop)
	for i, c := range top {
		if i > 0 {
			b = append(b, ',')
		}
		b = appendJSONString(append(b, `{"channel":`...), c.name)
		b = strconv.AppendInt(append(b, `,"subscribers":`...), int64(c.subs), 10)
		b = append(b, '}')
	}
	s.apiAnswer(w, cmdAdmin, append(b, ']'), g)
}
