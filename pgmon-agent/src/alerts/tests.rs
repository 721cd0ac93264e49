//! The engine on a board the tests fill, with an injected clock.

use super::*;
use crate::health::{Family, Kind, LoopState};

const S: u64 = 1000;
/// Some time in 2024, so the timestamps read well.
const T0: u64 = 1_714_564_800_000;

fn gauge(name: &'static str, v: f64) -> Family {
    Family::single(name, "", Kind::Gauge, v)
}

fn fast(board: &Board, idle: f64, temp_bytes: f64) {
    let mut temp = Family::new("pg_stat_database_temp_bytes", "", Kind::Counter);
    temp.push(vec![("datname", "app".into())], temp_bytes);
    board.publish(
        "fast",
        vec![
            gauge("pgmon_connections_used_ratio", 0.1),
            gauge("pg_settings_max_connections", 100.0),
            gauge("pgmon_oldest_xact_age_seconds", idle),
            gauge("pgmon_idle_in_transaction_max_seconds", idle),
            gauge("pgmon_lock_wait_max_seconds", 0.0),
            temp,
        ],
    );
}

fn config() -> AlertsConfig {
    let mut c = AlertsConfig {
        evaluation_interval_seconds: 1,
        ..AlertsConfig::default()
    };
    c.idle_in_transaction_seconds = Threshold {
        warn: 10.0,
        crit: 100.0,
        for_seconds: Some(5),
    };
    c.temp_surge.window_seconds = 3;
    c.temp_surge.baseline_seconds = 600;
    c.temp_surge.min_samples = 5;
    c.temp_surge.for_seconds = 0;
    c
}

fn inputs(board: &Board) -> Inputs<'_> {
    Inputs {
        board,
        storage: None,
        budgets: None,
    }
}

fn names(notices: &[Notice]) -> Vec<(&'static str, Status)> {
    notices
        .iter()
        .map(|n| (n.alert.alertname, n.status))
        .collect()
}

use state::Status;

#[test]
fn idle_in_transaction_goes_pending_firing_resolved() {
    let board = Board::default();
    let mut e = Engine::new(&config());
    fast(&board, 0.0, 0.0);
    assert!(e.tick(T0, &inputs(&board)).is_empty());
    fast(&board, 12.0, 0.0);
    assert!(e.tick(T0 + S, &inputs(&board)).is_empty(), "pending");
    let v = e.view(T0 + S, vec![]);
    assert_eq!(v.pending.len(), 1);
    assert_eq!(v.pending[0].alertname, "PostgresIdleInTransaction");
    for t in 2..6 {
        assert!(e.tick(T0 + t * S, &inputs(&board)).is_empty());
    }
    let n = e.tick(T0 + 6 * S, &inputs(&board));
    assert_eq!(names(&n), [("PostgresIdleInTransaction", Status::Firing)]);
    let p = notice::payload(&n[0], "db1", None);
    assert_eq!(
        p.text,
        "[FIRING warning] PostgresIdleInTransaction on db1: a session has been idle in transaction for 12.0s"
    );
    assert_eq!(p.json["status"], "firing");
    assert_eq!(p.json["starts_at"], "2024-05-01T12:00:06.000Z");
    assert_eq!(
        p.json["expression"],
        "pgmon_idle_in_transaction_max_seconds >= 10 (critical: >= 100)"
    );
    // The fast loop fails: its families vanish, nothing resolves.
    board.publish("fast", vec![gauge("pg_up", 0.0)]);
    assert!(e.tick(T0 + 7 * S, &inputs(&board)).is_empty());
    // Escalation, then the end.
    fast(&board, 150.0, 0.0);
    let n = e.tick(T0 + 8 * S, &inputs(&board));
    assert_eq!(n[0].alert.severity, Severity::Critical);
    fast(&board, 0.0, 0.0);
    let n = e.tick(T0 + 9 * S, &inputs(&board));
    assert_eq!(names(&n), [("PostgresIdleInTransaction", Status::Resolved)]);
    let p = notice::payload(&n[0], "db1", None);
    assert!(
        p.text
            .starts_with("[RESOLVED] PostgresIdleInTransaction on db1: "),
        "{}",
        p.text
    );
    assert!(
        p.text.ends_with("(was critical, fired for 3.0s)"),
        "{}",
        p.text
    );
    assert_eq!(p.json["ends_at"], "2024-05-01T12:00:09.000Z");
    let v = e.view(T0 + 9 * S, vec!["webhook".into()]);
    assert!(v.firing.is_empty() && v.pending.is_empty());
    assert_eq!(v.history.len(), 3);
    assert_eq!(v.history[0].status, Status::Resolved, "newest first");
    let json: serde_json::Value = serde_json::to_value(&v).unwrap();
    assert_eq!(
        json["history"][2]["active_since"],
        "2024-05-01T12:00:01.000Z"
    );
    assert!(json["rules"].as_array().unwrap().len() >= 17);
}

#[test]
fn a_temp_surge_fires_after_a_quiet_baseline_only() {
    let board = Board::default();
    let mut e = Engine::new(&config());
    let mut bytes = 0.0;
    // Quiet: 1 KiB a second, for 10 s.
    for t in 0..10 {
        bytes += 1024.0;
        fast(&board, 0.0, bytes);
        assert!(
            e.tick(T0 + t * S, &inputs(&board)).is_empty(),
            "quiet at {t}"
        );
    }
    // The API shows the baseline formed: one observation per tick once the 3 s window
    // spans half of itself (from t = 2 s, so t = 2..9), 1 KiB/s each, at least
    // min_samples (5) of them.
    let v = e.view(T0 + 9 * S, vec![]);
    let temp = v
        .rules
        .iter()
        .find(|r| r.alertname == "PostgresTempSurge")
        .unwrap();
    let b = &temp.baselines[..];
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!((b[0].entity.as_str(), b[0].samples), ("app", 8));
    assert!(b[0].armed && b[0].min_samples == 5, "{b:?}");
    assert_eq!(b[0].mean_bytes_per_second, 1024.0);
    let json = serde_json::to_value(&v).unwrap();
    let level = json["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alertname"] == "PostgresIdleInTransaction")
        .unwrap();
    assert!(
        level.get("baselines").is_none(),
        "only surge rules have one"
    );
    // 50 MiB in one second.
    bytes += 50.0 * 1048576.0;
    fast(&board, 0.0, bytes);
    let n = e.tick(T0 + 10 * S, &inputs(&board));
    assert_eq!(names(&n), [("PostgresTempSurge", Status::Firing)]);
    assert_eq!(n[0].alert.labels["datname"], "app");
    assert!(
        n[0].alert
            .message
            .starts_with("database app: temp files at "),
        "{}",
        n[0].alert.message
    );
    // Quiet again: once the window has passed, it resolves.
    let mut resolved = false;
    for t in 11..16 {
        bytes += 1024.0;
        fast(&board, 0.0, bytes);
        resolved |= names(&e.tick(T0 + t * S, &inputs(&board)))
            .contains(&("PostgresTempSurge", Status::Resolved));
    }
    assert!(resolved);
}

#[test]
fn an_idle_cluster_never_surges() {
    let board = Board::default();
    let mut e = Engine::new(&config());
    for t in 0..100 {
        // 100 KiB/s steady, with some noise: under the 1 MiB/s floor.
        fast(&board, 0.0, (t * 100 * 1024 + (t % 7) * 50_000) as f64);
        assert!(e.tick(T0 + t * S, &inputs(&board)).is_empty());
    }
}

#[test]
fn relation_and_role_rules_carry_their_entity() {
    let board = Board::default();
    let mut c = config();
    c.dead_tuples.for_seconds = 0;
    let mut e = Engine::new(&c);
    let mut dead = Family::new("pgmon_relation_dead_tuples", "", Kind::Gauge);
    let mut ratio = Family::new("pgmon_relation_dead_ratio", "", Kind::Gauge);
    for (rel, d, r) in [("public.big", 200_000.0, 0.4), ("public.small", 50.0, 0.9)] {
        dead.push(vec![("datname", "app".into()), ("relation", rel.into())], d);
        ratio.push(vec![("datname", "app".into()), ("relation", rel.into())], r);
    }
    board.publish("slow", vec![dead, ratio]);
    board.record(
        "fast",
        LoopState {
            success: false,
            errors: 3,
            ..LoopState::default()
        },
    );
    let storage = Some(vec![
        ("alice".to_owned(), "soft"),
        ("bob".to_owned(), "locked"),
        ("carol".to_owned(), "ok"),
    ]);
    let n = e.tick(
        T0,
        &Inputs {
            board: &board,
            storage,
            // frank's 0.9999999999999998 is 1.0 summed in f64 (budget::reaches).
            budgets: Some(vec![
                ("dave".to_owned(), 1.25),
                ("erin".to_owned(), 0.5),
                ("frank".to_owned(), 0.9999999999999998),
            ]),
        },
    );
    let keys: Vec<&str> = n.iter().map(|n| n.alert.dedupe_key.as_str()).collect();
    assert_eq!(
        keys,
        [
            "PostgresDeadTupleBacklog{datname=\"app\",relation=\"public.big\"}",
            "PgmonStorageSoftLimit{role=\"alice\"}",
            "PgmonStorageLocked{role=\"bob\"}",
            "PgmonBudgetExceeded{role=\"dave\"}",
            "PgmonBudgetExceeded{role=\"frank\"}",
        ]
    );
    assert_eq!(
        n[0].alert.message,
        "app.public.big: 40% dead tuples (200000 rows)"
    );
    assert_eq!(n[2].alert.severity, Severity::Critical);
    assert_eq!(
        n[3].alert.message,
        "role dave is at 125% of its query-cost budget"
    );
    // The failing loop is pending for its 300 s.
    let v = e.view(T0, vec![]);
    assert_eq!(
        v.pending[0].dedupe_key,
        "PgmonHealthLoopFailing{loop=\"fast\"}"
    );
}

#[test]
fn firing_gauges_cover_every_rule_and_severity() {
    let mut registry = Registry::default();
    let book = AlertBook::register(&mut registry);
    let board = Board::default();
    let mut e = Engine::new(&AlertsConfig::default());
    let mut lag = Family::new("pgmon_replication_lag_seconds", "", Kind::Gauge);
    lag.push(vec![("application_name", "standby1".into())], 400.0);
    board.publish("medium", vec![lag]);
    let mut late = e.tick(T0, &inputs(&board));
    late.extend(e.tick(T0 + 120 * S, &inputs(&board)));
    assert_eq!(names(&late), [("PostgresReplicationLag", Status::Firing)]);
    book.publish(e.view(T0 + 120 * S, vec![]));
    (book.count())("webhook", "sent");
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for needle in [
        "pgmon_alerts_firing{alertname=\"PostgresReplicationLag\",severity=\"critical\"} 1",
        "pgmon_alerts_firing{alertname=\"PostgresReplicationLag\",severity=\"warning\"} 0",
        "pgmon_alerts_firing{alertname=\"PgmonStorageLocked\",severity=\"critical\"} 0",
        "pgmon_alert_notifications_total{sink=\"webhook\",result=\"sent\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("PgmonStorageLocked\",severity=\"warning"));
    let json: serde_json::Value = serde_json::from_str(&crate::api::alerts::json(&book)).unwrap();
    assert_eq!(json["endpoint"], "/api/v1/alerts");
    assert_eq!(json["sql"][0]["name"], "activity");
    assert_eq!(
        json["data"]["firing"][0]["alertname"],
        "PostgresReplicationLag"
    );
    let lag = json["data"]["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["alertname"] == "PostgresReplicationLag")
        .unwrap();
    assert_eq!(lag["sql"], serde_json::json!(["replication"]));
    assert_eq!(
        json["data"]["firing"][0]["message"],
        "standby standby1 replays 6m 40s behind"
    );
}

#[test]
fn ticks_are_an_interval_apart_until_the_wall_clock_steps() {
    let mut c = TickClock::new();
    let t = tokio::time::Instant::now();
    let s = Duration::from_secs(1);
    assert_eq!(c.at(t, T0), T0);
    // The task woke 3 ms late, or early: the tick's own time counts.
    assert_eq!(c.at(t + s, T0 + 1003), T0 + S);
    assert_eq!(c.at(t + 2 * s, T0 + 1998), T0 + 2 * S);
    // The wall clock stepped 5 s ahead: anchored again.
    assert_eq!(c.at(t + 3 * s, T0 + 8000), T0 + 8000);
    assert_eq!(c.at(t + 4 * s, T0 + 9002), T0 + 9000);
}
