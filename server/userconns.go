package server

import "sync"

// userConns counts each user's open connections on this node, for
// Config.MaxConnsPerUser. It is used only when that bound is set, and only
// for connections with a token (an open server's have no user).
type userConns struct {
	mu sync.Mutex     // guards n
	n  map[string]int // user → open connections (absent: 0)
}

// acquire counts one more connection of user unless it has max already;
// it reports whether it did.
func (u *userConns) acquire(user string, max int) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n == nil {
		u.n = make(map[string]int)
	}
	if u.n[user] >= max {
		return false
	}
	u.n[user]++
	return true
}

// release counts one connection of user less.
func (u *userConns) release(user string) {
	u.mu.Lock()
	defer u.mu.Unlock()
	if u.n[user] <= 1 {
		delete(u.n, user)
		return
	}
	u.n[user]--
}

// countsUser reports whether c is counted in s.userConns: decided by
// immutable facts, so the upgrade that acquires and the close that
// releases agree.
func (s *Server) countsUser(c *conn) bool {
	return s.cfg.MaxConnsPerUser > 0 && c.auth != nil
}
