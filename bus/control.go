package bus

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// The control plane carries commands that need every node (the cluster-wide
// server API: disconnect a user everywhere, list the channels of every
// node) and gathers the nodes' answers within a deadline.
//
// A node joins with StartControl, naming itself and the function that
// answers commands. Request sends a command to every node, the sender
// included, and waits until every node it expects has answered or ctx
// ends: it never waits longer, and names the nodes that did not answer.
//
// Which nodes to expect: every node announces itself at least every
// heartbeat (1 s) with a time-to-live (NodeTTL). A node that stops
// announcing (paused by SIGSTOP, frozen by the GC, cut off from Redis) is
// still expected until its TTL runs out, so a request in that time reports
// it missing; a node silent for longer than its TTL is taken as gone and is
// no longer expected (a paused node that wakes up announces itself again).
// A node that closes its bus leaves the registry at once.
//
// The local bus is one node: its requests are answered by itself. The Redis
// bus sends commands over Redis pub/sub (sharded pub/sub on a Redis
// Cluster, every control channel in one hash slot), and keeps the registry
// in a sorted set.

// NodeTTL is how long a node that stopped announcing itself is still
// expected to answer commands (reported missing) before it is taken as gone.
const NodeTTL = 15 * time.Second

// controlHeartbeat is how often a node announces itself.
const controlHeartbeat = time.Second

// maxControlHandlers bounds the commands a node answers at once; commands
// over it are dropped (their sender reports the node missing).
const maxControlHandlers = 64

// ErrNoControl is returned by Request before StartControl.
var ErrNoControl = errors.New("bus: control plane not started")

// Reply is one node's answer to a command.
type Reply struct {
	Node string
	Body json.RawMessage
}

// Gathered is the outcome of a Request.
type Gathered struct {
	// Replies are the answers received, the requesting node's first, then
	// by node id.
	Replies []Reply
	// Missing are the nodes expected to answer that did not before the
	// deadline, sorted.
	Missing []string
}

// Partial reports whether some expected node did not answer.
func (g Gathered) Partial() bool { return len(g.Missing) > 0 }

// ControlFunc answers a command on one node. It runs on a goroutine of the
// bus's (at most maxControlHandlers at once) and returns the JSON answer.
type ControlFunc func(cmd json.RawMessage) json.RawMessage

// transport is what a backend provides to the control plane.
type transport interface {
	// listen starts delivering to deliver the envelopes sent to every node
	// and those addressed to node. deliver runs on the transport's goroutine.
	listen(node string, deliver func(envelope []byte)) error
	// send sends envelope to every node (to == "") or to node to.
	send(ctx context.Context, to string, envelope []byte) error
	// announce records node as alive for NodeTTL.
	announce(ctx context.Context, node string) error
	// nodes returns the nodes announced within NodeTTL.
	nodes(ctx context.Context) ([]string, error)
	// leave removes node from the registry and stops listening.
	leave(node string)
}

// controlTransporter is implemented by backends with a control plane.
type controlTransporter interface {
	controlTransport() transport
}

// envelope is what travels between nodes.
type envelope struct {
	Kind string          `json:"k"` // "q" for a command, "r" for a reply
	ID   string          `json:"id"`
	From string          `json:"from"`
	Body json.RawMessage `json:"body"`
}

// control is one node's side of the control plane.
type control struct {
	// immutable after StartControl
	node  string
	tr    transport
	log   *slog.Logger
	slots chan struct{}
	done  chan struct{}
	wg    sync.WaitGroup

	handle atomic.Pointer[ControlFunc] // replaced by a later StartControl

	mu      sync.Mutex // guards pending, closed
	pending map[string]*gathering
	closed  bool
}

// gathering collects the replies of one request.
type gathering struct {
	replies []Reply
	arrived chan struct{} // signalled on each reply
}

// StartControl joins the control plane as node, answering commands with
// handle. Called again with the same node (a server restarted on the same
// bus), it only replaces handle; with another node it fails. log, if not
// nil, receives the plane's failures.
func (b *Bus) StartControl(node string, handle ControlFunc, log *slog.Logger) error {
	if c := b.ctl.Load(); c != nil {
		if c.node != node {
			return fmt.Errorf("bus: control plane already started as %q", c.node)
		}
		c.handle.Store(&handle)
		return nil
	}
	ct, ok := b.be.(controlTransporter)
	if !ok {
		return errors.New("bus: this backend has no control plane")
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &control{
		node: node, tr: ct.controlTransport(), log: log,
		slots:   make(chan struct{}, maxControlHandlers),
		done:    make(chan struct{}),
		pending: make(map[string]*gathering),
	}
	c.handle.Store(&handle)
	if !b.ctl.CompareAndSwap(nil, c) {
		return errors.New("bus: control plane already started")
	}
	if err := c.tr.listen(node, c.deliver); err != nil {
		return fmt.Errorf("cannot start control plane: %w", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	if err := c.tr.announce(ctx, node); err != nil {
		log.Warn("cannot announce node", "node", node, "err", err)
	}
	cancel()
	c.wg.Add(1)
	go c.heartbeat()
	return nil
}

// Request sends cmd to every node, the calling one included, and gathers
// their replies until every node expected has answered or ctx ends,
// whichever comes first. It fails only when the command cannot be sent at
// all; unanswered nodes are listed in Gathered.Missing.
func (b *Bus) Request(ctx context.Context, cmd json.RawMessage) (Gathered, error) {
	c := b.ctl.Load()
	if c == nil {
		return Gathered{}, ErrNoControl
	}
	return c.request(ctx, cmd)
}

// NodeID returns the id the node joined the control plane with, or "".
func (b *Bus) NodeID() string {
	if c := b.ctl.Load(); c != nil {
		return c.node
	}
	return ""
}

func (c *control) request(ctx context.Context, cmd json.RawMessage) (Gathered, error) {
	expected, err := c.tr.nodes(ctx)
	if err != nil {
		return Gathered{}, fmt.Errorf("cannot list nodes: %w", err)
	}
	if !slices.Contains(expected, c.node) {
		expected = append(expected, c.node)
	}
	id := randomID()
	g := &gathering{arrived: make(chan struct{}, 1)}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return Gathered{}, ErrClosed
	}
	c.pending[id] = g
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()
	env, _ := json.Marshal(envelope{Kind: "q", ID: id, From: c.node, Body: cmd})
	if err := c.tr.send(ctx, "", env); err != nil {
		return Gathered{}, fmt.Errorf("cannot send command: %w", err)
	}
	for {
		c.mu.Lock()
		done := answeredAll(g.replies, expected)
		c.mu.Unlock()
		if done {
			break
		}
		select {
		case <-g.arrived:
			continue
		case <-ctx.Done():
		case <-c.done:
		}
		break
	}
	c.mu.Lock()
	replies := slices.Clone(g.replies)
	c.mu.Unlock()
	return gathered(c.node, replies, expected), nil
}

// answeredAll reports whether every node of expected has a reply.
func answeredAll(replies []Reply, expected []string) bool {
	for _, n := range expected {
		if !slices.ContainsFunc(replies, func(r Reply) bool { return r.Node == n }) {
			return false
		}
	}
	return true
}

// gathered orders replies (self first, then by node) and lists the
// expected nodes without one.
func gathered(self string, replies []Reply, expected []string) Gathered {
	slices.SortFunc(replies, func(a, b Reply) int {
		switch {
		case a.Node == b.Node:
			return 0
		case a.Node == self:
			return -1
		case b.Node == self:
			return 1
		case a.Node < b.Node:
			return -1
		}
		return 1
	})
	replies = slices.CompactFunc(replies, func(a, b Reply) bool { return a.Node == b.Node })
	g := Gathered{Replies: replies}
	for _, n := range expected {
		if !slices.ContainsFunc(replies, func(r Reply) bool { return r.Node == n }) {
			g.Missing = append(g.Missing, n)
		}
	}
	slices.Sort(g.Missing)
	return g
}

// deliver handles an envelope from the transport: a command is answered on
// a goroutine of its own (never on the transport's), a reply is handed to
// its request.
func (c *control) deliver(raw []byte) {
	var e envelope
	if err := json.Unmarshal(raw, &e); err != nil {
		c.log.Debug("cannot decode control envelope", "err", err)
		return
	}
	switch e.Kind {
	case "q":
		select {
		case c.slots <- struct{}{}:
		default:
			c.log.Warn("control command dropped: too many in flight", "from", e.From)
			return
		}
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			<-c.slots
			return
		}
		c.wg.Add(1)
		c.mu.Unlock()
		go func() {
			defer c.wg.Done()
			defer func() { <-c.slots }()
			body := (*c.handle.Load())(e.Body)
			out, _ := json.Marshal(envelope{Kind: "r", ID: e.ID, From: c.node, Body: body})
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := c.tr.send(ctx, e.From, out); err != nil {
				c.log.Debug("cannot send control reply", "to", e.From, "err", err)
			}
		}()
	case "r":
		c.mu.Lock()
		if g := c.pending[e.ID]; g != nil {
			g.replies = append(g.replies, Reply{Node: e.From, Body: e.Body})
			select {
			case g.arrived <- struct{}{}:
			default:
			}
		}
		c.mu.Unlock()
	}
}

// heartbeat announces the node every controlHeartbeat until close.
func (c *control) heartbeat() {
	defer c.wg.Done()
	t := time.NewTicker(controlHeartbeat)
	defer t.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-t.C:
		}
		ctx, cancel := context.WithTimeout(context.Background(), controlHeartbeat)
		if err := c.tr.announce(ctx, c.node); err != nil {
			c.log.Debug("cannot announce node", "node", c.node, "err", err)
		}
		cancel()
	}
}

// closeControl leaves the control plane; Bus.Close calls it first.
func (b *Bus) closeControl() {
	c := b.ctl.Load()
	if c == nil {
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	c.mu.Unlock()
	close(c.done)
	c.tr.leave(c.node)
	c.wg.Wait()
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
