//! Where things live in Redis: every key and channel name is built here. A topic's keys and
//! channel carry the topic as their hash tag (`<prefix>:<kind>:{<topic>}`), so that in a Redis
//! Cluster a topic lives on one shard and its scripts stay atomic; a node's own keys carry the
//! node id (`<prefix>:<kind>:{<node>}`). The table is in docs/deployment.md ("Redis Cluster and
//! Sentinel").

use super::RedisBroker;
use crate::broker::CounterKey;

impl RedisBroker {
    pub(super) fn key(&self, parts: &[&str]) -> String {
        let mut k = self.cfg.prefix.clone();
        for p in parts {
            k.push(':');
            k.push_str(p);
        }
        k
    }

    /// A key (or sharded channel) of `topic`: `<prefix>:<kind>:{<topic>}`. Every key of a topic
    /// carries the topic as its hash tag, so that in a Redis Cluster a topic lives on one shard
    /// and its scripts stay atomic (see [`tag`]).
    pub(super) fn topic_key(&self, kind: &str, topic: &str) -> String {
        format!("{}:{kind}:{{{}}}", self.cfg.prefix, tag(topic))
    }

    /// A key (or channel) of a node: `<prefix>:<kind>:{<node>}` (one slot for all of a node's).
    pub(super) fn node_key(&self, kind: &str, node: &str) -> String {
        format!("{}:{kind}:{{{node}}}", self.cfg.prefix)
    }

    /// The key of a cluster counter: `<prefix>:cnt:{<tag>}<counter>`, tagged with the topic for
    /// a topic's counters (subscribers, members), else with the counter itself.
    pub(super) fn counter_key(&self, key: &CounterKey) -> String {
        let name = key.to_string();
        let tag = match key {
            CounterKey::Subscribers(t) | CounterKey::Members { topic: t, .. } => tag(t),
            _ => tag(&name),
        };
        format!("{}:cnt:{{{tag}}}{name}", self.cfg.prefix)
    }

    /// The counter named in a key of [`Self::counter_key`] (`None` for any other key).
    pub(super) fn counter_name<'a>(&self, key: &'a str) -> Option<&'a str> {
        let rest = key.strip_prefix(&self.cfg.prefix)?.strip_prefix(":cnt:{")?;
        rest.split_once('}').map(|(_, name)| name)
    }

    pub(super) fn topic_channel(&self, topic: &str) -> String {
        self.topic_key("t", topic)
    }

    /// The topic of a channel of [`Self::topic_channel`].
    pub(super) fn channel_topic(&self, channel: &str) -> Option<String> {
        let tag = channel
            .strip_prefix(&self.cfg.prefix)?
            .strip_prefix(":t:{")?
            .strip_suffix('}')?;
        untag(tag)
    }

    /// `PUBLISH`, or `SPUBLISH` in a cluster (sharded pub/sub).
    pub(super) fn publish_cmd(&self, channel: &str, message: &[u8]) -> redis::Cmd {
        let mut c = redis::cmd(self.publish_command());
        c.arg(channel).arg(message);
        c
    }

    pub(super) fn control_channel(&self) -> String {
        self.key(&["ctl"])
    }
}

/// A topic as a Redis hash tag: the topic itself, unless it holds a `}` (which would end the
/// tag early), starts with `~` or is empty: then `~` and its bytes in hex.
/// `CLUSTER KEYSLOT <prefix>:t:{<tag>}` names the slot of the topic.
pub(super) fn tag(topic: &str) -> std::borrow::Cow<'_, str> {
    if topic.is_empty() || topic.contains('}') || topic.starts_with('~') {
        std::borrow::Cow::Owned(format!("~{}", hex::encode(topic.as_bytes())))
    } else {
        std::borrow::Cow::Borrowed(topic)
    }
}

/// The topic a [`tag`] stands for.
pub(super) fn untag(tag: &str) -> Option<String> {
    match tag.strip_prefix('~') {
        Some(h) => hex::decode(h).ok().and_then(|b| String::from_utf8(b).ok()),
        None => Some(tag.to_owned()),
    }
}
