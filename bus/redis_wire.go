package bus

import (
	"strconv"
	"unsafe"
)

// Redis key layout. For tether channel C and key prefix P ("tether:"):
//
//	P{C}     the pub/sub (or sharded pub/sub) channel
//	P{C}:m   hash {e: epoch, o: offset of the last message, b: data bytes
//	         published in this epoch, ct/cb: time and b of the newest
//	         checkpoint}, TTL HistoryTTL
//	P{C}:h   list of the message payloads kept (Config), newest first,
//	         TTL HistoryTTL
//	P{C}:t   list of checkpoints "<offset> <ms> <b before it>", newest
//	         first, one per sixteenth of HistoryWindow or of
//	         HistoryMaxBytes, by which the publish script trims :h by
//	         time and bytes; TTL HistoryTTL
//
//	P{C}:i:K the first result "<offset> <epoch>" of idempotency key K on
//	         C, TTL Config.IdempotencyWindow
//	Pidem:K  the channel idempotency key K is bound to, same TTL (its own
//	         slot: checked before the publish, idempotency.go)
//
// The braces make C the hash tag, so in a Redis Cluster all five live in
// the slot of C and one script can touch them together. A message's offset
// is not stored in the list: the entry at index i has offset o-i, which
// holds because offsets grow by one and the list is deleted whenever a new
// epoch starts.

// pubsubName returns the pub/sub channel of channel: prefix{channel}.
func pubsubName(prefix, channel string) string {
	return prefix + "{" + channel + "}"
}

// channelKeys returns the meta, history and checkpoint keys of the channel
// whose pub/sub channel is base.
func channelKeys(base string) []string {
	return []string{base + ":m", base + ":h", base + ":t"}
}

// idemRecordKey returns the key of idempotency key's first result on the
// channel whose pub/sub channel is base: in the channel's slot.
func idemRecordKey(base, key string) string {
	return base + ":i:" + key
}

// idemClaimKey returns the key that binds idempotency key to a channel.
func idemClaimKey(prefix, key string) string {
	return prefix + "idem:" + key
}

// channelOf returns the tether channel of pub/sub channel name, or false
// when name is not one of prefix's.
func channelOf(prefix, name string) (string, bool) {
	if len(name) < len(prefix)+3 || name[:len(prefix)] != prefix ||
		name[len(prefix)] != '{' || name[len(name)-1] != '}' {
		return "", false
	}
	return name[len(prefix)+1 : len(name)-1], true
}

// Payload format of a pub/sub message, built by publishScript:
//
//	<epoch> SP <offset> SP <data>
//
// epoch is 1–64 bytes without spaces, offset is the decimal offset (1 or
// more, no leading zero, at most 20 digits), and data is the message as
// published (possibly empty). The channel is not repeated: it is the
// pub/sub channel the message arrives on.

// maxEpochLen bounds an epoch in a payload.
const maxEpochLen = 64

// appendPayload appends the payload of one message to dst. The publish
// script builds the same bytes in Lua; this is used by tests.
func appendPayload(dst []byte, epoch string, offset uint64, data []byte) []byte {
	dst = append(dst, epoch...)
	dst = append(dst, ' ')
	dst = strconv.AppendUint(dst, offset, 10)
	dst = append(dst, ' ')
	return append(dst, data...)
}

// decodePayload parses a payload. epoch and data share p's memory.
func decodePayload(p string) (epoch string, offset uint64, data string, ok bool) {
	i := 0
	for i < len(p) && p[i] != ' ' {
		i++
	}
	if i == 0 || i > maxEpochLen || i == len(p) {
		return "", 0, "", false
	}
	epoch = p[:i]
	i++
	start := i
	for i < len(p) && p[i] != ' ' {
		c := p[i]
		if c < '0' || c > '9' {
			return "", 0, "", false
		}
		d := uint64(c - '0')
		if offset > (1<<64-1-d)/10 {
			return "", 0, "", false
		}
		offset = offset*10 + d
		i++
	}
	n := i - start
	if n == 0 || i == len(p) || p[start] == '0' {
		return "", 0, "", false
	}
	return epoch, offset, p[i+1:], true
}

// stringBytes returns the bytes of s without copying. They must not be
// modified; Message.Data is read-only by contract.
func stringBytes(s string) []byte {
	if s == "" {
		return nil
	}
	return unsafe.Slice(unsafe.StringData(s), len(s))
}

// hashSlot returns the Redis Cluster slot of key, honouring hash tags.
func hashSlot(key string) int {
	for i := 0; i < len(key); i++ {
		if key[i] == '{' {
			for j := i + 1; j < len(key); j++ {
				if key[j] == '}' {
					if j > i+1 {
						key = key[i+1 : j]
					}
					break
				}
			}
			break
		}
	}
	return int(crc16(key) & 16383)
}

// crc16 is CRC-16/XMODEM, the checksum Redis Cluster hashes keys with.
func crc16(s string) uint16 {
	var crc uint16
	for i := 0; i < len(s); i++ {
		crc ^= uint16(s[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}

// publishScript assigns the channel's next offset, appends the message to
// the history, trims it, refreshes the keys' TTL and publishes, atomically.
// When the meta key is missing (first publish, expiry, or Redis lost its
// data) it starts a new epoch (ARGV[4], random per batch) at offset 1 and
// drops any stale history. Returns {offset, epoch}.
//
// Trimming keeps the last ARGV[2] messages, and with a window (ARGV[7] ms
// > 0) also every message younger than the window while the messages kept
// hold at most ARGV[8] data bytes. Message times are not stored: a
// checkpoint (offset, Redis TIME, bytes published before it) is pushed to
// the checkpoint list at most every sixteenth of the window or of the cap,
// and only then is the history trimmed, at the newest checkpoint at or
// before now - window (keeping everything younger), or at the oldest from
// which the data fits the cap, whichever is newer. Checkpoints older than
// that are never needed again (time and bytes only grow).
//
// KEYS: meta, hist, checkpoints. ARGV: data, history size, TTL in ms,
// candidate epoch, pub/sub channel, publish command (PUBLISH or SPUBLISH),
// window in ms (0: by count only), byte cap.
const publishScript = publishBody + "return {o, e}\n"

// idempotentPublishScript is publishScript for a publication with an
// idempotency key: when the key's record (KEYS[4], in the channel's slot)
// exists it returns {offset, epoch, 1} from it and publishes nothing;
// otherwise it publishes and records "<offset> <epoch>" there for the
// window (ARGV[9] ms). Returns {offset, epoch} then.
const idempotentPublishScript = `
local r = redis.call('GET', KEYS[4])
if r then
  local sp = string.find(r, ' ', 1, true)
  return {tonumber(string.sub(r, 1, sp - 1)), string.sub(r, sp + 1), 1}
end
` + publishBody + `
redis.call('SET', KEYS[4], string.format('%d', o) .. ' ' .. e, 'PX', ARGV[9])
return {o, e}
`

// claimScript binds an idempotency key (KEYS[1]) to a channel (ARGV[1])
// for the window (ARGV[2] ms) unless it is bound already, and returns the
// channel it is bound to. It runs before the publish, in the key's own
// slot (a Redis Cluster cannot check it atomically with the channel's
// keys), so that a key reused for another channel is refused before
// anything is published; idempotentPublishScript then decides, atomically
// in the channel's slot, whether to publish.
const claimScript = `
local v = redis.call('GET', KEYS[1])
if v then
  return v
end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return ARGV[1]
`

// publishBody is the body of publishScript, without its return.
const publishBody = `
local m = redis.call('HMGET', KEYS[1], 'e', 'ct', 'cb')
local e = m[1]
local o
if e then
  o = redis.call('HINCRBY', KEYS[1], 'o', 1)
else
  e = ARGV[4]
  o = 1
  m = {}
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 1)
end
local ttl = tonumber(ARGV[3])
redis.call('PEXPIRE', KEYS[1], ttl)
local n = tonumber(ARGV[2])
if n > 0 then
  redis.call('LPUSH', KEYS[2], ARGV[1])
  local win = tonumber(ARGV[7])
  if win <= 0 then
    redis.call('LTRIM', KEYS[2], 0, n - 1)
  else
    local cap = tonumber(ARGV[8])
    local b = redis.call('HINCRBY', KEYS[1], 'b', #ARGV[1])
    local before = b - #ARGV[1]
    local t = redis.call('TIME')
    local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
    if not m[2] or now - tonumber(m[2]) >= win / 16 or b - tonumber(m[3]) >= cap / 16 then
      redis.call('HSET', KEYS[1], 'ct', now, 'cb', before)
      redis.call('LPUSH', KEYS[3], string.format('%d %d %d', o, now, before))
      local cps = redis.call('LRANGE', KEYS[3], 0, -1)
      local from, last = nil, 1
      for i = 1, #cps do
        local _, _, coff, cms, cb = string.find(cps[i], '^(%d+) (%d+) (%d+)$')
        if not coff or b - tonumber(cb) > cap then
          break
        end
        from, last = tonumber(coff), i
        if tonumber(cms) <= now - win then
          break
        end
      end
      local keep = n
      if from and o - from + 1 > keep then
        keep = o - from + 1
      end
      redis.call('LTRIM', KEYS[2], 0, keep - 1)
      redis.call('LTRIM', KEYS[3], 0, last - 1)
      redis.call('PEXPIRE', KEYS[3], ttl)
    end
  end
  redis.call('PEXPIRE', KEYS[2], ttl)
end
redis.call(ARGV[6], ARGV[5], e .. ' ' .. string.format('%d', o) .. ' ' .. ARGV[1])
`

// historyScript reads a channel's position and, when since is given and
// still covered, the messages after it. When the meta key is missing it
// creates the channel at offset 0 in a new epoch (ARGV[3]), so that the
// position it returns is the one the next message continues. Returns
// {top, epoch, recovered (0/1), {data newest first…}}. With since "*" it
// returns every message held, as {top, epoch, 1, {data newest first…}}.
//
// KEYS: meta, hist, checkpoints. ARGV: since offset ("" for none, "*" for all), since
// epoch, candidate epoch, TTL in ms.
const historyScript = `
local m = redis.call('HMGET', KEYS[1], 'e', 'o')
local e, top = m[1], tonumber(m[2])
if not e then
  e = ARGV[3]
  top = 0
  redis.call('DEL', KEYS[2], KEYS[3])
  redis.call('HSET', KEYS[1], 'e', e, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[4]))
end
if ARGV[1] == '*' then
  return {top, e, 1, redis.call('LRANGE', KEYS[2], 0, -1)}
end
if ARGV[1] == '' or ARGV[2] ~= e then
  return {top, e, 0}
end
local since = tonumber(ARGV[1])
if since > top then
  return {top, e, 0}
end
local n = top - since
if n == 0 then
  return {top, e, 1}
end
if redis.call('LLEN', KEYS[2]) < n then
  return {top, e, 0}
end
return {top, e, 1, redis.call('LRANGE', KEYS[2], 0, n - 1)}
`
