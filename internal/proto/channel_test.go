package proto

import (
	"regexp"
	"strings"
	"testing"
)

func TestCheckChannel(t *testing.T) {
	f := func(name string, want error) {
		t.Helper()
		if got := CheckChannel(name); got != want {
			t.Errorf("CheckChannel(%q) = %v, want %v", name, got, want)
		}
		if got := ValidChannel(name); got != (want == nil) {
			t.Errorf("ValidChannel(%q) = %v, want %v", name, got, want == nil)
		}
	}
	f("scores.m1", nil)
	f("user.42", nil)
	f("!~", nil)
	f(strings.Repeat("a", MaxChannelLen), nil)
	f("", ErrChannelMissing)
	f(strings.Repeat("a", MaxChannelLen+1), ErrChannelTooLong)
	f("a b", ErrChannelBytes)
	f("a\x7f", ErrChannelBytes)
	f("a\x00", ErrChannelBytes)
	f("é", ErrChannelBytes)
}

func TestCheckChannelAllocs(t *testing.T) {
	if n := testing.AllocsPerRun(100, func() { _ = CheckChannel("a b") }); n != 0 {
		t.Errorf("CheckChannel allocates %v times per call, want 0", n)
	}
}

// channelRule is the rule of docs/protocol.md ("Channel names") written a
// second way, as the fuzz target's oracle.
var channelRule = regexp.MustCompile(`^[\x21-\x7e]{1,255}$`)

func FuzzValidChannel(f *testing.F) {
	for _, s := range []string{"", "scores.m1", "a b", "\x7f", "é", strings.Repeat("x", 256)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		if got, want := ValidChannel(name), channelRule.MatchString(name); got != want {
			t.Fatalf("ValidChannel(%q) = %v, the documented rule says %v", name, got, want)
		}
	})
}
