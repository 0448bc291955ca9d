//! The header line of a publication on a topic's Redis channel, before its frame:
//! `P1 <origin> <offset|-> <kind>[ u=<hex>][ x=<socket_id>][ e=<epoch>][ i=<seq>]\n<frame>`.
//!
//! `origin` is the publishing node (`node` or `node/conn` when a local connection is
//! excluded), `offset` the history offset (`-` without history), `kind` `t` or `b` (text or
//! binary frame). The optional fields carry the publication's [`Sender`]: `u=` the sender's
//! presence key, hex-encoded (any bytes), `x=` a Pusher `socket_id` to exclude (digits and a
//! dot). `e=` is a history publication's epoch; `i=` a plain publication's number among its
//! origin's, the same when it is sent again ([`super::confirm`]), so that receivers drop the
//! copies. Nodes that do not know a field ignore it, so the format grows without breaking a
//! rolling upgrade.

use crate::publication::{Publication, Sender};
use crate::pusher::valid_socket_id as is_socket_id;

/// The optional header fields of `p`'s sender: empty, or starting with a space.
pub(super) fn sender_header(p: &Publication) -> String {
    let Some(sender) = &p.sender else {
        return String::new();
    };
    let mut out = String::new();
    if let Some(key) = &sender.presence_key {
        out.push_str(" u=");
        out.push_str(&hex::encode(key.as_bytes()));
    }
    if let Some(socket) = sender.exclude_socket.as_deref().filter(|s| is_socket_id(s)) {
        out.push_str(" x=");
        out.push_str(socket);
    }
    out
}

/// The sender the header fields after `kind` describe (unknown or unreadable fields are
/// skipped).
pub(super) fn parse_sender<'a>(fields: impl Iterator<Item = &'a str>) -> Sender {
    let mut sender = Sender::default();
    for field in fields {
        match field.split_once('=') {
            Some(("u", hex)) => {
                sender.presence_key = hex::decode(hex)
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .map(Into::into);
            }
            Some(("x", socket)) if is_socket_id(socket) => {
                sender.exclude_socket = Some(socket.into());
            }
            _ => {}
        }
    }
    sender
}

/// The history epoch among the header fields after `kind` (`e=`), if any.
pub(super) fn parse_epoch<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<&'a str> {
    fields.find_map(|f| f.strip_prefix("e=").filter(|e| !e.is_empty()))
}

/// A plain publication's number (`i=`), if any.
pub(super) fn parse_seq<'a>(mut fields: impl Iterator<Item = &'a str>) -> Option<u64> {
    fields.find_map(|f| f.strip_prefix("i=").and_then(|n| n.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Payload;

    #[test]
    fn sender_fields_round_trip_and_unknown_ones_are_skipped() {
        let p = Publication::new("presence-a", "client-x", Payload::empty_object(), None)
            .unwrap()
            .with_sender(Sender {
                presence_key: Some("user 1=é".into()),
                exclude_socket: Some("12.34".into()),
            });
        let header = sender_header(&p);
        assert!(
            header.starts_with(' ') && !header.contains('\n'),
            "{header}"
        );
        let parsed = parse_sender(header.split(' ').chain(["z=9", "junk"]));
        assert_eq!(Some(parsed), p.sender.as_deref().cloned());
        let none = Publication::new("a", "e", Payload::empty_object(), None).unwrap();
        assert_eq!(sender_header(&none), "");
        // Not a socket id: neither written nor read.
        let bad = none.with_sender(Sender {
            presence_key: None,
            exclude_socket: Some("1 x=2".into()),
        });
        assert_eq!(sender_header(&bad), "");
        assert_eq!(
            parse_sender(["x=1.2 3", "u=zz"].into_iter()),
            Sender::default()
        );
    }

    #[test]
    fn the_epoch_field_is_found_among_the_others() {
        assert_eq!(
            parse_epoch(["u=61", "e=0a1b2c3d", "z=1"].into_iter()),
            Some("0a1b2c3d")
        );
        assert_eq!(parse_epoch(["u=61", "e="].into_iter()), None);
        assert_eq!(parse_epoch(std::iter::empty()), None);
        // Written after the sender fields, it does not disturb them.
        assert_eq!(parse_sender(["e=0a1b2c3d"].into_iter()), Sender::default());
    }
}
