//! Reads of a topic's cluster-wide presence, shared by the joiners of one node.
//!
//! Every joiner of a presence topic is sent the topic's whole presence, read from Redis
//! (`HGETALL` of its hash, [`super::presence`]). When a big audience arrives at once, one read
//! per joiner is O(N²) bytes through this node's one Redis connection: every other command
//! behind them (presence writes, diff publishes, heartbeats) answers late, times out, and what
//! it carried is lost. So a node reads a topic **once per round**: a joiner that asks while no
//! read of that topic is under way starts a round; one that asks while a read is already
//! sent waits for the next round, which starts when that read ends. A joiner is therefore
//! always answered by a read sent *after* it asked (after it was subscribed to the topic's
//! diffs), exactly as if it had read alone, and a topic has at most one read in flight and one
//! waiting per node, however many join.
//!
//! Each round runs in its own task, so it ends (and forgets itself) even when every joiner
//! waiting for it has gone.

use crate::presence::PresenceState;
use futures_util::future::{BoxFuture, FutureExt, Shared};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

/// What a round's read gives: the state, or why it failed (shared by all its joiners).
pub(super) type ReadResult = Result<Arc<PresenceState>, Arc<str>>;
type Round = Shared<BoxFuture<'static, ReadResult>>;

/// The rounds of this node's presence reads, per topic (see the module's doc).
#[derive(Default)]
pub(super) struct StateReads {
    topics: Arc<Mutex<HashMap<String, Latest>>>,
}

/// A topic's latest round: joiners may still join it until it has sent its read.
struct Latest {
    id: u64,
    round: Round,
    sent: bool,
}

impl StateReads {
    /// The state of `topic` from a read that starts after this call; `read` makes that read
    /// when this call starts a round.
    pub(super) fn read<F, Fut>(&self, topic: &str, read: F) -> impl Future<Output = ReadResult>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<PresenceState, String>> + Send + 'static,
    {
        let mut topics = self.topics.lock();
        let (id, previous) = match topics.get(topic) {
            Some(latest) if !latest.sent => return latest.round.clone(),
            Some(latest) => (latest.id.wrapping_add(1), Some(latest.round.clone())),
            None => (0, None),
        };
        let round = start_round(self.topics.clone(), topic.to_owned(), id, previous, read);
        topics.insert(
            topic.to_owned(),
            Latest {
                id,
                round: round.clone(),
                sent: false,
            },
        );
        round
    }

    /// Topics with a round under way or waiting (for tests).
    #[cfg(test)]
    fn pending(&self) -> usize {
        self.topics.lock().len()
    }
}

fn start_round<F, Fut>(
    topics: Arc<Mutex<HashMap<String, Latest>>>,
    topic: String,
    id: u64,
    previous: Option<Round>,
    read: F,
) -> Round
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = Result<PresenceState, String>> + Send + 'static,
{
    let (topics_after, topic_after) = (topics.clone(), topic.clone());
    let task = tokio::spawn(async move {
        // One read of a topic at a time on this node.
        if let Some(previous) = previous {
            let _ = previous.await;
        }
        // From here on, a joiner must wait for the next round (under the lock it checks).
        if let Some(latest) = topics.lock().get_mut(&topic) {
            if latest.id == id {
                latest.sent = true;
            }
        }
        let result = read().await.map(Arc::new).map_err(Arc::<str>::from);
        let mut all = topics.lock();
        if all.get(&topic).is_some_and(|latest| latest.id == id) {
            all.remove(&topic);
        }
        result
    });
    async move {
        task.await.unwrap_or_else(|e| {
            // Cancelled (the runtime is shutting down) or panicked: forget the round, so that
            // the topic's next joiner reads afresh instead of joining a round that never ends.
            let mut all = topics_after.lock();
            if all.get(&topic_after).is_some_and(|latest| latest.id == id) {
                all.remove(&topic_after);
            }
            Err(Arc::from(format!("presence read failed: {e}")))
        })
    }
    .boxed()
    .shared()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;
    use tokio::sync::oneshot;

    /// A read that counts itself and answers with its number once `release` is sent.
    fn counted(
        reads: &Arc<AtomicUsize>,
        release: oneshot::Receiver<()>,
    ) -> impl FnOnce() -> BoxFuture<'static, Result<PresenceState, String>> + Send + 'static {
        let reads = reads.clone();
        move || {
            async move {
                let n = reads.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = release.await;
                Ok(PresenceState::new(Value::from(n)))
            }
            .boxed()
        }
    }

    #[tokio::test]
    async fn joiners_that_ask_during_a_read_share_the_next_one_and_never_an_earlier_one() {
        let reads = Arc::new(AtomicUsize::new(0));
        let state = StateReads::default();
        let (release1, rx1) = oneshot::channel();
        let first = tokio::spawn(state.read("t", counted(&reads, rx1)));
        // The first read is sent (it counted itself) and waits.
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // Three joiners ask while it is under way: they must not get its answer.
        let (release2, rx2) = oneshot::channel();
        let second = tokio::spawn(state.read("t", counted(&reads, rx2)));
        let (_unused3, rx3) = oneshot::channel();
        let third = tokio::spawn(state.read("t", counted(&reads, rx3)));
        let (_unused4, rx4) = oneshot::channel();
        let fourth = tokio::spawn(state.read("t", counted(&reads, rx4)));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert_eq!(
            reads.load(Ordering::SeqCst),
            1,
            "one read at a time per topic"
        );
        let _ = release1.send(());
        assert_eq!(*first.await.unwrap().unwrap().value(), Value::from(1));
        while reads.load(Ordering::SeqCst) < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = release2.send(());
        for joiner in [second, third, fourth] {
            assert_eq!(*joiner.await.unwrap().unwrap().value(), Value::from(2));
        }
        assert_eq!(reads.load(Ordering::SeqCst), 2, "the three shared one read");
        assert_eq!(state.pending(), 0, "a finished topic is forgotten");
    }

    #[tokio::test]
    async fn topics_are_read_independently_and_failures_reach_every_joiner() {
        let state = StateReads::default();
        let a = state.read("a", || async { Err::<PresenceState, _>("down".to_owned()) });
        let b = state.read("b", || async { Ok(PresenceState::new(Value::from("b"))) });
        let a2 = state.read("a", || async {
            Ok(PresenceState::new(Value::from("never read")))
        });
        assert_eq!(&*a.await.unwrap_err(), "down");
        assert_eq!(
            &*a2.await.unwrap_err(),
            "down",
            "it joined the failed round"
        );
        assert_eq!(*b.await.unwrap().value(), Value::from("b"));
        assert_eq!(state.pending(), 0);
    }

    #[tokio::test]
    async fn a_round_whose_joiners_all_left_still_ends_and_is_forgotten() {
        let reads = Arc::new(AtomicUsize::new(0));
        let state = StateReads::default();
        let (release, rx) = oneshot::channel();
        drop(state.read("t", counted(&reads, rx)));
        while reads.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = release.send(());
        for _ in 0..100 {
            if state.pending() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(state.pending(), 0);
        // And the next joiner reads afresh.
        let (release, rx) = oneshot::channel();
        let next = state.read("t", counted(&reads, rx));
        let _ = release.send(());
        assert_eq!(*next.await.unwrap().value(), Value::from(2));
    }
}
