//! Publishing through the node: broadcasts from the API, from clients' pushes and from the
//! server itself (presence diffs), each given its topic's history rule (or a Pusher cache
//! channel's last event) and counted, and history reads.

use super::{Node, PublishError};
use crate::broker::{BrokerError, HistoryPage};
use crate::protocol::Payload;
use crate::publication::{Publication, Sender};
use crate::ConnId;
use std::sync::atomic::Ordering;

impl Node {
    /// Broadcasts `event` with `payload` to every subscriber of `topic` in the cluster,
    /// except the local connection `exclude`. On a topic whose rule keeps history the broadcast
    /// is retained and its offset returned.
    pub async fn publish(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
    ) -> Result<Option<u64>, PublishError> {
        self.publish_from(topic, event, payload, exclude, Sender::default())
            .await
    }

    /// [`Node::publish`] with what receivers may be told about the sender, or must exclude,
    /// on every node (see [`Sender`]).
    pub async fn publish_from(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
        sender: Sender,
    ) -> Result<Option<u64>, PublishError> {
        let history = self.history_for(topic, false);
        self.publish_with(topic, event, payload, exclude, sender, history)
            .await
    }

    /// A client's push: [`Node::publish_from`], except that it never becomes a Pusher cache
    /// channel's last event (the cache holds what the server published, as Pusher's).
    pub async fn publish_client(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
        sender: Sender,
    ) -> Result<Option<u64>, PublishError> {
        let history = self.history_for(topic, true);
        self.publish_with(topic, event, payload, exclude, sender, history)
            .await
    }

    async fn publish_with(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
        exclude: Option<ConnId>,
        sender: Sender,
        history: Option<crate::publication::HistoryOpts>,
    ) -> Result<Option<u64>, PublishError> {
        let mut publication = Publication::new(topic, event, payload, exclude)?.with_sender(sender);
        if let Some(opts) = history {
            publication = publication.with_history(opts);
        }
        self.send(publication).await
    }

    /// What `topic` keeps as history: its rule's, else (in Pusher mode, for what the server
    /// publishes, not clients' pushes) a Pusher cache channel's last event.
    fn history_for(&self, topic: &str, client: bool) -> Option<crate::publication::HistoryOpts> {
        self.policy.history_for(topic).or_else(|| {
            (self.pusher_mode && !client && crate::pusher::cache::is_cache_channel(topic))
                .then(crate::pusher::cache::history_opts)
        })
    }

    /// Publishes a server-generated event (presence diffs) that never enters history.
    pub async fn publish_unlogged(
        &self,
        topic: &str,
        event: &str,
        payload: Payload,
    ) -> Result<(), PublishError> {
        let publication = Publication::new(topic, event, payload, None)?;
        self.send(publication).await.map(|_| ())
    }

    async fn send(&self, publication: Publication) -> Result<Option<u64>, PublishError> {
        self.counters.broadcasts.fetch_add(1, Ordering::Relaxed);
        self.broker.publish(publication).await.map_err(|e| {
            self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
            PublishError::Broker(e)
        })
    }

    /// The history of `topic` after `since` (see [`Broker::history`](crate::broker::Broker::history)).
    pub async fn history(
        &self,
        topic: &str,
        since: Option<u64>,
    ) -> Result<HistoryPage, BrokerError> {
        self.broker.history(topic, since).await.inspect_err(|_| {
            self.counters.broker_errors.fetch_add(1, Ordering::Relaxed);
        })
    }
}
