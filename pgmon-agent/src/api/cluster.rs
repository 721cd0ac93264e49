//! Cluster-wide endpoints: `/api/v1/overview` and `/api/v1/replication`, on the health
//! loops' SQL (`crate::health::{fast, medium}`) plus the replication slots and the WAL
//! receiver.

use serde_json::{Value, json};

use super::{ApiError, Recorder, session::Session};
use crate::health::{Board, backups, fast, medium};

/// Replication slots and the WAL each keeps (PostgreSQL docs, "pg_replication_slots").
const SLOTS: &str = "SELECT slot_name::text, slot_type, database::text, temporary, active, \
     active_pid, wal_status, \
     pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() \
                          ELSE pg_current_wal_lsn() END, restart_lsn)::float8 AS retained_wal_bytes \
     FROM pg_replication_slots ORDER BY retained_wal_bytes DESC NULLS LAST";

/// On a standby, its WAL receiver (docs, section 27.2.6 "pg_stat_wal_receiver"); no rows
/// on a primary.
const WAL_RECEIVER: &str = "SELECT status, sender_host, sender_port, slot_name, \
     extract(epoch FROM now() - last_msg_receipt_time)::float8 AS last_message_age_seconds \
     FROM pg_stat_wal_receiver";

/// `/api/v1/overview`: sessions against `max_connections`, the oldest transaction and
/// idle-in-transaction ages, lock waits (their ages null on PostgreSQL 13, which does not
/// record since when a lock is awaited), autovacuum workers, checkpoints, WAL position,
/// transactions per database (with the rate the 60-second loop last computed) and the
/// health loops' own state. The per-database lists keep their `limit` busiest entries
/// (most sessions; most transactions) and say how many there were.
pub async fn overview(
    s: &Session,
    rec: &mut Recorder,
    board: &Board,
    limit: usize,
) -> Result<Value, ApiError> {
    let (c, db) = (&s.client, s.database.as_str());
    let by_state = rec
        .rows(
            c,
            db,
            ("activity", fast::ACTIVITY),
            &[],
            &["datname", "state", "count", "max_xact_age_seconds"],
        )
        .await?;
    let settings = rec
        .rows(
            c,
            db,
            ("settings", fast::SETTINGS),
            &[],
            &[
                "max_connections",
                "superuser_reserved_connections",
                "autovacuum_max_workers",
            ],
        )
        .await?;
    let clients: f64 = by_state.iter().filter_map(|r| r["count"].as_f64()).sum();
    let max = settings
        .first()
        .and_then(|r| r["max_connections"].as_f64())
        .unwrap_or(0.0);
    let ages = rec
        .rows(
            c,
            db,
            ("ages", fast::AGES),
            &[],
            &[
                "oldest_xact_seconds",
                "idle_in_transaction_max_seconds",
                "backend_xmin_age",
            ],
        )
        .await?;
    let waits = rec
        .raw(c, db, ("blocked", fast::blocked_sql(s.version)), &[])
        .await?;
    let waits: Vec<(i32, Vec<i32>, Option<f64>)> = waits
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let chains = fast::Chains::from_waits(&waits);
    let autovacuum = rec
        .rows(
            c,
            db,
            ("autovacuum_workers", fast::AUTOVACUUM),
            &[],
            &["phase", "count"],
        )
        .await?;
    let checkpoints = rec
        .rows(
            c,
            db,
            ("checkpoints", medium::checkpoints_sql(s.version)),
            &[],
            &[
                "timed",
                "requested",
                "buffers_written",
                "write_seconds",
                "sync_seconds",
            ],
        )
        .await?;
    let wal = wal(s, rec).await?;
    let mut databases = rec
        .rows(
            c,
            db,
            ("transactions", medium::DATABASES),
            &[],
            &["datname", "xact_commit", "xact_rollback"],
        )
        .await?;
    rec.note(
        "transactions_per_second",
        "health loop medium",
        Some(db),
        medium::DATABASES,
    );
    for d in &mut databases {
        let name = d["datname"].as_str().unwrap_or_default().to_owned();
        d["transactions_per_second"] = board
            .value("pgmon_transactions_per_second", &[("datname", &name)])
            .map_or(Value::Null, Value::from);
    }
    let (by_state, states_total) = busiest(by_state, &["count"], limit);
    let (databases, databases_total) = busiest(databases, &["xact_commit", "xact_rollback"], limit);
    let loops: serde_json::Map<String, Value> = board
        .loops()
        .into_iter()
        .map(|(name, l)| {
            (
                name.to_owned(),
                json!({
                    "duration_seconds": l.duration_seconds, "budget_seconds": l.budget_seconds,
                    "success": l.success, "over_budget": l.over_budget, "errors": l.errors,
                }),
            )
        })
        .collect();
    // The canary as the fast loop last measured it (not run again for the API).
    rec.note(
        "canary",
        "health loop fast",
        Some(&s.database),
        fast::CANARY,
    );
    rec.note(
        "canary_explain",
        "health loop fast",
        Some(&s.database),
        fast::CANARY_EXPLAIN,
    );
    let canary = json!({
        "round_trip_seconds": board.value("pgmon_canary_seconds", &[]),
        "execution_seconds": board.value("pgmon_canary_execution_seconds", &[]),
    });
    Ok(json!({
        "server_version_num": s.version,
        "canary": canary,
        "connections": {
            "client_backends": clients,
            "used_ratio": if max > 0.0 { clients / max } else { 0.0 },
            "settings": settings.into_iter().next().unwrap_or(Value::Null),
            "by_database_and_state": by_state,
            "by_database_and_state_total": states_total,
        },
        "ages": ages.into_iter().next().unwrap_or(Value::Null),
        "locks": {
            "blocked_sessions": chains.blocked,
            // Unknown (null) on PostgreSQL 13, which has no pg_locks.waitstart.
            "longest_wait_seconds": fast::lock_wait_known(s.version).then_some(chains.longest_wait),
            "longest_chain": chains.longest_chain,
            "waits": waits.iter().map(|(pid, by, secs)| json!({"pid": pid, "blocked_by": by, "wait_seconds": secs})).collect::<Vec<_>>(),
        },
        "autovacuum_workers": autovacuum,
        "checkpoints": checkpoints.into_iter().next().unwrap_or(Value::Null),
        "wal": wal,
        "databases": databases,
        "databases_total": databases_total,
        "health_loops": loops,
    }))
}

/// The `limit` rows with the largest sum of the numbers at `keys`, largest first, and how
/// many rows there were.
fn busiest(mut rows: Vec<Value>, keys: &[&str], limit: usize) -> (Vec<Value>, usize) {
    let weight = |r: &Value| keys.iter().filter_map(|k| r[*k].as_f64()).sum::<f64>();
    rows.sort_by(|a, b| weight(b).total_cmp(&weight(a)));
    let total = rows.len();
    rows.truncate(limit);
    (rows, total)
}

/// The WAL position, and on a standby the replay delay (`medium::WAL`).
async fn wal(s: &Session, rec: &mut Recorder) -> Result<Value, ApiError> {
    let rows = rec
        .rows(
            &s.client,
            &s.database,
            ("wal", medium::WAL),
            &[],
            &["in_recovery", "position_bytes", "replay_delay_seconds"],
        )
        .await?;
    Ok(rows.into_iter().next().unwrap_or(Value::Null))
}

/// `/api/v1/replication`: this server's role and WAL position, each standby's lag in
/// seconds and bytes, the replication slots with the WAL they retain, and on a standby its
/// WAL receiver.
pub async fn replication(s: &Session, rec: &mut Recorder) -> Result<Value, ApiError> {
    let (c, db) = (&s.client, s.database.as_str());
    let wal = wal(s, rec).await?;
    let standbys = rec
        .rows(
            c,
            db,
            ("standbys", medium::REPLICATION),
            &[],
            &["application_name", "lag_seconds", "lag_bytes"],
        )
        .await?;
    let slots = rec.rows(c, db, ("slots", SLOTS), &[], &[]).await?;
    let receiver = rec
        .rows(c, db, ("wal_receiver", WAL_RECEIVER), &[], &[])
        .await?;
    let archiver = rec
        .rows(
            c,
            db,
            ("archiver", backups::ARCHIVER),
            &[],
            &[
                "archived_count",
                "failed_count",
                "last_archived_age_seconds",
                "last_failed_age_seconds",
                "archive_mode_on",
            ],
        )
        .await?;
    let allowed = rec
        .raw(
            c,
            db,
            ("archive_pending_allowed", backups::PENDING_ALLOWED),
            &[],
        )
        .await?
        .first()
        .is_some_and(|r| r.get::<_, bool>(0));
    let pending = if allowed {
        rec.rows(
            c,
            db,
            ("archive_pending", backups::PENDING),
            &[],
            &["segments", "oldest_age_seconds"],
        )
        .await?
        .into_iter()
        .next()
        .unwrap_or(Value::Null)
    } else {
        Value::Null
    };
    Ok(json!({
        "wal": wal,
        "standbys": standbys,
        "slots": slots,
        "archiver": archiver.into_iter().next().unwrap_or(Value::Null),
        "archive_pending": pending,
        "wal_receiver": receiver.into_iter().next().unwrap_or(Value::Null),
    }))
}
