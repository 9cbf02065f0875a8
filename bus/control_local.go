package bus

import (
	"context"
	"sync"
)

// localTransport is the control plane of a single node: it is the only
// node, and answers itself.
type localTransport struct {
	mu      sync.Mutex // guards deliver, node
	deliver func([]byte)
	node    string
}

func (l *local) controlTransport() transport { return &l.ctl }

func (t *localTransport) listen(node string, deliver func([]byte)) error {
	t.mu.Lock()
	t.node, t.deliver = node, deliver
	t.mu.Unlock()
	return nil
}

// send hands envelope to the node on a goroutine of its own, as a network
// would, so that a sender never runs the receiver's code.
func (t *localTransport) send(_ context.Context, to string, envelope []byte) error {
	t.mu.Lock()
	deliver, node := t.deliver, t.node
	t.mu.Unlock()
	if deliver == nil || (to != "" && to != node) {
		return nil
	}
	go deliver(envelope)
	return nil
}

func (t *localTransport) announce(context.Context, string) error { return nil }

func (t *localTransport) nodes(context.Context) ([]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.node == "" {
		return nil, nil
	}
	return []string{t.node}, nil
}

func (t *localTransport) leave(string) {
	t.mu.Lock()
	t.deliver = nil
	t.mu.Unlock()
}
