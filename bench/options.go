package bench

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"
)

// Exit codes of Main.
const (
	exitOK = 0
	// exitError: the run could not be carried out (bad flags excepted).
	exitError = 1
	// exitUsage: bad command line.
	exitUsage = 2
	// exitCheck: the run completed but the server failed a check: missing
	// or duplicate deliveries, or connections that never got up.
	exitCheck = 3
)

// scenarios lists the scenario names with one line of help each.
var scenarios = []struct{ name, help string }{
	{"connect", "open N connections (each subscribed), report connections/s and handshake latency"},
	{"idle", "hold N subscribed connections for --hold; report server memory per connection and heartbeat CPU"},
	{"broadcast", "publish --messages at --rate to N subscribers; report delivery latency, missing and duplicates"},
	{"throughput", "publish as fast as the API accepts; report sustained deliveries/s and server CPU per million"},
	{"churn", "drop and reconnect N clients at once (or at --rate); report time until all are back and /healthz latency"},
	{"soak", "start Redis and --nodes nodes, churn N clients with recovery for --duration while publishing, restart Redis and a node; check exactly-once and flat memory"},
}

// node is one tether node under test.
type node struct {
	URL  string // as given
	Addr string // resolved ip:port to dial
	Host string // host:port as given, for the Host header
	Path string // WebSocket path
	API  string // base URL of the HTTP API, "http://host:port"
}

// options are a run's settings, from the command line.
type options struct {
	scenario       string
	nodes          []node
	apiKey         string
	token          string
	conns          int
	channels       int
	messages       int
	rate           float64
	payload        int
	publishers     int
	batch          int
	hold           time.Duration
	drain          time.Duration
	phaseTimeout   time.Duration
	attemptTimeout time.Duration
	concurrency    int
	retries        int
	workers        int
	pollers        int
	srcs           []netip.Addr
	publishTo      string
	jsonFile       string
	htmlFile       string
	inProcess      bool
	progress       bool
	stdout, stderr io.Writer
	soak           soakOptions
}

// listFlag collects repeated and comma-separated values.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(v string) error {
	for _, s := range strings.Split(v, ",") {
		if s = strings.TrimSpace(s); s != "" {
			*l = append(*l, s)
		}
	}
	return nil
}

// Main runs `tether bench` with args (the arguments after "bench") and
// returns the process exit code: 0 success, 1 the run failed, 2 bad usage,
// 3 the run completed but deliveries were missing or duplicated or
// connections never got up.
func Main(args []string) int {
	if len(args) > 0 && args[0] == "worker" {
		return workerMain()
	}
	return run(args, os.Stdout, os.Stderr)
}

func usage(w io.Writer) {
	fmt.Fprintf(w, "usage: tether bench <scenario> [flags]\n\nscenarios:\n")
	for _, s := range scenarios {
		fmt.Fprintf(w, "  %-11s %s\n", s.name, s.help)
	}
	fmt.Fprintf(w, "\nRun `tether bench <scenario> -h` for the flags.\n")
}

// parseOptions parses a scenario's command line.
func parseOptions(args []string, stdout, stderr io.Writer) (*options, error) {
	if len(args) == 0 || strings.HasPrefix(args[0], "-") {
		usage(stderr)
		return nil, flag.ErrHelp
	}
	o := &options{scenario: args[0], stdout: stdout, stderr: stderr}
	known := false
	for _, s := range scenarios {
		known = known || s.name == o.scenario
	}
	if !known {
		usage(stderr)
		return nil, fmt.Errorf("unknown scenario %q: %w", o.scenario, errBadConfig)
	}
	fs := flag.NewFlagSet("tether bench "+o.scenario, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var urls, src listFlag
	fs.Var(&urls, "url", "node `URL` (ws://host:port[/ws] or host:port); repeat or comma-separate for several nodes (default ws://127.0.0.1:8080/ws)")
	fs.StringVar(&o.apiKey, "api-key", os.Getenv("TETHER_API_KEY"), "API `key` for /api/publish and /metrics (default $TETHER_API_KEY)")
	fs.StringVar(&o.token, "token", "", "`JWT` sent with every WebSocket upgrade")
	defConns, defChannels := 1000, 1
	if o.scenario == "soak" {
		defConns, defChannels = 15000, 1000
	}
	fs.IntVar(&o.conns, "n", defConns, "number of client connections")
	fs.IntVar(&o.conns, "conns", defConns, "same as -n")
	fs.IntVar(&o.channels, "channels", defChannels, "spread subscribers over `K` channels (messages are published to each)")
	fs.IntVar(&o.messages, "messages", 100, "messages published per channel (broadcast, throughput)")
	fs.Float64Var(&o.rate, "rate", 0, "broadcast: publishes per second (default 100); churn: reconnects per second (default 0: all at once)")
	fs.IntVar(&o.payload, "payload", 0, "padding `bytes` added to each message")
	fs.IntVar(&o.publishers, "publishers", 0, "concurrent HTTP publishers (default 8 for broadcast, 4 for throughput)")
	fs.IntVar(&o.batch, "batch", 100, "throughput: messages per publish request")
	fs.DurationVar(&o.hold, "hold", 60*time.Second, "idle: how long to hold the connections")
	fs.DurationVar(&o.drain, "drain", 10*time.Second, "after the last publish, give up when no delivery arrived for this long")
	fs.DurationVar(&o.phaseTimeout, "timeout", 120*time.Second, "stop retrying connections after this long per connect phase")
	fs.DurationVar(&o.attemptTimeout, "attempt-timeout", 10*time.Second, "timeout of one connection attempt (dial to subscribed)")
	fs.IntVar(&o.concurrency, "concurrency", 256, "connection attempts in flight per worker")
	fs.IntVar(&o.retries, "retries", 5, "extra attempts per connection (503s are retried after Retry-After plus jitter); churn retries until --timeout")
	fs.IntVar(&o.workers, "workers", 0, "worker processes (default: as many as the open-file limit needs)")
	fs.IntVar(&o.pollers, "pollers", 0, "nbio pollers per worker (default: one per CPU, at most 4)")
	fs.Var(&src, "src", "source `addresses` to bind, e.g. 127.0.0.2-127.0.0.60 (ranges or lists); \"auto\" spreads loopback runs over 127.0.0.2…, 20k connections each; \"none\" binds nothing")
	fs.StringVar(&o.publishTo, "publish-to", "first", "publish to the `first` node, to \"all\" nodes in turn, or to the given URL")
	fs.StringVar(&o.jsonFile, "json", "", "write the result as JSON to `file`")
	fs.StringVar(&o.htmlFile, "html", "", "write a self-contained HTML report to `file`")
	fs.BoolVar(&o.inProcess, "in-process", false, "run the workers as goroutines of this process (debugging)")
	if o.scenario == "soak" {
		o.soak.flags(fs)
	}
	if err := fs.Parse(args[1:]); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q: %w", fs.Arg(0), errBadConfig)
	}
	if o.scenario == "soak" {
		if err := o.soak.check(o, len(urls)); err != nil {
			return nil, err
		}
		urls = listFlag{"ws://127.0.0.1:1/ws"} // the soak's own nodes, on loopback
	}
	if len(urls) == 0 {
		urls = listFlag{"ws://127.0.0.1:8080/ws"}
	}
	for _, u := range urls {
		n, err := parseNode(u)
		if err != nil {
			return nil, err
		}
		o.nodes = append(o.nodes, n)
	}
	switch {
	case o.conns < 1:
		return nil, fmt.Errorf("-n must be at least 1: %w", errBadConfig)
	case o.channels < 1 || o.channels > o.conns:
		return nil, fmt.Errorf("--channels must be between 1 and -n: %w", errBadConfig)
	case o.messages < 1 || o.messages > 1<<20:
		return nil, fmt.Errorf("--messages must be between 1 and 1048576: %w", errBadConfig)
	case o.batch < 1 || o.payload < 0 || o.rate < 0 || o.concurrency < 1 || o.retries < 0:
		return nil, fmt.Errorf("--batch, --payload, --rate, --concurrency or --retries out of range: %w", errBadConfig)
	}
	if o.scenario == "broadcast" && o.rate == 0 {
		o.rate = 100
	}
	if o.publishers <= 0 {
		o.publishers = 8
		if o.scenario == "throughput" {
			o.publishers = 4
		}
	}
	switch o.publishTo {
	case "first", "all":
	default:
		if _, err := parseNode(o.publishTo); err != nil {
			return nil, fmt.Errorf("bad --publish-to: %w", err)
		}
	}
	var err error
	if o.srcs, err = parseSources(src, o.nodes, o.conns); err != nil {
		return nil, err
	}
	if f, ok := stdout.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			o.progress = true
		}
	}
	return o, nil
}

// parseNode parses one --url value.
func parseNode(s string) (node, error) {
	raw := s
	if !strings.Contains(s, "://") {
		s = "ws://" + s
	}
	u, err := url.Parse(s)
	if err != nil {
		return node{}, fmt.Errorf("cannot parse URL %q: %w", raw, err)
	}
	switch u.Scheme {
	case "ws", "http":
	default:
		return node{}, fmt.Errorf("cannot use URL %q: only ws:// and http:// are supported: %w", raw, errBadConfig)
	}
	host := u.Host
	if u.Port() == "" {
		host = net.JoinHostPort(u.Hostname(), "80")
	}
	ta, err := net.ResolveTCPAddr("tcp", host)
	if err != nil {
		return node{}, fmt.Errorf("cannot resolve %q: %w", raw, err)
	}
	path := u.Path
	if path == "" || path == "/" {
		path = "/ws"
	}
	return node{URL: raw, Addr: ta.String(), Host: u.Host, Path: path, API: "http://" + u.Host}, nil
}

// perSourceConns is how many connections the automatic source choice puts
// on one source address: Linux's default ephemeral range has about 28k
// ports.
const perSourceConns = 20000

// parseSources turns --src values into addresses. With none given (or
// "auto"), runs against loopback nodes get ceil(n/20000) addresses from
// 127.0.0.2 up, plus one spare; other runs bind nothing.
func parseSources(spec []string, nodes []node, n int) ([]netip.Addr, error) {
	if len(spec) == 1 && spec[0] == "none" {
		return nil, nil
	}
	if len(spec) == 0 || len(spec) == 1 && spec[0] == "auto" {
		for _, nd := range nodes {
			ap, err := netip.ParseAddrPort(nd.Addr)
			if err != nil || !ap.Addr().Unmap().IsLoopback() || !ap.Addr().Unmap().Is4() {
				return nil, nil
			}
		}
		count := (n+perSourceConns-1)/perSourceConns + 1
		a := netip.AddrFrom4([4]byte{127, 0, 0, 2})
		var out []netip.Addr
		for i := 0; i < count; i++ {
			out = append(out, a)
			a = a.Next()
		}
		return out, nil
	}
	var out []netip.Addr
	for _, s := range spec {
		lo, hi, isRange := strings.Cut(s, "-")
		a, err := netip.ParseAddr(strings.TrimSpace(lo))
		if err != nil {
			return nil, fmt.Errorf("cannot parse --src %q: %w", s, err)
		}
		if !isRange {
			out = append(out, a)
			continue
		}
		b, err := netip.ParseAddr(strings.TrimSpace(hi))
		if err != nil || b.Less(a) || a.Is4() != b.Is4() {
			return nil, fmt.Errorf("cannot parse --src range %q: %w", s, errBadConfig)
		}
		for ; !b.Less(a); a = a.Next() {
			out = append(out, a)
			if len(out) > 1<<16 {
				return nil, fmt.Errorf("--src %q is too large: %w", s, errBadConfig)
			}
		}
	}
	return out, nil
}

// run parses the command line, runs the scenario and reports.
func run(args []string, stdout, stderr io.Writer) int {
	// Workers' stderr is copied by one goroutine per worker.
	if _, isFile := stderr.(*os.File); !isFile {
		stderr = &lockedWriter{w: stderr}
	}
	o, err := parseOptions(args, stdout, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return exitUsage
	}
	if err != nil {
		fmt.Fprintf(stderr, "tether bench: %v\n", err)
		return exitUsage
	}
	res, err := runScenario(o)
	if res != nil {
		writeTable(stdout, res)
		if o.jsonFile != "" {
			if werr := writeJSONFile(o.jsonFile, res); werr != nil {
				fmt.Fprintf(stderr, "tether bench: %v\n", werr)
				err = errors.Join(err, werr)
			}
		}
		if o.htmlFile != "" {
			if werr := writeHTMLFile(o.htmlFile, res); werr != nil {
				fmt.Fprintf(stderr, "tether bench: %v\n", werr)
				err = errors.Join(err, werr)
			}
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "tether bench: %v\n", err)
		return exitError
	}
	if !res.Pass {
		return exitCheck
	}
	return exitOK
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
