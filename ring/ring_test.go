package ring

import (
	"cmp"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// base is an arbitrary instant that is not a multiple of any tick used here,
// and aligned is one that is a multiple of every tick used here.
var (
	base    = time.Unix(1_700_000_000, 123_456_789)
	aligned = time.Unix(1_700_000_000, 0)
)

// checkInvariants verifies the links and the bookkeeping of w. It must not
// be called from Advance's callback.
func checkInvariants[T any](t *testing.T, w *Wheel[T]) {
	t.Helper()
	count := 0
	check := func(name string, l *list[T]) {
		var prev *Entry[T]
		for e := l.head; e != nil; e = e.next {
			if e.list != l || e.prev != prev {
				t.Fatalf("%s: broken links at entry due %d", name, e.when)
			}
			if e.when%w.tick != 0 {
				t.Fatalf("%s: deadline %d not rounded to the tick %d", name, e.when, w.tick)
			}
			prev = e
			count++
		}
		if l.tail != prev {
			t.Fatalf("%s: tail is not the last entry", name)
		}
	}
	for i := range w.slots {
		s := &w.slots[i]
		check(fmt.Sprintf("slot %d", i), s)
		for e := s.head; e != nil; e = e.next {
			tick := e.when / w.tick
			if tick&w.mask != int64(i) || tick < w.cur {
				t.Fatalf("entry of tick %d in slot %d (next tick %d)", tick, i, w.cur)
			}
		}
	}
	check("overdue", &w.overdue)
	if !w.started && w.overdue.head != nil {
		t.Fatal("overdue entries before the first Advance")
	}
	check("pending", &w.pending)
	if w.pending.head != nil || w.advancing || w.walking || w.cursor != nil {
		t.Fatal("Advance state left over")
	}
	if count != w.n {
		t.Fatalf("Len() = %d, but %d entries are linked", w.n, count)
	}
}

func newEntries(n int) []*Entry[int] {
	es := make([]*Entry[int], n)
	for i := range es {
		es[i] = &Entry[int]{Value: i}
	}
	return es
}

// advance calls w.Advance and returns the values fired, in order.
func advance(w *Wheel[int], now time.Time) []int {
	var got []int
	n := w.Advance(now, func(e *Entry[int]) {
		if e.Scheduled() {
			panic("fired entry is still scheduled")
		}
		got = append(got, e.Value)
	})
	if n != len(got) {
		panic(fmt.Sprintf("Advance returned %d, fired %d", n, len(got)))
	}
	return got
}

func TestNewPanics(t *testing.T) {
	f := func(tick time.Duration, slots int) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("New(%v, %d) did not panic", tick, slots)
			}
		}()
		New[int](tick, slots)
	}
	f(0, 8)
	f(-time.Second, 8)
	f(time.Second, 0)
	f(time.Second, -1)
	f(time.Second, maxSlots+1)
}

func TestNewRoundsSlots(t *testing.T) {
	for _, tc := range []struct{ slots, want int }{{1, 1}, {2, 2}, {3, 4}, {5, 8}, {1000, 1024}, {1024, 1024}} {
		if got := len(New[int](time.Second, tc.slots).slots); got != tc.want {
			t.Errorf("New(_, %d) has %d slots, want %d", tc.slots, got, tc.want)
		}
	}
}

func TestRounding(t *testing.T) {
	w := New[int](time.Second, 8)
	start := time.Unix(1000, 0)
	w.Advance(start, nil)
	var e Entry[int]
	w.Add(&e, start.Add(2500*time.Millisecond))
	if want := start.Add(3 * time.Second); !e.Deadline().Equal(want) {
		t.Fatalf("Deadline() = %v, want %v", e.Deadline(), want)
	}
	if got := advance(w, start.Add(2999*time.Millisecond)); len(got) != 0 {
		t.Fatalf("fired %v before the rounded deadline", got)
	}
	if got := advance(w, start.Add(3*time.Second)); len(got) != 1 {
		t.Fatalf("fired %v at the rounded deadline, want the entry", got)
	}
	// A deadline on a tick boundary is not rounded further.
	w.Add(&e, start.Add(5*time.Second))
	if want := start.Add(5 * time.Second); !e.Deadline().Equal(want) {
		t.Fatalf("Deadline() = %v, want %v", e.Deadline(), want)
	}
	if !e.Deadline().Equal(e.Deadline()) || !w.Remove(&e) || !e.Deadline().Equal(start.Add(5*time.Second)) {
		t.Fatal("Deadline() changed on Remove")
	}
}

func TestOrdering(t *testing.T) {
	f := func(slots int) {
		t.Helper()
		w := New[int](time.Millisecond, slots)
		w.Advance(base, nil)
		es := newEntries(10)
		// Deadlines in ticks; entries 2 and 5 share one, 7 is past due.
		ticks := []int{9, 3, 5, 40, 1, 5, 17, -4, 2, 1000}
		for i, d := range ticks {
			w.Add(es[i], base.Add(time.Duration(d)*time.Millisecond))
		}
		got := advance(w, base.Add(100*time.Millisecond))
		want := []int{7, 4, 8, 1, 2, 5, 0, 6, 3}
		if !slices.Equal(got, want) {
			t.Errorf("slots=%d: fired %v, want %v", slots, got, want)
		}
		checkInvariants(t, w)
		if w.Len() != 1 || !es[9].Scheduled() {
			t.Errorf("slots=%d: Len() = %d, want the far entry only", slots, w.Len())
		}
	}
	f(1)    // every entry in one slot
	f(8)    // walk capped at one rotation
	f(1024) // walk through every tick
}

func TestSameTickFiresInScheduleOrder(t *testing.T) {
	w := New[int](time.Second, 4)
	es := newEntries(5)
	at := aligned.Add(10 * time.Second)
	for _, i := range []int{3, 0, 4, 1, 2} {
		w.Add(es[i], at)
	}
	w.Reset(es[0], at) // moves entry 0 to the end
	if got, want := advance(w, at), []int{3, 4, 1, 2, 0}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
}

func TestReset(t *testing.T) {
	w := New[int](time.Second, 16)
	w.Advance(aligned, nil)
	es := newEntries(3)
	for i, e := range es {
		w.Add(e, aligned.Add(time.Duration(i+1)*time.Second))
	}
	w.Reset(es[0], aligned.Add(10*time.Second)) // later
	w.Reset(es[2], aligned.Add(time.Second))    // earlier
	w.Add(es[1], aligned.Add(5*time.Second))    // Add moves a scheduled entry
	if w.Len() != 3 {
		t.Fatalf("Len() = %d after moving entries, want 3", w.Len())
	}
	var got []int
	for s := 1; s <= 10; s++ {
		for _, v := range advance(w, aligned.Add(time.Duration(s)*time.Second)) {
			got = append(got, s*10+v)
		}
	}
	if want := []int{12, 51, 100}; !slices.Equal(got, want) {
		t.Fatalf("fired (second*10+entry) %v, want %v", got, want)
	}
	// Reset of an unscheduled entry adds it.
	w.Reset(es[0], aligned.Add(11*time.Second))
	if !es[0].Scheduled() || w.Len() != 1 {
		t.Fatal("Reset did not add an unscheduled entry")
	}
	checkInvariants(t, w)
}

func TestRemove(t *testing.T) {
	w := New[int](time.Second, 16)
	es := newEntries(3)
	if w.Remove(es[0]) {
		t.Fatal("Remove of a never-scheduled entry returned true")
	}
	for _, e := range es {
		w.Add(e, base.Add(time.Second))
	}
	if !w.Remove(es[1]) || es[1].Scheduled() || w.Len() != 2 {
		t.Fatal("Remove of a scheduled entry failed")
	}
	if w.Remove(es[1]) {
		t.Fatal("second Remove returned true")
	}
	checkInvariants(t, w)
	if got, want := advance(w, base.Add(time.Hour)), []int{0, 2}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	if w.Remove(es[0]) {
		t.Fatal("Remove of a fired entry returned true")
	}
	if w.Len() != 0 {
		t.Fatalf("Len() = %d, want 0", w.Len())
	}
}

func TestCallbackReschedules(t *testing.T) {
	w := New[int](time.Second, 8)
	w.Advance(aligned, nil)
	es := newEntries(4)
	for _, e := range es {
		w.Add(e, aligned.Add(time.Second))
	}
	w.Add(es[3], aligned.Add(3*time.Second))
	now := aligned.Add(2 * time.Second)
	var got []int
	n := w.Advance(now, func(e *Entry[int]) {
		got = append(got, e.Value)
		switch e.Value {
		case 0:
			w.Add(e, now)            // due again: must wait for the next Advance
			w.Remove(es[1])          // due but not fired yet: must not fire
			w.Reset(es[2], now)      // due but not fired yet: moved to the next Advance
			w.Reset(es[3], aligned)  // not due: pulled into the past, next Advance
			w.Add(e, now.Add(-9e18)) // moved again, to a long-past time
		}
	})
	if n != 1 || !slices.Equal(got, []int{0}) {
		t.Fatalf("first Advance fired %v (returned %d), want [0]", got, n)
	}
	checkInvariants(t, w)
	if es[1].Scheduled() || w.Len() != 3 {
		t.Fatalf("Len() = %d, want 3", w.Len())
	}
	// Same now: the entries rescheduled into the past fire, in deadline order.
	if got, want := advance(w, now), []int{0, 3, 2}; !slices.Equal(got, want) {
		t.Fatalf("second Advance fired %v, want %v", got, want)
	}
}

func TestCallbackReAddsForever(t *testing.T) {
	w := New[int](time.Second, 8)
	var e Entry[int]
	at := time.Unix(1000, 0)
	w.Add(&e, at)
	for i := range 3 {
		n := w.Advance(at, func(e *Entry[int]) { w.Add(e, at) })
		if n != 1 {
			t.Fatalf("Advance %d fired %d entries, want 1", i, n)
		}
	}
	if !e.Scheduled() {
		t.Fatal("re-added entry is not scheduled")
	}
}

func TestFarFuture(t *testing.T) {
	w := New[int](time.Second, 8) // one rotation is 8s
	w.Advance(base, nil)
	es := newEntries(3)
	w.Add(es[0], base.Add(100*time.Second)) // 12.5 rotations
	w.Add(es[1], base.Add(4*time.Second))   // 4 ticks ahead, same slot
	w.Add(es[2], base.Add(36*time.Second))  // 4.5 rotations, same slot
	var got []string
	for s := 1; s <= 120; s++ {
		for _, v := range advance(w, base.Add(time.Duration(s)*time.Second)) {
			got = append(got, fmt.Sprintf("%d@%d", v, s))
		}
	}
	// base is 0.123s past a tick boundary, so deadlines round up to the next second.
	if want := []string{"1@5", "2@37", "0@101"}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
}

func TestLongPause(t *testing.T) {
	// One rotation is 1024ns; the pause below is 3e18 ticks, which a walk
	// over every tick would never finish.
	w := New[int](time.Nanosecond, 1024)
	start := time.Unix(-1_500_000_000, 0)
	w.Advance(start, nil)
	es := newEntries(5)
	w.Add(es[0], start.Add(5000*time.Nanosecond))
	w.Add(es[1], start.Add(time.Hour))
	w.Add(es[2], start.Add(3*time.Nanosecond))
	w.Add(es[3], start.Add(90*365*24*time.Hour))
	w.Add(es[4], start.Add(100*365*24*time.Hour))
	later := start.Add(95 * 365 * 24 * time.Hour)
	if got, want := advance(w, later), []int{2, 0, 1, 3}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	checkInvariants(t, w)
	if got := advance(w, later.Add(time.Hour)); len(got) != 0 {
		t.Fatalf("fired %v early", got)
	}
	if got := advance(w, start.Add(100*365*24*time.Hour)); !slices.Equal(got, []int{4}) {
		t.Fatalf("fired %v, want [4]", got)
	}
}

func TestPastDeadline(t *testing.T) {
	w := New[int](time.Second, 8)
	now := base.Add(time.Minute)
	w.Advance(now, nil)
	es := newEntries(3)
	w.Add(es[0], now.Add(-30*time.Second))
	w.Add(es[1], time.Time{}) // the zero Time is long past
	w.Add(es[2], now.Add(-2*time.Hour))
	if got, want := advance(w, now), []int{1, 2, 0}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
}

func TestBeforeFirstAdvance(t *testing.T) {
	w := New[int](time.Second, 4)
	es := newEntries(4)
	w.Add(es[0], aligned.Add(10*time.Second))
	w.Add(es[1], aligned.Add(-time.Hour)) // earlier than anything so far
	w.Add(es[2], aligned.Add(time.Hour))
	w.Add(es[3], aligned.Add(3*time.Second))
	checkInvariants(t, w)
	if d, _ := w.NextDeadline(); !d.Equal(es[1].Deadline()) {
		t.Fatalf("NextDeadline() = %v, want %v", d, es[1].Deadline())
	}
	if got, want := advance(w, aligned.Add(5*time.Second)), []int{1, 3}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
	if got, want := advance(w, aligned.Add(2*time.Hour)), []int{0, 2}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}

	// A first Advance earlier than every deadline still processes the ticks
	// in between.
	w = New[int](time.Second, 4)
	w.Add(es[0], aligned.Add(time.Hour))
	advance(w, aligned)
	if want := aligned.Unix() + 1; w.cur != want {
		t.Fatalf("after the first Advance the next tick is %d, want %d", w.cur, want)
	}
	w.Add(es[1], aligned.Add(2*time.Second))
	if got := advance(w, aligned.Add(2*time.Second)); !slices.Equal(got, []int{1}) {
		t.Fatalf("fired %v, want [1]", got)
	}
}

func TestTimeGoingBackwards(t *testing.T) {
	w := New[int](time.Second, 8)
	var e Entry[int]
	w.Advance(base.Add(time.Minute), nil)
	w.Add(&e, base.Add(30*time.Second)) // past due
	if n := w.Advance(base, func(*Entry[int]) {}); n != 0 {
		t.Fatalf("Advance to an earlier time fired %d entries", n)
	}
	if n := w.Advance(base.Add(time.Minute), func(*Entry[int]) {}); n != 1 {
		t.Fatalf("Advance fired %d entries, want 1", n)
	}
}

func TestNextDeadline(t *testing.T) {
	w := New[int](time.Second, 8)
	if _, ok := w.NextDeadline(); ok {
		t.Fatal("NextDeadline of an empty wheel returned true")
	}
	w.Advance(base, nil)
	es := newEntries(3)
	w.Add(es[0], base.Add(20*time.Second)) // beyond one rotation
	d, ok := w.NextDeadline()
	start := time.Unix(base.Unix()+1, 0) // first tick not processed yet
	if !ok || !d.Equal(start.Add(8*time.Second)) {
		t.Fatalf("NextDeadline() = %v, %v; want the end of the rotation %v", d, ok, start.Add(8*time.Second))
	}
	w.Add(es[1], base.Add(6*time.Second))
	w.Add(es[2], base.Add(3*time.Second))
	if d, _ := w.NextDeadline(); !d.Equal(es[2].Deadline()) {
		t.Fatalf("NextDeadline() = %v, want %v", d, es[2].Deadline())
	}
	w.Add(es[0], base.Add(-time.Minute))
	if d, _ := w.NextDeadline(); !d.Equal(es[0].Deadline()) {
		t.Fatalf("NextDeadline() = %v, want the past-due %v", d, es[0].Deadline())
	}
	w.Advance(base.Add(time.Hour), func(e *Entry[int]) {
		if e == es[0] {
			if d, _ := w.NextDeadline(); !d.Equal(es[2].Deadline()) {
				t.Errorf("NextDeadline() in callback = %v, want %v", d, es[2].Deadline())
			}
		}
	})
	if _, ok := w.NextDeadline(); ok {
		t.Fatal("NextDeadline after firing everything returned true")
	}
}

func TestMisusePanics(t *testing.T) {
	f := func(name string, fn func()) {
		t.Helper()
		defer func() {
			if recover() == nil {
				t.Errorf("%s did not panic", name)
			}
		}()
		fn()
	}
	w1 := New[int](time.Second, 8)
	w2 := New[int](time.Second, 8)
	var e Entry[int]
	w1.Add(&e, base)
	f("Add to another wheel", func() { w2.Add(&e, base) })
	f("Reset in another wheel", func() { w2.Reset(&e, base) })
	f("Remove from another wheel", func() { w2.Remove(&e) })
	f("Advance from the callback", func() {
		w1.Advance(base.Add(time.Second), func(*Entry[int]) { w1.Advance(base, nil) })
	})
	checkInvariants(t, w1)
	checkInvariants(t, w2)
}

func TestCallbackPanicKeepsPending(t *testing.T) {
	w := New[int](time.Second, 8)
	es := newEntries(3)
	for i, e := range es {
		w.Add(e, base.Add(time.Duration(i)*time.Second))
	}
	func() {
		defer func() { recover() }()
		w.Advance(base.Add(time.Minute), func(e *Entry[int]) {
			if e.Value == 1 {
				panic("boom")
			}
		})
	}()
	checkInvariants(t, w)
	if w.Len() != 1 || !es[2].Scheduled() {
		t.Fatalf("Len() = %d after a panicking callback, want 1", w.Len())
	}
	if got := advance(w, base.Add(time.Minute)); !slices.Equal(got, []int{2}) {
		t.Fatalf("fired %v, want [2]", got)
	}
}

// model is a simple reference implementation of the wheel's contract.
type model struct {
	tick    int64
	when    []int64 // rounded deadline, by entry
	seq     []int   // schedule order, by entry
	sched   []bool
	nextSeq int
}

func (m *model) add(i int, deadline time.Time) {
	m.when[i] = ceilDiv(deadline.UnixNano(), m.tick) * m.tick
	m.seq[i] = m.nextSeq
	m.nextSeq++
	m.sched[i] = true
}

func (m *model) min() (int64, bool) {
	best, ok := int64(0), false
	for i, s := range m.sched {
		if s && (!ok || m.when[i] < best) {
			best, ok = m.when[i], true
		}
	}
	return best, ok
}

type dueEntry struct {
	i, seq int
	when   int64
}

// due returns the entries due at now, in the order they must fire.
func (m *model) due(now time.Time) []dueEntry {
	limit := floorDiv(now.UnixNano(), m.tick) * m.tick
	var d []dueEntry
	for i, s := range m.sched {
		if s && m.when[i] <= limit {
			d = append(d, dueEntry{i, m.seq[i], m.when[i]})
		}
	}
	slices.SortFunc(d, func(a, b dueEntry) int {
		return cmp.Or(cmp.Compare(a.when, b.when), cmp.Compare(a.seq, b.seq))
	})
	return d
}

// still reports whether d is scheduled as it was when it became due.
func (m *model) still(d dueEntry) bool { return m.sched[d.i] && m.seq[d.i] == d.seq }

func TestRandomAgainstModel(t *testing.T) {
	seeds := 60
	if testing.Short() {
		seeds = 10
	}
	for seed := range seeds {
		testRandom(t, uint64(seed))
		if t.Failed() {
			return
		}
	}
}

func testRandom(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 42))
	ticks := []time.Duration{time.Nanosecond, 7 * time.Nanosecond, time.Millisecond, time.Second}
	tick := ticks[rng.IntN(len(ticks))]
	slots := 1 << rng.IntN(6)
	w := New[int](tick, slots)
	rotation := tick * time.Duration(len(w.slots))
	now := base.Add(time.Duration(rng.Int64N(int64(time.Hour))))
	if seed%4 == 1 {
		now = time.Unix(-1_000_000_000, 0).Add(-time.Duration(rng.Int64N(int64(time.Hour)))) // before 1970
	}
	const nEntries = 48
	es := newEntries(nEntries)
	m := &model{
		tick:  int64(tick),
		when:  make([]int64, nEntries),
		seq:   make([]int, nEntries),
		sched: make([]bool, nEntries),
	}
	started := false
	var latest time.Time // the latest time passed to Advance
	var firing int64     // deadline of the entry being fired
	where := func(op int) string {
		return fmt.Sprintf("seed %d (tick %v, %d slots), op %d", seed, tick, len(w.slots), op)
	}

	deadline := func() time.Time {
		var d time.Duration
		switch r := rng.IntN(10); {
		case r < 2:
			d = -time.Duration(rng.Int64N(int64(5*tick) + 1)) // past
		case r < 8:
			d = time.Duration(rng.Int64N(int64(rotation) + 1)) // within a rotation
		default:
			d = time.Duration(rng.Int64N(int64(4*rotation) + 1)) // beyond
		}
		return now.Add(d)
	}
	// mutate does one random Add, Reset or Remove on both w and m.
	mutate := func(op int) {
		i := rng.IntN(nEntries)
		switch rng.IntN(10) {
		case 0, 1, 2:
			if got := w.Remove(es[i]); got != m.sched[i] {
				t.Fatalf("%s: Remove(%d) = %v, want %v", where(op), i, got, m.sched[i])
			}
			m.sched[i] = false
		case 3, 4, 5:
			d := deadline()
			w.Reset(es[i], d)
			m.add(i, d)
		default:
			d := deadline()
			w.Add(es[i], d)
			m.add(i, d)
		}
	}
	checkNext := func(op int, inCallback bool) {
		got, ok := w.NextDeadline()
		want, wantOK := m.min()
		if ok != wantOK {
			t.Fatalf("%s: NextDeadline() ok = %v, want %v", where(op), ok, wantOK)
		}
		if !ok {
			return
		}
		// Exact within one rotation of the latest Advance, or, from the
		// callback, of the entry firing.
		var exact bool
		if inCallback {
			exact = want < firing+int64(rotation)
		} else {
			exact = started && want < (floorDiv(latest.UnixNano(), m.tick)+1)*m.tick+int64(rotation)
		}
		if got.UnixNano() > want || (exact && got.UnixNano() != want) {
			t.Fatalf("%s: NextDeadline() = %d, want %d (exact %v)", where(op), got.UnixNano(), want, exact)
		}
	}

	for op := range 1500 {
		switch r := rng.IntN(100); {
		case r < 45:
			mutate(op)
		case r < 50:
			checkNext(op, false)
		default:
			switch r := rng.IntN(100); {
			case r < 20: // no progress
			case r < 80:
				now = now.Add(time.Duration(rng.Int64N(int64(3 * tick))))
			case r < 92:
				now = now.Add(time.Duration(rng.Int64N(int64(3 * rotation))))
			case r < 97: // backwards: fires what is due at now, if anything
				now = now.Add(-time.Duration(rng.Int64N(int64(3 * rotation))))
			default:
				now = now.Add(time.Duration(rng.Int64N(int64(72 * time.Hour))))
			}
			if !started || now.After(latest) {
				latest = now
			}
			due := m.due(now)
			next := 0
			fired := 0
			n := w.Advance(now, func(e *Entry[int]) {
				for next < len(due) && !m.still(due[next]) {
					next++
				}
				if next == len(due) {
					t.Fatalf("%s: fired entry %d, want none", where(op), e.Value)
				}
				want := due[next]
				next++
				if e.Value != want.i {
					t.Fatalf("%s: fired entry %d (due %d), want %d (due %d)", where(op), e.Value, e.when, want.i, want.when)
				}
				if e.Scheduled() || e.Deadline().UnixNano() != want.when {
					t.Fatalf("%s: fired entry %d: Scheduled() = %v, Deadline() = %d, want false, %d",
						where(op), e.Value, e.Scheduled(), e.Deadline().UnixNano(), want.when)
				}
				m.sched[want.i] = false
				firing = want.when
				fired++
				for range rng.IntN(4) {
					switch rng.IntN(4) {
					case 0: // re-add the fired entry, often already due
						d := now.Add(time.Duration(rng.Int64N(int64(2*tick))) - tick)
						w.Add(e, d)
						m.add(e.Value, d)
					case 1:
						checkNext(op, true)
					default:
						mutate(op)
					}
				}
			})
			for ; next < len(due); next++ {
				if m.still(due[next]) {
					t.Fatalf("%s: entry %d (due %d) did not fire at %d", where(op), due[next].i, due[next].when, now.UnixNano())
				}
			}
			if n != fired {
				t.Fatalf("%s: Advance returned %d, fired %d", where(op), n, fired)
			}
			started = true
		}

		checkInvariants(t, w)
		count := 0
		for i, e := range es {
			if e.Scheduled() != m.sched[i] {
				t.Fatalf("%s: entry %d Scheduled() = %v, want %v", where(op), i, e.Scheduled(), m.sched[i])
			}
			if m.sched[i] {
				count++
				if e.Deadline().UnixNano() != m.when[i] {
					t.Fatalf("%s: entry %d Deadline() = %d, want %d", where(op), i, e.Deadline().UnixNano(), m.when[i])
				}
			}
		}
		if w.Len() != count {
			t.Fatalf("%s: Len() = %d, want %d", where(op), w.Len(), count)
		}
	}
}

func TestClampsFarTimes(t *testing.T) {
	w := New[int](time.Second, 8)
	var e Entry[int]
	w.Add(&e, time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC))
	if want := time.Unix(maxUnixSec, 0); !e.Deadline().Equal(want) {
		t.Fatalf("Deadline() = %v, want the clamp %v", e.Deadline(), want)
	}
	if got := advance(w, time.Date(2100, 1, 1, 0, 0, 0, 0, time.UTC)); len(got) != 0 {
		t.Fatalf("fired %v early", got)
	}
	if got := advance(w, time.Date(9999, 1, 1, 0, 0, 0, 0, time.UTC)); len(got) != 1 {
		t.Fatalf("fired %v, want the entry", got)
	}
}

func TestCallbackPanicDuringWalk(t *testing.T) {
	w := New[int](time.Second, 64)
	w.Advance(aligned, nil)
	es := newEntries(4)
	for i, e := range es {
		w.Add(e, aligned.Add(time.Duration(i+1)*time.Second))
	}
	func() {
		defer func() { recover() }()
		w.Advance(aligned.Add(10*time.Second), func(e *Entry[int]) {
			if e.Value == 1 {
				w.Add(es[0], aligned) // overdue
				panic("boom")
			}
		})
	}()
	checkInvariants(t, w)
	if w.Len() != 3 {
		t.Fatalf("Len() = %d after a panicking callback, want 3", w.Len())
	}
	if got, want := advance(w, aligned.Add(10*time.Second)), []int{0, 2, 3}; !slices.Equal(got, want) {
		t.Fatalf("fired %v, want %v", got, want)
	}
}
