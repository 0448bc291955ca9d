//! Tests of the outbox: bounds, order, close requests and the write-through bookkeeping.

use super::*;
use crate::protocol::Payload;

fn item(topic: &str) -> Outgoing {
    Outgoing::Push(Box::new(Push {
        join_ref: None,
        msg_ref: None,
        topic: topic.into(),
        event: "e",
        payload: Payload::empty_object(),
    }))
}

/// The encoded text of what was drained.
fn texts(out: &[Outgoing]) -> Vec<String> {
    out.iter()
        .map(|o| String::from_utf8(o.encode(Vsn::V2).unwrap().bytes().to_vec()).unwrap())
        .collect()
}

#[test]
fn overflow_closes_as_slow_consumer_and_drops_the_queue() {
    let o = Outbox::new(2, 1000);
    assert!(o.push(item("x")));
    assert!(o.push(item("x")));
    assert!(!o.push(item("x")));
    let mut out = Vec::new();
    let close = o.drain_into(&mut out);
    assert!(out.is_empty());
    assert_eq!(close.unwrap().code, close_codes::SLOW_CONSUMER);
}

#[test]
fn hold_then_release_drops_replayed_duplicates_and_keeps_order() {
    let o = Outbox::new(100, 100_000);
    o.hold();
    let p = |topic: &str, offset: Option<u64>| {
        let mut p = Publication::new(topic, "e", Payload::empty_object(), None).unwrap();
        if let Some(off) = offset {
            p.set_offset(off).unwrap();
        }
        let p = Arc::new(p);
        assert!(o.push_publication(&p, true));
        String::from_utf8(p.frame.bytes().to_vec()).unwrap()
    };
    let a4 = p("a", Some(4));
    let b1 = p("b", None);
    let a6 = p("a", Some(6));
    assert!(o.push(item("reply")));
    o.release("a", 5);
    let mut out = Vec::new();
    o.drain_into(&mut out);
    let out = texts(&out);
    assert_eq!(out, vec![texts(&[item("reply")])[0].clone(), b1, a6]);
    assert!(!out.contains(&a4));
}

#[test]
fn live_copies_of_replayed_broadcasts_arriving_after_the_release_are_dropped() {
    let o = Outbox::new(100, 100_000);
    let p = |topic: &str, offset: Option<u64>| {
        let mut p = Publication::new(topic, "e", Payload::empty_object(), None).unwrap();
        if let Some(off) = offset {
            p.set_offset(off).unwrap();
        }
        Arc::new(p)
    };
    let text = |p: &Arc<Publication>| String::from_utf8(p.frame.bytes().to_vec()).unwrap();
    o.hold();
    o.release("a", 5);
    // Late live copies of 4 and 5 (in the replay), then 6, then a late-looking 3 that can
    // only belong to a new history (the floor ended at 6).
    let (a4, a5, b2, a6, a3) = (
        p("a", Some(4)),
        p("a", Some(5)),
        p("b", Some(2)),
        p("a", Some(6)),
        p("a", Some(3)),
    );
    for x in [&a4, &a5, &b2, &a6, &a3] {
        assert!(o.push_publication(x, true));
    }
    let mut out = Vec::new();
    o.drain_into(&mut out);
    assert_eq!(texts(&out), vec![text(&b2), text(&a6), text(&a3)]);
    // A release without a replay lifts the topic's floor.
    o.hold();
    o.release("c", 9);
    o.hold();
    o.release("c", 0);
    let c1 = p("c", Some(1));
    assert!(o.push_publication(&c1, true));
    let mut out = Vec::new();
    o.drain_into(&mut out);
    assert_eq!(texts(&out), vec![text(&c1)]);
}

#[test]
fn a_broadcast_is_shared_not_copied() {
    let o = Outbox::new(10, 10_000);
    let p = Arc::new(Publication::new("t", "e", Payload::empty_object(), None).unwrap());
    assert!(o.push_publication(&p, false));
    let mut out = Vec::new();
    o.drain_into(&mut out);
    let Outgoing::Broadcast(got) = &out[0] else {
        panic!("expected a broadcast")
    };
    assert!(Arc::ptr_eq(got, &p));
}

#[test]
fn refs_count_against_the_byte_limit() {
    let o = Outbox::new(100, 10_000);
    let echoed = Outgoing::Reply(Box::new(Reply {
        join_ref: None,
        msg_ref: Some("r".repeat(6_000).into()),
        topic: "t".into(),
        status: "ok",
        response: Payload::empty_object(),
    }));
    assert!(o.push(echoed.clone()));
    assert!(!o.push(echoed), "two 6 kB refs passed a 10 kB limit");
}

#[test]
fn a_queued_message_is_two_words() {
    assert_eq!(std::mem::size_of::<Outgoing>(), 16);
}

#[test]
fn byte_limit_counts_too() {
    let o = Outbox::new(100, 100);
    let big = |n: usize| {
        Outgoing::Push(Box::new(Push {
            join_ref: None,
            msg_ref: None,
            topic: "t".into(),
            event: "e",
            payload: Payload::json(&"x".repeat(n)).unwrap(),
        }))
    };
    assert!(o.push(big(40)));
    assert!(!o.push(big(40)));
}

#[test]
fn close_keeps_queued_frames_and_first_reason() {
    let o = Outbox::new(10, 1000);
    assert!(o.push(item("a")));
    o.close(1012, "draining");
    o.close(1001, "other");
    assert!(!o.push(item("b")));
    let mut out = Vec::new();
    let close = o.drain_into(&mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(
        close,
        Some(CloseReason {
            code: 1012,
            reason: "draining"
        })
    );
}
