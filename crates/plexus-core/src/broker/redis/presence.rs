//! Presence in Redis: a hash per topic (`<prefix>:pres:{<topic>}`), one field per connection
//! (`<node>:<conn>` → `{"k": key, "m": meta, "s": sub, "c": "<node>-<conn>"}`), and per node
//! the set of topics where it has presence (`npres:{<node>}`), so that the node that reaps a
//! dead one removes its entries and reports their leaves. A local copy is kept and announced
//! again when Redis comes back.

use super::registry::RegistryOp;
use super::{err, RedisBroker};
use crate::broker::BrokerError;
use crate::presence::PresenceState;
use crate::ConnId;
use redis::AsyncCommands;
use serde_json::Value;
use std::collections::HashMap;
use std::sync::Arc;

impl RedisBroker {
    pub(super) async fn set_presence(
        &self,
        topic: &str,
        conn: ConnId,
        key: &str,
        meta: &Value,
        sub: Option<&str>,
    ) -> Result<(), BrokerError> {
        // The reaper of this node reports `presence_leave`s from `s`/`c`; a Supabase client's
        // own `track` (`sb`) is broadcast as a leave but never reported.
        let value = match sub {
            Some(sub) => serde_json::json!({
                "k": key, "m": meta, "s": sub, "c": format!("{}-{conn}", self.node_id)
            }),
            None => serde_json::json!({"k": key, "m": meta, "sb": true}),
        }
        .to_string();
        let _gate = self.gate.read().await;
        self.presences
            .lock()
            .insert((topic.to_owned(), conn), value.clone());
        // Re-announced from the local copy when Redis is back.
        self.check_up()?;
        let mut c = self.conn.clone();
        let written = c
            .hset::<_, _, _, ()>(
                self.topic_key("pres", topic),
                format!("{}:{conn}", self.node_id),
                value,
            )
            .await
            .map_err(|e| {
                self.failed("presence", &e);
                err(e)
            });
        // The node's presence set, in order with the removals (see `RegistryOp`).
        self.queue_registry_op(RegistryOp::PresenceIndex(topic.to_owned()));
        written
    }

    pub(super) async fn remove_presence(
        &self,
        topic: &str,
        conn: ConnId,
    ) -> Result<(), BrokerError> {
        let gate = self.gate.read().await;
        self.presences.lock().remove(&(topic.to_owned(), conn));
        self.check_up()?;
        let mut c = self.conn.clone();
        let (key, field) = (
            self.topic_key("pres", topic),
            format!("{}:{conn}", self.node_id),
        );
        let mut removed = c.hdel::<_, _, ()>(&key, &field).await;
        drop(gate);
        // A removal that timed out (Redis slow, not down) is tried again: a field left behind
        // would be a ghost in every later joiner's state, whose leave was already sent. While
        // Redis is down, the re-announce after the outage removes it (`reannounce`).
        for pause_ms in [100, 1_000] {
            let Err(e) = &removed else { break };
            self.failed("presence", e);
            tokio::time::sleep(std::time::Duration::from_millis(pause_ms)).await;
            let _gate = self.gate.read().await;
            self.check_up()?;
            removed = c.hdel::<_, _, ()>(&key, &field).await;
        }
        match removed {
            // The node's presence set, in order with the writes (see `RegistryOp`); not when
            // the field may still be there: the re-announce and the reaper find it by that set.
            Ok(()) => {
                self.queue_registry_op(RegistryOp::PresenceIndex(topic.to_owned()));
                Ok(())
            }
            Err(e) => {
                self.failed("presence", &e);
                Err(err(e))
            }
        }
    }

    /// The topic's presence in the whole cluster, from a read of its hash that starts after
    /// this call, shared with this node's other joiners of the topic ([`super::state_reads`]).
    pub(super) async fn read_presence(
        &self,
        topic: &str,
    ) -> Result<Option<Arc<PresenceState>>, BrokerError> {
        // A read that timed out (Redis slow, not down) is made again, once: the answer
        // without it, this node's own members only, would be wrong for every joiner of the
        // round until diffs repair it, which they never do for members already there.
        let mut attempts = 0;
        loop {
            self.check_up()?;
            let mut c = self.conn.clone();
            let key = self.topic_key("pres", topic);
            let read = self.state_reads.read(topic, move || async move {
                let entries: HashMap<String, String> =
                    c.hgetall(key).await.map_err(|e| e.to_string())?;
                Ok(PresenceState::new(state_of(entries.values())))
            });
            match read.await {
                Ok(state) => return Ok(Some(state)),
                Err(e) => {
                    self.failed("presence", &e);
                    attempts += 1;
                    if attempts > 1 {
                        return Err(err(e));
                    }
                }
            }
        }
    }
}

/// `{key: {"metas": [meta, …]}}` from the hash's values (entries that do not parse are left
/// out).
fn state_of<'a>(values: impl Iterator<Item = &'a String>) -> Value {
    let mut state = serde_json::Map::new();
    for value in values {
        let Ok(v) = serde_json::from_str::<Value>(value) else {
            continue;
        };
        let (Some(key), Some(meta)) = (v["k"].as_str(), v.get("m")) else {
            continue;
        };
        let entry = state
            .entry(key.to_owned())
            .or_insert_with(|| serde_json::json!({"metas": []}));
        if let Some(list) = entry["metas"].as_array_mut() {
            list.push(meta.clone());
        }
    }
    Value::Object(state)
}
