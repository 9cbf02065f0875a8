package bus

import (
	"encoding/json"
	"errors"
	"strings"
)

// Presence keys in Redis. For tether channel C, key prefix P and owner O
// (a random id a node writes its members under, renewed whenever the node
// lost its registration):
//
//	P{C}:p:n     hash O → the owner's members in C (clients = sum of the
//	             values: O(nodes), not O(members))
//	P{C}:p:u     hash user → the user's members in C, all owners
//	             (users = HLEN)
//	P{C}:p:m:O   hash conn → user, the owner's members in C
//	Ppresence:owners     hash O → the owner's deadline (unix ms, Redis'
//	                     clock): it refreshes it every PresenceTTL/3
//	Ppresence:owner:O    set of the channels O has members in
//
// The keys of one channel share its hash tag, so in a Redis Cluster they
// live in the slot of C (with its history) and one script updates them
// together. An owner whose deadline passed is removed by any node's
// janitor: each of its channels is cleaned by presenceCleanScript, then its
// set and registration are deleted. Cleaning is idempotent, so janitors of
// several nodes may race. An owner never comes back: a node that finds its
// registration expired or gone writes its members again under a new owner.

// presenceKeys returns the n, u and m keys of channel for owner.
func presenceKeys(prefix, channel, owner string) []string {
	base := pubsubName(prefix, channel) + ":p:"
	return []string{base + "n", base + "u", base + "m:" + owner}
}

// presenceApplyScript applies one owner's batch to a channel. KEYS: n, u,
// m. ARGV: owner, then triples op ("j" or "l"), conn, user. A join of a
// member already there and a leave of one not there change nothing, so a
// batch applied twice leaves the same state. Returns {clients, users}.
const presenceApplyScript = `
local n, u, m = KEYS[1], KEYS[2], KEYS[3]
local d = 0
for i = 2, #ARGV, 3 do
  local conn, user = ARGV[i+1], ARGV[i+2]
  if ARGV[i] == 'j' then
    if redis.call('HSETNX', m, conn, user) == 1 then
      redis.call('HINCRBY', u, user, 1)
      d = d + 1
    end
  else
    local was = redis.call('HGET', m, conn)
    if was then
      redis.call('HDEL', m, conn)
      if redis.call('HINCRBY', u, was, -1) <= 0 then redis.call('HDEL', u, was) end
      d = d - 1
    end
  end
end
if d ~= 0 and redis.call('HINCRBY', n, ARGV[1], d) <= 0 then
  redis.call('HDEL', n, ARGV[1])
end
local clients = 0
for _, v in ipairs(redis.call('HVALS', n)) do clients = clients + tonumber(v) end
return {clients, redis.call('HLEN', u)}
`

// presenceCleanScript removes an owner's members from a channel. KEYS: n,
// u, m. ARGV: owner. Returns the members removed.
const presenceCleanScript = `
local all = redis.call('HGETALL', KEYS[3])
for i = 2, #all, 2 do
  if redis.call('HINCRBY', KEYS[2], all[i], -1) <= 0 then redis.call('HDEL', KEYS[2], all[i]) end
end
redis.call('DEL', KEYS[3])
redis.call('HDEL', KEYS[1], ARGV[1])
return #all / 2
`

// presenceReadScript reads a channel's presence. KEYS: n, u. ARGV: the
// most members to list, and the m key without the owner. Returns {clients,
// users, conn, user, conn, user, …}: the member list costs O(ARGV[1]), the
// counts O(owners).
const presenceReadScript = `
local owners = redis.call('HGETALL', KEYS[1])
local clients = 0
for i = 2, #owners, 2 do clients = clients + tonumber(owners[i]) end
local out = {clients, redis.call('HLEN', KEYS[2])}
local left = tonumber(ARGV[1])
for i = 1, #owners, 2 do
  if left <= 0 then break end
  local key = ARGV[2] .. owners[i]
  local kv
  if redis.call('HLEN', key) <= left then
    kv = redis.call('HGETALL', key)
  else
    kv = redis.call('HRANDFIELD', key, left, 'WITHVALUES')
  end
  for j = 1, #kv do out[#out+1] = kv[j] end
  left = left - #kv / 2
end
return out
`

// presenceBeatScript refreshes an owner's registration. KEYS: the owners
// hash. ARGV: owner, TTL in ms, "1" if the owner registered before.
// Returns 1, or 0 when the owner had registered but its deadline passed or
// its registration is gone (its members may have been cleaned: the node
// must write them again under a new owner).
const presenceBeatScript = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local old = redis.call('HGET', KEYS[1], ARGV[1])
if ARGV[3] == '1' and (not old or tonumber(old) < now) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], now + tonumber(ARGV[2]))
return 1
`

// presenceExpiredScript lists the owners whose deadline passed. KEYS: the
// owners hash.
const presenceExpiredScript = `
local t = redis.call('TIME')
local now = t[1] * 1000 + math.floor(t[2] / 1000)
local all = redis.call('HGETALL', KEYS[1])
local out = {}
for i = 1, #all, 2 do
  if tonumber(all[i+1]) < now then out[#out+1] = all[i] end
end
return out
`

// Payload of an announcement on a channel's pub/sub channel (beside its
// messages, whose payloads start with an epoch, never with '!'):
//
//	!p{"c":<clients>,"e":[<PresenceEvent>…]}
const presencePayloadPrefix = "!p"

type presencePayload struct {
	Clients int             `json:"c"`
	Events  []PresenceEvent `json:"e"`
}

func encodePresencePayload(clients int, events []PresenceEvent) string {
	b, _ := json.Marshal(presencePayload{Clients: clients, Events: events})
	return presencePayloadPrefix + string(b)
}

func decodePresencePayload(p string) (presencePayload, error) {
	var pp presencePayload
	if !strings.HasPrefix(p, presencePayloadPrefix) {
		return pp, errors.New("not a presence payload")
	}
	err := json.Unmarshal([]byte(p[len(presencePayloadPrefix):]), &pp)
	return pp, err
}
