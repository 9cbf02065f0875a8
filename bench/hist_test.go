package bench

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
)

func TestHistIndexBounds(t *testing.T) {
	// Every bucket's bounds map back to the bucket, buckets tile the range
	// without gaps, and widths respect the relative error.
	var prevHi uint64
	for i := 0; i < histBuckets; i++ {
		lo, hi := histBounds(i)
		if i > 0 && lo != prevHi+1 {
			t.Fatalf("bucket %d starts at %d, previous ended at %d", i, lo, prevHi)
		}
		if histIndex(lo) != i || histIndex(hi) != i {
			t.Fatalf("bucket %d [%d,%d] maps to %d,%d", i, lo, hi, histIndex(lo), histIndex(hi))
		}
		if lo > 0 && float64(hi-lo)/2/float64(lo) > HistRelativeError {
			t.Fatalf("bucket %d [%d,%d] too wide", i, lo, hi)
		}
		prevHi = hi
	}
	if prevHi != math.MaxInt64 {
		t.Fatalf("last bucket ends at %d, want MaxInt64", prevHi)
	}
}

// exactQuantile is the reference: the value of rank ceil(q*n).
func exactQuantile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[rank-1]
}

func TestHistQuantilesWithinError(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	var h Hist
	vals := make([]int64, 50000)
	for i := range vals {
		// Log-uniform between 1 µs and 10 s, plus a few exact small values.
		v := int64(math.Exp(r.Float64()*math.Log(1e7)) * 1e3)
		if i%1000 == 0 {
			v = int64(i % 50)
		}
		vals[i] = v
		h.Record(v)
	}
	slices.Sort(vals)
	for _, q := range []float64{0.001, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999} {
		got, want := h.Quantile(q), exactQuantile(vals, q)
		if math.Abs(float64(got-want)) > HistRelativeError*float64(want)+0.5 {
			t.Errorf("q%v = %d, want %d within %.2f%%", q, got, want, HistRelativeError*100)
		}
	}
	if h.Min() != vals[0] || h.Max() != vals[len(vals)-1] {
		t.Errorf("min/max = %d/%d, want %d/%d", h.Min(), h.Max(), vals[0], vals[len(vals)-1])
	}
	var sum int64
	for _, v := range vals {
		sum += v
	}
	if got, want := h.Mean(), float64(sum)/float64(len(vals)); math.Abs(got-want) > 1e-6*want {
		t.Errorf("mean = %v, want %v", got, want)
	}
}

func TestHistMergeEqualsWhole(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	var whole Hist
	parts := make([]Hist, 7)
	for i := 0; i < 30000; i++ {
		v := r.Int64N(1 << (10 + i%30))
		whole.Record(v)
		parts[i%len(parts)].Record(v)
	}
	var merged Hist
	for i := range parts {
		// Round-trip through JSON, as worker results do.
		b, err := json.Marshal(&parts[i])
		if err != nil {
			t.Fatal(err)
		}
		var p Hist
		if err := json.Unmarshal(b, &p); err != nil {
			t.Fatal(err)
		}
		merged.Merge(&p)
	}
	if merged != whole {
		t.Fatal("merged histogram differs from the histogram of the whole")
	}
	for _, q := range []float64{0, 0.5, 0.99, 0.999, 1} {
		if merged.Quantile(q) != whole.Quantile(q) {
			t.Errorf("q%v: merged %d, whole %d", q, merged.Quantile(q), whole.Quantile(q))
		}
	}
}

func TestHistEmptyAndEdges(t *testing.T) {
	var h Hist
	if h.Quantile(0.5) != 0 || h.Min() != 0 || h.Max() != 0 || h.Mean() != 0 {
		t.Fatal("empty histogram must report zeros")
	}
	b, err := json.Marshal(&h)
	if err != nil {
		t.Fatal(err)
	}
	var back Hist
	if err := json.Unmarshal(b, &back); err != nil || back != h {
		t.Fatalf("empty round trip: %v", err)
	}
	h.Record(-5)
	h.Record(math.MaxInt64)
	if h.Min() != 0 || h.Max() != math.MaxInt64 || h.Count() != 2 {
		t.Fatalf("edges: min %d max %d n %d", h.Min(), h.Max(), h.Count())
	}
	for _, bad := range []string{`{"n":1,"buckets":[]}`, `{"n":1,"buckets":[[99999,1]]}`, `[`} {
		if err := json.Unmarshal([]byte(bad), &back); err == nil {
			t.Errorf("%s: decoded without error", bad)
		}
	}
}

func TestHistConcurrentRecord(t *testing.T) {
	var h Hist
	var wg sync.WaitGroup
	for g := 0; g < 4; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 1; i <= 1000; i++ {
				h.Record(int64(i))
			}
		}()
	}
	// Merging a live histogram must be safe.
	var snap Hist
	snap.Merge(&h)
	wg.Wait()
	if h.Count() != 4000 || h.Min() != 1 || h.Max() != 1000 {
		t.Fatalf("n %d min %d max %d", h.Count(), h.Min(), h.Max())
	}
}
