//! Pusher's protocol semantics on top of the core: the app's credentials and, in the modules
//! below, what Pusher defines beyond the wire format (channel kinds and their signatures,
//! presence members keyed by `user_id`, client events). The wire format itself is a pure codec
//! in [`crate::protocol`]; a Pusher channel is a Plexus topic, so rules, limits, hooks, history
//! and metrics apply to Pusher connections as to the others (docs/pusher.md).
//!
//! Here: channel kinds by prefix ([`ChannelKind`]), the channel authorisation signature
//! ([`PusherApp::verify_channel`], constant-time), and socket ids. The WebSocket connection's
//! Pusher handling (subscribe, unsubscribe, sign-in, client events) is in [`connection`], its
//! presence channels' members in [`presence`]; the signatures
//! of Pusher's HTTP API requests are in [`api_auth`]; cache channels in [`cache`];
//! `pusher_internal:subscription_count` in [`subscription_count`];
//! Pusher-format webhooks in [`webhooks`].

pub mod api_auth;
pub mod cache;
pub mod connection;
pub mod presence;
pub mod subscription_count;
pub mod webhooks;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The one Pusher app this server serves (`[pusher]`, `PLEXUS_PUSHER_*`): the `app_id` of the
/// HTTP API's paths, the `key` clients connect with (`/app/{key}`), and the `secret` that
/// signs channel authorisations, API requests and webhooks.
#[derive(Clone)]
pub struct PusherApp {
    pub app_id: String,
    pub key: String,
    pub secret: String,
    /// The most members (users) a presence channel may have; 0: no limit.
    pub max_presence_members: usize,
}

/// Pusher's limit on an event's `data` (HTTP API events and client events), lowered by
/// `limits.max_message_bytes` when that is smaller.
pub const MAX_DATA_BYTES: usize = 10 * 1024;

/// Pusher's own member limit per presence channel.
pub const DEFAULT_MAX_PRESENCE_MEMBERS: usize = 100;

impl std::fmt::Debug for PusherApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PusherApp")
            .field("app_id", &self.app_id)
            .field("key", &self.key)
            .field("secret", &"<hidden>")
            .field("max_presence_members", &self.max_presence_members)
            .finish()
    }
}

impl PusherApp {
    /// `key:hex(HMAC-SHA256(secret, "socket_id:channel[:channel_data]"))`: the `auth` a
    /// subscription to a private (or presence) channel carries.
    pub fn sign_channel(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> String {
        let signature = self
            .channel_mac(socket_id, channel, channel_data)
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{}:{}", self.key, signature)
    }

    /// `None` cannot happen (HMAC takes keys of any length).
    fn channel_mac(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
    ) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).ok()?;
        mac.update(socket_id.as_bytes());
        mac.update(b":");
        mac.update(channel.as_bytes());
        if let Some(data) = channel_data {
            mac.update(b":");
            mac.update(data.as_bytes());
        }
        Some(mac)
    }

    /// Whether `auth` is this app's signature of `socket_id:channel[:channel_data]`: the key
    /// must be the app's and the signature is compared in constant time.
    pub fn verify_channel(
        &self,
        socket_id: &str,
        channel: &str,
        channel_data: Option<&str>,
        auth: &str,
    ) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        key == self.key
            && self
                .channel_mac(socket_id, channel, channel_data)
                .is_some_and(|mac| mac.verify_slice(&signature).is_ok())
    }

    /// `key:hex(HMAC-SHA256(secret, "socket_id::user::user_data"))`: the `auth` of a
    /// `pusher:signin`.
    pub fn sign_user(&self, socket_id: &str, user_data: &str) -> String {
        let signature = self
            .user_mac(socket_id, user_data)
            .map(|mac| hex::encode(mac.finalize().into_bytes()))
            .unwrap_or_default();
        format!("{}:{}", self.key, signature)
    }

    /// Whether `auth` is this app's signature of `socket_id::user::user_data` (constant time).
    pub fn verify_user(&self, socket_id: &str, user_data: &str, auth: &str) -> bool {
        let Some((key, signature)) = auth.split_once(':') else {
            return false;
        };
        let Ok(signature) = hex::decode(signature) else {
            return false;
        };
        key == self.key
            && self
                .user_mac(socket_id, user_data)
                .is_some_and(|mac| mac.verify_slice(&signature).is_ok())
    }

    fn user_mac(&self, socket_id: &str, user_data: &str) -> Option<Hmac<Sha256>> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes()).ok()?;
        mac.update(socket_id.as_bytes());
        mac.update(b"::user::");
        mac.update(user_data.as_bytes());
        Some(mac)
    }
}

/// What a channel name's prefix makes it, as Pusher defines channel kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChannelKind {
    Public,
    /// `private-`: a signature over `socket_id:channel` is needed to subscribe.
    Private,
    /// `private-encrypted-`: signed as a private channel, relayed opaquely, no client events.
    PrivateEncrypted,
    /// `presence-`: a signature over `socket_id:channel:channel_data`; members by `user_id`.
    Presence,
}

impl ChannelKind {
    pub fn of(channel: &str) -> Self {
        if channel.starts_with("private-encrypted-") {
            ChannelKind::PrivateEncrypted
        } else if channel.starts_with("private-") {
            ChannelKind::Private
        } else if channel.starts_with("presence-") {
            ChannelKind::Presence
        } else {
            ChannelKind::Public
        }
    }
}

impl ChannelKind {
    /// `presence-` (members by `user_id`).
    pub fn is_presence(self) -> bool {
        self == ChannelKind::Presence
    }
}

/// A new socket id: `<digits>.<digits>`, as Pusher's (two random 32-bit numbers: unguessable
/// enough that one connection cannot replay a signature made for another).
/// Whether `s` is a Pusher socket id: `<digits>.<digits>`, each part 1 to 20 digits.
pub fn valid_socket_id(s: &str) -> bool {
    s.split_once('.').is_some_and(|(a, b)| {
        [a, b]
            .iter()
            .all(|p| (1..=20).contains(&p.len()) && p.bytes().all(|c| c.is_ascii_digit()))
    })
}

pub fn new_socket_id() -> String {
    format!("{}.{}", rand::random::<u32>(), rand::random::<u32>())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> PusherApp {
        PusherApp {
            app_id: "1".into(),
            key: "278d425bdf160c739803".into(),
            secret: "7ad3773142a6692b25b8".into(),
            max_presence_members: 100,
        }
    }

    #[test]
    fn signs_as_pusher_s_documentation_does() {
        // The worked example of Pusher's "Generating the authorization string" docs.
        let auth = app().sign_channel("1234.1234", "private-foobar", None);
        assert_eq!(
            auth,
            "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
        );
        assert!(app().verify_channel("1234.1234", "private-foobar", None, &auth));
        // Another socket, another channel, another key, garbage: refused.
        assert!(!app().verify_channel("1234.1235", "private-foobar", None, &auth));
        assert!(!app().verify_channel("1234.1234", "private-foobaz", None, &auth));
        let other_key = auth.replacen("278d", "378d", 1);
        assert!(!app().verify_channel("1234.1234", "private-foobar", None, &other_key));
        assert!(!app().verify_channel("1234.1234", "private-foobar", None, "nocolon"));
        assert!(!app().verify_channel(
            "1234.1234",
            "private-foobar",
            None,
            "278d425bdf160c739803:zz"
        ));
    }

    #[test]
    fn kinds_and_socket_ids() {
        assert_eq!(ChannelKind::of("a"), ChannelKind::Public);
        assert_eq!(ChannelKind::of("private-a"), ChannelKind::Private);
        assert_eq!(
            ChannelKind::of("private-encrypted-a"),
            ChannelKind::PrivateEncrypted
        );
        assert_eq!(ChannelKind::of("presence-a"), ChannelKind::Presence);
        assert!(ChannelKind::of("presence-cache-a").is_presence());
        assert_eq!(ChannelKind::of("private-cache-a"), ChannelKind::Private);
        let id = new_socket_id();
        let (a, b) = id.split_once('.').unwrap();
        assert!(a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok());
        assert!(valid_socket_id(&id));
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "1 .2",
            "123456789012345678901.1",
        ] {
            assert!(!valid_socket_id(bad), "{bad}");
        }
    }
}
