package bench

import "tether/internal/proto"

// This file holds the cheap scanners for tether's JSON frames: they find
// the op and a bench payload's publish time and sequence number without
// decoding, and allocate nothing.

// Ops of tether frames the bench cares about.
const (
	opOther byte = iota
	opMessage
	opPing
	opPong
	opWelcome
	opSubscribed
	opError
	opReconnect
	opResync
)

// classifyOp maps an "op" value to its constant.
func classifyOp(v []byte) byte {
	switch string(v) {
	case proto.OpMessage:
		return opMessage
	case proto.OpPing:
		return opPing
	case proto.OpPong:
		return opPong
	case proto.OpWelcome:
		return opWelcome
	case proto.OpSubscribed:
		return opSubscribed
	case proto.OpError:
		return opError
	case proto.OpReconnect:
		return opReconnect
	case proto.OpResync:
		return opResync
	}
	return opOther
}

// frameInfo is what parseFrame extracts from one tether frame.
type frameInfo struct {
	op byte
	// t and s are the publish time and sequence number of a bench payload
	// in the "data" object of a message; hasT/hasS tell whether present.
	t, s       int64
	hasT, hasS bool
	// offset, epoch and recovered are the top-level position fields of
	// message, subscribed and resync frames; epoch aliases the input.
	offset    int64
	hasOffset bool
	epoch     []byte
	recovered bool
}

// parseFrame scans one tether JSON frame: the top-level "op", "offset",
// "epoch" and "recovered" and, inside a top-level "data" object, the integer
// fields "t" and "s". It walks the
// JSON structure (so look-alike bytes inside strings are not matched),
// allocates nothing, and returns ok == false for input that is not one JSON
// object.
func parseFrame(b []byte) (fi frameInfo, ok bool) {
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return fi, false
	}
	i, ok = walkObject(b, i, func(key []byte, b []byte, v int) int {
		switch string(key) {
		case "op":
			if b[v] == '"' {
				end := scanString(b, v)
				if end < 0 {
					return -1
				}
				fi.op = classifyOp(b[v+1 : end-1])
				return end
			}
		case "data":
			if b[v] == '{' {
				return walkDataObject(b, v, &fi)
			}
		case "offset":
			n, end, isInt := scanInt(b, v)
			if end < 0 {
				return -1
			}
			fi.offset, fi.hasOffset = n, isInt
			return end
		case "epoch":
			if b[v] == '"' {
				end := scanString(b, v)
				if end < 0 {
					return -1
				}
				fi.epoch = b[v+1 : end-1]
				return end
			}
		case "recovered":
			fi.recovered = b[v] == 't'
		}
		return skipValue(b, v)
	})
	if !ok {
		return fi, false
	}
	return fi, skipSpace(b, i) == len(b)
}

// walkDataObject walks the "data" object and fills t and s. It is a separate
// function (rather than a nested closure) to keep parseFrame allocation-free.
func walkDataObject(b []byte, i int, fi *frameInfo) int {
	end, ok := walkObject(b, i, func(key []byte, b []byte, v int) int {
		switch string(key) {
		case "t", "s":
			n, end, isInt := scanInt(b, v)
			if end < 0 {
				return -1
			}
			if isInt {
				if key[0] == 't' {
					fi.t, fi.hasT = n, true
				} else {
					fi.s, fi.hasS = n, true
				}
			}
			return end
		}
		return skipValue(b, v)
	})
	if !ok {
		return -1
	}
	return end
}

// walkObject walks the object starting at b[i] == '{' and calls fn for each
// member with the raw key (escapes not decoded) and the index of its value;
// fn returns the index after the value or -1. walkObject returns the index
// after the closing brace.
func walkObject(b []byte, i int, fn func(key, b []byte, v int) int) (int, bool) {
	i++ // '{'
	i = skipSpace(b, i)
	if i < len(b) && b[i] == '}' {
		return i + 1, true
	}
	for {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return 0, false
		}
		kend := scanString(b, i)
		if kend < 0 {
			return 0, false
		}
		key := b[i+1 : kend-1]
		i = skipSpace(b, kend)
		if i >= len(b) || b[i] != ':' {
			return 0, false
		}
		i = skipSpace(b, i+1)
		if i >= len(b) {
			return 0, false
		}
		i = fn(key, b, i)
		if i < 0 {
			return 0, false
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, false
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return i + 1, true
		default:
			return 0, false
		}
	}
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString returns the index after the JSON string starting at
// b[i] == '"', or -1 when it is not a valid JSON string (control
// characters, bad escapes). UTF-8 is not checked, as encoding/json does not.
func scanString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch c := b[i]; {
		case c == '"':
			return i + 1
		case c < 0x20:
			return -1
		case c == '\\':
			i++
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if i+4 >= len(b) {
					return -1
				}
				for _, h := range b[i+1 : i+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return -1
					}
				}
				i += 4
			default:
				return -1
			}
		}
	}
	return -1
}

// scanNumber returns the index after the JSON number at b[i], or -1.
func scanNumber(b []byte, i int) int {
	digits := func(i int) int {
		s := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == s {
			return -1
		}
		return i
	}
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	default:
		if i = digits(i); i < 0 {
			return -1
		}
	}
	if i < len(b) && b[i] == '.' {
		if i = digits(i + 1); i < 0 {
			return -1
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i = digits(i); i < 0 {
			return -1
		}
	}
	return i
}

// scanInt reads the JSON number at b[i]. isInt reports whether it is an
// integer that fits an int64; end is the index after the number, or -1 when
// b[i] does not start a valid number.
func scanInt(b []byte, i int) (n int64, end int, isInt bool) {
	end = scanNumber(b, i)
	if end < 0 {
		return 0, -1, false
	}
	neg := b[i] == '-'
	if neg {
		i++
	}
	var u uint64
	for ; i < end; i++ {
		c := b[i]
		if c < '0' || c > '9' {
			return 0, end, false // fraction or exponent
		}
		d := uint64(c - '0')
		if u > (1<<63-1-d)/10 {
			return 0, end, false
		}
		u = u*10 + d
	}
	if neg {
		return -int64(u), end, true
	}
	return int64(u), end, true
}

// maxDepth bounds the nesting skipValue accepts.
const maxDepth = 64

// skipValue returns the index after the JSON value starting at b[i], or -1
// when it is not valid JSON.
func skipValue(b []byte, i int) int { return skipValueDepth(b, i, 0) }

func skipValueDepth(b []byte, i, depth int) int {
	if i >= len(b) || depth > maxDepth {
		return -1
	}
	switch c := b[i]; {
	case c == '"':
		return scanString(b, i)
	case c == '{':
		end, ok := walkObject(b, i, func(_, b []byte, v int) int { return skipValueDepth(b, v, depth+1) })
		if !ok {
			return -1
		}
		return end
	case c == '[':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1
		}
		for {
			if i = skipValueDepth(b, skipSpace(b, i), depth+1); i < 0 {
				return -1
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return -1
			}
			switch b[i] {
			case ',':
				i++
			case ']':
				return i + 1
			default:
				return -1
			}
		}
	case c == '-' || c >= '0' && c <= '9':
		return scanNumber(b, i)
	}
	for _, lit := range [...]string{"true", "false", "null"} {
		if len(b)-i >= len(lit) && string(b[i:i+len(lit)]) == lit {
			return i + len(lit)
		}
	}
	return -1
}
