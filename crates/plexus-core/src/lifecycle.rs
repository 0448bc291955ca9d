//! The webhook events of a node's connections and topics — `connect`, `signin`,
//! `disconnect`, `channel_occupied`, `channel_vacated` — and those a node reports for a lost node whose
//! state it reaped (`disconnect`, `channel_vacated`, `presence_leave`, marked
//! `"reaped": true`).
//!
//! Occupied and vacated are cluster-wide: with a broker that counts subscribers across the
//! cluster (Redis), the one node whose count took a topic from 0 to more (or from more to 0)
//! reports it (a count out that matches no count in changes nothing);
//! a node alone reports its hub's first and last subscriber. Each is charged to the webhook
//! queue share of the client whose join or leave caused it ([`Cause`]). Both go to the
//! Pusher-format sink too when the topic is a Pusher channel ([`crate::pusher::webhooks`]).

use crate::auth::Identity;
use crate::broker::HoldKey;
use crate::hooks::unix_ms;
use crate::node::Node;
use crate::webhooks::grace::{Emit, Grace, Held, HoldGroup};
use crate::webhooks::{Cause, EventKind};
use crate::ConnId;
use serde_json::{json, Value};
use std::sync::Arc;

impl Node {
    /// A connection opened: the `connect` webhook, and its entry in the cluster's registry
    /// (for the `disconnect` a reaping node reports if this one dies). With a reconnect grace,
    /// a user's connect first claims a `disconnect` of the user held on any node
    /// ([`crate::webhooks::grace`]): then `reconnect` is sent instead of both. That claim is
    /// the returned task, which the connection awaits before anything else it reports.
    pub(crate) fn connection_opened(
        self: &Arc<Self>,
        conn: ConnId,
        who: &Identity,
        addr: std::net::IpAddr,
    ) -> Option<tokio::task::JoinHandle<()>> {
        if self
            .webhooks
            .as_ref()
            .is_some_and(|w| w.enabled(EventKind::Disconnect))
        {
            let info =
                json!({"sub": &*who.sub, "conn": self.public_conn_id(conn), "since": unix_ms()});
            self.broker.clone().connection_open(conn, info.to_string());
        }
        let grace = match &self.grace {
            Some(g) if !who.anonymous => g.clone(),
            _ => {
                self.connected(conn, who, addr, None);
                return None;
            }
        };
        let node = self.clone();
        let who = who.clone();
        Some(tokio::spawn(async move {
            let previous = grace.claim(&HoldKey::Disconnect(who.sub.clone())).await;
            if let Some(p) = &previous {
                node.broker.hold_claimed_connection(p).await;
            }
            node.connected(conn, &who, addr, previous);
        }))
    }

    /// The `connect` webhook, or `reconnect` naming the connection whose held `disconnect`
    /// this one claimed (`previous`).
    fn connected(
        &self,
        conn: ConnId,
        who: &Identity,
        addr: std::net::IpAddr,
        previous: Option<String>,
    ) {
        let by = Cause {
            identity: who,
            addr: Some(addr),
        };
        match previous {
            None => self.webhook_by(EventKind::Connect, by, || {
                json!({"sub": &*who.sub, "conn": self.public_conn_id(conn), "addr": addr.to_string()})
            }),
            Some(previous) => self.webhook_by(EventKind::Reconnect, by, || {
                json!({
                    "sub": &*who.sub,
                    "conn": self.public_conn_id(conn),
                    "previous_conn": previous,
                    "addr": addr.to_string(),
                })
            }),
        }
    }

    /// An anonymous connection signed in: the `signin` webhook, naming the `anon:` id its
    /// earlier events carried (`anonymous`), the user's `sub` its later events carry, and
    /// the topics it stays joined to as the user.
    pub(crate) fn signed_in(&self, conn: ConnId, anonymous: &str, sub: &str, topics: &[Box<str>]) {
        self.webhook(EventKind::Signin, || {
            json!({
                "sub": sub,
                "anonymous": anonymous,
                "conn": self.public_conn_id(conn),
                "topics": topics,
            })
        });
    }

    /// A connection ended: the `disconnect` webhook, with its close code and reason and how
    /// long it lasted. `hold`: the teardown's group of held events (a reconnect grace), to
    /// which the `disconnect` is added instead of being sent; the connection then stays in
    /// the registry until it is resolved.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn connection_closed(
        &self,
        conn: ConnId,
        who: &Identity,
        addr: std::net::IpAddr,
        code: u16,
        reason: &str,
        lasted: std::time::Duration,
        hold: Option<&mut HoldGroup>,
    ) {
        let Some(webhooks) = &self.webhooks else {
            return;
        };
        let fields = || {
            json!({
                "sub": &*who.sub,
                "conn": self.public_conn_id(conn),
                "code": code,
                "reason": reason,
                "duration_ms": lasted.as_millis() as u64,
            })
        };
        let by = Cause {
            identity: who,
            addr: Some(addr),
        };
        if let Some(group) = hold {
            if webhooks.enabled(EventKind::Disconnect) {
                group.registry = Some(conn);
                group.events.push(Held {
                    key: HoldKey::Disconnect(who.sub.clone()),
                    value: self.public_conn_id(conn),
                    emit: Emit::Plexus(EventKind::Disconnect, Some(by.key()), fields()),
                });
            }
            return;
        }
        if webhooks.enabled(EventKind::Disconnect) {
            self.broker.clone().connection_close(conn);
        }
        self.webhook_by(EventKind::Disconnect, by, fields);
    }

    fn wants_occupancy(&self) -> bool {
        self.webhooks.as_ref().is_some_and(|w| {
            w.enabled(EventKind::ChannelOccupied) || w.enabled(EventKind::ChannelVacated)
        }) || self.pusher_wants_occupancy()
    }

    /// A local subscriber joined `topic` (`first`: the first on this node).
    pub(crate) async fn count_subscriber_in(
        &self,
        topic: &str,
        first: bool,
        by: Option<Cause<'_>>,
    ) {
        match self.broker.count_subscriber(topic, true).await {
            Ok(Some((0, after))) if after > 0 => self.topic_reoccupied(topic, by).await,
            Ok(None) if first => self.topic_reoccupied(topic, by).await,
            Ok(_) => {}
            Err(e) if self.wants_occupancy() => {
                tracing::warn!(topic, error = %e, "subscriber count not updated: channel_occupied may be missed");
            }
            Err(_) => {}
        }
    }

    /// A local subscriber left `topic` (`emptied`: the last on this node). Counted in the
    /// background when the broker counts cluster-wide (this runs in synchronous cleanup).
    /// `held`: the leave is a user's connection's teardown and the reconnect grace is on: a
    /// `channel_vacated` it causes is held ([`crate::webhooks::grace`]).
    pub(crate) fn count_subscriber_out(
        &self,
        topic: &str,
        emptied: bool,
        by: Option<Cause<'_>>,
        held: bool,
    ) {
        let grace = self
            .grace
            .as_ref()
            .filter(|_| held && self.wants_occupancy())
            .cloned();
        let vacated =
            |grace: Arc<Grace>, topic: Arc<str>, share: Option<Arc<str>>, conn: String| {
                let mut group = HoldGroup::default();
                group.events.push(Held {
                    key: HoldKey::Vacated(topic.clone()),
                    value: conn,
                    emit: Emit::Vacated { topic, share },
                });
                grace.hold(group);
            };
        // The user whose leave it was (what a claim of the vacancy gets; unused).
        let conn = match (&grace, by) {
            (Some(_), Some(b)) => b.identity.sub.to_string(),
            _ => String::new(),
        };
        if !self.broker.counts_subscribers() {
            if emptied {
                match (by, grace) {
                    (Some(by), Some(g)) => vacated(g, topic.into(), Some(by.key()), conn),
                    (Some(by), None) => {
                        self.webhook_by(EventKind::ChannelVacated, by, || json!({"topic": topic}));
                        self.pusher_webhook(EventKind::ChannelVacated, topic, Some(by), |_| {});
                    }
                    (None, _) => self.topic_vacated(topic, false),
                }
            }
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let broker = self.broker.clone();
        let wanted = self.wants_occupancy();
        let webhooks = wanted.then(|| self.webhooks.clone()).flatten();
        let pusher = wanted.then(|| self.pusher_webhooks.clone()).flatten();
        let share = wanted.then_some(by).flatten().map(|by| by.key());
        let topic: Arc<str> = topic.into();
        rt.spawn(async move {
            match broker.count_subscriber(&topic, false).await {
                Ok(Some((before, 0))) if before > 0 => {
                    if let Some(g) = grace {
                        vacated(g, topic, share, conn);
                        return;
                    }
                    if let Some(w) = webhooks {
                        w.emit_as(
                            EventKind::ChannelVacated,
                            share.clone(),
                            json!({"topic": &*topic}),
                        );
                    }
                    if let Some(w) = pusher {
                        crate::pusher::webhooks::emit(
                            &w,
                            EventKind::ChannelVacated,
                            &topic,
                            share,
                            |_| {},
                        );
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if wanted {
                        tracing::warn!(topic = %topic, error = %e, "subscriber count not updated: channel_vacated may be missed");
                    }
                }
            }
        });
    }

    /// `channel_occupied`, unless it claims a `channel_vacated` of the topic held for the
    /// reconnect grace (then neither is sent).
    async fn topic_reoccupied(&self, topic: &str, by: Option<Cause<'_>>) {
        if let Some(g) = &self.grace {
            if g.claim(&HoldKey::Vacated(topic.into())).await.is_some() {
                return;
            }
        }
        self.topic_occupied(topic, by);
    }

    fn topic_occupied(&self, topic: &str, by: Option<Cause<'_>>) {
        let fields = || json!({"topic": topic});
        match by {
            Some(by) => self.webhook_by(EventKind::ChannelOccupied, by, fields),
            None => self.webhook(EventKind::ChannelOccupied, fields),
        }
        self.pusher_webhook(EventKind::ChannelOccupied, topic, by, |_| {});
    }

    pub(crate) fn topic_vacated(&self, topic: &str, reaped: bool) {
        self.pusher_webhook(EventKind::ChannelVacated, topic, None, |_| {});
        self.webhook(EventKind::ChannelVacated, || {
            let mut e = json!({"topic": topic});
            if reaped {
                e["reaped"] = true.into();
            }
            e
        });
    }

    /// The connections of a lost node that this node reaped: their `disconnect`s.
    pub(crate) fn connections_reaped(&self, node: &str, conns: &[String]) {
        tracing::info!(
            node,
            connections = conns.len(),
            "reporting the disconnects of a lost node"
        );
        let now = unix_ms();
        for info in conns {
            let Ok(v) = serde_json::from_str::<Value>(info) else {
                continue;
            };
            self.webhook(EventKind::Disconnect, || {
                let since = v["since"].as_u64().unwrap_or(now);
                json!({
                    "sub": v["sub"],
                    "conn": v["conn"],
                    "code": crate::limits::close_codes::ABNORMAL,
                    "reason": "node lost",
                    "duration_ms": now.saturating_sub(since),
                    "reaped": true,
                    "lost_node": node,
                })
            });
        }
    }

    /// The server-tracked presences of a lost node on `topic` (each `{"sub", "conn", "key",
    /// "meta"}` as the lost node stored it; Supabase clients' own tracks are not among them,
    /// their keys are the clients' choice): their `presence_leave`s.
    pub(crate) fn presence_reaped(&self, topic: &str, reported: &[Value]) {
        for p in reported {
            self.webhook(EventKind::PresenceLeave, || {
                json!({
                    "sub": p["sub"],
                    "conn": p["conn"],
                    "key": p["key"],
                    "topic": topic,
                    "meta": p["meta"],
                    "reaped": true,
                })
            });
        }
    }
}
