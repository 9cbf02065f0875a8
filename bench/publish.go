package bench

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// publishJob is one publish request: messages first..first+count-1 of the
// run's sequence, where message j goes to channel j%channels with sequence
// number j/channels.
type publishJob struct {
	first, count int
	target       string // API base URL
}

// publisher sends publish requests through the HTTP API.
type publisher struct {
	client   *http.Client
	apiKey   string
	chanPre  string
	channels int
	pad      string
	acked    *ackedBits // if not nil, acknowledged messages are marked (soak)

	api      Hist // request latency, ns
	requests atomic.Int64
	okMsgs   atomic.Int64
	failMsgs atomic.Int64
	retried  atomic.Int64
	mu       sync.Mutex
	statuses map[string]int // failed attempts by status or error
}

func newPublisher(o *options, chanPre string) *publisher {
	tr := &http.Transport{
		MaxIdleConns:        o.publishers * 2,
		MaxIdleConnsPerHost: o.publishers * 2,
		DisableCompression:  true,
		IdleConnTimeout:     30 * time.Second,
	}
	return &publisher{
		client:   &http.Client{Transport: tr, Timeout: 30 * time.Second},
		apiKey:   o.apiKey,
		chanPre:  chanPre,
		channels: o.channels,
		pad:      strings.Repeat("x", o.payload),
		statuses: map[string]int{},
	}
}

// appendMessage appends one {"channel":…,"data":{"t":…,"s":…}} object.
func (pb *publisher) appendMessage(b []byte, j int, t int64) []byte {
	b = append(b, `{"channel":"`...)
	b = append(b, pb.chanPre...)
	b = strconv.AppendInt(b, int64(j%pb.channels), 10)
	b = append(b, `","data":{"t":`...)
	b = strconv.AppendInt(b, t, 10)
	b = append(b, `,"s":`...)
	b = strconv.AppendInt(b, int64(j/pb.channels), 10)
	if pb.pad != "" {
		b = append(b, `,"w":"`...)
		b = append(b, pb.pad...)
		b = append(b, '"')
	}
	return append(b, "}}"...)
}

// body builds a job's request body stamped with the time t.
func (pb *publisher) body(b []byte, job publishJob, t int64) []byte {
	if job.count == 1 {
		return pb.appendMessage(b, job.first, t)
	}
	b = append(b, `{"messages":[`...)
	for j := job.first; j < job.first+job.count; j++ {
		if j > job.first {
			b = append(b, ',')
		}
		b = pb.appendMessage(b, j, t)
	}
	return append(b, "]}"...)
}

// do sends one job, retrying refusals (503, 429) after Retry-After plus
// jitter. Other failures are not retried: the publish may have been stored.
func (pb *publisher) do(ctx context.Context, job publishJob, buf []byte) []byte {
	for attempt := 0; ; attempt++ {
		start := time.Now()
		buf = pb.body(buf[:0], job, start.UnixNano())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, job.target+"/api/publish", bytes.NewReader(buf))
		if err != nil {
			pb.fail(job, "request")
			return buf
		}
		req.Header.Set("Content-Type", "application/json")
		if pb.apiKey != "" {
			req.Header.Set("Authorization", "Bearer "+pb.apiKey)
		}
		pb.requests.Add(1)
		resp, err := pb.client.Do(req)
		if err != nil {
			pb.fail(job, "net_error")
			return buf
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		pb.api.Record(int64(time.Since(start)))
		switch {
		case resp.StatusCode == http.StatusOK:
			pb.okMsgs.Add(int64(job.count))
			if pb.acked != nil {
				pb.acked.set(job.first, job.count)
			}
			return buf
		case (resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusTooManyRequests) && attempt < 20:
			pb.note("http_" + strconv.Itoa(resp.StatusCode))
			pb.retried.Add(1)
			ra, err := strconv.Atoi(resp.Header.Get("Retry-After"))
			if err != nil {
				ra = -1
			}
			d := retryDelay(ra, attempt)
			if ra < 0 {
				d = retryDelay(-1, attempt+3)
			}
			select {
			case <-time.After(d):
			case <-ctx.Done():
				pb.fail(job, "canceled")
				return buf
			}
		default:
			pb.fail(job, "http_"+strconv.Itoa(resp.StatusCode))
			return buf
		}
	}
}

func (pb *publisher) note(reason string) {
	pb.mu.Lock()
	pb.statuses[reason]++
	pb.mu.Unlock()
}

func (pb *publisher) fail(job publishJob, reason string) {
	pb.note(reason)
	pb.failMsgs.Add(int64(job.count))
}

// run sends total messages in jobs of batch messages from workers
// goroutines, paced at rate jobs per second (0: as fast as accepted), to
// the targets in turn. It returns when all jobs are done or ctx ends.
func (pb *publisher) run(ctx context.Context, total, batch, workers int, rate float64, targets []string) {
	jobs := make(chan publishJob, workers*2)
	var wg sync.WaitGroup
	for i := 0; i < workers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 0, 4096)
			for job := range jobs {
				buf = pb.do(ctx, job, buf)
			}
		}()
	}
	start := time.Now()
	n := 0
	for first := 0; first < total; first += batch {
		if rate > 0 {
			if d := time.Until(start.Add(time.Duration(float64(n) / rate * float64(time.Second)))); d > 0 {
				select {
				case <-time.After(d):
				case <-ctx.Done():
				}
			}
		}
		if ctx.Err() != nil {
			break
		}
		jobs <- publishJob{first: first, count: min(batch, total-first), target: targets[n%len(targets)]}
		n++
	}
	close(jobs)
	wg.Wait()
}

// serverSample is one reading of a node's /metrics.
type serverSample struct {
	RSS   float64 // process_resident_memory_bytes
	CPU   float64 // process_cpu_seconds_total
	Heap  float64 // go_memstats_heap_inuse_bytes, if exposed
	OK    bool
	Error string
}

// scrape reads the process figures of a node's /metrics.
func scrape(client *http.Client, api, apiKey string) serverSample {
	var s serverSample
	err := readMetrics(client, api, apiKey, func(r io.Reader) { s = parseMetrics(r) })
	if err != nil {
		return serverSample{Error: err.Error()}
	}
	return s
}

// readMetrics GETs api's /metrics and hands the body to parse.
func readMetrics(client *http.Client, api, apiKey string, parse func(io.Reader)) error {
	req, err := http.NewRequest(http.MethodGet, api+"/metrics", nil)
	if err != nil {
		return err
	}
	if apiKey != "" {
		req.Header.Set("Authorization", "Bearer "+apiKey)
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		_, _ = io.Copy(io.Discard, resp.Body)
		return errors.New("status " + resp.Status)
	}
	parse(resp.Body)
	return nil
}

// eachMetric calls fn for every sample line of Prometheus text: the name
// with its labels, and the value.
func eachMetric(r io.Reader, fn func(name string, v float64)) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		val, _, _ := strings.Cut(strings.TrimSpace(rest), " ")
		if v, err := strconv.ParseFloat(val, 64); err == nil {
			fn(name, v)
		}
	}
}

// parseMetrics picks the process figures out of Prometheus text.
func parseMetrics(r io.Reader) serverSample {
	var s serverSample
	found := 0
	eachMetric(r, func(name string, v float64) {
		if i := strings.IndexByte(name, '{'); i >= 0 {
			name = name[:i]
		}
		switch name {
		case "process_resident_memory_bytes":
			s.RSS = v
		case "process_cpu_seconds_total":
			s.CPU = v
		case "go_memstats_heap_inuse_bytes":
			s.Heap = v
		default:
			return
		}
		found++
	})
	s.OK = found >= 2 && s.RSS > 0
	if !s.OK && s.Error == "" {
		s.Error = "process metrics not found"
	}
	return s
}

// healthProbe measures GET /healthz latency of the nodes in turn until
// stopped.
type healthProbe struct {
	lat    Hist
	failed atomic.Int64
	stop   chan struct{}
	done   chan struct{}
}

func startHealthProbe(apis []string, apiKey string, every time.Duration) *healthProbe {
	hp := &healthProbe{stop: make(chan struct{}), done: make(chan struct{})}
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 1, DisableCompression: true}}
	go func() {
		defer close(hp.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for i := 0; ; i++ {
			select {
			case <-hp.stop:
				client.CloseIdleConnections()
				return
			case <-t.C:
			}
			start := time.Now()
			req, _ := http.NewRequest(http.MethodGet, apis[i%len(apis)]+"/healthz", nil)
			if apiKey != "" {
				req.Header.Set("Authorization", "Bearer "+apiKey)
			}
			resp, err := client.Do(req)
			if err != nil {
				hp.failed.Add(1)
				continue
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				hp.failed.Add(1)
				continue
			}
			hp.lat.Record(int64(time.Since(start)))
		}
	}()
	return hp
}

func (hp *healthProbe) finish() {
	close(hp.stop)
	<-hp.done
}
