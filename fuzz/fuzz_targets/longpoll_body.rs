//! LongPoll POST bodies (`transport::longpoll::parse_body`): ndjson, one client frame per
//! line, JSON text or base64 of a binary frame.
//!
//! Parsed with the server's limits (100 lines, 1 MiB) and with small ones (4 lines, 64 bytes)
//! so that both refusals are reached. A refusal is right (`TooManyLines(n)`: n non-blank lines,
//! more than allowed; `TooLarge(n)`: n over the limit); an accepted body yields one result per
//! non-blank line, each the same as that line posted alone, and CRLF line ends change nothing.
//! Both protocol versions (V2 arrays, V1 objects) are checked.
#![no_main]

use libfuzzer_sys::fuzz_target;
use plexus_core::protocol::{DecodeError, Message, Payload, Vsn};
use plexus_core::transport::longpoll::{parse_body, BodyError, MAX_POST_LINES};

#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Text(Option<String>, Option<String>, String, String, String),
    Binary(Option<String>, Option<String>, String, String, Vec<u8>),
    Error(DecodeError),
}

fn seen(r: &Result<Message, DecodeError>) -> Seen {
    match r {
        Ok(m) => {
            let (j, r, t, e) = (
                m.join_ref.clone(),
                m.msg_ref.clone(),
                m.topic.clone(),
                m.event.clone(),
            );
            match &m.payload {
                Payload::Json(raw) => Seen::Text(j, r, t, e, raw.get().to_owned()),
                Payload::Binary(b) => Seen::Binary(j, r, t, e, b.to_vec()),
            }
        }
        Err(e) => Seen::Error(e.clone()),
    }
}

fn lines(body: &[u8]) -> Vec<&[u8]> {
    body.split(|b| *b == b'\n')
        .map(<[u8]>::trim_ascii)
        .filter(|l| !l.is_empty())
        .collect()
}

fn check(body: &[u8], max_lines: usize, max_bytes: usize, vsn: Vsn) {
    let lines = lines(body);
    let result = parse_body(body, max_lines, max_bytes, vsn);
    match &result {
        Err(BodyError::TooManyLines(n)) => {
            assert_eq!(*n, lines.len());
            assert!(*n > max_lines);
        }
        Err(BodyError::TooLarge(n)) => {
            assert!(lines.len() <= max_lines);
            assert!(*n > max_bytes);
        }
        Ok(decoded) => {
            assert_eq!(decoded.len(), lines.len(), "one result per non-blank line");
            for (line, d) in lines.iter().zip(decoded) {
                let alone = parse_body(line, max_lines, max_bytes, vsn)
                    .expect("a line of an accepted body");
                assert_eq!(alone.len(), 1);
                assert_eq!(seen(&alone[0]), seen(d), "a line decodes differently alone");
            }
        }
    }
    // CRLF line ends are the same body.
    let mut crlf = Vec::with_capacity(body.len() * 2);
    for b in body {
        if *b == b'\n' {
            crlf.push(b'\r');
        }
        crlf.push(*b);
    }
    let again = parse_body(&crlf, max_lines, max_bytes, vsn);
    match (&result, &again) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                a.iter().map(seen).collect::<Vec<_>>(),
                b.iter().map(seen).collect::<Vec<_>>()
            )
        }
        (a, b) => assert_eq!(
            a.as_ref().err(),
            b.as_ref().err(),
            "CRLF changed the verdict"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    for vsn in [Vsn::V2, Vsn::V1] {
        check(data, MAX_POST_LINES, 1024 * 1024, vsn);
        check(data, 4, 64, vsn);
    }
});
