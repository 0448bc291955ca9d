//! The Lua scripts that make the broker's multi-key Redis operations atomic: a history
//! publish (offset, stream, epoch, fan-out in one step) and read (epoch checked against the
//! Redis instance's replication id), a cluster counter claim, a topic's
//! subscriber count with its total, and the reaping of a lost node's counters and
//! connections.

/// The Lua lines that read the `master_replid` of the Redis instance running the script: it
/// changes when a replica is promoted and when Redis restarts (without its data, or from an
/// RDB snapshot that lacks the last writes), so a topic whose stored replid differs was written
/// by another instance, which may have acknowledged writes this one never got (replication is
/// asynchronous). Where `INFO` is refused (an ACL without it, a renamed command) the replid is
/// empty and the check is off, rather than every history publish failing.
macro_rules! replid_line {
    () => {
        "local ok, info = pcall(redis.call, 'INFO', 'replication')\n\
         local rid = ok and string.match(info, 'master_replid:(%x+)') or ''\n"
    };
}

/// The Lua lines shared by the history scripts (KEYS: offset, stream, epoch, replid): `epoch`
/// is the topic's, or `false` when there is none or another instance wrote it (then the offset
/// counter and stream are dropped and `epoch` becomes the new one, `ARGV[$new]`), and `stored`
/// the replid stored with it.
macro_rules! epoch_lines {
    ($new:literal) => {
        concat!(
            "local epoch = redis.call('GET', KEYS[3])\n\
             local stored = redis.call('GET', KEYS[4])\n\
             if epoch and stored and stored ~= rid then epoch = false end\n\
             if not epoch then\n  epoch = ARGV[",
            $new,
            "]\n  redis.call('DEL', KEYS[1], KEYS[2])\n"
        )
    };
}

/// Appends to history and publishes, atomically. The message is stored once, as its frame;
/// the stream is capped by count (MAXLEN) and every key expires (the rule's TTL, else the
/// history idle time) after the last publish. A topic without an epoch, or whose history was
/// written by another Redis instance (stored replid differs: a promoted replica may lack the
/// last acknowledged writes, and would hand their offsets out again), starts a new epoch with
/// a fresh stream and offset counter. The epoch rides in the header (`e=`).
/// An entry keeps, besides the frame (`f`), its kind (`k`) and time (`t`), the header's origin
/// and sender fields (`h`, only when there is an excluded connection or a sender field), so that
/// a replay delivers it as the live publication was.
/// KEYS: offset, stream, epoch, replid. ARGV: frame head, frame tail, kind, maxlen, ttl ms,
/// channel, header (node id and exclude), new epoch, now ms, the header's sender fields (see
/// `sender_header`; empty or starting with a space), the `h` field (empty: none), the publish
/// command (`PUBLISH`, or `SPUBLISH` in a Redis Cluster).
pub(super) const PUBLISH_HISTORY: &str = concat!(
    replid_line!(),
    epoch_lines!(8),
    r#"
  redis.call('SET', KEYS[3], epoch)
end
if stored ~= rid then redis.call('SET', KEYS[4], rid) end
local offset = redis.call('INCR', KEYS[1])
local frame = ARGV[1]
if ARGV[3] == 't' then frame = ARGV[1] .. offset .. ARGV[2] end
local entry = {'XADD', KEYS[2], 'MAXLEN', ARGV[4], offset .. '-0',
  'f', frame, 'k', ARGV[3], 't', ARGV[9]}
if ARGV[11] ~= '' then
  entry[#entry + 1] = 'h'
  entry[#entry + 1] = ARGV[11]
end
redis.call(unpack(entry))
local ttl = tonumber(ARGV[5])
for i = 1, 4 do redis.call('PEXPIRE', KEYS[i], ttl) end
local header = 'P1 ' .. ARGV[7] .. ' ' .. offset .. ' ' .. ARGV[3] .. ARGV[10] .. ' e=' .. epoch
redis.call(ARGV[12], ARGV[6], header .. '\n' .. frame)
return {offset, epoch}
"#
);

/// Reads a topic's history: {epoch, top, entries after `after` up to top}, atomically. A
/// topic without an epoch gets one (only the epoch and replid keys, expiring after the idle
/// time: nothing a read creates lives forever); one written by another Redis instance (see
/// [`PUBLISH_HISTORY`]) starts a new epoch, its stream and counter dropped, so that a reader
/// never takes a promoted replica's shorter history for the one it recovers from. A stored
/// replid missing (history written before replids were stored) is adopted.
/// KEYS: offset, stream, epoch, replid. ARGV: new epoch, idle ms, after ('' for no entries),
/// expected epoch ('' for any: when the epoch is another one, entries are read from the
/// start).
pub(super) const READ_HISTORY: &str = concat!(
    replid_line!(),
    epoch_lines!(1),
    r#"
  redis.call('SET', KEYS[3], epoch, 'PX', ARGV[2])
  redis.call('SET', KEYS[4], rid, 'PX', ARGV[2])
elseif not stored then
  local ttl = redis.call('PTTL', KEYS[3])
  if ttl <= 0 then ttl = ARGV[2] end
  redis.call('SET', KEYS[4], rid, 'PX', ttl)
end
local top = tonumber(redis.call('GET', KEYS[1]) or '0')
if ARGV[3] == '' then return {epoch, top, {}} end
local after = tonumber(ARGV[3])
if ARGV[4] ~= '' and ARGV[4] ~= epoch then after = 0 end
if after >= top then return {epoch, top, {}} end
return {epoch, top, redis.call('XRANGE', KEYS[2], (after + 1) .. '-0', top .. '-0')}
"#
);

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

/// A plain broadcast: publishes (`PUBLISH`, or `SPUBLISH` in a cluster) and counts the nodes
/// that registered a subscription of the topic, in one step; returns {receivers, registered}
/// (see `confirm`). KEYS: the topic's subscription registry. ARGV: command, channel, message.
pub(super) const PUBLISH_PLAIN: &str = r#"
local n = redis.call(ARGV[1], ARGV[2], ARGV[3])
return {n, redis.call('HLEN', KEYS[1])}
"#;
