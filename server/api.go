package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"strconv"
	"time"

	"tether/bus"
	"tether/internal/proto"
)

// maxBatch bounds the messages of one batch publish.
const maxBatch = 1000

// routes returns the handlers of the public listener and of the private
// API listener. The public listener answers upgrades at /ws itself
// (upgrade.go) and hands every other request to its handler. Without
// Config.APIListen the public handler serves everything else and the
// private one is unused; with it, the public listener serves only /ws and
// the static files, so no load balancer in front of it can expose the API
// or the metrics.
func (s *Server) routes() (public, private http.Handler) {
	api := http.NewServeMux()
	s.apiRoutes(api)
	pub := http.NewServeMux()
	s.staticRoutes(pub)
	if s.cfg.APIListen == "" {
		s.apiRoutes(pub)
	} else {
		api.HandleFunc("/", notFound)
	}
	return pub, api
}

// apiRoutes adds the HTTP API, metrics and health endpoints to mux.
func (s *Server) apiRoutes(mux *http.ServeMux) {
	mux.HandleFunc("/api/publish", s.counted(cmdPublish, s.apiPublish))
	s.clusterRoutes(mux)
	mux.HandleFunc("/api/presence", s.counted(cmdPresence, s.apiPresence))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"status":"ok"}`)
	})
	mux.HandleFunc("/readyz", s.readyz)
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		s.m.write(w)
	})
}

// staticRoutes serves Config.StaticFS at "/" ("/" → demo/index.html), or
// 404 for every other path when it is nil.
func (s *Server) staticRoutes(mux *http.ServeMux) {
	if s.cfg.StaticFS == nil {
		mux.HandleFunc("/", notFound)
		return
	}
	files := http.FileServerFS(s.cfg.StaticFS)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/" {
			http.ServeFileFS(w, r, s.cfg.StaticFS, "demo/index.html")
			return
		}
		if _, err := fs.Stat(s.cfg.StaticFS, r.URL.Path[1:]); err != nil {
			notFound(w, r)
			return
		}
		files.ServeHTTP(w, r)
	})
}

func notFound(w http.ResponseWriter, _ *http.Request) {
	httpError(w, http.StatusNotFound, proto.CodeNotFound, "no such page")
}

// httpError writes the JSON error body every API error carries.
func httpError(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	b := append([]byte(`{"error":{"code":`), nil...)
	b = appendJSONString(b, code)
	b = append(b, `,"message":`...)
	b = appendJSONString(b, msg)
	b = append(b, "}}\n"...)
	_, _ = w.Write(b)
}

// readyz answers whether the node takes new connections: 503 while
// draining or at MaxConns. A degraded bus (Redis unreachable) is reported
// in the body but keeps the node ready, because every node shares it: were
// it to make them unready, a load balancer would take every node out at
// once and answer clients itself, while the nodes can still serve their
// subscribers and recover them from history afterwards. ?strict=1 counts a
// degraded bus as unready too, for whoever wants that.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	busState := "ok"
	if !s.bus.Stats().Healthy {
		busState = "degraded"
	}
	var reason string
	switch {
	case s.draining.Load():
		reason = "draining"
	case s.cfg.MaxConns > 0 && s.m.conns.Load() >= int64(s.cfg.MaxConns):
		reason = "at capacity"
	case busState == "degraded" && r.URL.Query().Get("strict") == "1":
		reason = "bus degraded"
	}
	w.Header().Set("Content-Type", "application/json")
	var b []byte
	if reason != "" {
		w.WriteHeader(http.StatusServiceUnavailable)
		b = appendJSONString(append(b, `{"status":"unavailable","reason":`...), reason)
	} else {
		b = append(b, `{"status":"ready"`...)
	}
	b = appendJSONString(append(b, `,"bus":`...), busState)
	_, _ = w.Write(append(b, "}\n"...))
}

type apiMessage struct {
	Channel        string          `json:"channel"`
	Data           json.RawMessage `json:"data"`
	IdempotencyKey string          `json:"idempotency_key"`
}

type apiPublishRequest struct {
	apiMessage
	Messages []apiMessage `json:"messages"`
}

// apiPublish handles POST /api/publish, single or batch.
func (s *Server) apiPublish(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		s.apiError(w, http.StatusMethodNotAllowed, "method_not_allowed", "use POST")
		return
	}
	if !s.apiAllowed(r) {
		s.apiError(w, http.StatusUnauthorized, proto.CodeUnauthorized, s.apiDeniedMessage())
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, int64(s.cfg.MaxAPIBody)))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			s.apiError(w, http.StatusRequestEntityTooLarge, proto.CodeTooLarge, "request body too large")
			return
		}
		s.apiError(w, http.StatusBadRequest, proto.CodeBadRequest, "cannot read body")
		return
	}
	pubs, batch, aerr := decodePublishRequest(body, s.cfg.MaxMessageSize)
	if aerr != nil {
		s.apiError(w, aerr.status, aerr.code, aerr.msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	pos, err := s.bus.PublishBatch(ctx, pubs)
	if err != nil {
		if errors.Is(err, bus.ErrIdempotencyConflict) {
			s.m.idemConflicts.Inc()
			s.apiError(w, http.StatusConflict, proto.CodeConflict, errConflict.msg+"; nothing was published")
			return
		}
		w.Header().Set("Retry-After", strconv.FormatInt(1+s.jitterMS()/1000, 10))
		s.apiError(w, http.StatusServiceUnavailable, proto.CodeUnavailable, "cannot publish now: "+err.Error())
		return
	}
	replayed := s.countPublished(pubs, pos)
	w.Header().Set("Content-Type", "application/json")
	var b []byte
	if !batch {
		b = append(b, `{"offset":`...)
		b = strconv.AppendUint(b, pos[0].Offset, 10)
		b = append(b, `,"epoch":`...)
		b = appendJSONString(b, pos[0].Epoch)
		if replayed > 0 {
			b = append(b, `,"replayed":true`...)
		}
	} else {
		b = append(b, `{"offsets":[`...)
		for i, p := range pos {
			if i > 0 {
				b = append(b, ',')
			}
			b = strconv.AppendUint(b, p.Offset, 10)
		}
		b = append(b, `],"epochs":[`...)
		for i, p := range pos {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendJSONString(b, p.Epoch)
		}
		b = append(b, ']')
		if replayed > 0 {
			b = append(b, `,"replayed":[`...)
			for i, p := range pos {
				if i > 0 {
					b = append(b, ',')
				}
				b = strconv.AppendBool(b, p.Replayed)
			}
			b = append(b, ']')
		}
	}
	_, _ = w.Write(append(b, "}\n"...))
}

// apiDeniedMessage says why an API request without credentials is refused.
func (s *Server) apiDeniedMessage() string {
	if s.cfg.APIKey == "" {
		return "without an API key the API answers only loopback callers"
	}
	return "a valid API key is required"
}

// apiRequestError is an API request refused for its body.
type apiRequestError struct {
	status    int
	code, msg string
}

// decodePublishRequest decodes and checks the body of POST /api/publish:
// either {"channel","data"} or {"messages":[…]} with 1 to maxBatch
// messages, each with a valid channel and data of at most maxMessage
// bytes. It returns the publications (data compacted) and whether the
// request was a batch.
func decodePublishRequest(body []byte, maxMessage int) ([]bus.Publication, bool, *apiRequestError) {
	var req apiPublishRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return nil, false, &apiRequestError{http.StatusBadRequest, proto.CodeBadRequest, "malformed JSON body"}
	}
	batch := req.Messages != nil
	msgs := req.Messages
	if !batch {
		msgs = []apiMessage{req.apiMessage}
	} else if req.Channel != "" || req.Data != nil {
		return nil, batch, &apiRequestError{http.StatusBadRequest, proto.CodeBadRequest, "give either channel+data or messages, not both"}
	}
	if len(msgs) == 0 {
		return nil, batch, &apiRequestError{http.StatusBadRequest, proto.CodeBadRequest, "messages is empty"}
	}
	if len(msgs) > maxBatch {
		return nil, batch, &apiRequestError{http.StatusRequestEntityTooLarge, proto.CodeTooLarge, "more than 1000 messages in one batch"}
	}
	pubs := make([]bus.Publication, len(msgs))
	for i, m := range msgs {
		if perr := checkChannel(m.Channel); perr != nil {
			return nil, batch, &apiRequestError{http.StatusBadRequest, perr.code, perr.msg + " (message " + strconv.Itoa(i) + ")"}
		}
		if len(m.Data) == 0 {
			return nil, batch, &apiRequestError{http.StatusBadRequest, proto.CodeBadRequest, "missing data (message " + strconv.Itoa(i) + ")"}
		}
		if len(m.Data) > maxMessage {
			return nil, batch, &apiRequestError{http.StatusRequestEntityTooLarge, proto.CodeTooLarge, "data larger than the max message size (message " + strconv.Itoa(i) + ")"}
		}
		if perr := checkIdempotencyKey(m.IdempotencyKey); perr != nil {
			return nil, batch, &apiRequestError{http.StatusBadRequest, perr.code, perr.msg + " (message " + strconv.Itoa(i) + ")"}
		}
		pubs[i] = bus.Publication{Channel: m.Channel, Data: compactJSON(m.Data), IdempotencyKey: apiIdempotencyKey(m.IdempotencyKey)}
	}
	return pubs, batch, nil
}

func (s *Server) apiError(w http.ResponseWriter, status int, code, msg string) {
	s.m.apiErrors.Inc()
	httpError(w, status, code, msg)
}

// compactJSON removes insignificant white space (newlines would be
// harmless, but compact frames are smaller on every delivery).
func compactJSON(b []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		return b
	}
	return buf.Bytes()
}
