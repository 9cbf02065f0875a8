package bench

import (
	"context"
	"fmt"
	"net/http"
	"time"
)

// runScenario carries out o.scenario. It returns the result even with an
// error when part of the run was measured.
func runScenario(o *options) (*Result, error) {
	if o.scenario == "soak" {
		return runSoak(o)
	}
	res := &Result{
		Schema:   ResultSchema,
		Scenario: o.scenario,
		Started:  time.Now().UTC(),
		Pass:     true,
		Problems: []string{},
		Params: Params{
			Conns: o.conns, Channels: o.channels, Messages: o.messages, Rate: o.rate,
			PayloadBytes: o.payload, Publishers: o.publishers, Batch: o.batch,
			HoldS: o.hold.Seconds(), PublishTo: o.publishTo, Concurrency: o.concurrency,
		},
	}
	for _, n := range o.nodes {
		res.Params.URLs = append(res.Params.URLs, n.URL)
	}
	for _, a := range o.srcs {
		res.Params.Sources = append(res.Params.Sources, a.String())
	}
	switch o.scenario {
	case "connect", "idle", "churn":
		res.Params.Messages, res.Params.Publishers, res.Params.Batch = 0, 0, 0
	case "broadcast":
		res.Params.Batch = 1
	}
	if o.scenario != "idle" {
		res.Params.HoldS = 0
	}
	c, err := newCoordinator(o, true)
	if err != nil {
		return nil, err
	}
	res.Params.Workers = len(c.workers)
	s := &scenarioRun{o: o, c: c, res: res, client: &http.Client{Timeout: 10 * time.Second}}
	err = s.run()
	c.close()
	s.client.CloseIdleConnections()
	res.Tool = c.toolUsage()
	c.mu.Lock()
	res.Timeline.Samples = c.samples
	c.mu.Unlock()
	res.DurationS = time.Since(c.start).Seconds()
	if res.Timeline.Samples == nil {
		res.Timeline.Samples = []Sample{}
	}
	if res.Timeline.Deliveries == nil {
		res.Timeline.Deliveries = []uint64{}
	}
	res.Timeline.IntervalS = timelineInterval.Seconds()
	return res, err
}

// scenarioRun is the state of one run.
type scenarioRun struct {
	o      *options
	c      *coordinator
	res    *Result
	client *http.Client
	t0     time.Time // connect start: origin of the delivery timeline
}

func (s *scenarioRun) problem(format string, args ...any) {
	s.res.Pass = false
	s.res.Problems = append(s.res.Problems, fmt.Sprintf(format, args...))
}

// scrapeAll reads every node's /metrics.
func (s *scenarioRun) scrapeAll() []serverSample {
	out := make([]serverSample, len(s.o.nodes))
	for i, n := range s.o.nodes {
		out[i] = scrape(s.client, n.API, s.o.apiKey)
	}
	return out
}

// serverResult compares two scrapes.
func (s *scenarioRun) serverResult(before, after []serverSample, interval time.Duration) *ServerResult {
	r := &ServerResult{IntervalS: interval.Seconds()}
	for i, n := range s.o.nodes {
		ns := NodeSample{URL: n.URL, RSSBeforeBytes: before[i].RSS, RSSAfterBytes: after[i].RSS, CPUS: after[i].CPU - before[i].CPU}
		if !before[i].OK || !after[i].OK {
			ns.Error = before[i].Error + after[i].Error
		}
		r.CPUS += ns.CPUS
		r.Nodes = append(r.Nodes, ns)
	}
	return r
}

func (s *scenarioRun) run() error {
	before := s.scrapeAll()
	s.c.setStatus("connecting")
	s.t0 = time.Now()
	cs, err := s.c.phase("connect", 0)
	if err != nil {
		return err
	}
	s.res.Connect = connectResult(cs, s.t0)
	if cs.Up < cs.Target {
		s.problem("%d of %d connections did not get up", cs.Target-cs.Up, cs.Target)
	}
	switch s.o.scenario {
	case "idle":
		err = s.idle(before, cs.Up)
	case "broadcast", "throughput":
		err = s.publish(cs.Up)
	case "churn":
		err = s.churn()
	}
	if err != nil {
		return err
	}
	// The frame counters (pings answered, error frames…) cover the whole run.
	_, final, err := s.c.report()
	if err != nil {
		return err
	}
	s.res.Connect.Events = final.Extra
	return nil
}

// idle holds the connections and measures the server's memory and CPU.
func (s *scenarioRun) idle(before []serverSample, up int) error {
	s.c.setStatus("settling")
	time.Sleep(time.Second) // let the last subscriptions settle
	start := s.scrapeAll()
	s.c.setStatus("holding")
	t := time.Now()
	time.Sleep(s.o.hold)
	end := s.scrapeAll()
	hold := time.Since(t)
	ir := &IdleResult{HoldS: hold.Seconds(), Conns: up, StillUp: s.c.totals().Up}
	for i := range s.o.nodes {
		if !before[i].OK || !start[i].OK || !end[i].OK {
			ir.MetricsError = before[i].Error + start[i].Error + end[i].Error
			continue
		}
		ir.RSSBeforeBytes += before[i].RSS
		ir.RSSAfterBytes += end[i].RSS
		ir.CPUS += end[i].CPU - start[i].CPU
		if before[i].Heap > 0 && end[i].Heap > 0 {
			ir.HeapPerConnBytes += end[i].Heap - before[i].Heap
		}
	}
	if up > 0 {
		ir.RSSPerConnBytes = (ir.RSSAfterBytes - ir.RSSBeforeBytes) / float64(up)
		ir.HeapPerConnBytes /= float64(up)
	}
	ir.CPUSPerS = ir.CPUS / hold.Seconds()
	s.res.Idle = ir
	s.res.Server = s.serverResult(start, end, hold)
	if ir.StillUp < up {
		s.problem("%d connections were lost during the hold", up-ir.StillUp)
	}
	if ir.MetricsError != "" {
		s.problem("server metrics unavailable: %s", ir.MetricsError)
	}
	return nil
}

// publish runs broadcast or throughput.
func (s *scenarioRun) publish(up int) error {
	o := s.o
	targets := []string{o.nodes[0].API}
	switch o.publishTo {
	case "first":
	case "all":
		targets = targets[:0]
		for _, n := range o.nodes {
			targets = append(targets, n.API)
		}
	default:
		n, err := parseNode(o.publishTo)
		if err != nil {
			return err
		}
		targets = []string{n.API}
	}
	pb := newPublisher(o, s.c.chanPre)
	total := o.messages * o.channels
	batch, rate := 1, o.rate
	if o.scenario == "throughput" {
		batch, rate = o.batch, 0
		s.res.Params.Rate = 0
	}
	before := s.scrapeAll()
	s.c.setStatus("publishing")
	pubStart := time.Now()
	s.res.Timeline.PublishStartS = pubStart.Sub(s.t0).Seconds()
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	pb.run(ctx, total, batch, o.publishers, rate, targets)
	cancel()
	pb.client.CloseIdleConnections()
	pubDur := time.Since(pubStart)
	s.res.Publish = &PublishResult{
		Messages: total, OK: pb.okMsgs.Load(), Failed: pb.failMsgs.Load(), Requests: pb.requests.Load(),
		Retried: pb.retried.Load(), Statuses: pb.statuses, DurationS: pubDur.Seconds(),
		PerS: float64(pb.okMsgs.Load()) / pubDur.Seconds(), TargetPerS: rate, API: summarize(&pb.api),
	}
	s.c.setStatus("draining")
	complete := s.c.waitDeliveries(uint64(up) * uint64(o.messages))
	after := s.scrapeAll()
	d, _, err := s.c.report()
	if err != nil {
		return err
	}
	dr := &DeliveryResult{
		Subscribers: d.Subscribers, Messages: o.messages, Expected: d.Expected, Delivered: d.Delivered,
		Missing: d.Missing, Duplicates: d.Duplicates, Unexpected: d.Unexpected, Complete: complete,
		Latency: summarize(d.Latency), DroppedConns: d.Dropped,
	}
	if d.LastDelivery > 0 {
		dr.DurationS = time.Duration(d.LastDelivery - pubStart.UnixNano()).Seconds()
		if dr.DurationS > 0 {
			dr.PerS = float64(d.Delivered) / dr.DurationS
		}
	}
	s.res.Delivery = dr
	s.res.Timeline.Deliveries = d.Timeline
	srv := s.serverResult(before, after, time.Since(pubStart))
	if d.Delivered > 0 {
		srv.CPUSPerMillionDeliveries = srv.CPUS / float64(d.Delivered) * 1e6
	}
	s.res.Server = srv
	if d.Missing > 0 {
		s.problem("%d deliveries missing", d.Missing)
	}
	if d.Duplicates > 0 {
		s.problem("%d duplicate deliveries", d.Duplicates)
	}
	if d.Unexpected > 0 {
		s.problem("%d unexpected messages", d.Unexpected)
	}
	if pb.failMsgs.Load() > 0 {
		s.problem("%d messages could not be published", pb.failMsgs.Load())
	}
	return nil
}

// churn drops every client and measures the way back.
func (s *scenarioRun) churn() error {
	s.c.setStatus("storm")
	hp := startHealthProbe(s.apis(), s.o.apiKey, 20*time.Millisecond)
	drop := time.Now()
	cs, err := s.c.phase("churn", s.o.rate)
	hp.finish()
	if err != nil {
		return err
	}
	cr := &ChurnResult{
		Clients: cs.Target, Back: cs.Up, Failed: cs.Failed, Rate: s.o.rate, Attempts: cs.Attempts,
		Refused503: cs.Refused, FailuresByReason: cs.Failures, Handshake: summarize(cs.Handshake),
		Healthz: summarize(&hp.lat), HealthzFailed: hp.failed.Load(),
	}
	if cs.LastUp > 0 {
		cr.AllBackS = time.Duration(cs.LastUp - drop.UnixNano()).Seconds()
	}
	s.res.Churn = cr
	if cs.Up < cs.Target {
		s.problem("%d of %d clients did not come back", cs.Target-cs.Up, cs.Target)
	}
	return nil
}

func (s *scenarioRun) apis() []string {
	var out []string
	for _, n := range s.o.nodes {
		out = append(out, n.API)
	}
	return out
}
