//go:build race

package server

import (
	"net"
	"sync"

	"github.com/lesismal/nbio"
	"github.com/lesismal/nbio/nbhttp"
)

// addRaceEdges makes visible to the race detector the hand-off nbio does
// through epoll: a connection accepted on the listener goroutine is read on
// a poller goroutine with no Go synchronization in between, which the
// detector reports as a race inside nbio and net. A mutex released after
// accept and acquired before each poller read adds exactly that edge. It
// exists only in race builds; normal builds pay nothing.
func addRaceEdges(e *nbhttp.Engine) {
	var mu sync.Mutex
	e.OnOpen(func(net.Conn) {
		mu.Lock()
		mu.Unlock() //nolint:staticcheck // an empty critical section is the point
	})
	e.OnReadBufferAlloc(func(c *nbio.Conn) *[]byte {
		mu.Lock()
		mu.Unlock() //nolint:staticcheck
		return e.PollerBufferPtr(c)
	})
}
