package bench

import (
	"encoding/json"
	"testing"
)

func TestParseFrame(t *testing.T) {
	f := func(in string, op byte, tv, sv int64, hasTS, ok bool) {
		t.Helper()
		fi, gotOK := parseFrame([]byte(in))
		if gotOK != ok {
			t.Fatalf("%s: ok = %v, want %v", in, gotOK, ok)
		}
		if !ok {
			return
		}
		if fi.op != op || fi.hasT != hasTS || fi.hasS != hasTS || hasTS && (fi.t != tv || fi.s != sv) {
			t.Fatalf("%s: got %+v", in, fi)
		}
	}
	f(`{"op":"message","channel":"a","offset":3,"data":{"t":1700000000123456789,"s":42}}`, opMessage, 1700000000123456789, 42, true, true)
	f(` { "data" : { "s" : 7 , "w":"x\"y", "t" : -5 } , "op" : "message" } `, opMessage, -5, 7, true, true)
	f(`{"op":"message","channel":"x\",\"data\":{\"t\":1,\"s\":2}","data":{"t":9,"s":8}}`, opMessage, 9, 8, true, true)
	f(`{"op":"message","data":{"nested":{"t":1,"s":2}}}`, opMessage, 0, 0, false, true)
	f(`{"op":"message","data":[{"t":1,"s":2}]}`, opMessage, 0, 0, false, true)
	f(`{"op":"message","data":{"t":1.5,"s":2e3}}`, opMessage, 0, 0, false, true)
	f(`{"op":"ping"}`, opPing, 0, 0, false, true)
	f(`{"op":"welcome","node":"n","conn":"c","ping_interval_ms":25000}`, opWelcome, 0, 0, false, true)
	f(`{"op":"subscribed","channel":"c","offset":44,"epoch":"e1","recovered":true,"id":1}`, opSubscribed, 0, 0, false, true)
	f(`{"op":"error","code":"limit","message":"x","id":null}`, opError, 0, 0, false, true)
	f(`{"op":"frobnicate","x":[1,{"a":[]}],"y":true}`, opOther, 0, 0, false, true)
	f(`{}`, opOther, 0, 0, false, true)
	for _, bad := range []string{``, `[]`, `{`, `{"op"}`, `{"op":"ping"`, `{"op":"ping"}x`, `{"op":"ping",}`, `{"data":{"t":}}`, `{"a":"unterminated}`, `{"a":[1,2}`, `{"a":--}`} {
		if _, ok := parseFrame([]byte(bad)); ok {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestParseFrameOverflow(t *testing.T) {
	fi, ok := parseFrame([]byte(`{"op":"message","data":{"t":99999999999999999999,"s":1}}`))
	if !ok || fi.hasT || !fi.hasS {
		t.Fatalf("overflowing t: %+v %v", fi, ok)
	}
}

func FuzzParseFrame(f *testing.F) {
	for _, s := range []string{
		`{"op":"message","channel":"a","offset":3,"data":{"t":1700000000123456789,"s":42}}`,
		`{"op":"message","data":{"t":1,"s":2,"w":"xx"}}`,
		`{"op":"ping"}`, `{"op":"welcome","node":"n","ping_interval_ms":25000}`,
		`{"a":[1,{"b":"\"}"}],"data":{"t":-1}}`, `{`, `{"op":"message","data":{"t":1e5,"s":0.5}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fi, ok := parseFrame(b)
		if !ok {
			return
		}
		// Whatever parseFrame accepts is one JSON object.
		if !json.Valid(b) {
			t.Fatalf("accepted invalid JSON %q", b)
		}
		var v map[string]any
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatalf("accepted non-object %q", b)
		}
		_ = fi
	})
}

// FuzzParseFrameRoundTrip checks the scanner against encoding/json on the
// frames a server produces for bench payloads.
func FuzzParseFrameRoundTrip(f *testing.F) {
	f.Add("message", "scores.m1", int64(1700000000123456789), int64(5), "pad", uint64(3))
	f.Add("message", `we"ird\ch`, int64(-1), int64(0), `{"t":1,"s":2}`, uint64(0))
	f.Add("ping", "", int64(0), int64(0), "", uint64(0))
	f.Fuzz(func(t *testing.T, op, channel string, tv, sv int64, pad string, offset uint64) {
		frame, err := json.Marshal(map[string]any{
			"op": op, "channel": channel, "offset": offset,
			"data": map[string]any{"w": pad, "t": tv, "s": sv},
		})
		if err != nil {
			return
		}
		fi, ok := parseFrame(frame)
		if !ok {
			t.Fatalf("rejected %s", frame)
		}
		if fi.op != classifyOp([]byte(op)) || !fi.hasT || !fi.hasS || fi.t != tv || fi.s != sv {
			t.Fatalf("%s: got %+v", frame, fi)
		}
	})
}
