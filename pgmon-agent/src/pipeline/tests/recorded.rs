//! The whole pipeline (`Pipeline::on_record`: backends, connections, chunk offsets, the
//! wire parser, the normalizer, statistics) fed with records the kernel really wrote:
//! `fixtures/session.capture`, recorded by `fixtures/record.sh` from a PostgreSQL 15
//! cluster — role alice running `fixtures/session.sql` through psql over the unix socket,
//! role bob running `fixtures/bench.sql` 20 times through `pgbench -M prepared` over TCP,
//! and alice failing to log in to a database that does not exist.

use pgmon_common::{EventHeader, flags, kind};

use super::*;
use crate::budget::CostKnown;

/// The capture file: each record a little-endian `u32` length and the record as the
/// kernel wrote it (`cli::record`'s format).
const SESSION: &[u8] = include_bytes!("../fixtures/session.capture");

/// The raw records of [`SESSION`], in order.
fn raw_records() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = SESSION;
    while let Some((len, tail)) = rest.split_first_chunk::<4>() {
        let len = u32::from_le_bytes(*len) as usize;
        out.push(tail[..len].to_vec());
        rest = &tail[len..];
    }
    assert!(out.len() > 50, "the fixture holds {} records", out.len());
    out
}

/// A pipeline with the default `query:` settings, its registry and its lookup requests.
fn pipeline() -> (
    Pipeline,
    prometheus_client::registry::Registry,
    tokio::sync::mpsc::UnboundedReceiver<u32>,
) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = TrafficMetrics::register(&mut registry, "tp_btf_sock", 1);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let p = Pipeline::new(&Default::default(), 1 << 20, metrics, tx);
    (p, registry, rx)
}

fn feed(p: &mut Pipeline, raw: &[Vec<u8>]) {
    for r in raw {
        p.on_record(&Record::decode(r).expect("a whole record"));
    }
}

fn role(p: &Pipeline, name: &str) -> crate::status::RoleStatus {
    p.stats
        .roles(&|_| CostKnown::Disabled)
        .into_iter()
        .find(|r| r.role == name)
        .unwrap_or_else(|| panic!("role {name} seen"))
}

/// The pid of the last backend whose startup packet names `user` (pgbench opens one
/// connection to check the server before its clients').
fn backend_of(records: &[Record<'_>], user: &str) -> u32 {
    let needle = format!("user\0{user}\0");
    records
        .iter()
        .rev()
        .find(|r| r.header.kind == kind::RECV && contains(r.data, needle.as_bytes()))
        .unwrap_or_else(|| panic!("{user}'s startup packet"))
        .header
        .pid
}

/// What the scripts did, as pgmon must report it.
fn assert_session(p: &Pipeline) {
    let alice = role(p, "alice");
    assert_eq!(
        alice.databases,
        ["nosuchdb", "shop"],
        "where alice connected or tried to"
    );
    assert_eq!(alice.queries, 10, "the 10 statements of session.sql");
    assert_eq!(
        alice.errors_by_class,
        [("22".to_owned(), 1), ("42".to_owned(), 1)].into(),
        "SELECT 1 / 0 and SELEC 1"
    );
    assert_eq!(
        alice.connection_errors_by_class,
        [("3D".to_owned(), 1)].into(),
        "psql -d nosuchdb"
    );
    let bob = role(p, "bob");
    assert_eq!(bob.queries, 20, "pgbench -t 20");
    assert_eq!(bob.errors, 0);
    let select = bob
        .fingerprints
        .iter()
        .find(|f| f.normalized.starts_with("SELECT $1::int"))
        .unwrap_or_else(|| panic!("bench.sql's statement in {:?}", bob.fingerprints));
    assert_eq!(select.calls, 20, "one prepared statement, 20 executions");
    for r in [&alice, &bob] {
        assert_eq!(r.connections, 0, "{}: every backend exited", r.role);
    }
    assert_eq!(p.counters.desyncs_frontend + p.counters.desyncs_backend, 0);
    assert_eq!(p.counters.unattributed, 0);
    assert!(
        p.backends.is_empty() && p.conns.is_empty(),
        "all state ends with the exits"
    );
}

#[test]
fn a_recorded_session_is_counted_exactly() {
    let raw = raw_records();
    let (mut p, registry, mut lookups) = pipeline();
    feed(&mut p, &raw);
    assert_session(&p);
    assert!(
        lookups.try_recv().is_err(),
        "every backend forked under the capture's eyes: no pg_stat_activity lookup"
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "pgmon_queries_total{role=\"alice\",database=\"shop\"} 10",
        "pgmon_queries_total{role=\"bob\",database=\"shop\"} 20",
        "pgmon_query_errors_total{role=\"alice\",database=\"shop\",sqlstate_class=\"42\"} 1",
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"3D\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}

/// Every payload cut in two records gives the same figures: what the kernel does with a
/// call larger than a chunk (the offset continues, `LAST_CHUNK` on the last), checked on
/// the real bytes at several cut points.
#[test]
fn records_split_into_chunks_give_the_same_figures() {
    for cut_at in [1usize, 2, 5, 13] {
        let mut split = Vec::new();
        for raw in raw_records() {
            let r = Record::decode(&raw).unwrap();
            if r.data.len() <= cut_at {
                split.push(raw);
                continue;
            }
            let (head, tail) = r.data.split_at(cut_at);
            let mut h1 = r.header;
            h1.len = head.len() as u32;
            h1.flags &= !flags::LAST_CHUNK;
            let mut h2 = r.header;
            h2.len = tail.len() as u32;
            h2.offset = r.header.offset + cut_at as u32;
            h2.flags &= !flags::LOST_BEFORE;
            split.push(encode(&h1, head));
            split.push(encode(&h2, tail));
        }
        let (mut p, _, _) = pipeline();
        feed(&mut p, &split);
        assert_session(&p);
    }
}

/// A record lost in one backend (the kernel's `LOST_BEFORE` mark on its next record)
/// resynchronises that connection only: the other role's figures stay exact.
#[test]
fn a_lost_record_costs_only_its_own_connection() {
    let raw = raw_records();
    let decoded: Vec<Record<'_>> = raw.iter().map(|r| Record::decode(r).unwrap()).collect();
    let bob_pid = backend_of(&decoded, "bob");
    let bob_sends: Vec<usize> = decoded
        .iter()
        .enumerate()
        .filter(|(_, r)| r.header.pid == bob_pid && r.header.kind == kind::SEND)
        .map(|(i, _)| i)
        .collect();
    // Drop one of bob's answers in the middle of the run and mark the record after it.
    let lost = bob_sends[bob_sends.len() / 2];
    let next = lost
        + 1
        + decoded[lost + 1..]
            .iter()
            .position(|r| r.header.pid == bob_pid)
            .unwrap();
    let mut damaged = Vec::new();
    for (i, (raw, r)) in raw.iter().zip(&decoded).enumerate() {
        if i == lost {
            continue;
        }
        if i == next {
            let mut h = r.header;
            h.flags |= flags::LOST_BEFORE;
            damaged.push(encode(&h, r.data));
        } else {
            damaged.push(raw.clone());
        }
    }
    let (mut p, _, _) = pipeline();
    feed(&mut p, &damaged);
    let alice = role(&p, "alice");
    assert_eq!(alice.queries, 10, "alice's connection is untouched");
    assert_eq!(alice.errors, 2);
    let bob = role(&p, "bob");
    assert!(
        (18..20).contains(&bob.queries),
        "bob loses the statements around the gap, no more: {}",
        bob.queries
    );
    assert_eq!(bob.connections, 0);
}

/// A backend that was running before the capture attached (no FORK seen, its startup
/// packet missed): its statements wait for pg_stat_activity and are charged to the role
/// it names.
#[test]
fn a_backend_older_than_the_capture_is_attributed_through_a_lookup() {
    let raw = raw_records();
    let decoded: Vec<Record<'_>> = raw.iter().map(|r| Record::decode(r).unwrap()).collect();
    let bob_pid = backend_of(&decoded, "bob");
    // Attach after bob's login, before his first statement and his exit: skip its FORK,
    // its SSLRequest and startup packet (the first two frontend records) and its EXIT.
    let mut seen_recv = 0;
    let mut mid = Vec::new();
    for (raw, r) in raw.iter().zip(&decoded) {
        if r.header.pid == bob_pid {
            if r.header.kind == kind::RECV {
                seen_recv += 1;
            }
            if seen_recv <= 2 || r.header.kind == kind::EXIT {
                continue;
            }
        }
        mid.push(raw.clone());
    }
    let (mut p, _, mut lookups) = pipeline();
    p.set_preexisting(&[bob_pid]);
    feed(&mut p, &mid);
    assert_eq!(
        lookups.try_recv(),
        Ok(bob_pid),
        "one lookup for bob's backend"
    );
    assert!(lookups.try_recv().is_err());
    // (bob's role exists: pgbench's first connection, seen whole, ran nothing.)
    assert_eq!(
        role(&p, "bob").queries,
        0,
        "nothing charged before the answer"
    );
    p.on_answer(Answer {
        pid: bob_pid,
        identity: Some(crate::attribution::Identity {
            role: "bob".into(),
            database: "shop".into(),
            application_name: "pgbench".into(),
        }),
    });
    let bob = role(&p, "bob");
    assert_eq!(bob.queries, 20, "every execution, charged late");
    assert_eq!(bob.connections, 1, "the backend is still open");
    assert_eq!(p.counters.late_attributions, 1);
    assert_eq!(role(&p, "alice").queries, 10);
}

/// A record as the kernel writes it: the header's bytes, then the payload.
fn encode(h: &EventHeader, data: &[u8]) -> Vec<u8> {
    let hsize = std::mem::size_of::<EventHeader>();
    // SAFETY: EventHeader is plain old data (repr(C), explicit padding).
    let bytes = unsafe { std::slice::from_raw_parts(std::ptr::from_ref(h).cast::<u8>(), hsize) };
    [bytes, data].concat()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
