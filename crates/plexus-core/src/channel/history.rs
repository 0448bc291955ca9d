//! History recovery on join: the join reply says where a history topic stands, and a join
//! that asks (`{"recover": {"epoch", "offset"}}`) gets what it missed replayed before any live
//! broadcast, each message exactly once. Joins that pass `recover` (even `null`) or
//! `"offsets": true` get history offsets in their broadcasts' `ref`.

use super::{Channels, Conn, JoinOutcome, JoinReply, JoinRequest};
use crate::outbox::Outgoing;
use crate::policy::ChannelRule;
use serde::Deserialize;

#[derive(Deserialize)]
struct Recover {
    epoch: String,
    offset: u64,
}

/// The join params about history: `{"recover": {"epoch", "offset"} | null, "offsets": bool}`.
#[derive(Deserialize, Default)]
struct HistoryParams {
    /// Present (`Some`), even as `null`, when the join asked to recover.
    #[serde(default, deserialize_with = "present")]
    recover: Option<Option<Recover>>,
    #[serde(default)]
    offsets: bool,
}

/// Tells a key given as `null` from a missing one.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl Channels {
    /// Subscribes (when `subscribe`) and replies. On a topic with history the reply carries the
    /// history position; with join params `{"recover": {"epoch", "offset"}}` the join also
    /// replays what the client missed after that offset, before any live broadcast, and says
    /// whether that was everything (`recovered: true`) or the gap was too old or from another
    /// epoch (`false`: the client should reload its state).
    ///
    /// Broadcasts that arrive while history is read are held aside and released after the
    /// replay, minus the ones the replay already carried: nothing is lost, nothing doubled.
    pub(super) async fn reply_with_history(
        &self,
        conn: &Conn<'_>,
        req: &JoinRequest<'_>,
        rule: &ChannelRule,
        subscribe: bool,
        supabase: bool,
        app: &serde_json::Map<String, serde_json::Value>,
    ) -> JoinOutcome {
        let postgres_changes = supabase.then_some([]);
        let node = conn.node;
        let topic = req.topic;
        if rule.history().is_none() {
            if subscribe {
                node.subscribe(topic, conn.id, conn.outbox.clone(), false, conn.cause())
                    .await;
            }
            let outcome = JoinOutcome::Joined(JoinReply {
                postgres_changes,
                app: app.clone(),
                ..JoinReply::default()
            });
            self.send_join_reply(conn, req, &outcome);
            return outcome;
        }
        let params = req
            .params
            .as_json()
            .and_then(|raw| serde_json::from_str::<HistoryParams>(raw.get()).ok())
            .unwrap_or_default();
        // Offsets ride in `ref` only for joins that asked: `recover` (even null) or `offsets`.
        let with_offset = params.offsets || params.recover.is_some();
        let recover = params.recover.flatten();
        if recover.is_some() {
            conn.outbox.hold();
        }
        if subscribe {
            node.subscribe(
                topic,
                conn.id,
                conn.outbox.clone(),
                with_offset,
                conn.cause(),
            )
            .await;
        } else {
            // A duplicate join keeps its subscription but may ask for offsets differently.
            node.hub()
                .subscribe(topic, conn.id, conn.outbox.clone(), with_offset);
        }
        let page = match node
            .history(topic, recover.as_ref().map(|r| r.offset))
            .await
        {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(conn = conn.id, topic, error = %e, "history unavailable");
                let outcome = JoinOutcome::Joined(JoinReply {
                    postgres_changes,
                    recovered: recover.is_some().then_some(false),
                    app: app.clone(),
                    ..JoinReply::default()
                });
                self.send_join_reply(conn, req, &outcome);
                conn.outbox.release(topic, 0);
                return outcome;
            }
        };
        // Offset 0 means "nothing seen yet": a history complete from its first offset recovers
        // it whatever the epoch (the topic may have been created since the client joined).
        let recovered = recover
            .as_ref()
            .map(|r| page.complete && (page.epoch == r.epoch || r.offset == 0));
        let outcome = JoinOutcome::Joined(JoinReply {
            postgres_changes,
            epoch: Some(page.epoch),
            offset: Some(page.top),
            recovered,
            app: app.clone(),
        });
        self.send_join_reply(conn, req, &outcome);
        if recover.is_none() {
            return outcome;
        }
        // Held broadcasts at or below `top` are in the replay (the history was read after they
        // were published), so they are dropped on release.
        let mut replayed_up_to = 0;
        if recovered == Some(true) {
            replayed_up_to = page.top;
            for item in page.items {
                conn.outbox
                    .push(Outgoing::BroadcastWithOffset(item.publication));
            }
        }
        conn.outbox.release(topic, replayed_up_to);
        outcome
    }
}
