//! The ring's rates and bounds, from status documents and a board as the loops fill them.

use super::*;
use crate::{
    health::board::{Family, Kind},
    status::RoleInterval,
};

/// The capture thread's interval figures in which role `name_i` has made `queries[i]`
/// statements, 1 in 10 failed, with a p99 of 4 ms, and `bob` is budgeted at 0.5.
fn status(queries: &[(&str, u64)]) -> IntervalStatus {
    IntervalStatus {
        roles: queries
            .iter()
            .map(|(name, q)| RoleInterval {
                role: (*name).to_owned(),
                queries: *q,
                errors: q / 10,
                p50_ms: Some(0.3),
                p99_ms: Some(4.0),
            })
            .collect(),
        budgets: vec![("bob".to_owned(), 0.5)],
    }
}

fn board(wal_position: f64) -> Board {
    let b = Board::default();
    let mut backends = Family::new("pg_stat_activity_backends", "", Kind::Gauge);
    backends
        .push(vec![("state", "active".into())], 3.0)
        .push(vec![("state", "idle".into())], 4.0);
    b.publish(
        "fast",
        vec![
            backends,
            Family::single("pg_settings_max_connections", "", Kind::Gauge, 100.0),
        ],
    );
    b.publish(
        "medium",
        vec![Family::single(
            "pgmon_wal_position_bytes",
            "",
            Kind::Counter,
            wal_position,
        )],
    );
    b
}

#[test]
fn rates_come_from_the_difference_between_two_samples() {
    let h = History::default();
    h.observe(1_000, &status(&[("alice", 100), ("bob", 10)]), &board(1e6));
    h.observe(11_000, &status(&[("alice", 600), ("bob", 30)]), &board(3e6));
    let d = h.document();
    assert_eq!(d.samples.len(), 2);
    let first = &d.samples[0];
    assert_eq!(first.statements_per_second, None, "no baseline yet");
    assert_eq!(first.wal_bytes_per_second, None);
    let s = &d.samples[1];
    assert_eq!(s.statements_per_second, Some(52.0), "(500 + 20) / 10 s");
    assert_eq!(s.wal_bytes_per_second, Some(200_000.0));
    assert_eq!(s.connections, Some(7.0));
    assert_eq!(s.max_connections, Some(100.0));
    assert_eq!(
        s.transactions_per_second, None,
        "the 60-second loop has not read yet"
    );
    assert_eq!(s.roles[0].role, "alice", "busiest first");
    assert_eq!(s.roles[0].statements_per_second, 50.0);
    assert_eq!(s.roles[0].errors_per_second, 5.0);
    assert_eq!(s.roles[1].budget_utilisation, Some(0.5));
    assert_eq!(s.roles[0].budget_utilisation, None);
    assert_eq!(
        s.roles[0].p99_ms,
        Some(4.0),
        "the interval's, as the capture gave it"
    );
}

#[test]
fn the_ring_keeps_an_hour_and_the_busiest_roles() {
    let h = History::default();
    let names: Vec<String> = (0..MAX_ROLES + 20).map(|i| format!("r{i:03}")).collect();
    for n in 0..CAPACITY as u64 + 5 {
        let q: Vec<(&str, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, r)| (r.as_str(), n * i as u64))
            .collect();
        h.observe(n * 10_000, &status(&q), &board(0.0));
    }
    let d = h.document();
    assert_eq!(d.samples.len(), CAPACITY);
    assert_eq!(d.samples[0].t_ms, 50_000, "the oldest five went");
    let last = d.samples.last().unwrap();
    assert_eq!(last.roles.len(), MAX_ROLES);
    assert_eq!(last.roles[0].role, names[names.len() - 1]);
}
