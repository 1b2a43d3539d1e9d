//! Replays the `wire_frames` fuzz corpus through the fuzz target's checks,
//! so every input that once found a bug (`fuzz/regressions/wire_frames/`)
//! and the committed seed corpus (`fuzz/corpus/wire_frames/`) run on every
//! `cargo test`, without cargo-fuzz or a nightly toolchain. See
//! `fuzz/README.md` and `fuzz/src/wire.rs` for what is checked.

#[path = "../../../fuzz/src/wire.rs"]
#[allow(dead_code)]
mod wire;

use std::path::{Path, PathBuf};

use amq_protocol::frame::{parse_frame, AMQPFrame};
use amq_protocol::protocol::{basic, channel, connection, AMQPClass};

const TARGET: &str = "wire_frames";

/// The files under `fuzz/<dir>/wire_frames/`, sorted (none if it is missing).
fn inputs(dir: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz")
        .join(dir)
        .join(TARGET);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Runs every file of `fuzz/<dir>/wire_frames/`; returns how many.
fn replay(dir: &str) -> usize {
    let files = inputs(dir);
    for path in &files {
        let data = std::fs::read(path).unwrap();
        let outcome = std::panic::catch_unwind(|| wire::wire_frames(&data));
        assert!(outcome.is_ok(), "{} fails", path.display());
    }
    files.len()
}

#[test]
fn corpus() {
    assert!(replay("corpus") > 0, "no corpus for {TARGET}");
}

#[test]
fn regressions() {
    replay("regressions");
}

#[test]
fn empty_and_tiny_inputs() {
    for data in [&[][..], &[0], &[255; 7], b"warren", b"AMQP\x00\x00\x09\x01"] {
        wire::wire_frames(data);
    }
}

/// The frames the server wrote back.
fn frames(mut out: &[u8]) -> Vec<AMQPFrame> {
    let mut v = Vec::new();
    while let Ok((rest, f)) = parse_frame(out) {
        v.push(f);
        out = rest;
    }
    v
}

/// The seeds pass, and the harness reaches what they aim at: the full
/// session gets its messages back (`get-ok`, `return`, `deliver`s) and a
/// clean `close-ok`, whole or cut in 13-byte writes; the other sessions get
/// no `connection.close` (but 320 on shutdown), a channel error closes only
/// its channel, and every other malformed input gets one `connection.close`.
#[test]
fn seeds_reach_their_targets() {
    for (name, data) in wire::seeds() {
        let session = wire::Session::decode(&data).unwrap();
        let out = std::panic::catch_unwind(|| wire::check_session(&session))
            .unwrap_or_else(|_| panic!("seed {name} fails"));
        let frames = frames(&out);
        let count = |f: &dyn Fn(&AMQPClass) -> bool| {
            frames
                .iter()
                .filter(|x| matches!(x, AMQPFrame::Method(_, m) if f(m)))
                .count()
        };
        let closes =
            count(&|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Close(_))));
        if name.starts_with("session-full") {
            assert_eq!(
                count(&|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::GetOk(_)))),
                1,
                "{name}"
            );
            assert!(
                count(&|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::Deliver(_)))) >= 3,
                "{name}: {frames:?}"
            );
            assert_eq!(
                count(&|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::Return(_)))),
                1,
                "{name}"
            );
            assert!(
                matches!(
                    frames.last(),
                    Some(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::CloseOk(_))
                    ))
                ),
                "{name}: {:?}",
                frames.last()
            );
        } else if name.ends_with("-shutdown") {
            assert_eq!(closes, 1, "{name}: {frames:?}");
            assert!(
                matches!(
                    frames.last(),
                    Some(AMQPFrame::Method(
                        0,
                        AMQPClass::Connection(connection::AMQPMethod::Close(c))
                    )) if c.reply_code == 320
                ),
                "{name}: {:?}",
                frames.last()
            );
        } else if name.starts_with("session-") {
            assert_eq!(closes, 0, "{name}: {frames:?}");
        } else if name.starts_with("channel-error-") {
            assert_eq!(closes, 0, "{name}: {frames:?}");
            assert!(
                frames.iter().any(|f| matches!(
                    f,
                    AMQPFrame::Method(1, AMQPClass::Channel(channel::AMQPMethod::Close(_)))
                )),
                "{name}: {frames:?}"
            );
        } else if !name.starts_with("header-") {
            assert_eq!(closes, 1, "{name}: {frames:?}");
        }
    }
}

/// A session that turns the memory alarm on around a publish: the server
/// blocks the connection (`connection.blocked`), resumes once the alarm
/// clears, and the message arrives.
#[test]
fn the_memory_alarm_blocks_and_releases_a_publisher() {
    use wire::{Chan, End, Item, Method, Name, Prelude, Props, Session, Tune};
    let session = Session {
        prelude: Prelude::Channel(Tune {
            channel_max: 0,
            small_frames: false,
            heartbeat: 0,
        }),
        items: vec![
            Item::Method {
                channel: Chan(0),
                method: Method::QueueDeclare {
                    queue: Name(0),
                    passive: false,
                    durable: false,
                    exclusive: false,
                    auto_delete: false,
                    nowait: false,
                    arguments: Default::default(),
                },
            },
            Item::Alarm(true),
            Item::Publish {
                channel: Chan(0),
                exchange: Name(2),
                routing_key: Name(0),
                mandatory: false,
                properties: Props::default(),
                body: b"x".to_vec(),
            },
            Item::Alarm(false),
            Item::Method {
                channel: Chan(0),
                method: Method::Get {
                    queue: Name(0),
                    no_ack: true,
                },
            },
        ],
        end: End::Eof,
    };
    let frames = frames(&wire::check_session(&session));
    let methods: Vec<&AMQPClass> = frames
        .iter()
        .filter_map(|f| match f {
            AMQPFrame::Method(_, m) => Some(m),
            _ => None,
        })
        .collect();
    let at = |f: &dyn Fn(&AMQPClass) -> bool| methods.iter().position(|m| f(m));
    let blocked = at(&|m| matches!(m, AMQPClass::Connection(connection::AMQPMethod::Blocked(_))));
    let unblocked = at(&|m| {
        matches!(
            m,
            AMQPClass::Connection(connection::AMQPMethod::Unblocked(_))
        )
    });
    let got = at(&|m| matches!(m, AMQPClass::Basic(basic::AMQPMethod::GetOk(_))));
    assert!(
        blocked.is_some() && blocked < unblocked && unblocked < got,
        "{methods:?}"
    );
}

/// Writes the seeds to `fuzz/corpus/wire_frames/` (run with `--ignored`
/// after changing them).
#[test]
#[ignore]
fn write_seed_corpus() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../fuzz/corpus")
        .join(TARGET);
    std::fs::create_dir_all(&dir).unwrap();
    for (name, data) in wire::seeds() {
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    }
}
