package bus

import (
	"context"
	"sync"
)

// localPresence is the in-process presence store: counts and members are
// applied at once; announcements are batched per PresenceWindow and handed
// to the handler by one goroutine.
type localPresence struct {
	l     *local // immutable
	batch *presenceBatch

	mu    sync.Mutex
	chans map[string]*localPresenceChannel // guarded by mu
}

type localPresenceChannel struct {
	members map[string]string // conn → user
	users   map[string]int    // user → connections
}

func newLocalPresence(l *local) *localPresence {
	p := &localPresence{l: l, batch: newPresenceBatch(), chans: make(map[string]*localPresenceChannel)}
	l.wg.Add(1)
	go func() {
		defer l.wg.Done()
		p.batch.run(l.done, p.announce)
	}()
	return p
}

// change implements presenceStore.
func (p *localPresence) change(c PresenceChange) {
	p.mu.Lock()
	ch := p.chans[c.Channel]
	if ch == nil {
		if c.Leave {
			p.mu.Unlock()
			return
		}
		ch = &localPresenceChannel{members: make(map[string]string), users: make(map[string]int)}
		p.chans[c.Channel] = ch
	}
	applied := ch.apply(c)
	if len(ch.members) == 0 {
		delete(p.chans, c.Channel)
	}
	p.mu.Unlock()
	if applied && c.Announce {
		p.batch.add(c)
	}
}

// apply applies c and reports whether it changed anything.
func (ch *localPresenceChannel) apply(c PresenceChange) bool {
	m := c.Member
	if c.Leave {
		user, ok := ch.members[m.Conn]
		if !ok {
			return false
		}
		delete(ch.members, m.Conn)
		if ch.users[user]--; ch.users[user] <= 0 {
			delete(ch.users, user)
		}
		return true
	}
	if _, ok := ch.members[m.Conn]; ok {
		return false
	}
	ch.members[m.Conn] = m.User
	ch.users[m.User]++
	return true
}

// announce hands each channel's batch to the handler.
func (p *localPresence) announce(batch map[string]*pendingPresence) {
	h := p.l.handler.Load()
	if h == nil || h.OnPresence == nil {
		return
	}
	for name, pp := range batch {
		p.mu.Lock()
		clients := 0
		if ch := p.chans[name]; ch != nil {
			clients = len(ch.members)
		}
		p.mu.Unlock()
		h.OnPresence(name, clients, pp.events())
	}
}

// read implements presenceStore.
func (p *localPresence) read(_ context.Context, channel string, maxMembers int) (Presence, error) {
	if p.l.closed.Load() {
		return Presence{}, ErrClosed
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	ch := p.chans[channel]
	if ch == nil {
		return Presence{}, nil
	}
	r := Presence{Clients: len(ch.members), Users: len(ch.users)}
	for conn, user := range ch.members {
		if len(r.Members) >= maxMembers {
			break
		}
		r.Members = append(r.Members, Member{User: user, Conn: conn})
	}
	return r, nil
}
