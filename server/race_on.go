//go:build race

package server

import (
	"sync"

	"github.com/lesismal/nbio"
)

// raceMu makes visible to the race detector the hand-off nbio does through
// epoll: a connection accepted on the listener goroutine is read on a
// poller goroutine with no Go synchronization in between, which the
// detector reports as a race inside nbio and net. Locking raceMu after
// accept (raceEdge, from onOpen) and before each poller read adds exactly
// that edge. It exists only in race builds; normal builds pay nothing.
var raceMu sync.Mutex

func raceEdge() {
	raceMu.Lock()
	raceMu.Unlock() //nolint:staticcheck // an empty critical section is the point
}

// addRaceEdges adds the poller side of raceEdge to e.
func addRaceEdges(e *nbio.Engine) {
	e.OnReadBufferAlloc(func(c *nbio.Conn) *[]byte {
		raceEdge()
		return e.PollerBufferPtr(c)
	})
}
