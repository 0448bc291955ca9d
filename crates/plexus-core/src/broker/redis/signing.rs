//! Signed node-to-node messages: what travels on a node's channel (`<prefix>:n:<node>`: calls
//! and their answers) and on the control channel (`<prefix>:ctl`: a user's disconnect on every
//! node) carries its sender, an id, the time it was sent and an HMAC-SHA256 over all of them,
//! the channel it was sent to and its body, keyed from the cluster secret every node shares
//! (`redis.cluster_secret`, else derived from the API key; see docs/security.md).
//!
//! Wire format: `<kind> <from> <id> <ms> <mac>\n<body>`, `kind` one of `Q` (a call), `R` (its
//! answer, `id` the call's) and `D` (a disconnect, body the user's `sub`), `ms` the sender's
//! Unix time in milliseconds and `mac` 64 hex digits. A receiver refuses (drops, counts and logs
//! at a rate limit) a message that is unsigned, wrongly signed, addressed to another channel,
//! more than [`MAX_SKEW`] away from its own clock, or a call or disconnect it already took
//! (a replay within the skew window). Topic fan-out (`<prefix>:t:<topic>`) is not signed: it
//! costs a MAC per broadcast, and whoever can write to Redis can rewrite history and presence
//! anyway; the secret stops them from commanding nodes.

use hmac::{Hmac, Mac};
use parking_lot::Mutex;
use sha2::Sha256;
use std::collections::{HashSet, VecDeque};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

type HmacSha256 = Hmac<Sha256>;

/// How far a message's time may be from the receiver's clock (either way).
pub(super) const MAX_SKEW: Duration = Duration::from_secs(30);
/// Calls and disconnects remembered to refuse their replays (they are remembered for twice
/// [`MAX_SKEW`], at most this many; the oldest go first).
const MAX_REMEMBERED: usize = 100_000;

/// What a signed message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum Kind {
    /// A call to the node whose channel carries it.
    Call,
    /// The answer to a call, on the caller's channel.
    Reply,
    /// Disconnect a user on every node (control channel).
    Disconnect,
}

impl Kind {
    fn letter(self) -> &'static str {
        match self {
            Kind::Call => "Q",
            Kind::Reply => "R",
            Kind::Disconnect => "D",
        }
    }

    fn parse(s: &str) -> Option<Kind> {
        match s {
            "Q" => Some(Kind::Call),
            "R" => Some(Kind::Reply),
            "D" => Some(Kind::Disconnect),
            _ => None,
        }
    }
}

/// A message whose signature checked out.
#[derive(Debug)]
pub(super) struct Opened<'a> {
    pub kind: Kind,
    pub from: &'a str,
    pub id: u64,
    pub body: &'a [u8],
}

/// Why a message was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(super) enum Refused {
    #[error("not a signed node message")]
    Malformed,
    #[error("wrong signature")]
    BadSignature,
    #[error("stale or from the future (more than 30 s off this node's clock)")]
    Stale,
    #[error("replayed")]
    Replayed,
}

/// Signs and checks node messages with the cluster's key.
pub(super) struct Signer {
    key: HmacSha256,
    /// Calls and disconnects taken recently, `(kind, from, id)`, oldest first with their time.
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    order: VecDeque<(u64, (Kind, String, u64))>,
    set: HashSet<(Kind, String, u64)>,
}

/// An HMAC-SHA256 keyed with `key` (HMAC takes keys of any length).
fn keyed(key: &[u8]) -> HmacSha256 {
    match HmacSha256::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Signer {
    /// The key is derived from `secret` (the configured cluster secret, or the API key), so
    /// that the secret itself is never the MAC key of anything else.
    pub(super) fn new(secret: &[u8]) -> Signer {
        let mut derive = keyed(secret);
        derive.update(b"plexus cluster messages v1");
        let key = keyed(&derive.finalize().into_bytes());
        Signer {
            key,
            seen: Mutex::new(Seen::default()),
        }
    }

    fn mac(&self, channel: &str, header: &str, body: &[u8]) -> HmacSha256 {
        let mut mac = self.key.clone();
        mac.update(channel.as_bytes());
        mac.update(b"\0");
        mac.update(header.as_bytes());
        mac.update(b"\n");
        mac.update(body);
        mac
    }

    /// The message `body` of `kind` from node `from` with `id`, signed for `channel`.
    pub(super) fn seal(
        &self,
        channel: &str,
        kind: Kind,
        from: &str,
        id: u64,
        body: &[u8],
    ) -> Vec<u8> {
        self.seal_at(channel, kind, from, id, body, now_ms())
    }

    fn seal_at(
        &self,
        channel: &str,
        kind: Kind,
        from: &str,
        id: u64,
        body: &[u8],
        ms: u64,
    ) -> Vec<u8> {
        let header = format!("{} {from} {id} {ms}", kind.letter());
        let tag = hex::encode(self.mac(channel, &header, body).finalize().into_bytes());
        let mut out = Vec::with_capacity(header.len() + tag.len() + 2 + body.len());
        out.extend_from_slice(header.as_bytes());
        out.push(b' ');
        out.extend_from_slice(tag.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(body);
        out
    }

    /// Checks a message received on `channel`: its signature (in constant time), its time, and
    /// that a call or disconnect was not taken before.
    pub(super) fn open<'a>(&self, channel: &str, data: &'a [u8]) -> Result<Opened<'a>, Refused> {
        self.open_at(channel, data, now_ms())
    }

    fn open_at<'a>(&self, channel: &str, data: &'a [u8], now: u64) -> Result<Opened<'a>, Refused> {
        let nl = data
            .iter()
            .position(|b| *b == b'\n')
            .ok_or(Refused::Malformed)?;
        let line = std::str::from_utf8(&data[..nl]).map_err(|_| Refused::Malformed)?;
        let body = &data[nl + 1..];
        let (header, tag) = line.rsplit_once(' ').ok_or(Refused::Malformed)?;
        let mut parts = header.split(' ');
        let (Some(kind), Some(from), Some(id), Some(ms), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::Malformed);
        };
        let kind = Kind::parse(kind).ok_or(Refused::Malformed)?;
        let id: u64 = id.parse().map_err(|_| Refused::Malformed)?;
        let ms: u64 = ms.parse().map_err(|_| Refused::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| Refused::Malformed)?;
        // `verify_slice` compares in constant time.
        self.mac(channel, header, body)
            .verify_slice(&tag)
            .map_err(|_| Refused::BadSignature)?;
        let skew = MAX_SKEW.as_millis() as u64;
        if now.abs_diff(ms) > skew {
            return Err(Refused::Stale);
        }
        if kind != Kind::Reply {
            // An answer is taken once by its waiting call; calls and disconnects are
            // remembered for as long as they could pass the time check.
            let entry = (kind, from.to_owned(), id);
            let mut seen = self.seen.lock();
            while let Some((at, _)) = seen.order.front() {
                if now.saturating_sub(*at) <= 2 * skew && seen.order.len() < MAX_REMEMBERED {
                    break;
                }
                if let Some((_, old)) = seen.order.pop_front() {
                    seen.set.remove(&old);
                }
            }
            if !seen.set.insert(entry.clone()) {
                return Err(Refused::Replayed);
            }
            seen.order.push_back((now, entry));
        }
        Ok(Opened {
            kind,
            from,
            id,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signed_messages_open_once_and_nothing_else_does() {
        let s = Signer::new(b"cluster-secret-0123456789");
        let msg = s.seal("p:n:b", Kind::Call, "a", 7, b"plexus-admin:drain");
        let opened = s.open("p:n:b", &msg).unwrap();
        assert_eq!(
            (opened.kind, opened.from, opened.id, opened.body),
            (Kind::Call, "a", 7, &b"plexus-admin:drain"[..])
        );
        // The same call again: a replay.
        assert_eq!(s.open("p:n:b", &msg).unwrap_err(), Refused::Replayed);
        // Another channel, another secret, an altered body, unsigned: refused.
        let msg = s.seal("p:n:b", Kind::Call, "a", 8, b"x");
        assert_eq!(s.open("p:n:c", &msg).unwrap_err(), Refused::BadSignature);
        let other = Signer::new(b"another-secret-0123456789");
        assert_eq!(
            other.open("p:n:b", &msg).unwrap_err(),
            Refused::BadSignature
        );
        let mut altered = msg.clone();
        *altered.last_mut().unwrap() = b'y';
        assert_eq!(
            s.open("p:n:b", &altered).unwrap_err(),
            Refused::BadSignature
        );
        assert_eq!(
            s.open("p:n:b", b"Q 8 nobody\nplexus-admin:drain")
                .unwrap_err(),
            Refused::Malformed
        );
        assert_eq!(
            s.open("p:ctl", b"disconnect nobody alice").unwrap_err(),
            Refused::Malformed
        );
        // Too old or too far ahead.
        let now = now_ms();
        let old = s.seal_at("p:ctl", Kind::Disconnect, "a", 1, b"alice", now - 31_000);
        assert_eq!(s.open("p:ctl", &old).unwrap_err(), Refused::Stale);
        let ahead = s.seal_at("p:ctl", Kind::Disconnect, "a", 2, b"alice", now + 31_000);
        assert_eq!(s.open("p:ctl", &ahead).unwrap_err(), Refused::Stale);
        // Answers are not remembered (their call takes them once).
        let r = s.seal("p:n:a", Kind::Reply, "b", 7, b"{}");
        assert!(s.open("p:n:a", &r).is_ok());
        assert!(s.open("p:n:a", &r).is_ok());
    }
}
