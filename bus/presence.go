package bus

import (
	"context"
	"sync"
	"time"
)

// Member is one connection in a channel's presence: the user it
// authenticated as and its connection id.
type Member struct {
	User string `json:"user"`
	Conn string `json:"conn"`
}

// PresenceChange is one connection joining or leaving a channel's
// presence.
type PresenceChange struct {
	Channel string
	Member  Member
	// Leave is false for a join.
	Leave bool
	// Announce asks the bus to carry the change to every node interested
	// in the channel (Handler.OnPresence), batched.
	Announce bool
}

// PresenceEvent is one announced join or leave, as Handler.OnPresence
// receives it.
type PresenceEvent struct {
	Leave bool `json:"leave,omitempty"`
	Member
}

// Presence is a channel's presence as one read saw it.
type Presence struct {
	// Clients is the number of connections in the channel's presence,
	// cluster-wide; Users the number of distinct users among them. Both are
	// exact (as of the read: a change is in them once its node has flushed
	// it, at most PresenceWindow after it happened).
	Clients, Users int
	// Members lists at most the requested number of members; which ones,
	// when there are more, is unspecified.
	Members []Member
}

// PresenceWindow is how long a node batches presence changes before it
// writes them to the shared store and announces them: joins and leaves of
// one channel cost one store update and one announcement per window.
const PresenceWindow = 100 * time.Millisecond

// presenceStore is what a Bus implementation provides for presence. All
// methods are safe for concurrent use.
type presenceStore interface {
	// change records c. It never blocks and never calls the handler
	// synchronously, so it may be called with the caller's locks held.
	change(c PresenceChange)
	// read returns channel's presence with at most maxMembers members.
	read(ctx context.Context, channel string, maxMembers int) (Presence, error)
}

// PresenceUpdate records a connection joining or leaving a channel's
// presence. It never blocks: changes are batched per channel and written
// within PresenceWindow. A node must report every member it adds and
// removes, in order; a leave of a connection that is not a member changes
// nothing.
func (b *Bus) PresenceUpdate(c PresenceChange) { b.pres.change(c) }

// Presence reads channel's presence, listing at most maxMembers members
// (none when maxMembers ≤ 0). It must not be called with locks held that
// the handler takes.
func (b *Bus) Presence(ctx context.Context, channel string, maxMembers int) (Presence, error) {
	return b.pres.read(ctx, channel, maxMembers)
}

// presenceBatch gathers the changes of one window, per channel, in order.
type presenceBatch struct {
	mu      sync.Mutex
	pending map[string]*pendingPresence // guarded by mu
	wake    chan struct{}
}

type pendingPresence struct {
	changes  []PresenceChange
	announce bool
}

func newPresenceBatch() *presenceBatch {
	return &presenceBatch{pending: make(map[string]*pendingPresence), wake: make(chan struct{}, 1)}
}

// add queues c and wakes the flusher.
func (pb *presenceBatch) add(c PresenceChange) {
	pb.mu.Lock()
	p := pb.pending[c.Channel]
	if p == nil {
		p = &pendingPresence{}
		pb.pending[c.Channel] = p
	}
	p.changes = append(p.changes, c)
	p.announce = p.announce || c.Announce
	pb.mu.Unlock()
	wake(pb.wake)
}

// take returns the pending changes and starts a new batch.
func (pb *presenceBatch) take() map[string]*pendingPresence {
	pb.mu.Lock()
	defer pb.mu.Unlock()
	if len(pb.pending) == 0 {
		return nil
	}
	p := pb.pending
	pb.pending = make(map[string]*pendingPresence, len(p))
	return p
}

// run calls flush with each window's changes: it waits for a change, then
// for the rest of the window, until done is closed.
func (pb *presenceBatch) run(done <-chan struct{}, flush func(map[string]*pendingPresence)) {
	t := time.NewTimer(PresenceWindow)
	defer t.Stop()
	for {
		select {
		case <-done:
			return
		case <-pb.wake:
		}
		t.Reset(PresenceWindow)
		select {
		case <-done:
			return
		case <-t.C:
		}
		if p := pb.take(); p != nil {
			flush(p)
		}
	}
}

// events returns the announced changes of p as events.
func (p *pendingPresence) events() []PresenceEvent {
	ev := make([]PresenceEvent, 0, len(p.changes))
	for _, c := range p.changes {
		if c.Announce {
			ev = append(ev, PresenceEvent{Leave: c.Leave, Member: c.Member})
		}
	}
	return ev
}
