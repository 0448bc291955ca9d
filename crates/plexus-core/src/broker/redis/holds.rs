//! Webhooks held for the reconnect grace, cluster-wide ([`HoldKey`],
//! [`crate::webhooks::grace`]): one hash per key, `<prefix>:hold:{<tag>}<kind>`, whose fields
//! are the held events' ids and values their deadlines and values. A user's disconnects are tagged with the
//! user (`{<sub>}d`), a topic's held leaves and vacancies with the topic (`{<topic>}p:<member>`,
//! `{<topic>}v`), so that each key lives on one shard of a Redis Cluster. Claiming
//! ([`HOLD_TAKE`]) and releasing (`HDEL`) are single atomic steps on the same field: exactly
//! one of them wins. The hash expires a while after its last hold ([`HOLD_KEEP`] beyond the
//! hold's own time), so that the holds of a node that died do not stay; a hold is claimable
//! only until the end of its grace (by Redis's clock), and a claim deletes those of a dead
//! holder whose grace ended more than [`HOLD_KEEP`] ago. A claimed
//! `disconnect`'s connection leaves its node's registry at once (the reaper must not report
//! it if that node dies within the grace).

use super::keys::tag;
use super::{err, RedisBroker};
use crate::broker::{BrokerError, HoldKey};
use redis::AsyncCommands;
use std::time::Duration;

/// How much longer than its grace a hold's hash is kept: its holder releases it at the end of
/// the grace; past that, only a holder that died (or stalled that long) leaves it behind.
pub(super) const HOLD_KEEP: Duration = Duration::from_secs(60);

/// Records a hold, claimable for `ARGV[4]` ms from now by Redis's clock (its value is stored
/// as `<deadline ms> <value>`), and keeps its hash at least `ARGV[3]` ms. KEYS: hash. ARGV:
/// id, value, keep ms, grace ms.
const HOLD_PUT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], (now + tonumber(ARGV[4])) .. ' ' .. ARGV[2])
if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"#;

/// Takes the oldest hold of a hash whose grace is not over (fields keep their insertion order
/// in a small hash; any field is a correct answer): its value, or false. A hold past its grace
/// is not claimable: its holder sends it (or, if the holder died, the reaper reported its
/// `disconnect`). One past its grace by more than `ARGV[1]` ms (a holder that died) is
/// deleted, so that a hash kept alive by newer holds does not keep it. KEYS: hash. ARGV: keep
/// ms.
const HOLD_TAKE: &str = r#"
local all = redis.call('HGETALL', KEYS[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local keep = tonumber(ARGV[1])
for i = 1, #all, 2 do
  local v = all[i + 1]
  local sp = string.find(v, ' ', 1, true)
  local deadline = sp and tonumber(string.sub(v, 1, sp - 1))
  if deadline == nil or deadline + keep < now then
    redis.call('HDEL', KEYS[1], all[i])
  elseif deadline > now then
    redis.call('HDEL', KEYS[1], all[i])
    return string.sub(v, sp + 1)
  end
end
return false
"#;

impl RedisBroker {
    fn hold_key(&self, key: &HoldKey) -> String {
        let p = &self.cfg.prefix;
        match key {
            HoldKey::Disconnect(sub) => format!("{p}:hold:{{{}}}d", tag(sub)),
            HoldKey::PresenceLeave { topic, member } => {
                format!("{p}:hold:{{{}}}p:{member}", tag(topic))
            }
            HoldKey::Vacated(topic) => format!("{p}:hold:{{{}}}v", tag(topic)),
        }
    }

    pub(super) async fn hold_put_now(
        &self,
        key: &HoldKey,
        id: &str,
        value: &str,
        ttl: Duration,
    ) -> Result<(), BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let keep = (ttl + HOLD_KEEP).as_millis() as u64;
        redis::Script::new(HOLD_PUT)
            .key(self.hold_key(key))
            .arg(id)
            .arg(value)
            .arg(keep)
            .arg(ttl.as_millis() as u64)
            .invoke_async::<i64>(&mut c)
            .await
            .map(|_| ())
            .map_err(|e| {
                self.failed("webhook hold", &e);
                err(e)
            })
    }

    pub(super) async fn hold_take_now(&self, key: &HoldKey) -> Result<Option<String>, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        redis::Script::new(HOLD_TAKE)
            .key(self.hold_key(key))
            .arg(HOLD_KEEP.as_millis() as u64)
            .invoke_async::<Option<String>>(&mut c)
            .await
            .map_err(|e| {
                self.failed("webhook hold claim", &e);
                err(e)
            })
    }

    pub(super) async fn hold_release_now(
        &self,
        key: &HoldKey,
        id: &str,
    ) -> Result<bool, BrokerError> {
        self.check_up()?;
        let mut c = self.conn.clone();
        let removed: i64 = c.hdel(self.hold_key(key), id).await.map_err(|e| {
            self.failed("webhook hold release", &e);
            err(e)
        })?;
        Ok(removed > 0)
    }

    /// See [`crate::broker::Broker::hold_claimed_connection`]: `HDEL` of the entry in its
    /// node's registry (a node's own connection stays: that node is alive and resolves it).
    pub(super) async fn forget_claimed_connection(&self, public_conn: &str) {
        let Some((node, conn)) = public_conn.rsplit_once('-') else {
            return;
        };
        if node == self.node_id || self.check_up().is_err() {
            return;
        }
        let mut c = self.conn.clone();
        if let Err(e) = c.hdel::<_, _, i64>(self.connections_key(node), conn).await {
            self.failed("registry update", &e);
        }
    }
}
