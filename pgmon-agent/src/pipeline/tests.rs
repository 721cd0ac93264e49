//! The pipeline's sink fed with wire byte fixtures: connection-level errors are counted
//! apart, and a role's statement errors never exceed its statements.

use super::*;
use crate::{budget::CostKnown, query::Stmt};
use pgmon_wire::enc::*;

/// What a [`ConnSink`] needs, owned.
struct Rig {
    metrics: Arc<TrafficMetrics>,
    registry: prometheus_client::registry::Registry,
    stats: Stats,
    normalizer: Normalizer,
    counters: Counters,
}

impl Rig {
    fn new() -> Self {
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = TrafficMetrics::register(&mut registry, "tracepoint", 2);
        Rig {
            registry,
            stats: Stats::new(metrics.clone(), 100, 100),
            metrics,
            normalizer: Normalizer::new(100, 4096),
            counters: Counters::default(),
        }
    }

    /// One connection forked under the capture's eyes: each `(frontend, bytes)` chunk in
    /// turn, then the backend's exit.
    fn connection(&mut self, chunks: &[(bool, Vec<u8>)]) {
        let mut backend = Backend::new(true);
        let mut conn = pgmon_wire::Connection::<Stmt>::new();
        for (i, (frontend, bytes)) in chunks.iter().enumerate() {
            let mut sink = ConnSink {
                budgets: None,
                now_ms: 0,
                record_ns: i as u64,
                tls_on: false,
                backend: &mut backend,
                normalizer: &mut self.normalizer,
                stats: &mut self.stats,
                metrics: &self.metrics,
                counters: &mut self.counters,
            };
            if *frontend {
                conn.frontend(i as u64, bytes, &mut sink);
            } else {
                conn.backend(i as u64, bytes, &mut sink);
            }
        }
        if let Identity::Known(id) = backend.identity {
            self.stats.connection(id, -1);
        }
    }

    fn role(&self, name: &str) -> crate::status::RoleStatus {
        self.stats
            .roles(&|_| CostKnown::Disabled)
            .into_iter()
            .find(|r| r.role == name)
            .expect("role seen")
    }
}

fn login(user: &str, db: &str) -> Vec<(bool, Vec<u8>)> {
    vec![
        (true, startup(0, &[("user", user), ("database", db)])),
        (false, cat(&[auth_ok(), key_data(), ready(b'I')])),
    ]
}

#[test]
fn connection_errors_are_counted_apart_from_statement_errors() {
    let mut rig = Rig::new();
    // psql -d nosuchdb
    rig.connection(&[
        (
            true,
            startup(0, &[("user", "alice"), ("database", "nosuchdb")]),
        ),
        (false, cat(&[auth_ok(), fatal("3D000")])),
    ]);
    // A wrong password, twice.
    for _ in 0..2 {
        rig.connection(&[
            (true, startup(0, &[("user", "alice"), ("database", "shop")])),
            (false, auth(10)),
            (true, password("SCRAM-SHA-256 client-first")),
            (false, fatal("28P01")),
        ]);
    }
    // A session with a division by zero, a syntax error at Parse and a fine query, ended by
    // pg_terminate_backend() while idle.
    let mut s = login("alice", "shop");
    s.extend([
        (true, query("SELECT 1/0")),
        (false, cat(&[error("22012"), ready(b'I')])),
        (true, cat(&[parse("", "SELEC 1", &[]), sync()])),
        (false, cat(&[error("42601"), ready(b'I')])),
        (true, query("SELECT 1")),
        (false, cat(&[complete("SELECT 1"), ready(b'I')])),
        (false, fatal("57P01")),
    ]);
    rig.connection(&s);
    // A protocol violation after login.
    let mut s = login("alice", "shop");
    s.extend([(true, msg(b'@', b"junk")), (false, fatal("08P01"))]);
    rig.connection(&s);

    let alice = rig.role("alice");
    assert_eq!(
        alice.queries, 2,
        "1/0 and SELECT 1; a failed Parse is no execution"
    );
    assert_eq!(alice.errors, 1);
    assert!(alice.errors <= alice.queries);
    assert_eq!(alice.errors_by_class, [("22".to_owned(), 1)].into());
    assert_eq!(
        (alice.prepare_errors, alice.prepare_errors_by_class.clone()),
        (1, [("42".to_owned(), 1)].into())
    );
    assert_eq!(alice.connection_errors, 5);
    assert_eq!(
        alice.connection_errors_by_class,
        [
            ("3D".to_owned(), 1),
            ("28".to_owned(), 2),
            ("57".to_owned(), 1),
            ("08".to_owned(), 1)
        ]
        .into()
    );
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &rig.registry).unwrap();
    for needle in [
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"28\"} 2",
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"3D\"} 1",
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"57\"} 1",
        "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"08\"} 1",
        "pgmon_query_errors_total{role=\"alice\",database=\"shop\",sqlstate_class=\"22\"} 1",
        "pgmon_queries_total{role=\"alice\",database=\"shop\"} 2",
        "pgmon_prepare_errors_total{role=\"alice\",sqlstate_class=\"42\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(
        !text.contains(
            "pgmon_query_errors_total{role=\"alice\",database=\"shop\",sqlstate_class=\"28\"}"
        ),
        "a failed login is no statement error"
    );
}

#[test]
fn the_interval_latency_covers_only_what_completed_since_the_last_sample() {
    let mut rig = Rig::new();
    let mut out = Vec::new();
    rig.normalizer.prepare(b"SELECT 1", true, &mut out);
    let stmt = out.pop().expect("a statement");
    let (shop, crm) = (
        rig.stats.role_db("alice", "shop"),
        rig.stats.role_db("alice", "crm"),
    );
    // 99 fast executions in one database and one slow one in the other.
    for _ in 0..99 {
        rig.stats.record(shop, &stmt, 1_000_000, None);
    }
    rig.stats.record(crm, &stmt, 500_000_000, None);
    rig.stats.record(crm, &stmt, 500_000_000, None);
    let first = rig.stats.interval();
    assert_eq!(first.len(), 1, "one row per role, its databases merged");
    assert_eq!((first[0].queries, first[0].errors), (101, 0));
    // HDR answers the highest value equivalent to the bucket: within 1 % (2 digits).
    let near = |v: Option<f64>, want: f64| v.is_some_and(|v| (v / want - 1.0).abs() < 0.01);
    assert!(near(first[0].p50_ms, 1.0), "{:?}", first[0].p50_ms);
    assert!(
        near(first[0].p99_ms, 500.0),
        "the slow ones: {:?}",
        first[0].p99_ms
    );

    // The next interval: only fast executions, so its p99 is fast, while the since-start
    // figure of `status` still carries the slow ones.
    for _ in 0..10 {
        rig.stats.record(shop, &stmt, 2_000_000, None);
    }
    let second = rig.stats.interval();
    assert_eq!(second[0].queries, 111, "totals stay cumulative");
    assert!(near(second[0].p99_ms, 2.0), "{:?}", second[0].p99_ms);
    assert!(rig.role("alice").p99_ms.expect("since start") > 400.0);
    assert_eq!(
        rig.stats.interval()[0].p99_ms,
        None,
        "nothing completed since"
    );
}

mod recorded;

#[test]
fn standard_conforming_strings_off_keeps_the_on_fingerprint() {
    let mut rig = Rig::new();
    let mut s = login("bob", "shop");
    s.extend([
        (true, query("SELECT 'it''s' AS a FROM t")),
        (false, cat(&[complete("SELECT 1"), ready(b'I')])),
        (true, query("SET standard_conforming_strings = off")),
        (
            false,
            cat(&[
                param_status("standard_conforming_strings", "off"),
                complete("SET"),
                ready(b'I'),
            ]),
        ),
        (true, query("SELECT 'it\\'s' AS a FROM t")),
        (false, cat(&[complete("SELECT 1"), ready(b'I')])),
    ]);
    rig.connection(&s);
    let bob = rig.role("bob");
    let select = bob
        .fingerprints
        .iter()
        .find(|f| f.normalized.starts_with("SELECT"))
        .expect("the SELECT");
    assert_eq!(select.calls, 2, "{:?}", bob.fingerprints);
    assert_eq!(
        bob.fingerprints.len(),
        2,
        "SELECT and SET: {:?}",
        bob.fingerprints
    );
    assert_eq!(rig.normalizer.stats().errors, 0);
}
