package bus

import (
	"bytes"
	"testing"
)

func TestPayloadRoundTrip(t *testing.T) {
	f := func(epoch string, off uint64, data string) {
		t.Helper()
		p := string(appendPayload(nil, epoch, off, []byte(data)))
		e, o, d, ok := decodePayload(p)
		if !ok || e != epoch || o != off || d != data {
			t.Fatalf("decode(%q) = %q %d %q %v", p, e, o, d, ok)
		}
	}
	f("e1", 1, `{"a":1}`)
	f("0123456789abcdef", 18446744073709551615, "")
	f("x", 42, "with spaces and\nnewlines ")
}

func TestPayloadInvalid(t *testing.T) {
	for _, p := range []string{
		"", " 1 x", "e", "e ", "e 1", "e  x", "e 01 x", "e 0 x", "e 1a x", "e -1 x",
		"e 18446744073709551616 x", "e 99999999999999999999 x",
		string(bytes.Repeat([]byte("e"), maxEpochLen+1)) + " 1 x",
	} {
		if e, o, d, ok := decodePayload(p); ok {
			t.Errorf("decode(%q) = %q %d %q, want failure", p, e, o, d)
		}
	}
}

func FuzzDecodePayload(f *testing.F) {
	for _, s := range []string{
		"e1 1 {}", "abc 42 [1,2,3]", "e 18446744073709551615 ", "e 0 x", "e 01 x", "garbage", "",
		"0123456789abcdef 7 {\"k\":\"v v\"}", "e 18446744073709551616 x",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, p string) {
		epoch, off, data, ok := decodePayload(p)
		if !ok {
			return
		}
		if off == 0 || epoch == "" || len(epoch) > maxEpochLen {
			t.Fatalf("decode(%q) accepted epoch %q offset %d", p, epoch, off)
		}
		// A payload that decodes is exactly its own encoding.
		if again := string(appendPayload(nil, epoch, off, []byte(data))); again != p {
			t.Fatalf("decode(%q) re-encodes as %q", p, again)
		}
	})
}

func TestHashSlot(t *testing.T) {
	// Values from the Redis Cluster specification and redis-cli.
	f := func(key string, want int) {
		t.Helper()
		if got := hashSlot(key); got != want {
			t.Errorf("hashSlot(%q) = %d, want %d", key, got, want)
		}
	}
	f("123456789", 12739) // CRC16/XMODEM check value 0x31C3 % 16384
	f("{user1000}.following", hashSlot("user1000"))
	f("foo{}{bar}", hashSlot("foo{}{bar}"))
	f("foo{{bar}}zap", hashSlot("{bar"))
	f("tether:{a}b}:m", hashSlot("a"))
}

func TestChannelOf(t *testing.T) {
	for _, ch := range []string{"a", "a}b", "{x}", "scores.m1"} {
		got, ok := channelOf("tether:", pubsubName("tether:", ch))
		if !ok || got != ch {
			t.Errorf("channelOf(pubsubName(%q)) = %q %v", ch, got, ok)
		}
	}
	for _, name := range []string{"tether:", "tether:{}", "other:{a}", "tether:a", "tether:{a"} {
		if got, ok := channelOf("tether:", name); ok {
			t.Errorf("channelOf(%q) = %q", name, got)
		}
	}
}
