//! Each node's copy of the cluster-wide presence of its subscribed topics, kept from the
//! `presence_diff`s it delivers, so that a joiner's `presence_state` is ordered against the
//! diffs it gets.
//!
//! The defect this fixes: with several nodes, every joiner's `presence_state` used to be read
//! from Redis (`HGETALL` of the topic's hash) while its diffs come from this node's delivery
//! stream (its own connections' diffs at once, the others' through Redis pub/sub). The two
//! were not ordered: the state could hold a leave, or miss a join, that the stream delivered
//! on the other side of it. Worse, at scale (thousands joining) each join read the whole hash,
//! O(N²) bytes through the node's one Redis connection, which then answered every other
//! command (presence writes, diff publishes, heartbeats) seconds late: commands timed out
//! (2 s), so writes and diffs were lost for good and views diverged.
//!
//! Now a node reads a topic's hash from Redis once (when a member first needs its state, after
//! the node's subscription to the topic is confirmed), and from then on applies every
//! presence diff it delivers to its copy, the way phoenix.js `syncDiff` does (joins add metas
//! by `phx_ref`, leaves remove them). A joiner's state is this copy, taken under the topic's
//! lock that every diff takes before it is handed to the members: a diff the state does not
//! hold reaches the joiner after its state, and one it holds either before (phoenix.js keeps
//! diffs that come before the state and applies them after it) or after it; each `phx_ref`
//! is joined once and left once, so applying a diff again on a state that holds it changes
//! nothing. Merged diffs ([`crate::presence_diffs`]) are applied here one by one, as they
//! enter the coalescer; the joiner is marked *young* under the same lock, so a join and leave
//! cancelled in the pending interval reach it as a leave.
//!
//! Loading: diffs delivered while the hash is read are buffered and applied on top of what
//! was read (a diff's Redis write happens before it is published, so the read holds every
//! change published before the subscription, and applying the buffered ones again is
//! harmless). A topic's copy is dropped when the node loses its last local subscriber, and
//! every copy is read again after the Redis subscription was lost (diffs may have been missed
//! meanwhile). Until a copy is ready (or when Redis cannot be read) the joiner is answered as
//! before, from Redis. Bounds: one copy per subscribed topic, as large as the topic's presence
//! (what a `presence_state` carries anyway); the buffer of a load holds at most
//! [`MAX_BUFFERED`] diffs (past it the load starts again).

use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Diffs buffered while a topic's presence is read from Redis; past it the read is redone.
pub const MAX_BUFFERED: usize = 100_000;

/// One topic's presence: key → metas, in arrival order.
type State = HashMap<String, Vec<Value>>;

enum Stage {
    /// The node's subscription to the topic is not confirmed yet.
    Subscribing,
    /// Subscribed; not read (or to be read again).
    Idle,
    /// Being read from Redis; the diffs delivered meanwhile.
    Loading(Vec<Map<String, Value>>),
    Ready(State),
}

struct Mirror {
    /// Changes with each (re)start, so that a late subscription or load is recognised.
    generation: u64,
    stage: Stage,
}

/// What [`PresenceMirrors::begin`] says to do.
pub enum Begin {
    /// No copy (not clustered, or the subscription failed): read the state from the broker.
    Fallback,
    /// Wait a moment and ask again (subscribing, or another joiner is loading it).
    Wait,
    /// Read the state from Redis and hand it to [`PresenceMirrors::loaded`] with this
    /// generation.
    Load(u64),
    /// Ready: take the state with [`PresenceMirrors::with_state`].
    Ready,
}

/// The presence copies of a node's subscribed topics (see the module's doc).
#[derive(Default)]
pub struct PresenceMirrors {
    topics: Mutex<HashMap<Arc<str>, Arc<Mutex<Mirror>>>>,
    generation: AtomicU64,
}

impl PresenceMirrors {
    fn get(&self, topic: &str) -> Option<Arc<Mutex<Mirror>>> {
        self.topics.lock().get(topic).cloned()
    }

    /// The node subscribes to `topic` (its first local subscriber); returns the generation to
    /// confirm with [`PresenceMirrors::subscribed`].
    pub fn subscribing(&self, topic: &str) -> u64 {
        let generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
        self.topics.lock().insert(
            topic.into(),
            Arc::new(Mutex::new(Mirror {
                generation,
                stage: Stage::Subscribing,
            })),
        );
        generation
    }

    /// The node's subscription to `topic` is confirmed (`ok`) or failed (then no copy is kept).
    pub fn subscribed(&self, topic: &str, generation: u64, ok: bool) {
        let mut topics = self.topics.lock();
        let Some(m) = topics.get(topic).cloned() else {
            return;
        };
        let mut m = m.lock();
        if m.generation != generation {
            return;
        }
        if ok {
            m.stage = Stage::Idle;
        } else {
            topics.remove(topic);
        }
    }

    /// The node has no local subscriber of `topic` left.
    pub fn remove(&self, topic: &str) {
        self.topics.lock().remove(topic);
    }

    /// Every copy is to be read again (the subscription was lost: diffs may have been missed).
    pub fn unload_all(&self) {
        let mirrors: Vec<_> = self.topics.lock().values().cloned().collect();
        for m in mirrors {
            let mut m = m.lock();
            if !matches!(m.stage, Stage::Subscribing) {
                m.stage = Stage::Idle;
                m.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            }
        }
    }

    /// What a joiner that needs `topic`'s state does now.
    pub fn begin(&self, topic: &str) -> Begin {
        let Some(m) = self.get(topic) else {
            return Begin::Fallback;
        };
        let mut m = m.lock();
        match m.stage {
            Stage::Subscribing | Stage::Loading(_) => Begin::Wait,
            Stage::Ready(_) => Begin::Ready,
            Stage::Idle => {
                m.stage = Stage::Loading(Vec::new());
                Begin::Load(m.generation)
            }
        }
    }

    /// The state read from Redis for a [`Begin::Load`] (`None`: it could not be read; the
    /// next joiner tries again).
    pub fn loaded(&self, topic: &str, generation: u64, state: Option<&Value>) {
        let Some(m) = self.get(topic) else {
            return;
        };
        let mut m = m.lock();
        if m.generation != generation {
            return;
        }
        let Some(state) = state else {
            m.stage = Stage::Idle;
            return;
        };
        let Stage::Loading(buffered) = std::mem::replace(&mut m.stage, Stage::Idle) else {
            return;
        };
        let mut s = State::new();
        for (key, entry) in state.as_object().into_iter().flatten() {
            s.insert(key.clone(), metas_of(entry).to_vec());
        }
        for diff in &buffered {
            apply(&mut s, diff);
        }
        m.stage = Stage::Ready(s);
    }

    /// Applies a `presence_diff` being delivered on `topic` (before its members get it).
    pub fn apply(&self, topic: &str, payload: &str) {
        let Some(m) = self.get(topic) else {
            return;
        };
        let mut m = m.lock();
        if matches!(m.stage, Stage::Subscribing | Stage::Idle) {
            return;
        }
        let Ok(diff) = serde_json::from_str::<Map<String, Value>>(payload) else {
            return;
        };
        match &mut m.stage {
            Stage::Ready(s) => apply(s, &diff),
            Stage::Loading(buffer) if buffer.len() < MAX_BUFFERED => buffer.push(diff),
            Stage::Loading(_) => {
                // Too much arrived during the read: read again.
                m.stage = Stage::Idle;
                m.generation = self.generation.fetch_add(1, Ordering::Relaxed) + 1;
            }
            Stage::Subscribing | Stage::Idle => {}
        }
    }

    /// Calls `f` with `topic`'s state (`{key: {"metas": […]}}`) while no diff can be applied:
    /// what `f` pushes to a member comes before any diff the state does not hold. `None`
    /// when the copy is not ready (any more).
    pub fn with_state<R>(&self, topic: &str, f: impl FnOnce(Value) -> R) -> Option<R> {
        let m = self.get(topic)?;
        let m = m.lock();
        let Stage::Ready(s) = &m.stage else {
            return None;
        };
        let mut out = Map::new();
        for (key, metas) in s {
            out.insert(key.clone(), serde_json::json!({ "metas": metas }));
        }
        Some(f(Value::Object(out)))
    }
}

fn metas_of(entry: &Value) -> &[Value] {
    entry
        .get("metas")
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn phx_ref(meta: &Value) -> Option<&str> {
    meta.get("phx_ref").and_then(Value::as_str)
}

/// phoenix.js `syncDiff`: joins replace metas of the same `phx_ref` (or are added), then
/// leaves remove metas by `phx_ref`; a key without metas goes.
fn apply(state: &mut State, diff: &Map<String, Value>) {
    if let Some(Value::Object(joins)) = diff.get("joins") {
        for (key, entry) in joins {
            let metas = state.entry(key.clone()).or_default();
            for meta in metas_of(entry) {
                let r = phx_ref(meta);
                metas.retain(|m| r.is_none() || phx_ref(m) != r);
                metas.push(meta.clone());
            }
            if metas.is_empty() {
                state.remove(key);
            }
        }
    }
    if let Some(Value::Object(leaves)) = diff.get("leaves") {
        for (key, entry) in leaves {
            let Some(metas) = state.get_mut(key) else {
                continue;
            };
            for meta in metas_of(entry) {
                if let Some(r) = phx_ref(meta) {
                    metas.retain(|m| phx_ref(m) != Some(r));
                }
            }
            if metas.is_empty() {
                state.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn keys(m: &PresenceMirrors, topic: &str) -> Vec<String> {
        let mut k: Vec<String> = m
            .with_state(topic, |s| s.as_object().unwrap().keys().cloned().collect())
            .unwrap();
        k.sort();
        k
    }

    #[test]
    fn a_copy_is_read_once_then_kept_from_the_diffs_buffered_and_delivered() {
        let m = PresenceMirrors::default();
        assert!(matches!(m.begin("t"), Begin::Fallback));
        let g = m.subscribing("t");
        assert!(matches!(m.begin("t"), Begin::Wait));
        m.subscribed("t", g, true);
        let Begin::Load(g) = m.begin("t") else {
            panic!("the first joiner loads")
        };
        assert!(matches!(m.begin("t"), Begin::Wait));
        // Delivered during the read: b's leave (the read still has b), c's join.
        m.apply(
            "t",
            r#"{"joins": {}, "leaves": {"b": {"metas": [{"phx_ref": "2"}]}}}"#,
        );
        m.apply(
            "t",
            r#"{"joins": {"c": {"metas": [{"phx_ref": "3"}]}}, "leaves": {}}"#,
        );
        let read = json!({"a": {"metas": [{"phx_ref": "1"}]}, "b": {"metas": [{"phx_ref": "2"}]}});
        m.loaded("t", g, Some(&read));
        assert!(matches!(m.begin("t"), Begin::Ready));
        assert_eq!(keys(&m, "t"), ["a", "c"]);
        // A join delivered again (it was in the read) changes nothing; a leave removes.
        m.apply(
            "t",
            r#"{"joins": {"a": {"metas": [{"phx_ref": "1"}]}}, "leaves": {}}"#,
        );
        m.apply(
            "t",
            r#"{"joins": {}, "leaves": {"a": {"metas": [{"phx_ref": "1"}]}}}"#,
        );
        assert_eq!(keys(&m, "t"), ["c"]);
        // The subscription was lost: read again before the next state.
        m.unload_all();
        assert!(matches!(m.begin("t"), Begin::Load(_)));
        m.remove("t");
        assert!(matches!(m.begin("t"), Begin::Fallback));
    }

    #[test]
    fn a_late_load_or_subscription_of_an_older_generation_is_ignored() {
        let m = PresenceMirrors::default();
        let g1 = m.subscribing("t");
        m.remove("t");
        let g2 = m.subscribing("t");
        m.subscribed("t", g1, false);
        assert!(matches!(m.begin("t"), Begin::Wait), "still subscribing");
        m.subscribed("t", g2, true);
        let Begin::Load(g) = m.begin("t") else {
            panic!()
        };
        m.unload_all();
        m.loaded("t", g, Some(&json!({"old": {"metas": [{"phx_ref": "1"}]}})));
        assert!(matches!(m.begin("t"), Begin::Load(_)), "read again");
    }
}
