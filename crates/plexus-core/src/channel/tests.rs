//! Unit tests of a connection's channels against the in-memory broker: joins, leaves,
//! recovery, presence and offsets, read from what each connection was sent.
use super::*;
use crate::auth::{Algorithm, Verifier, VerifyKey, VerifyOptions};
use crate::broker::memory::MemoryBroker;
use crate::node::NodeConfig;
use crate::policy::Policy;

fn node(rules: Vec<ChannelRule>) -> Arc<Node> {
    let key = VerifyKey::secret(Algorithm::HS256, b"0123456789abcdef", None).unwrap();
    let config = NodeConfig {
        verifier: Verifier::new(vec![key], VerifyOptions::default()).unwrap(),
        policy: Policy::new(rules).unwrap(),
        limits: Default::default(),
        admission: Default::default(),
        hooks: None,
        pusher: None,
        join_authority: None,
    };
    Node::new(config, |hub| MemoryBroker::new(hub))
}

/// One connection's parts: its channels and what it was sent, as JSON texts.
struct Client {
    node: Arc<Node>,
    id: ConnId,
    identity: Identity,
    outbox: Arc<Outbox>,
    channels: Channels,
}

impl Client {
    fn new(node: &Arc<Node>, sub: &str) -> Self {
        let identity = Identity::new(sub);
        let (id, outbox) = node.register(&identity).unwrap();
        Client {
            node: node.clone(),
            id,
            identity,
            outbox,
            channels: Channels::default(),
        }
    }

    async fn join(&mut self, topic: &str, join_ref: &str, params: &str) -> JoinOutcome {
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: None,
            pusher_socket: None,
        };
        let params =
            Payload::Json(serde_json::value::RawValue::from_string(params.into()).unwrap());
        let req = JoinRequest {
            unmatched: None,
            member: None,
            topic,
            join_ref: Some(join_ref),
            msg_ref: Some(join_ref),
            params: &params,
            reply: true,
        };
        self.channels.join(&conn, req).await
    }

    async fn leave(&mut self, topic: &str) {
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: None,
            pusher_socket: None,
        };
        let msg = Message {
            join_ref: Some("1".into()),
            msg_ref: Some("9".into()),
            topic: topic.into(),
            event: events::LEAVE.into(),
            payload: Payload::empty_object(),
        };
        self.channels.leave(&conn, &msg).await;
    }

    async fn end(&mut self) {
        let conn = Conn {
            node: &self.node,
            id: self.id,
            identity: &self.identity,
            outbox: &self.outbox,
            addr: None,
            pusher_socket: None,
        };
        for d in self.channels.depart_all(&conn, None) {
            d.finish(&self.node).await;
        }
    }

    fn sent(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.outbox.drain_into(&mut out);
        out.iter()
            .map(|o| {
                String::from_utf8(o.encode(crate::protocol::Vsn::V2).unwrap().bytes().to_vec())
                    .unwrap()
            })
            .collect()
    }
}

#[tokio::test]
async fn a_duplicate_join_that_asks_for_offsets_gets_them() {
    let mut rule = ChannelRule::open("room:*");
    rule.history_size = 10;
    let node = node(vec![rule]);
    let mut c = Client::new(&node, "alice");
    assert!(matches!(
        c.join("room:o", "1", "{}").await,
        JoinOutcome::Joined(_)
    ));
    node.publish("room:o", "msg", Payload::empty_object(), None)
        .await
        .unwrap();
    let sent = c.sent();
    assert!(
        sent.iter()
            .any(|m| m.starts_with(r#"[null,null,"room:o","msg""#)),
        "{sent:?}"
    );
    assert!(matches!(
        c.join("room:o", "2", r#"{"recover":null}"#).await,
        JoinOutcome::Joined(_)
    ));
    node.publish("room:o", "msg", Payload::empty_object(), None)
        .await
        .unwrap();
    let sent = c.sent();
    assert!(
        sent.iter()
            .any(|m| m.starts_with(r#"[null,"2","room:o","msg""#)),
        "{sent:?}"
    );
}

#[tokio::test]
async fn a_join_the_rules_refuse_is_answered_and_leaves_nothing() {
    let node = node(vec![ChannelRule::open("room:*")]);
    let mut c = Client::new(&node, "alice");
    let outcome = c.join("secret:1", "1", "{}").await;
    assert_eq!(
        outcome,
        JoinOutcome::Refused {
            reason: "unauthorized".into(),
            retry: false
        }
    );
    assert_eq!(
        c.sent(),
        vec![
            r#"["1","1","secret:1","phx_reply",{"response":{"reason":"unauthorized","retry":false},"status":"error"}]"#
        ]
    );
    assert_eq!(c.channels.len(), 0);
    assert_eq!(node.hub().subscriber_count("secret:1"), 0);
}

#[tokio::test]
async fn a_join_with_a_null_ref_is_still_answered() {
    let node = node(vec![ChannelRule::open("room:*")]);
    let c = Client::new(&node, "alice");
    let conn = Conn {
        node: &c.node,
        id: c.id,
        identity: &c.identity,
        outbox: &c.outbox,
        addr: None,
        pusher_socket: None,
    };
    let mut channels = Channels::default();
    let params = Payload::empty_object();
    let req = JoinRequest {
        unmatched: None,
        member: None,
        topic: "room:1",
        join_ref: None,
        msg_ref: None,
        params: &params,
        reply: true,
    };
    assert!(matches!(
        channels.join(&conn, req).await,
        JoinOutcome::Joined(_)
    ));
    assert_eq!(
        c.sent(),
        vec![r#"[null,null,"room:1","phx_reply",{"response":{},"status":"ok"}]"#]
    );
}

#[tokio::test]
async fn max_per_user_is_given_back_when_a_channel_ends() {
    let mut rule = ChannelRule::open("room:*");
    rule.max_per_user = Some(1);
    let node = node(vec![rule]);
    let mut a = Client::new(&node, "alice");
    let mut b = Client::new(&node, "alice");
    assert!(matches!(
        a.join("room:1", "1", "{}").await,
        JoinOutcome::Joined(_)
    ));
    assert!(matches!(
        b.join("room:1", "1", "{}").await,
        JoinOutcome::Refused { retry: true, .. }
    ));
    // A duplicate join on the same connection is not a second join.
    assert!(matches!(
        a.join("room:1", "2", "{}").await,
        JoinOutcome::Joined(_)
    ));
    a.end().await;
    assert_eq!(node.joins().count("room:1", "alice"), 0);
    assert!(matches!(
        b.join("room:1", "3", "{}").await,
        JoinOutcome::Joined(_)
    ));
    b.leave("room:1").await;
    assert_eq!(node.joins().count("room:1", "alice"), 0);
    assert_eq!(node.hub().subscriber_count("room:1"), 0);
}

#[tokio::test]
async fn leave_replies_then_closes_and_a_duplicate_join_closes_the_old_one() {
    let node = node(vec![ChannelRule::open("room:*")]);
    let mut c = Client::new(&node, "alice");
    c.join("room:1", "1", "{}").await;
    c.join("room:1", "2", "{}").await;
    c.leave("room:1").await;
    assert_eq!(
        c.sent(),
        vec![
            r#"["1","1","room:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","1","room:1","phx_close",{}]"#,
            r#"["2","2","room:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["1","9","room:1","phx_reply",{"response":{},"status":"ok"}]"#,
            r#"["2","2","room:1","phx_close",{}]"#,
        ]
    );
}

#[tokio::test]
async fn recovery_replays_what_was_missed_after_the_reply() {
    let mut rule = ChannelRule::open("room:*");
    rule.history_size = 10;
    let node = node(vec![rule]);
    for n in 1..=5 {
        let payload = Payload::json(&serde_json::json!({ "n": n })).unwrap();
        node.publish("room:h", "msg", payload, None).await.unwrap();
    }
    let mut c = Client::new(&node, "alice");
    let JoinOutcome::Joined(first) = c.join("room:h", "1", "{}").await else {
        panic!("join refused")
    };
    assert_eq!((first.offset, first.recovered), (Some(5), None));
    let epoch = first.epoch.clone().unwrap();
    c.end().await;
    c.sent();

    let mut c = Client::new(&node, "alice");
    let params = format!(r#"{{"recover":{{"epoch":"{epoch}","offset":3}}}}"#);
    let JoinOutcome::Joined(reply) = c.join("room:h", "1", &params).await else {
        panic!("join refused")
    };
    assert_eq!(reply.recovered, Some(true));
    let sent = c.sent();
    assert!(sent[0].contains(r#""recovered":true"#), "{sent:?}");
    assert_eq!(
        sent[1..],
        [
            r#"[null,"4","room:h","msg",{"n":4}]"#,
            r#"[null,"5","room:h","msg",{"n":5}]"#
        ]
    );
    // Another epoch cannot be recovered.
    let mut d = Client::new(&node, "bob");
    let JoinOutcome::Joined(reply) = d
        .join("room:h", "1", r#"{"recover":{"epoch":"other","offset":3}}"#)
        .await
    else {
        panic!("join refused")
    };
    assert_eq!(reply.recovered, Some(false));
    assert_eq!(d.sent().len(), 1);
}
