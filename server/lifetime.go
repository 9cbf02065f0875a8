package server

import (
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/VictoriaMetrics/metrics"
)

// Close reasons for a connection the client side ended. The engine tells a
// clean close (the peer sent a close frame) from a socket that ended
// without one: a FIN (eof) or an RST (reset). The last two are what a load
// balancer, proxy or NAT that drops an idle connection produces.
const (
	reasonCloseFrame = "client" // the client sent a close frame
	reasonEOF        = "eof"
	reasonReset      = "reset"
)

// abnormalClose reports whether a close with reason may be a cut by a
// middlebox: the connection ended without a close frame.
func abnormalClose(reason string) bool {
	switch reason {
	case reasonEOF, reasonReset:
		return true
	}
	return false
}

// resumeWindow is how soon after its upgrade a connection must subscribe
// with since to count as a resume (see lifetimes.resumed).
const resumeWindow = 10 * time.Second

// idleCutWarnEvery rate-limits the idle-cut warning.
const idleCutWarnEvery = 5 * time.Minute

// lifetimes observes how connections end: the lifetime histogram by close
// reason, the detector of a middlebox's idle timeout and the count of
// resumes. Its methods are safe for concurrent use.
type lifetimes struct {
	// immutable after newLifetimes
	log          *slog.Logger
	pingInterval time.Duration
	byReason     map[string]*metrics.Histogram
	other        *metrics.Histogram // a reason not in byReason
	resumes      *metrics.Counter

	mu       sync.Mutex
	clusters idleClusters // guarded by mu
	checked  int64        // guarded by mu: when clusters was last asked for a suspect
	warned   int64        // guarded by mu: when the last warning was logged
}

// newLifetimes registers the metrics of connection lifetimes in set:
// tether_connection_lifetime_seconds{reason} for each of reasons and the
// engine's three client-side reasons, tether_lb_idle_timeout_suspected_seconds
// and tether_resumes_total. pingInterval is the server's, named in the
// warning.
func newLifetimes(set *metrics.Set, log *slog.Logger, pingInterval time.Duration, reasons []string) *lifetimes {
	l := &lifetimes{
		log:          log,
		pingInterval: pingInterval,
		byReason:     make(map[string]*metrics.Histogram),
	}
	all := append([]string{reasonCloseFrame, reasonEOF, reasonReset}, reasons...)
	for _, r := range all {
		if l.byReason[r] == nil {
			l.byReason[r] = set.NewHistogram(`tether_connection_lifetime_seconds{reason="` + r + `"}`)
		}
	}
	l.other = l.byReason["error"]
	if l.other == nil {
		l.other = set.NewHistogram(`tether_connection_lifetime_seconds{reason="error"}`)
	}
	l.resumes = set.NewCounter("tether_resumes_total")
	set.NewGauge("tether_lb_idle_timeout_suspected_seconds", func() float64 {
		l.mu.Lock()
		defer l.mu.Unlock()
		idle, _ := l.clusters.suspect(time.Now().UnixNano())
		return idle.Seconds()
	})
	return l
}

// observe records one closed connection: it was open for lifetime and had
// received nothing for idle when it ended for reason. now is the time of
// the close (unix nanos). It never blocks on I/O except for the
// rate-limited warning.
func (l *lifetimes) observe(now int64, lifetime, idle time.Duration, reason string) {
	h := l.byReason[reason]
	if h == nil {
		h = l.other
	}
	h.Update(lifetime.Seconds())
	if !abnormalClose(reason) {
		return
	}
	l.mu.Lock()
	l.clusters.add(now, idle)
	// Looking for a cluster scans every bin: once a second is plenty.
	if now-l.checked < int64(time.Second) {
		l.mu.Unlock()
		return
	}
	l.checked = now
	suspect, n := l.clusters.suspect(now)
	warn := suspect > 0 && (l.warned == 0 || now-l.warned >= int64(idleCutWarnEvery))
	if warn {
		l.warned = now
	}
	l.mu.Unlock()
	if warn {
		l.warn(suspect, n)
	}
}

// warn logs that connections are being cut after idle.
func (l *lifetimes) warn(idle time.Duration, n int) {
	idle = idle.Round(100 * time.Millisecond)
	if l.pingInterval < idle {
		l.log.Warn("connections are cut after the same idle time without a close frame, "+
			"although pings are more frequent: a middlebox counts only one direction, or something else ends them",
			"idle", idle.String(), "closes", n, "window", idleClusterWindow.String(),
			"ping_interval", l.pingInterval.String())
		return
	}
	fix := max(idle/2, 100*time.Millisecond).Truncate(100 * time.Millisecond)
	l.log.Warn("connections are cut after the same idle time without a close frame: "+
		"likely a load balancer or proxy idle timeout shorter than the ping interval; lower --ping-interval below it (or raise the timeout)",
		"idle", idle.String(), "closes", n, "window", idleClusterWindow.String(),
		"ping_interval", l.pingInterval.String(), "suggested_flag", "--ping-interval="+fix.String())
}

// resumed records that a connection opened at opened subscribed with since
// at now (unix nanos), when this was its first subscription. Within
// resumeWindow of the upgrade that is a client resuming a connection it
// lost, not a new user, so tether_resumes_total over
// tether_connections_accepted_total is the share of upgrades that are
// reconnects: near 0 in a calm cluster, near 1 when something keeps
// cutting connections.
func (l *lifetimes) resumed(now, opened int64) {
	if now-opened <= int64(resumeWindow) {
		l.resumes.Inc()
	}
}

// Idle-cut detection. A load balancer (or proxy, or NAT) that drops idle
// connections cuts every one of them after the same idle time, without a
// close frame; users leaving, networks failing and clean closes end
// connections at idle times spread over a wide range. The detector keeps
// the idle times of recent abnormal closes in logarithmic bins and
// reports a cluster when at least idleClusterMin of them, and at least
// half of all, fall within ±idleClusterRatio of one value.
//
// It clusters on the idle time (the time since the connection's last
// inbound frame) rather than the lifetime: the two are equal for a
// connection idle since its upgrade, but the server's first ping comes at
// a random phase of the ping interval, so once pings land inside the
// timeout the lifetimes spread over a whole interval while the idle time
// at the cut stays the timeout.
const (
	idleClusterWindow = 5 * time.Minute // how far back closes count
	idleClusterSlots  = 10              // the window advances by 1/slots
	idleClusterMin    = 20              // closes a cluster needs
	idleClusterRatio  = 1.1             // width of a bin; a cluster spans three
	idleClusterLow    = time.Second     // shorter idle times are ignored
	idleClusterBins   = 94              // bins up to ~2.3h: idleClusterLow × ratio^bins
)

// idleClusters is a sliding window of abnormal closes binned by idle time.
// The zero value is ready to use. It is plain data, not safe for concurrent
// use; time is passed in (unix nanos).
type idleClusters struct {
	slots [idleClusterSlots]idleSlot
	head  int   // the slot closes are added to
	start int64 // when head's period started; 0 before the first add
	total idleSlot
}

// idleSlot counts closes per idle bin, with the sum of their idle times.
type idleSlot struct {
	n   [idleClusterBins]uint32
	sum [idleClusterBins]float64 // seconds
	all uint32                   // every close, binned or not
}

func (s *idleSlot) sub(o *idleSlot) {
	for i := range s.n {
		s.n[i] -= o.n[i]
		s.sum[i] -= o.sum[i]
		if s.n[i] == 0 {
			s.sum[i] = 0 // no rounding error left behind
		}
	}
	s.all -= o.all
}

// idleBin returns the bin of idle, or -1 outside the bins' range.
func idleBin(idle time.Duration) int {
	if idle < idleClusterLow {
		return -1
	}
	b := int(math.Log(float64(idle)/float64(idleClusterLow)) / math.Log(idleClusterRatio))
	if b >= idleClusterBins {
		return -1
	}
	return b
}

// advance moves the window to now, forgetting slots that fell out of it.
func (d *idleClusters) advance(now int64) {
	period := int64(idleClusterWindow / idleClusterSlots)
	if d.start == 0 {
		d.start = now
		return
	}
	steps := (now - d.start) / period
	if steps <= 0 {
		return
	}
	if steps >= idleClusterSlots {
		*d = idleClusters{start: now}
		return
	}
	for range steps {
		d.head = (d.head + 1) % idleClusterSlots
		d.total.sub(&d.slots[d.head])
		d.slots[d.head] = idleSlot{}
	}
	d.start += steps * period
}

// add records an abnormal close after idle at now.
func (d *idleClusters) add(now int64, idle time.Duration) {
	d.advance(now)
	s := &d.slots[d.head]
	s.all++
	d.total.all++
	b := idleBin(idle)
	if b < 0 {
		return
	}
	s.n[b]++
	s.sum[b] += idle.Seconds()
	d.total.n[b]++
	d.total.sum[b] += idle.Seconds()
}

// suspect returns the idle time that the abnormal closes of the window
// cluster at (the mean of the cluster), and how many closes the cluster
// holds, or 0, 0 when they do not cluster.
func (d *idleClusters) suspect(now int64) (time.Duration, int) {
	d.advance(now)
	best, bestN := -1, uint32(0)
	for i := 1; i+1 < idleClusterBins; i++ {
		n := d.total.n[i-1] + d.total.n[i] + d.total.n[i+1]
		if n > bestN {
			best, bestN = i, n
		}
	}
	if best < 0 || bestN < idleClusterMin || 2*bestN < d.total.all {
		return 0, 0
	}
	sum := d.total.sum[best-1] + d.total.sum[best] + d.total.sum[best+1]
	mean := sum / float64(bestN)
	return time.Duration(mean * float64(time.Second)), int(bestN)
}
