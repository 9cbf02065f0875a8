// Package ring implements a hashed timing wheel: a timer queue for very many
// deadlines (one heartbeat per connection, a million per process) where
// scheduling, rescheduling and cancelling are O(1) and allocate nothing.
//
// The wheel is plain data. It starts no goroutines, reads no clock and holds
// no lock: the caller passes the current time to Advance, which fires what is
// due by calling a function synchronously. Entries are intrusive: the caller
// embeds an Entry in its own struct, so the wheel never allocates per entry.
//
// Time is divided into ticks of a fixed duration. A deadline is rounded up to
// the next tick boundary, so an entry never fires before its deadline, and
// fires at the first Advance whose time has reached that boundary. Ticks are
// absolute (counted from the Unix epoch of the wall clock), so the wheel
// needs no base time. An entry is kept in the slot of its tick modulo the
// number of slots; a deadline farther away than one rotation simply stays in
// its slot and is skipped until its own tick comes.
//
// Instants are compared by their Unix time: monotonic clock readings are
// ignored, so a step of the wall clock moves now relative to every deadline.
// Callers that must not notice such steps can pass times taken as
// start.Add(time.Since(start)) for a fixed start, whose wall reading follows
// the monotonic clock.
//
// A Wheel is not safe for concurrent use. A server typically guards each wheel
// with a mutex and shards its connections over several wheels.
//
// Where to find: the whole wheel (Wheel, Entry, Add, Reset, Remove,
// Advance) is in ring.go; example_test.go shows its use, ring_alloc_test.go
// proves it allocates nothing per entry.
package ring

import (
	"math"
	"time"
)

// maxSlots bounds the slot count given to New.
const maxSlots = 1 << 30

// maxUnixSec bounds the deadlines and times the wheel works with: instants
// more than 2^32 seconds (about 136 years) away from the Unix epoch are
// clamped to it, so that nanosecond arithmetic cannot overflow. This keeps a
// zero time.Time (year 1) meaning "long past" instead of garbage.
const maxUnixSec = 1 << 32

// Entry is one scheduled deadline. It is intrusive: embed an Entry in the
// struct it times (for example Entry[*conn] in each connection) so that
// scheduling allocates nothing. The zero Entry is unscheduled and ready to
// use. An Entry is in at most one wheel at a time and must not be copied
// while scheduled.
type Entry[T any] struct {
	// Value is the caller's data; the wheel never reads or writes it.
	Value T

	// The fields below are owned by the wheel the entry was last scheduled in.
	next, prev *Entry[T]
	list       *list[T] // slot, overdue or pending list holding the entry; nil when unscheduled
	when       int64    // rounded deadline in Unix nanoseconds, a multiple of the tick
}

// Scheduled reports whether e is in a wheel, that is, added and neither
// fired nor removed since.
func (e *Entry[T]) Scheduled() bool { return e.list != nil }

// Deadline returns the deadline e was last scheduled for, rounded up to the
// wheel's tick. It stays valid after e fires or is removed, so a callback can
// tell which deadline fired. For an entry that was never scheduled it returns
// the Unix epoch.
func (e *Entry[T]) Deadline() time.Time { return time.Unix(0, e.when) }

// list is a doubly-linked list of entries, in the order they were appended.
type list[T any] struct {
	head, tail *Entry[T]
	w          *Wheel[T] // wheel owning the list; immutable after New
}

func (l *list[T]) pushBack(e *Entry[T]) {
	e.list = l
	e.next = nil
	e.prev = l.tail
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *list[T]) remove(e *Entry[T]) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.next, e.prev, e.list = nil, nil, nil
}

// sortByDeadline stably sorts the n entries of l by deadline.
func (l *list[T]) sortByDeadline(n int) {
	l.head = mergeSort(l.head, n)
	var prev *Entry[T]
	for e := l.head; e != nil; e = e.next {
		e.prev = prev
		prev = e
	}
	l.tail = prev
}

// mergeSort stably sorts the nil-terminated chain of n entries starting at
// head by deadline, following next links only, and returns the new head.
func mergeSort[T any](head *Entry[T], n int) *Entry[T] {
	if n < 2 {
		return head
	}
	mid := head
	for i := 1; i < n/2; i++ {
		mid = mid.next
	}
	right := mid.next
	mid.next = nil
	a := mergeSort(head, n/2)
	b := mergeSort(right, n-n/2)

	var merged *Entry[T]
	tail := &merged
	for a != nil && b != nil {
		if b.when < a.when {
			*tail, b = b, b.next
		} else {
			*tail, a = a, a.next
		}
		tail = &(*tail).next
	}
	if a != nil {
		*tail = a
	} else {
		*tail = b
	}
	return merged
}

// Wheel is a hashed timing wheel of entries carrying values of type T.
// Create one with New. A Wheel is not safe for concurrent use.
type Wheel[T any] struct {
	// Immutable after New.
	tick  int64 // tick length in nanoseconds
	mask  int64 // len(slots)-1; len(slots) is a power of two
	slots []list[T]

	// Mutable state, guarded by the caller. Every entry in a slot is in the
	// slot of its own tick, and that tick is at least cur (or, while Advance
	// walks the slots, at least walkTick).
	cur     int64   // next tick to process: every tick before it has fired
	started bool    // Advance has been called; before that cur tracks the earliest tick added
	n       int     // scheduled entries, wherever they are
	overdue list[T] // entries scheduled at a tick already processed; they fire at the next Advance

	// Owned by Advance while it runs.
	advancing bool
	pending   list[T]   // gathered due entries not fired yet, sorted by deadline
	walking   bool      // the slots from walkTick on are being walked
	walkTick  int64     // tick of the slot being walked
	cursor    *Entry[T] // next entry of the slot being walked
}

// New returns an empty wheel whose ticks last tick and which has slots slots,
// rounded up to a power of two. One rotation of the wheel spans tick*slots.
// Advance looks at the entries of a slot each time the slot's tick comes
// round, so an entry more than one rotation away is passed over once per
// rotation until it is due: size the wheel so that one rotation covers the
// usual timeout. New panics if tick or slots is not positive, or if slots
// exceeds 2^30.
func New[T any](tick time.Duration, slots int) *Wheel[T] {
	if tick <= 0 {
		panic("ring: non-positive tick")
	}
	if slots <= 0 || slots > maxSlots {
		panic("ring: slot count out of range")
	}
	size := 1
	for size < slots {
		size <<= 1
	}
	w := &Wheel[T]{
		tick:  int64(tick),
		mask:  int64(size - 1),
		slots: make([]list[T], size),
	}
	for i := range w.slots {
		w.slots[i].w = w
	}
	w.overdue.w = w
	w.pending.w = w
	return w
}

// Len returns the number of scheduled entries.
func (w *Wheel[T]) Len() int { return w.n }

// Add schedules e to fire at deadline, rounded up to the wheel's tick. If e
// is already scheduled in w, it is moved, exactly as Reset does. A deadline
// that has already passed fires at the next Advance. Add panics if e is
// scheduled in another wheel.
func (w *Wheel[T]) Add(e *Entry[T], deadline time.Time) { w.Reset(e, deadline) }

// Reset moves e to a new deadline, rounded up to the wheel's tick, adding e
// if it is not scheduled. A deadline that has already passed fires at the
// next Advance, even when Reset is called from Advance's callback. Entries
// due at the same tick fire in the order they were last added or reset.
// Reset panics if e is scheduled in another wheel.
func (w *Wheel[T]) Reset(e *Entry[T], deadline time.Time) {
	if e.list != nil {
		if e.list.w != w {
			panic("ring: entry is scheduled in another wheel")
		}
		w.unlink(e)
	}
	tick := ceilDiv(unixNano(deadline), w.tick)
	e.when = tick * w.tick
	w.n++
	if !w.started {
		// No tick has been processed: start from the earliest deadline.
		if w.n == 1 || tick < w.cur {
			w.cur = tick
		}
	} else if tick < w.cur {
		w.overdue.pushBack(e)
		return
	}
	w.slots[tick&w.mask].pushBack(e)
}

// Remove unschedules e and reports whether it was scheduled. It panics if e
// is scheduled in another wheel.
func (w *Wheel[T]) Remove(e *Entry[T]) bool {
	if e.list == nil {
		return false
	}
	if e.list.w != w {
		panic("ring: entry is scheduled in another wheel")
	}
	w.unlink(e)
	return true
}

// unlink unschedules e, keeping the walk of Advance going if e is next.
func (w *Wheel[T]) unlink(e *Entry[T]) {
	if e == w.cursor {
		w.cursor = e.next
	}
	e.list.remove(e)
	w.n--
}

// Advance fires every entry whose rounded deadline is at or before now
// (rounded down to the tick), calling fn for each, in deadline order, and
// returns the number fired. Each entry is unscheduled before fn is called
// with it, so fn may add it again; fn may also add, reset or remove any other
// entry of w. An entry that fn schedules at a deadline that is already due
// fires at the next Advance, never in the same call, so Advance always
// returns. Entries removed or reset by fn before their turn do not fire.
//
// Advance does work proportional to the ticks elapsed since the previous
// call and to the entries in their slots, but never visits a slot twice:
// after a long pause, every slot is visited once and the due entries are
// sorted. If now is before the time of a previous call, Advance still fires
// exactly the entries due at now.
//
// fn runs on the caller's goroutine, under whatever lock guards w, so it
// should be short and must not block. fn must not call Advance; that panics.
// If fn panics, the entries not fired yet stay scheduled and fire at later
// calls, perhaps out of order.
func (w *Wheel[T]) Advance(now time.Time, fn func(e *Entry[T])) int {
	if w.advancing {
		panic("ring: Advance called from its own callback")
	}
	nowTick := floorDiv(unixNano(now), w.tick)
	if !w.started {
		w.started = true
		if w.n == 0 || w.cur > nowTick+1 {
			w.cur = nowTick + 1
		}
	}
	first := w.cur
	// From here on, an entry scheduled at or before now goes to overdue and
	// waits for the next call.
	w.cur = max(w.cur, nowTick+1)
	if w.n == 0 {
		return 0
	}
	limit := nowTick * w.tick
	capped := nowTick-first+1 >= int64(len(w.slots))

	w.advancing = true
	w.walking = !capped && nowTick >= first
	w.walkTick = first
	defer w.endAdvance()

	// Fire the overdue entries first: they are due before anything in the
	// slots. After a pause of a rotation or more, also gather every due
	// entry from the slots instead of walking them tick by tick.
	g := gathered{sorted: true, last: math.MinInt64}
	w.gather(&w.overdue, limit, &g)
	if capped {
		for i := range w.slots {
			w.gather(&w.slots[i], limit, &g)
		}
	}
	if !g.sorted {
		w.pending.sortByDeadline(g.n)
	}
	fired := 0
	for e := w.pending.head; e != nil; e = w.pending.head {
		w.pending.remove(e)
		w.n--
		fired++
		fn(e)
	}

	// Walk the slots of the elapsed ticks in order, firing as we go. fn may
	// unlink the next entry; unlink then moves the cursor past it.
	for ; w.walking && w.walkTick <= nowTick; w.walkTick++ {
		s := &w.slots[w.walkTick&w.mask]
		for e := s.head; e != nil; e = w.cursor {
			w.cursor = e.next
			if e.when <= limit {
				s.remove(e)
				w.n--
				fired++
				fn(e)
			}
		}
	}
	w.walking = false
	return fired
}

// gathered describes the entries gathered into the pending list.
type gathered struct {
	n      int
	sorted bool  // the pending list is sorted by deadline
	last   int64 // deadline of the last entry gathered
}

// gather moves the entries of l due at limit to the end of w.pending.
func (w *Wheel[T]) gather(l *list[T], limit int64, g *gathered) {
	for e := l.head; e != nil; {
		next := e.next
		if e.when <= limit {
			l.remove(e)
			w.pending.pushBack(e)
			g.n++
			if e.when < g.last {
				g.sorted = false
			}
			g.last = e.when
		}
		e = next
	}
}

// endAdvance ends Advance. If fn panicked, the entries gathered but not
// fired go to overdue, and the walk resumes at the next call.
func (w *Wheel[T]) endAdvance() {
	w.advancing = false
	w.cursor = nil
	if w.walking {
		w.cur = w.walkTick
		w.walking = false
	}
	for e := w.pending.head; e != nil; e = w.pending.head {
		w.pending.remove(e)
		w.overdue.pushBack(e)
	}
}

// NextDeadline returns the earliest rounded deadline among the scheduled
// entries, or false if there are none. A deadline that has already passed
// is returned as is. The search looks at most one rotation ahead: if no entry
// is due within one rotation after the latest Advance (before the first
// Advance: after the earliest deadline added), NextDeadline returns the
// end of that rotation instead, which is no later than any deadline, so a
// caller sleeping until it, advancing and asking again never oversleeps. It
// costs O(slots) plus the entries it walks past, and allocates nothing.
func (w *Wheel[T]) NextDeadline() (time.Time, bool) {
	if w.n == 0 {
		return time.Time{}, false
	}
	const none = math.MaxInt64
	best := int64(none)
	for e := w.overdue.head; e != nil; e = e.next {
		best = min(best, e.when)
	}
	if e := w.pending.head; e != nil {
		best = min(best, e.when) // pending is sorted
	}
	from := w.cur
	if w.walking {
		from = w.walkTick
	}
	end := from + int64(len(w.slots))
	for t := from; t < end && t*w.tick < best; t++ {
		for e := w.slots[t&w.mask].head; e != nil; e = e.next {
			if e.when == t*w.tick {
				return time.Unix(0, e.when), true
			}
		}
	}
	if best == none {
		return time.Unix(0, end*w.tick), true
	}
	return time.Unix(0, best), true
}

// unixNano returns t in Unix nanoseconds, clamped to ±maxUnixSec seconds.
func unixNano(t time.Time) int64 {
	switch s := t.Unix(); {
	case s < -maxUnixSec:
		return -maxUnixSec * int64(time.Second)
	case s > maxUnixSec:
		return maxUnixSec * int64(time.Second)
	}
	return t.UnixNano()
}

// floorDiv returns a/b rounded towards minus infinity, for b > 0.
func floorDiv(a, b int64) int64 {
	q := a / b
	if a%b < 0 {
		q--
	}
	return q
}

// ceilDiv returns a/b rounded towards plus infinity, for b > 0.
func ceilDiv(a, b int64) int64 {
	q := a / b
	if a%b > 0 {
		q++
	}
	return q
}
