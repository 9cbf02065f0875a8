package bus

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// redisPresence is the Redis presence store (key layout in
// presence_wire.go). One goroutine (loop) owns the writes: it flushes each
// window's changes as one pipeline, refreshes the owner's registration and
// cleans expired owners.
type redisPresence struct {
	b                                  *redisBus // immutable
	apply, clean, readS, beat, expired *redis.Script
	ownersKey                          string
	batch                              *presenceBatch
	quit, exited                       chan struct{} // stop closes quit; loop closes exited

	// owned by loop
	owner      string
	registered bool
	resync     bool // write every member again under a new owner
	loaded     bool // the scripts are loaded in Redis

	mu      sync.Mutex
	members map[string]map[string]string // channel → conn → user: this node's members (guarded by mu)
}

// presenceChunk bounds the changes of one script call.
const presenceChunk = 1000

func newRedisPresence(b *redisBus) *redisPresence {
	p := &redisPresence{
		b:         b,
		apply:     redis.NewScript(presenceApplyScript),
		clean:     redis.NewScript(presenceCleanScript),
		readS:     redis.NewScript(presenceReadScript),
		beat:      redis.NewScript(presenceBeatScript),
		expired:   redis.NewScript(presenceExpiredScript),
		ownersKey: b.cfg.KeyPrefix + "presence:owners",
		batch:     newPresenceBatch(),
		owner:     newEpochCandidate(),
		members:   make(map[string]map[string]string),
		quit:      make(chan struct{}),
		exited:    make(chan struct{}),
	}
	b.start(p.loop)
	return p
}

// change implements presenceStore.
func (p *redisPresence) change(c PresenceChange) { p.batch.add(c) }

// loop flushes each window's changes and, every PresenceTTL/3, refreshes
// the registration and cleans expired owners.
func (p *redisPresence) loop() {
	b := p.b
	every := max(b.cfg.PresenceTTL/3, 10*time.Millisecond)
	beat := time.NewTicker(every)
	defer beat.Stop()
	window := time.NewTimer(time.Hour)
	defer window.Stop()
	armed := false
	defer close(p.exited)
	for {
		select {
		case <-b.done:
			return
		case <-p.quit:
			// A node that stops removes its members at once, rather than
			// leaving them to expire.
			if p.registered && b.healthy.Load() {
				p.cleanOwner(p.owner)
			}
			return
		case <-p.batch.wake:
			if !armed {
				armed = true
				window.Reset(PresenceWindow)
			}
		case <-window.C:
			armed = false
			if batch := p.batch.take(); batch != nil {
				p.flush(batch)
			}
		case <-beat.C:
			p.heartbeat()
			p.janitor()
		}
	}
}

// stop makes loop remove the node's members from Redis and return; it
// waits at most twice CommandTimeout.
func (p *redisPresence) stop() {
	close(p.quit)
	select {
	case <-p.exited:
	case <-time.After(2 * p.b.cfg.CommandTimeout):
	}
}

func (p *redisPresence) ctx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(p.b.ctx, p.b.cfg.CommandTimeout)
}

// load loads the scripts once, and again after a failure.
func (p *redisPresence) load(ctx context.Context) error {
	if p.loaded {
		return nil
	}
	for _, s := range []*redis.Script{p.apply, p.clean, p.readS, p.beat, p.expired} {
		if err := s.Load(ctx, p.b.client).Err(); err != nil {
			return err
		}
	}
	p.loaded = true
	return nil
}

// failed notes a failed write: the members are written again, under a new
// owner, once Redis answers.
func (p *redisPresence) failed(err error) {
	p.loaded = false
	p.resync = true
	p.b.m.errPresence.Inc()
	p.b.commandFailed(err)
}

// record applies batch to the node's own member map and returns, per
// channel, whether the owner's channel set gains (true) or loses (false)
// the channel.
func (p *redisPresence) record(batch map[string]*pendingPresence) map[string]bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	sets := make(map[string]bool)
	for name, pp := range batch {
		ms := p.members[name]
		before := len(ms)
		for _, c := range pp.changes {
			if c.Leave {
				delete(ms, c.Member.Conn)
				continue
			}
			if ms == nil {
				ms = make(map[string]string)
				p.members[name] = ms
			}
			ms[c.Member.Conn] = c.Member.User
		}
		switch {
		case before == 0 && len(ms) > 0:
			sets[name] = true
		case before > 0 && len(ms) == 0:
			delete(p.members, name)
			sets[name] = false
		}
	}
	return sets
}

// flush writes one window's changes (one pipeline: a script call per
// channel) and announces those asked for (a second pipeline: one publish
// per channel). After a failure it writes every member again instead,
// under a new owner.
func (p *redisPresence) flush(batch map[string]*pendingPresence) {
	sets := p.record(batch)
	if !p.b.healthy.Load() {
		p.resync = true
		return // written again once Redis answers (heartbeat)
	}
	ctx, cancel := p.ctx()
	defer cancel()
	if err := p.prepare(ctx); err != nil {
		p.failed(err)
		return
	}
	if p.resync {
		p.resync = false
		batch, sets = p.snapshot()
	}
	p.write(ctx, batch, sets)
}

// prepare loads the scripts and registers the owner (a new one after a
// failure) before anything is written under it, so that a janitor finds
// whatever a dead node wrote.
func (p *redisPresence) prepare(ctx context.Context) error {
	if err := p.load(ctx); err != nil {
		return err
	}
	if p.resync {
		p.owner, p.registered = newEpochCandidate(), false
	}
	if !p.registered {
		if err := p.beat.EvalSha(ctx, p.b.client, []string{p.ownersKey}, p.owner, p.b.cfg.PresenceTTL.Milliseconds(), "0").Err(); err != nil {
			return err
		}
		p.registered = true
	}
	return nil
}

// snapshot returns every member of the node as joins, every channel as
// gained.
func (p *redisPresence) snapshot() (map[string]*pendingPresence, map[string]bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	batch := make(map[string]*pendingPresence, len(p.members))
	sets := make(map[string]bool, len(p.members))
	for name, ms := range p.members {
		pp := &pendingPresence{changes: make([]PresenceChange, 0, len(ms))}
		for conn, user := range ms {
			pp.changes = append(pp.changes, PresenceChange{Channel: name, Member: Member{User: user, Conn: conn}})
		}
		batch[name] = pp
		sets[name] = true
	}
	return batch, sets
}

// write sends batch and the owner's set changes as one pipeline, then the
// announcements as another.
func (p *redisPresence) write(ctx context.Context, batch map[string]*pendingPresence, sets map[string]bool) {
	b := p.b
	setKey := b.cfg.KeyPrefix + "presence:owner:" + p.owner
	type result struct {
		name string
		cmd  *redis.Cmd
	}
	var results []result
	pipe := b.client.Pipeline()
	for name, pp := range batch {
		keys := presenceKeys(b.cfg.KeyPrefix, name, p.owner)
		for chunk := range chunks(pp.changes, presenceChunk) {
			args := make([]any, 0, 1+3*len(chunk))
			args = append(args, p.owner)
			for _, c := range chunk {
				op := "j"
				if c.Leave {
					op = "l"
				}
				args = append(args, op, c.Member.Conn, c.Member.User)
			}
			results = append(results, result{name, pipe.EvalSha(ctx, p.apply.Hash(), keys, args...)})
		}
	}
	for name, add := range sets {
		if add {
			pipe.SAdd(ctx, setKey, name)
		} else {
			pipe.SRem(ctx, setKey, name)
		}
	}
	if len(results) == 0 && len(sets) == 0 {
		return
	}
	start := time.Now()
	_, err := pipe.Exec(ctx)
	b.m.presenceDuration.UpdateDuration(start)
	if err != nil {
		p.failed(err)
		return
	}
	clients := make(map[string]int)
	for _, r := range results {
		v, err := r.cmd.Int64Slice()
		if err != nil || len(v) != 2 {
			p.failed(fmt.Errorf("unexpected presence reply: %v %v", v, err))
			return
		}
		clients[r.name] = int(v[0])
	}
	pipe = b.client.Pipeline()
	n := 0
	for name, pp := range batch {
		if !pp.announce {
			continue
		}
		pipe.Do(ctx, b.publishCmd, pubsubName(b.cfg.KeyPrefix, name), encodePresencePayload(clients[name], pp.events()))
		n++
	}
	if n > 0 {
		if _, err := pipe.Exec(ctx); err != nil {
			b.m.errPresence.Inc()
			b.commandFailed(err)
		}
	}
}

// chunks yields s in pieces of at most n.
func chunks[T any](s []T, n int) func(func([]T) bool) {
	return func(yield func([]T) bool) {
		for len(s) > 0 {
			k := min(n, len(s))
			if !yield(s[:k]) {
				return
			}
			s = s[k:]
		}
	}
}

// heartbeat refreshes the owner's registration; when it lapsed (or a
// write failed), the node takes a new owner and writes all its members
// again.
func (p *redisPresence) heartbeat() {
	b := p.b
	if !b.healthy.Load() {
		return
	}
	p.mu.Lock()
	empty := len(p.members) == 0
	p.mu.Unlock()
	if empty && !p.registered {
		return // nothing to own yet
	}
	if !p.resync && p.registered {
		ctx, cancel := p.ctx()
		if err := p.load(ctx); err != nil {
			cancel()
			p.failed(err)
			return
		}
		ok, err := p.beat.EvalSha(ctx, b.client, []string{p.ownersKey}, p.owner, b.cfg.PresenceTTL.Milliseconds(), "1").Int()
		cancel()
		if err != nil {
			p.failed(err)
			return
		}
		if ok == 0 {
			b.log.Warn("presence registration lapsed: writing the node's members again", "owner", p.owner)
			p.resync = true
		}
	}
	if p.resync {
		p.flush(nil)
	}
}

// janitor removes the members of every expired owner but this node's.
func (p *redisPresence) janitor() {
	b := p.b
	if !b.healthy.Load() {
		return
	}
	ctx, cancel := p.ctx()
	defer cancel()
	if err := p.load(ctx); err != nil {
		p.failed(err)
		return
	}
	owners, err := p.expired.EvalSha(ctx, b.client, []string{p.ownersKey}).StringSlice()
	if err != nil {
		p.failed(err)
		return
	}
	for _, o := range owners {
		if o != p.owner {
			p.cleanOwner(o)
		}
	}
}

// cleanOwner removes an expired owner's members, channel by channel, then
// its set and registration.
func (p *redisPresence) cleanOwner(owner string) {
	b := p.b
	setKey := b.cfg.KeyPrefix + "presence:owner:" + owner
	var cursor uint64
	for {
		ctx, cancel := p.ctx()
		names, next, err := b.client.SScan(ctx, setKey, cursor, "", presenceChunk).Result()
		if err == nil && len(names) > 0 {
			pipe := b.client.Pipeline()
			for _, name := range names {
				pipe.EvalSha(ctx, p.clean.Hash(), presenceKeys(b.cfg.KeyPrefix, name, owner), owner)
			}
			_, err = pipe.Exec(ctx)
		}
		cancel()
		if err != nil {
			if strings.HasPrefix(err.Error(), "NOSCRIPT") {
				p.loaded = false
			}
			b.m.errPresence.Inc()
			return
		}
		if cursor = next; cursor == 0 {
			break
		}
	}
	ctx, cancel := p.ctx()
	defer cancel()
	pipe := b.client.Pipeline()
	pipe.Del(ctx, setKey)
	pipe.HDel(ctx, p.ownersKey, owner)
	if _, err := pipe.Exec(ctx); err != nil {
		b.m.errPresence.Inc()
		return
	}
	b.m.presenceOwnersCleaned.Inc()
	b.log.Info("presence: removed the members of an expired owner", "owner", owner)
}

// read implements presenceStore.
func (p *redisPresence) read(ctx context.Context, channel string, maxMembers int) (Presence, error) {
	b := p.b
	if b.isClosed() {
		return Presence{}, ErrClosed
	}
	keys := presenceKeys(b.cfg.KeyPrefix, channel, "")
	ctx, cancel := context.WithTimeout(ctx, b.cfg.CommandTimeout)
	defer cancel()
	v, err := p.readS.Run(ctx, b.client, keys[:2], max(maxMembers, 0), keys[2]).Slice()
	if err != nil {
		b.m.errPresence.Inc()
		return Presence{}, unavailable("read presence of "+channel, err)
	}
	if len(v) < 2 || len(v)%2 != 0 {
		return Presence{}, fmt.Errorf("unexpected presence reply of %d values", len(v))
	}
	clients, _ := v[0].(int64)
	users, _ := v[1].(int64)
	r := Presence{Clients: int(clients), Users: int(users)}
	for i := 2; i+1 < len(v); i += 2 {
		conn, _ := v[i].(string)
		user, _ := v[i+1].(string)
		r.Members = append(r.Members, Member{User: user, Conn: conn})
	}
	return r, nil
}

// receive hands an announcement to the handler.
func (p *redisPresence) receive(channel, payload string) {
	pp, err := decodePresencePayload(payload)
	if err != nil {
		p.b.m.errDecode.Inc()
		return
	}
	if h := p.b.handlers(); h.OnPresence != nil {
		h.OnPresence(channel, pp.Clients, pp.Events)
	}
}
