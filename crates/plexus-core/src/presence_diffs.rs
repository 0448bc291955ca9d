//! Presence diffs coalesced per topic: every `presence_diff` a node is about to hand to its
//! local subscribers (its own connections' joins and leaves, and those other nodes published
//! through the broker) waits up to `presence.diff_interval_ms` and leaves as one diff with
//! many entries, instead of one frame per change to every member (O(N²) deliveries when a
//! big audience arrives at once).
//!
//! Merging follows phoenix.js `Presence.syncDiff` (joins applied, then leaves, metas told
//! apart by `phx_ref`, which the server makes unique per track): a join adds a meta to the
//! pending joins (replacing one with the same `phx_ref`); a leave whose meta is a pending join
//! *cancels* it (neither is sent); any other leave is added to the pending leaves. Applied to
//! any state a member may hold (its `presence_state` and the diffs before), the merged diff
//! ends where the diffs one by one would have.
//!
//! One exception: a member whose `presence_state` was read while a cancelled meta was
//! present (it joined mid-interval, or its snapshot, read from Redis, ran ahead of the diffs)
//! holds that meta. Every member whose state was sent less than [`YOUNG_FOR`] (+ the
//! interval) before a flush is *young* and gets the diff with the cancelled leaves put back
//! (a leave of a meta one does not hold changes nothing); the others get it without them.
//!
//! Bounds: a topic's pending diff holds at most [`MAX_PENDING_BYTES`] of entries (metas are
//! at most 4 KiB each); a change that would go past it flushes the topic at once. Young
//! members are remembered per topic only while young (one entry per `presence_state` sent
//! in the last [`YOUNG_FOR`]). One timer task per node flushes topics in deadline order; no
//! timer per connection or topic.

use crate::hub::Hub;
use crate::presence::PresenceState;
use crate::protocol::{events, Payload};
use crate::publication::Publication;
use crate::ConnId;
use parking_lot::Mutex;
use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Default `presence.diff_interval_ms`: long enough that a burst of joins (thousands a
/// second) leaves as a few diffs a second, short enough that people see each other arrive
/// "at once" (under a tenth of a second, below what a person notices in a list).
pub const DEFAULT_DIFF_INTERVAL_MS: u64 = 50;

/// Longest `presence.diff_interval_ms` accepted (a second: presence must stay live).
pub const MAX_DIFF_INTERVAL_MS: u64 = 1000;

/// Entries one topic's pending diff may hold, in bytes of their JSON (keys and metas); a
/// change past it flushes the topic at once.
pub const MAX_PENDING_BYTES: usize = 64 * 1024;

/// How long, beyond the interval, after its `presence_state` was read a member still gets
/// cancelled leaves: covers the time between a meta's write (which a state read may see) and
/// its diff's arrival here (the joiner's own reply and state sent first, then Redis's
/// round trip when the meta was written on another node). Milliseconds in practice, but a
/// joiner's own state read comes between its meta's write and its diff's publish, and may
/// wait for the read of the topic already under way on its node (`broker/redis/state_reads.rs`)
/// and be made twice, each bounded by Redis's response timeout (2 s by default), and then the
/// publish may take as long: 10 s covers that. A member young for longer than needed only gets
/// a few leaves of metas it never held, which change nothing.
pub const YOUNG_FOR: Duration = Duration::from_secs(10);

/// One user key's metas, in arrival order.
type Metas = Vec<Value>;

/// What a topic has pending.
#[derive(Default)]
struct TopicDiff {
    joins: HashMap<String, Metas>,
    leaves: HashMap<String, Metas>,
    /// Leaves whose join was pending: sent only to young members.
    cancelled: HashMap<String, Metas>,
    bytes: usize,
}

impl TopicDiff {
    fn is_empty(&self) -> bool {
        self.joins.is_empty() && self.leaves.is_empty() && self.cancelled.is_empty()
    }

    /// Merges one diff `{"joins": {key: {"metas": […]}}, "leaves": {…}}`.
    fn merge(&mut self, diff: &Map<String, Value>) {
        if let Some(Value::Object(joins)) = diff.get("joins") {
            for (key, entry) in joins {
                for meta in metas_of(entry) {
                    self.bytes += key.len() + meta_len(meta);
                    let metas = self.joins.entry(key.clone()).or_default();
                    let r = phx_ref(meta);
                    metas.retain(|m| r.is_none() || phx_ref(m) != r);
                    metas.push(meta.clone());
                }
            }
        }
        if let Some(Value::Object(leaves)) = diff.get("leaves") {
            for (key, entry) in leaves {
                for meta in metas_of(entry) {
                    let r = phx_ref(meta);
                    let joined = self.joins.get_mut(key.as_str()).and_then(|metas| {
                        let pos = metas.iter().position(|m| r.is_some() && phx_ref(m) == r)?;
                        Some(metas.remove(pos))
                    });
                    if joined.is_some() {
                        if self.joins.get(key.as_str()).is_some_and(Vec::is_empty) {
                            self.joins.remove(key.as_str());
                        }
                        self.cancelled
                            .entry(key.clone())
                            .or_default()
                            .push(meta.clone());
                    } else {
                        self.bytes += key.len() + meta_len(meta);
                        self.leaves
                            .entry(key.clone())
                            .or_default()
                            .push(meta.clone());
                    }
                }
            }
        }
    }

    /// The diff to send: with the cancelled leaves (`young`) or without.
    fn payload(&self, young: bool) -> Value {
        let side = |sides: &[&HashMap<String, Metas>]| {
            let mut out = Map::new();
            for side in sides {
                for (key, metas) in *side {
                    let entry = out
                        .entry(key.clone())
                        .or_insert_with(|| serde_json::json!({ "metas": [] }));
                    if let Some(Value::Array(list)) = entry.get_mut("metas") {
                        list.extend(metas.iter().cloned());
                    }
                }
            }
            Value::Object(out)
        };
        let leaves = if young {
            side(&[&self.leaves, &self.cancelled])
        } else {
            side(&[&self.leaves])
        };
        serde_json::json!({ "joins": side(&[&self.joins]), "leaves": leaves })
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

/// A meta's size as it will be sent (estimated from its JSON; small metas are common).
fn meta_len(meta: &Value) -> usize {
    serde_json::to_string(meta).map_or(MAX_PENDING_BYTES, |s| s.len()) + 16
}

/// The topics with something pending, and their deadlines.
#[derive(Default)]
struct Pending {
    topics: HashMap<Arc<str>, TopicDiff>,
    /// (deadline, topic) in deadline order (one interval for all topics: arrival order).
    due: VecDeque<(Instant, Arc<str>)>,
    /// Per topic: members whose `presence_state` was read recently, oldest first.
    young: HashMap<Arc<str>, VecDeque<(Instant, ConnId)>>,
    /// The flusher task runs.
    flusher: bool,
    /// Per topic: this node's presence state as built since the topic's pending diff was last
    /// taken, shared by the joiners that ask before it is taken again ([`DiffCoalescer::shared_state`]).
    snapshots: HashMap<Arc<str>, (Instant, Arc<PresenceState>)>,
    /// Per topic: the snapshot being built (its number); a take of the topic forgets it, so
    /// that a snapshot built across a take is not kept.
    building: HashMap<Arc<str>, u64>,
    next_build: u64,
}

/// A flush ready to deliver: the diff for most members, and the one for young members when
/// cancelled leaves make them differ.
pub(crate) struct Flush {
    /// For the members that are not young (`None`: nothing for them).
    pub others: Option<Arc<Publication>>,
    pub for_young: Option<(Arc<Publication>, HashSet<ConnId>)>,
}

/// Coalesces a node's presence diffs (see the module's doc).
pub struct DiffCoalescer {
    interval: Duration,
    pending: Mutex<Pending>,
    wake: Arc<tokio::sync::Notify>,
    hub: Weak<Hub>,
}

impl DiffCoalescer {
    pub(crate) fn new(interval: Duration, hub: Weak<Hub>) -> Self {
        DiffCoalescer {
            interval,
            pending: Mutex::new(Pending::default()),
            wake: Arc::new(tokio::sync::Notify::new()),
            hub,
        }
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Takes a `presence_diff` publication; returns it back when it cannot be merged (not a
    /// JSON object: delivered as it is), or the flush to deliver now when the topic's
    /// pending diff reached its bound.
    pub(crate) fn add(&self, publication: &Arc<Publication>) -> Result<Option<Flush>, ()> {
        let Some(diff) = publication
            .payload
            .as_json()
            .and_then(|raw| serde_json::from_str::<Map<String, Value>>(raw.get()).ok())
        else {
            return Err(());
        };
        let mut pending = self.pending.lock();
        let now = Instant::now();
        let topic = &publication.topic;
        if !pending.topics.contains_key(&**topic) {
            pending.due.push_back((now + self.interval, topic.clone()));
        }
        let entry = pending.topics.entry(topic.clone()).or_default();
        entry.merge(&diff);
        let full = entry.bytes >= MAX_PENDING_BYTES;
        let flush = if full {
            let diff = pending.topics.remove(&**topic);
            diff.and_then(|d| self.flush_of(&mut pending, topic, d, now))
        } else {
            None
        };
        if !pending.flusher {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    pending.flusher = true;
                    rt.spawn(run(self.hub.clone()));
                }
                // No runtime (a unit test's hub): everything is flushed at once.
                Err(_) => {
                    let diff = pending.topics.remove(&**topic);
                    return Ok(diff.and_then(|d| self.flush_of(&mut pending, topic, d, now)));
                }
            }
        }
        drop(pending);
        self.wake.notify_one();
        Ok(flush)
    }

    /// This node's presence of `topic` (`build` makes it from the node's table) for a joiner
    /// already subscribed to the topic: shared with every joiner that asks before the
    /// topic's pending diff is next taken, instead of made and encoded once per joiner (O(N²)
    /// when N arrive at once).
    ///
    /// Why a shared state is exact: every change made to the table after the state was built
    /// reaches this coalescer as a diff, and the first take of the topic after that forgets
    /// the state; so until then each such change is still pending, and its flush reaches the
    /// joiner (subscribed before it asked). A change the state has and the flush repeats
    /// changes nothing (metas are told apart by `phx_ref`), and a join cancelled in the
    /// interval is sent with its leave to the young joiner.
    pub fn shared_state(&self, topic: &str, build: impl FnOnce() -> Value) -> Arc<PresenceState> {
        let build_id = {
            let mut pending = self.pending.lock();
            if let Some((_, state)) = pending.snapshots.get(topic) {
                return state.clone();
            }
            // Kept only while the flusher runs (it forgets old snapshots).
            if !pending.flusher {
                None
            } else {
                let id = pending.next_build;
                pending.next_build = id.wrapping_add(1);
                pending.building.insert(topic.into(), id);
                Some(id)
            }
        };
        let state = Arc::new(PresenceState::new(build()));
        if let Some(id) = build_id {
            let mut pending = self.pending.lock();
            if pending.building.get(topic) == Some(&id) {
                pending.building.remove(topic);
                pending
                    .snapshots
                    .insert(topic.into(), (Instant::now(), state.clone()));
            }
        }
        state
    }

    /// Remembers that `conn` is about to read `topic`'s presence state (call it before the
    /// read): until [`YOUNG_FOR`] has passed, flushes give it cancelled leaves too.
    pub fn state_read(&self, topic: &str, conn: ConnId) {
        let mut pending = self.pending.lock();
        let now = Instant::now();
        if !pending.young.contains_key(topic) {
            pending.young.insert(topic.into(), VecDeque::new());
        }
        let interval = self.interval;
        let Some(young) = pending.young.get_mut(topic) else {
            return;
        };
        while young
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > YOUNG_FOR + interval)
        {
            young.pop_front();
        }
        young.push_back((now, conn));
        // The flusher forgets young members (and shared states) that are old.
        if !pending.flusher {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                pending.flusher = true;
                rt.spawn(run(self.hub.clone()));
            }
        }
    }

    /// Builds the publications of a topic's pending diff (and forgets young members that
    /// are young no more).
    fn flush_of(
        &self,
        pending: &mut Pending,
        topic: &Arc<str>,
        diff: TopicDiff,
        now: Instant,
    ) -> Option<Flush> {
        // Taken: a state shared from now on must be built after this.
        pending.snapshots.remove(&**topic);
        pending.building.remove(&**topic);
        let young: HashSet<ConnId> = match pending.young.get_mut(&**topic) {
            Some(y) => {
                while y
                    .front()
                    .is_some_and(|(at, _)| now.duration_since(*at) > YOUNG_FOR + self.interval)
                {
                    y.pop_front();
                }
                let set = if diff.cancelled.is_empty() {
                    HashSet::new()
                } else {
                    y.iter().map(|(_, c)| *c).collect()
                };
                if y.is_empty() {
                    pending.young.remove(&**topic);
                }
                set
            }
            None => HashSet::new(),
        };
        if diff.is_empty() {
            return None;
        }
        let make = |young: bool| {
            let payload = Payload::json(&diff.payload(young)).ok()?;
            Publication::new(topic, events::PRESENCE_DIFF, payload, None)
                .ok()
                .map(Arc::new)
        };
        let for_young = if young.is_empty() {
            None
        } else {
            make(true).map(|p| (p, young))
        };
        // With only cancelled leaves, the others have nothing to hear.
        let others = if diff.joins.is_empty() && diff.leaves.is_empty() {
            None
        } else {
            make(false)
        };
        (others.is_some() || for_young.is_some()).then_some(Flush { others, for_young })
    }

    /// Takes the flushes that are due; returns them and when the next one is due.
    fn due(&self, now: Instant) -> (Vec<Flush>, Option<Instant>) {
        let mut pending = self.pending.lock();
        let mut out = Vec::new();
        while let Some((at, _)) = pending.due.front() {
            if *at > now {
                break;
            }
            let Some((_, topic)) = pending.due.pop_front() else {
                break;
            };
            // A topic flushed early (full) has a stale deadline and maybe a newer one.
            let Some(diff) = pending.topics.remove(&*topic) else {
                continue;
            };
            if let Some(f) = self.flush_of(&mut pending, &topic, diff, now) {
                out.push(f);
            }
        }
        let next = pending.due.front().map(|(at, _)| *at);
        // Shared states are kept an interval at most (they stay exact until their topic is
        // taken, but hold memory).
        let interval = self.interval;
        pending
            .snapshots
            .retain(|_, (at, _)| now.duration_since(*at) <= interval);
        // Young members of topics read lately and flushed no more are forgotten too.
        pending.young.retain(|_, y| {
            while y
                .front()
                .is_some_and(|(at, _)| now.duration_since(*at) > YOUNG_FOR + interval)
            {
                y.pop_front();
            }
            !y.is_empty()
        });
        (out, next)
    }
}

/// The flusher: one task per node, sleeping until the next topic's deadline.
async fn run(hub: Weak<Hub>) {
    loop {
        let Some(h) = hub.upgrade() else {
            return;
        };
        let Some(coalescer) = h.presence_diffs() else {
            return;
        };
        let wake = coalescer.wake.clone();
        let (flushes, next) = coalescer.due(Instant::now());
        for f in flushes {
            h.deliver_flush(f);
        }
        // Not holding the hub while asleep: a node that is gone ends this task.
        drop(h);
        match next {
            Some(at) => tokio::time::sleep_until(at.into()).await,
            // Woken by the next pending diff (a notification sent meanwhile is kept), or
            // checks every second whether the hub is gone.
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn merged(diffs: &[Value]) -> TopicDiff {
        let mut d = TopicDiff::default();
        for diff in diffs {
            d.merge(diff.as_object().unwrap());
        }
        d
    }

    #[test]
    fn joins_gather_and_a_join_left_in_the_interval_cancels() {
        let d = merged(&[
            json!({"joins": {"a": {"metas": [{"phx_ref": "1"}]}}, "leaves": {}}),
            json!({"joins": {"b": {"metas": [{"phx_ref": "2"}]}}, "leaves": {}}),
            json!({"joins": {"a": {"metas": [{"phx_ref": "3"}]}}, "leaves": {}}),
            json!({"joins": {}, "leaves": {"b": {"metas": [{"phx_ref": "2"}]}}}),
            json!({"joins": {}, "leaves": {"c": {"metas": [{"phx_ref": "0"}]}}}),
        ]);
        assert_eq!(
            d.payload(false),
            json!({"joins": {"a": {"metas": [{"phx_ref": "1"}, {"phx_ref": "3"}]}},
                   "leaves": {"c": {"metas": [{"phx_ref": "0"}]}}})
        );
        assert_eq!(
            d.payload(true)["leaves"],
            json!({"c": {"metas": [{"phx_ref": "0"}]}, "b": {"metas": [{"phx_ref": "2"}]}})
        );
    }

    #[test]
    fn an_update_is_a_leave_and_a_join_of_distinct_refs() {
        // Updated twice in one interval: the middle meta cancels, the first leaves.
        let d = merged(&[
            json!({"joins": {"a": {"metas": [{"phx_ref": "2", "phx_ref_prev": "1"}]}},
                   "leaves": {"a": {"metas": [{"phx_ref": "1"}]}}}),
            json!({"joins": {"a": {"metas": [{"phx_ref": "3", "phx_ref_prev": "2"}]}},
                   "leaves": {"a": {"metas": [{"phx_ref": "2"}]}}}),
        ]);
        assert_eq!(
            d.payload(false),
            json!({"joins": {"a": {"metas": [{"phx_ref": "3", "phx_ref_prev": "2"}]}},
                   "leaves": {"a": {"metas": [{"phx_ref": "1"}]}}})
        );
    }
}
