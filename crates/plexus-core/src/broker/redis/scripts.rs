//! The Lua scripts that make the broker's multi-key Redis operations atomic: a history
//! publish (offset, stream, epoch, fan-out in one step) and a cluster counter claim.

/// Appends to history and publishes, atomically. The message is stored once, as its frame;
/// the stream is capped by count (MAXLEN) and every key expires (the rule's TTL, else the
/// history idle time) after the last publish.
/// KEYS: offset, stream, epoch. ARGV: frame head, frame tail, kind, maxlen, ttl ms, channel,
/// header (node id and exclude), new epoch, now ms.
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
redis.call('PUBLISH', ARGV[6], 'P1 ' .. ARGV[7] .. ' ' .. offset .. ' ' .. ARGV[3] .. '\n' .. frame)
return {offset, epoch}
"#;

/// Takes one unit of a counter if the cluster total stays within the limit (0: no limit).
/// KEYS: counter hash, this node's counter index. ARGV: node, limit.
pub(super) const CLAIM: &str = r#"
local total = 0
for _, v in ipairs(redis.call('HVALS', KEYS[1])) do total = total + tonumber(v) end
local limit = tonumber(ARGV[2])
if limit > 0 and total >= limit then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
redis.call('SADD', KEYS[2], KEYS[1])
return 1
"#;
