//! Presence: who is joined to a topic, in the shapes phoenix.js `Presence` merges.
//!
//! Each joined connection of a presence-enabled channel is one *meta* under its user key
//! (`sub`): `{"phx_ref": …, "online_at": <ms>, "name": …, "info": …, …custom}`. The state of a
//! topic is `{key: {"metas": [meta, …]}}` (sent as `presence_state` to a joiner) and every
//! change is a `presence_diff` `{"joins": {…}, "leaves": {…}}` broadcast to the topic.
//!
//! Keys are user ids and may be anything, including JavaScript built-in names such as
//! `__proto__` or `constructor`: they are plain JSON object keys here, and phoenix.js 1.8 keeps
//! presence state in prototype-less objects.

use crate::broker::{Broker, Removal};
use crate::presence_diffs::DiffCoalescer;
use crate::protocol::Payload;
use crate::ConnId;
use parking_lot::Mutex;
use serde_json::value::RawValue;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Largest presence meta, after merging a client's updates.
pub const MAX_META_BYTES: usize = 4096;

/// Why a meta update was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpdateError {
    NotTracked,
    TooLarge,
}

/// Meta keys the server owns; a client's `presence_update` cannot set them.
pub const RESERVED_META_KEYS: &[&str] = &["phx_ref", "phx_ref_prev", "online_at", "name", "info"];

struct Entry {
    conn: ConnId,
    meta: Map<String, Value>,
    /// Tracked by the server under the user's `sub` (Phoenix presence); `false` for a
    /// Supabase client's `track` under a key of its choosing.
    owned: bool,
}

/// One topic: user key → that user's metas (one per joined connection).
type TopicPresence = HashMap<Arc<str>, Vec<Entry>>;

/// A topic's whole presence, `{key: {"metas": [meta, …]}}`, and its JSON, encoded the first
/// time a joiner needs it: a read shared by many joiners is encoded once, not once each.
#[derive(Debug)]
pub struct PresenceState {
    value: Value,
    json: OnceLock<Box<RawValue>>,
}

impl PresenceState {
    pub fn new(value: Value) -> Self {
        PresenceState {
            value,
            json: OnceLock::new(),
        }
    }

    pub fn value(&self) -> &Value {
        &self.value
    }

    /// The state as a `presence_state` payload.
    pub fn payload(&self) -> Payload {
        let json = self.json.get_or_init(|| {
            serde_json::value::to_raw_value(&self.value).unwrap_or_else(|_| {
                // A `Value` always serializes; `{}` keeps the frame well-formed regardless.
                RawValue::from_string("{}".to_owned()).unwrap_or_default()
            })
        });
        Payload::Json(json.clone())
    }
}

/// Presence of every topic on this node.
pub struct PresenceTable {
    topics: Mutex<HashMap<Box<str>, TopicPresence>>,
    next_ref: AtomicU64,
    ref_prefix: u32,
}

/// Presence of every topic: this node's [`PresenceTable`], mirrored cluster-wide by the
/// broker (whose copy answers [`Presence::state`] when it has one).
pub struct Presence {
    table: PresenceTable,
    broker: Arc<dyn Broker>,
}

impl Presence {
    pub fn new(broker: Arc<dyn Broker>) -> Self {
        Presence {
            table: PresenceTable::new(),
            broker,
        }
    }

    /// Tracks `conn` under `key`, its user's `sub` (the server's own tracking, reported in
    /// webhooks); returns its meta (with a fresh `phx_ref`).
    pub async fn track(
        &self,
        topic: &str,
        key: &Arc<str>,
        conn: ConnId,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> serde_json::Value {
        let meta = self.table.track(topic, key, conn, meta, true);
        if let Err(e) = self
            .broker
            .presence_set(topic, conn, key, &meta, Some(key))
            .await
        {
            tracing::debug!(topic, error = %e, "cluster presence not updated");
        }
        meta
    }

    /// Tracks `conn` under `key` with a new meta, replacing the one it had there (Supabase's
    /// `track` under a client-chosen key: not the user's `sub`, never reported); returns the old meta, if any, and the new one (with `phx_ref_prev`).
    pub async fn replace(
        &self,
        topic: &str,
        key: &Arc<str>,
        conn: ConnId,
        meta: serde_json::Map<String, serde_json::Value>,
    ) -> (Option<serde_json::Value>, serde_json::Value) {
        let old = self.table.untrack(topic, key, conn);
        let stored = self.table.track(topic, key, conn, meta, false);
        if let Err(e) = self
            .broker
            .presence_set(topic, conn, key, &stored, None)
            .await
        {
            tracing::debug!(topic, error = %e, "cluster presence not updated");
        }
        let mut new = stored;
        if let (Some(prev), Some(m)) = (
            old.as_ref().and_then(|o| o.get("phx_ref")).cloned(),
            new.as_object_mut(),
        ) {
            m.insert("phx_ref_prev".into(), prev);
        }
        (old, new)
    }

    pub async fn update(
        &self,
        topic: &str,
        key: &str,
        conn: ConnId,
        patch: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<(serde_json::Value, serde_json::Value), UpdateError> {
        let (old, new, owned) = self.table.update(topic, key, conn, patch)?;
        let mut stored = new.clone();
        if let Some(m) = stored.as_object_mut() {
            m.remove("phx_ref_prev");
        }
        let owner = owned.then_some(key);
        if let Err(e) = self
            .broker
            .presence_set(topic, conn, key, &stored, owner)
            .await
        {
            tracing::debug!(topic, error = %e, "cluster presence not updated");
        }
        Ok((old, new))
    }

    /// Untracks `conn`; returns its last meta. The cluster copy is removed in the background
    /// (this is also called from synchronous cleanup): publish the leave's diff only once the
    /// returned [`Removal`] is done.
    pub fn untrack(
        &self,
        topic: &str,
        key: &str,
        conn: ConnId,
    ) -> Option<(serde_json::Value, Removal)> {
        let meta = self.table.untrack(topic, key, conn)?;
        let removal = self.broker.clone().presence_remove_detached(topic, conn);
        Some((meta, removal))
    }

    /// The presence of `topic` across the cluster (this node's table if the broker has none
    /// or is unreachable).
    pub async fn state(&self, topic: &str) -> serde_json::Value {
        let shared = self.shared_state(topic, None).await;
        match Arc::try_unwrap(shared) {
            Ok(state) => state.value,
            Err(shared) => shared.value.clone(),
        }
    }

    /// [`Presence::state`] as read once for every joiner of this node that asked at the same
    /// time (a cluster broker shares its reads; with merged diffs, this node's own state is
    /// shared until the topic's next flush: [`DiffCoalescer::shared_state`]): what a joiner
    /// is sent, built and encoded once (each push copies the JSON into its frame). Only for a
    /// joiner already subscribed to `topic`.
    pub async fn shared_state(
        &self,
        topic: &str,
        diffs: Option<&DiffCoalescer>,
    ) -> Arc<PresenceState> {
        match self.broker.presence_state(topic).await {
            Ok(Some(state)) => state,
            Ok(None) => match diffs {
                Some(d) => d.shared_state(topic, || self.table.state(topic)),
                None => Arc::new(PresenceState::new(self.table.state(topic))),
            },
            Err(e) => {
                tracing::debug!(topic, error = %e, "cluster presence unavailable, answering with this node's");
                Arc::new(PresenceState::new(self.table.state(topic)))
            }
        }
    }
}

impl Default for PresenceTable {
    fn default() -> Self {
        Self::new()
    }
}

impl PresenceTable {
    pub fn new() -> Self {
        PresenceTable {
            topics: Mutex::new(HashMap::new()),
            next_ref: AtomicU64::new(1),
            ref_prefix: rand_u32(),
        }
    }

    fn make_ref(&self) -> String {
        let n = self.next_ref.fetch_add(1, Ordering::Relaxed);
        format!("{:08x}{n:x}", self.ref_prefix)
    }

    /// Adds a meta for `conn` under `key` (`owned`: the key is the user's `sub`); returns it
    /// (with its fresh `phx_ref`).
    pub fn track(
        &self,
        topic: &str,
        key: &Arc<str>,
        conn: ConnId,
        mut meta: Map<String, Value>,
        owned: bool,
    ) -> Value {
        meta.insert("phx_ref".into(), Value::String(self.make_ref()));
        let out = Value::Object(meta.clone());
        let mut topics = self.topics.lock();
        let metas = topics
            .entry(topic.into())
            .or_default()
            .entry(key.clone())
            .or_default();
        metas.retain(|e| e.conn != conn);
        metas.push(Entry { conn, meta, owned });
        out
    }

    /// Removes `conn`'s meta under `key`; returns it.
    pub fn untrack(&self, topic: &str, key: &str, conn: ConnId) -> Option<Value> {
        let mut topics = self.topics.lock();
        let keys = topics.get_mut(topic)?;
        let metas = keys.get_mut(key)?;
        let pos = metas.iter().position(|e| e.conn == conn)?;
        let entry = metas.remove(pos);
        if metas.is_empty() {
            keys.remove(key);
        }
        if keys.is_empty() {
            topics.remove(topic);
        }
        Some(Value::Object(entry.meta))
    }

    /// Merges `patch` into `conn`'s meta (reserved keys ignored) under a new `phx_ref`;
    /// returns (old meta, new meta with `phx_ref_prev`, whether the key is the user's `sub`).
    /// Refused, with nothing changed, when
    /// the merged meta would exceed [`MAX_META_BYTES`].
    pub fn update(
        &self,
        topic: &str,
        key: &str,
        conn: ConnId,
        patch: &Map<String, Value>,
    ) -> Result<(Value, Value, bool), UpdateError> {
        let new_ref = self.make_ref();
        let mut topics = self.topics.lock();
        let entry = topics
            .get_mut(topic)
            .and_then(|k| k.get_mut(key))
            .and_then(|metas| metas.iter_mut().find(|e| e.conn == conn))
            .ok_or(UpdateError::NotTracked)?;
        let mut merged = entry.meta.clone();
        for (k, v) in patch {
            if !RESERVED_META_KEYS.contains(&k.as_str()) {
                merged.insert(k.clone(), v.clone());
            }
        }
        let prev = merged
            .insert("phx_ref".into(), Value::String(new_ref))
            .unwrap_or(Value::Null);
        if serde_json::to_string(&merged).map_or(usize::MAX, |s| s.len()) > MAX_META_BYTES {
            return Err(UpdateError::TooLarge);
        }
        let old = Value::Object(std::mem::replace(&mut entry.meta, merged));
        let mut new = entry.meta.clone();
        new.insert("phx_ref_prev".into(), prev);
        Ok((old, Value::Object(new), entry.owned))
    }

    /// `{key: {"metas": [...]}}` of a topic.
    pub fn state(&self, topic: &str) -> Value {
        let topics = self.topics.lock();
        let mut out = Map::new();
        if let Some(keys) = topics.get(topic) {
            for (key, metas) in keys {
                let metas: Vec<Value> = metas
                    .iter()
                    .map(|e| Value::Object(e.meta.clone()))
                    .collect();
                out.insert(key.to_string(), serde_json::json!({ "metas": metas }));
            }
        }
        Value::Object(out)
    }
}

/// A `presence_diff` payload with one join or one leave (or both, for an update).
pub fn diff(joins: Option<(&str, Value)>, leaves: Option<(&str, Value)>) -> Value {
    let side = |x: Option<(&str, Value)>| {
        let mut m = Map::new();
        if let Some((key, meta)) = x {
            m.insert(key.to_owned(), serde_json::json!({ "metas": [meta] }));
        }
        Value::Object(m)
    };
    serde_json::json!({ "joins": side(joins), "leaves": side(leaves) })
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn track_update_untrack_and_state_shapes() {
        let p = PresenceTable::new();
        let alice: Arc<str> = "alice".into();
        let proto: Arc<str> = "__proto__".into();
        let m1 = p.track("room:a", &alice, 1, Map::new(), true);
        let _m2 = p.track("room:a", &alice, 2, Map::new(), true);
        p.track("room:a", &proto, 3, Map::new(), true);
        let state = p.state("room:a");
        assert_eq!(state["alice"]["metas"].as_array().unwrap().len(), 2);
        assert!(state.as_object().unwrap().contains_key("__proto__"));

        let patch = json!({"status": "typing", "phx_ref": "forged"});
        let (old, new, owned) = p
            .update("room:a", "alice", 1, patch.as_object().unwrap())
            .unwrap();
        assert!(owned, "tracked under its sub");
        assert_eq!(old["phx_ref"], m1["phx_ref"]);
        assert_eq!(new["phx_ref_prev"], m1["phx_ref"]);
        assert_ne!(new["phx_ref"], m1["phx_ref"]);
        assert_ne!(new["phx_ref"], "forged");
        assert_eq!(new["status"], "typing");

        assert!(p.untrack("room:a", "alice", 1).is_some());
        assert!(p.untrack("room:a", "alice", 1).is_none());
        assert_eq!(
            p.state("room:a")["alice"]["metas"]
                .as_array()
                .unwrap()
                .len(),
            1
        );
        let d = diff(None, Some(("alice", json!({"phx_ref": "x"}))));
        assert_eq!(
            d,
            json!({"joins": {}, "leaves": {"alice": {"metas": [{"phx_ref": "x"}]}}})
        );
    }
}
