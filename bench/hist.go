package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"math/bits"
	"sync/atomic"
)

// Histogram layout: values below histSub are counted exactly; every power of
// two above is split into histSub linear buckets. A bucket's width is at most
// 1/histSub of its lower bound, so reporting its midpoint is off by at most
// 1/(2*histSub) of the true value (0.78% with 64 sub-buckets).
const (
	histSubBits = 6
	histSub     = 1 << histSubBits
	// histBuckets covers every non-negative int64.
	histBuckets = histSub + (63-histSubBits)*histSub
)

// HistRelativeError is the largest relative error of a value reported by a
// Hist (a quantile, the mean excepted) against the true value it stands for.
const HistRelativeError = 1.0 / (2 * histSub)

// Hist is a histogram of non-negative int64 values (nanoseconds in this
// package) with log-linear buckets of bounded relative error, in the manner
// of HDR histograms. Histograms merge exactly: merging the histograms of two
// halves of a data set gives the histogram of the whole, so percentiles of
// merged results are computed from the merged counts, never averaged.
//
// The zero value is an empty histogram. Record is safe for concurrent use
// with other Record calls and with Merge reading this histogram as its
// argument; every other method needs the histogram to be quiescent.
type Hist struct {
	counts [histBuckets]uint64
	n      uint64
	sum    uint64
	max    uint64
	// minInv holds ^min so that the zero value means "no minimum yet" and
	// a larger minInv is a smaller minimum.
	minInv uint64
}

// histIndex returns the bucket of v (v >= 0).
func histIndex(v uint64) int {
	if v < histSub {
		return int(v)
	}
	k := bits.Len64(v) - 1 // v in [2^k, 2^(k+1)), k >= histSubBits
	shift := k - histSubBits
	return histSub + shift*histSub + int(v>>shift) - histSub
}

// histBounds returns the inclusive range [lo, hi] of the values of bucket i.
func histBounds(i int) (lo, hi uint64) {
	if i < histSub {
		return uint64(i), uint64(i)
	}
	shift := (i - histSub) / histSub
	sub := uint64((i-histSub)%histSub) + histSub
	lo = sub << shift
	return lo, lo + (1 << shift) - 1
}

// histMid returns the value that stands for bucket i.
func histMid(i int) uint64 {
	lo, hi := histBounds(i)
	return lo + (hi-lo)/2
}

// Record adds one value. Negative values are counted as zero.
func (h *Hist) Record(v int64) {
	if v < 0 {
		v = 0
	}
	u := uint64(v)
	atomic.AddUint64(&h.counts[histIndex(u)], 1)
	atomic.AddUint64(&h.n, 1)
	atomic.AddUint64(&h.sum, u)
	for {
		m := atomic.LoadUint64(&h.max)
		if u <= m || atomic.CompareAndSwapUint64(&h.max, m, u) {
			break
		}
	}
	inv := ^u
	for {
		m := atomic.LoadUint64(&h.minInv)
		if inv <= m || atomic.CompareAndSwapUint64(&h.minInv, m, inv) {
			break
		}
	}
}

// Merge adds every value counted by o to h. o may be receiving Records at
// the same time; the values it records meanwhile may or may not be included.
func (h *Hist) Merge(o *Hist) {
	if o == nil {
		return
	}
	for i := range o.counts {
		if c := atomic.LoadUint64(&o.counts[i]); c != 0 {
			h.counts[i] += c
		}
	}
	h.n += atomic.LoadUint64(&o.n)
	h.sum += atomic.LoadUint64(&o.sum)
	h.max = max(h.max, atomic.LoadUint64(&o.max))
	h.minInv = max(h.minInv, atomic.LoadUint64(&o.minInv))
}

// Reset empties h.
func (h *Hist) Reset() { *h = Hist{} }

// Clone returns a copy of h taken with atomic loads, so h may be receiving
// Records.
func (h *Hist) Clone() *Hist {
	c := new(Hist)
	c.Merge(h)
	return c
}

// Count returns the number of recorded values.
func (h *Hist) Count() uint64 { return h.n }

// Min returns the smallest recorded value, or 0 if h is empty.
func (h *Hist) Min() int64 {
	if h.n == 0 {
		return 0
	}
	return int64(^h.minInv)
}

// Max returns the largest recorded value (exactly), or 0 if h is empty.
func (h *Hist) Max() int64 { return int64(h.max) }

// Mean returns the exact mean of the recorded values, or 0 if h is empty.
func (h *Hist) Mean() float64 {
	if h.n == 0 {
		return 0
	}
	return float64(h.sum) / float64(h.n)
}

// Quantile returns the value below or at which a fraction q (0..1) of the
// recorded values lie: the value of rank ceil(q*n), within
// HistRelativeError. Quantile(0) is the exact minimum and Quantile(1) the
// exact maximum. It returns 0 if h is empty.
func (h *Hist) Quantile(q float64) int64 {
	if h.n == 0 {
		return 0
	}
	if q <= 0 {
		return h.Min()
	}
	if q >= 1 {
		return h.Max()
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen >= rank {
			v := int64(histMid(i))
			return min(max(v, h.Min()), h.Max())
		}
	}
	return h.Max()
}

// EachBucket calls fn for every non-empty bucket in ascending order with the
// bucket's inclusive value range and its count.
func (h *Hist) EachBucket(fn func(lo, hi int64, n uint64)) {
	for i, c := range h.counts {
		if c != 0 {
			lo, hi := histBounds(i)
			fn(int64(lo), int64(hi), c)
		}
	}
}

// histJSON is the wire and file form of a Hist: the exact count, sum,
// minimum and maximum, and the non-empty buckets as [index, count] pairs.
type histJSON struct {
	N       uint64      `json:"n"`
	Sum     uint64      `json:"sum"`
	Min     int64       `json:"min"`
	Max     int64       `json:"max"`
	Buckets [][2]uint64 `json:"buckets"`
}

// MarshalJSON encodes h sparsely; UnmarshalJSON restores it exactly.
func (h *Hist) MarshalJSON() ([]byte, error) {
	j := histJSON{N: h.n, Sum: h.sum, Min: h.Min(), Max: h.Max(), Buckets: [][2]uint64{}}
	for i, c := range h.counts {
		if c != 0 {
			j.Buckets = append(j.Buckets, [2]uint64{uint64(i), c})
		}
	}
	return json.Marshal(j)
}

// errBadHist reports a histogram that does not decode to a consistent state.
var errBadHist = errors.New("bench: bad histogram")

// UnmarshalJSON decodes the form written by MarshalJSON.
func (h *Hist) UnmarshalJSON(b []byte) error {
	var j histJSON
	if err := json.Unmarshal(b, &j); err != nil {
		return fmt.Errorf("cannot decode histogram: %w", err)
	}
	*h = Hist{}
	var total uint64
	for _, bc := range j.Buckets {
		if bc[0] >= histBuckets {
			return fmt.Errorf("cannot decode histogram: bucket %d: %w", bc[0], errBadHist)
		}
		h.counts[bc[0]] += bc[1]
		total += bc[1]
	}
	if total != j.N || j.Min < 0 || j.Max < j.Min {
		return fmt.Errorf("cannot decode histogram: %w", errBadHist)
	}
	h.n, h.sum = j.N, j.Sum
	if j.N > 0 {
		h.max = uint64(j.Max)
		h.minInv = ^uint64(j.Min)
	}
	return nil
}
