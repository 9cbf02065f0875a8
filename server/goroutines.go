package server

import (
	"maps"
	"sync"
)

// goroutines starts and counts the server's goroutines by name, so that
// Shutdown can wait for every one of them and a leak check can say which
// are still running. Every goroutine the server starts goes through it.
type goroutines struct {
	wg      sync.WaitGroup
	mu      sync.Mutex
	running map[string]int // guarded by mu
}

// start runs fn on a new goroutine counted under name.
func (g *goroutines) start(name string, fn func()) {
	g.mu.Lock()
	if g.running == nil {
		g.running = make(map[string]int)
	}
	g.running[name]++
	g.wg.Add(1)
	g.mu.Unlock()
	go func() {
		defer func() {
			g.mu.Lock()
			if g.running[name]--; g.running[name] == 0 {
				delete(g.running, name)
			}
			g.mu.Unlock()
			g.wg.Done()
		}()
		fn()
	}()
}

// count returns how many goroutines of each name are running.
func (g *goroutines) count() map[string]int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return maps.Clone(g.running)
}

// wait returns once every goroutine started so far has returned.
func (g *goroutines) wait() { g.wg.Wait() }
