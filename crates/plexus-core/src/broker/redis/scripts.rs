//! The Lua scripts that make the broker's multi-key Redis operations atomic: a history
//! publish (offset, stream, epoch, fan-out in one step), a cluster counter claim, a topic's
//! subscriber count with its total, and the reaping of a lost node's counters and
//! connections.

/// Appends to history and publishes, atomically. The message is stored once, as its frame;
/// the stream is capped by count (MAXLEN) and every key expires (the rule's TTL, else the
/// history idle time) after the last publish.
/// KEYS: offset, stream, epoch. ARGV: frame head, frame tail, kind, maxlen, ttl ms, channel,
/// header (node id and exclude), new epoch, now ms, the header's sender fields (see
/// `sender_header`; empty or starting with a space), the publish command (`PUBLISH`, or
/// `SPUBLISH` in a Redis Cluster).
pub(super) const PUBLISH_HISTORY: &str = r#"
local offset = redis.call('INCR', KEYS[1])
local epoch = redis.call('GET', KEYS[3])
if not epoch then
  epoch = ARGV[8]
  redis.call('SET', KEYS[3], epoch)
end
local frame = ARGV[1]
if ARGV[3] == 't' then frame = ARGV[1] .. offset .. ARGV[2] end
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0', 'f', frame, 'k', ARGV[3], 't', ARGV[9])
local ttl = tonumber(ARGV[5])
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call(ARGV[11], ARGV[6], 'P1 ' .. ARGV[7] .. ' ' .. offset .. ' ' .. ARGV[3] .. ARGV[10] .. '\n' .. frame)
return {offset, epoch}
"#;

/// Takes one unit of a counter if the cluster total stays within the limit (0: no limit).
/// KEYS: counter hash. ARGV: node, limit. (The node's counter set is kept by the registry
/// writer, since in a Redis Cluster it lives in another slot.)
pub(super) const CLAIM: &str = r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
return 1
"#;

/// Gives back one unit of a counter this node took ([`CLAIM`]); a share that reaches 0 leaves
/// the hash in the same step (a claim cannot slip in between).
/// KEYS: counter hash. ARGV: node.
pub(super) const RELEASE: &str = r#"
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return n
"#;

/// Counts a node's subscriber of a topic in or out and returns the topic's total {before,
/// after}, in one step (exactly one caller sees 0 -> more and more -> 0). A count out when
/// the node's share is already 0 (lost with Redis, or reaped) changes nothing. KEYS: counter.
/// ARGV: node id, +1 or -1. (The node's counter set is kept by the registry writer.)
pub(super) const COUNT_SUBSCRIBER: &str = r#"
local before = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do before = before + tonumber(v) end
local delta = tonumber(ARGV[2])
local mine = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
if delta < 0 and mine <= 0 then return {before, before} end
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
if n <= 0 then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return {before, before - mine + math.max(n, 0)}
"#;

/// Removes a lost node's share of a counter; returns {its share, the total after}.
/// KEYS: counter. ARGV: the lost node's id.
pub(super) const REAP_COUNTER: &str = r#"
local had = tonumber(redis.call('HGET', KEYS[1], ARGV[1]) or '0')
redis.call('HDEL', KEYS[1], ARGV[1])
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
return {had, total}
"#;

/// Rewrites this node's connection registry whole: exactly its live connections, in one step.
/// KEYS: the registry. ARGV: field, value, field, value, ...
pub(super) const REPLACE_CONNECTIONS: &str = r#"
redis.call('DEL', KEYS[1])
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
return #ARGV / 2
"#;

/// Takes a lost node's connection registry: its entries, and the key is gone, in one step
/// (whoever takes them reports their disconnects; nobody else can). KEYS: the registry.
pub(super) const TAKE_CONNECTIONS: &str = r#"
local entries = redis.call('HVALS', KEYS[1])
redis.call('DEL', KEYS[1])
return entries
"#;
