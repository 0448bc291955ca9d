//! Limits that protect a node from clients: sizes, queue depths and timeouts.

use std::time::Duration;

/// Node-wide limits applied to every connection, whatever its transport.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest inbound WebSocket message (after reassembly of fragments). Larger: close 1009.
    pub max_message_bytes: usize,
    /// A connection that sends nothing (not even a heartbeat) for this long is closed (4000).
    pub idle_timeout: Duration,
    /// How long a connection whose token expired stays open to refresh it in-band
    /// (`refresh_token` on topic `phoenix`) before it is closed with 4001.
    pub expiry_grace: Duration,
    /// A write that cannot complete for this long (the client stopped reading) drops the
    /// connection.
    pub write_timeout: Duration,
    /// Frames waiting to be written to one connection before it counts as a slow consumer.
    pub outbox_max_frames: usize,
    /// Bytes waiting to be written to one connection before it counts as a slow consumer.
    pub outbox_max_bytes: usize,
    /// Longest topic name, in bytes.
    pub max_topic_bytes: usize,
    /// Longest event name, in bytes.
    pub max_event_bytes: usize,
    /// How long a LongPoll request waits for messages before answering 204; a session whose
    /// client stops polling for two windows expires.
    pub longpoll_window: Duration,
    /// Channels one connection may have joined at once.
    pub max_channels_per_connection: usize,
    /// Sustained inbound messages per second per connection (0 = unlimited).
    pub messages_per_second: f64,
    /// Inbound messages one connection may send in a burst. Past it, messages get a
    /// `rate limited` error reply; `message_burst` refusals in a row close the connection (1008).
    pub message_burst: u32,
    /// Bounds of the history retained in memory (the embedded broker).
    pub history: HistoryBudget,
}

/// Bounds of the retained history of a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryBudget {
    /// All topics together, in bytes of retained frames.
    pub max_bytes: usize,
    /// One topic, in bytes (the oldest entries go first).
    pub topic_max_bytes: usize,
    /// Entries of a topic without subscribers on this node that nobody published to for this
    /// long are dropped (whatever its TTL).
    pub idle: Duration,
}

impl Default for HistoryBudget {
    fn default() -> Self {
        HistoryBudget {
            max_bytes: 64 * 1024 * 1024,
            topic_max_bytes: 4 * 1024 * 1024,
            idle: Duration::from_secs(3600),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 1024 * 1024,
            idle_timeout: Duration::from_secs(60),
            write_timeout: Duration::from_secs(10),
            expiry_grace: Duration::from_secs(10),
            outbox_max_frames: 1024,
            outbox_max_bytes: 8 * 1024 * 1024,
            max_topic_bytes: 255,
            max_event_bytes: 255,
            max_channels_per_connection: 100,
            longpoll_window: Duration::from_secs(10),
            messages_per_second: 50.0,
            message_burst: 100,
            history: HistoryBudget::default(),
        }
    }
}

/// Why a topic or event name is refused; the text goes to the client as the `reason`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("empty topic")]
    EmptyTopic,
    #[error("topic too long")]
    TopicTooLong,
    #[error("invalid event name")]
    BadEvent,
    /// Events the server owns (`phx_*`, presence, token events; see
    /// [`events::is_reserved`](crate::protocol::events::is_reserved)).
    #[error("reserved event")]
    ReservedEvent,
}

impl Limits {
    /// Checks a topic name that a client joins or the API publishes to.
    pub fn check_topic(&self, topic: &str) -> Result<(), InvalidName> {
        if topic.is_empty() {
            Err(InvalidName::EmptyTopic)
        } else if topic.len() > self.max_topic_bytes {
            Err(InvalidName::TopicTooLong)
        } else {
            Ok(())
        }
    }

    /// Checks the name of an event that a client pushes or the API publishes.
    pub fn check_event(&self, event: &str) -> Result<(), InvalidName> {
        if crate::protocol::events::is_reserved(event) {
            Err(InvalidName::ReservedEvent)
        } else if event.is_empty() || event.len() > self.max_event_bytes {
            Err(InvalidName::BadEvent)
        } else {
            Ok(())
        }
    }
}

/// WebSocket close codes Plexus uses (documented in `docs/protocol.md`).
pub mod close_codes {
    /// The server disconnected this client on purpose (API or admin action).
    pub const FORCED_DISCONNECT: u16 = 1001;
    /// No close frame: the connection was lost (never sent on the wire; reported in the
    /// `disconnect` webhook).
    pub const ABNORMAL: u16 = 1006;
    /// Sustained abuse: the client kept sending past its message rate limit.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// An inbound message was larger than `max_message_bytes`.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// Unexpected server-side failure.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// The node is draining (restart or shutdown): reconnect, possibly to another node.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client read too slowly and its outbound queue overflowed.
    pub const SLOW_CONSUMER: u16 = 1013;
    /// Nothing was received for `idle_timeout` (no heartbeat).
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's token expired and was not refreshed within the grace period.
    pub const TOKEN_EXPIRED: u16 = 4001;
}
