// Copyright 2020 lesismal. All rights reserved.
// Use of this source code is governed by an MIT-style
// license that can be found in the LICENSE file.

//go:build linux

package nbio

import (
	"os"
	"syscall"
	"time"
)

// tether patch 8: a poller goroutine waits for its epoll instance in the
// Go runtime's poller instead of in a blocking epoll_wait.
//
// The release blocks each poller goroutine in epoll_wait(-1), a system
// call that holds its thread. When every P is busy or there is one (a
// process pinned to one core runs with GOMAXPROCS 1), the runtime's
// sysmon takes the P back from a thread blocked in a system call for 20
// µs or more and hands it to another thread; the poller's thread wants
// one back when epoll_wait returns; and sysmon, finding work each time,
// keeps waking every 20 µs. Under a connect storm on one core that was
// about 5 nanosleeps and thread switches per connection, in the runtime
// and not in tether or nbio.
//
// An epoll descriptor is itself pollable: it is readable while its ready
// list is not empty. So the poller's epfd is registered with the
// runtime's poller (os.NewFile of a non-blocking descriptor), and the
// goroutine takes events with epoll_wait(0), parking in the runtime's
// poller (RawConn.Read) only when there are none. The runtime registers
// the descriptor edge-triggered; the wait re-checks with epoll_wait(0)
// after every wake-up and parks only on an empty ready list, so no event
// is missed between the check and the park (the runtime keeps the
// readiness that arrives meanwhile). Stop's eventfd write makes the
// ready list non-empty, as before.

// netpollWaiter returns the poller's wait, and the function that closes
// p.epfd. The wait is nil (and the release's blocking epoll_wait is used)
// if the runtime cannot poll the descriptor.
//
//go:norace
func (p *poller) netpollWaiter() (wait func([]syscall.EpollEvent) (int, error), closeEpfd func()) {
	closeFd := func() { _ = syscall.Close(p.epfd) }
	if syscall.SetNonblock(p.epfd, true) != nil {
		return nil, closeFd
	}
	f := os.NewFile(uintptr(p.epfd), "nbio-epoll")
	rc, err := f.SyscallConn()
	// A descriptor the runtime does not poll has no deadlines.
	if err != nil || f.SetReadDeadline(time.Time{}) != nil {
		_ = syscall.SetNonblock(p.epfd, false)
		return nil, func() { _ = f.Close() }
	}
	var (
		events []syscall.EpollEvent
		n      int
		werr   error
	)
	take := func(uintptr) bool {
		for {
			n, werr = syscall.EpollWait(p.epfd, events, 0)
			if werr != syscall.EINTR {
				return n > 0 || werr != nil
			}
		}
	}
	wait = func(evs []syscall.EpollEvent) (int, error) {
		events = evs
		if err := rc.Read(take); err != nil {
			return 0, err
		}
		return n, werr
	}
	return wait, func() { _ = f.Close() }
}
