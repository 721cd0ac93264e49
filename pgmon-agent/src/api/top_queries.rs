//! `/api/v1/top-queries`: `pg_stat_statements` (PostgreSQL docs, appendix F.32) and
//! pgmon's own capture side by side, joined on libpg_query's fingerprint: each
//! `pg_stat_statements` text (normalized, constants as `$n`) is fingerprinted with the same
//! function the agent applies to the statements it captures (`pg_query::fingerprint`,
//! which ignores constants and parameter numbers), so `WHERE aid = 5` seen on the wire and
//! `WHERE aid = $1` in `pg_stat_statements` meet.
//!
//! The two sides count over different periods: `pg_stat_statements` since its last reset
//! (`stats_reset`), pgmon since the agent started (`uptime_seconds`), and pgmon never sees
//! its own sessions (`application_name = pgmon`), whose statements therefore appear on the
//! `pg_stat_statements` side only.

use std::collections::{BTreeSet, HashMap};

use serde::Serialize;
use serde_json::{Value, json};

use super::{Api, ApiError, Recorder, session::Session};
use crate::status::RoleStatus;

/// Most `pg_stat_statements` rows read (its own default `pg_stat_statements.max`).
const MAX_STATEMENTS: i64 = 5_000;

/// Whether the views exist in the monitor's database.
const VIEWS: &str = "SELECT to_regclass('pg_stat_statements') IS NOT NULL, \
     to_regclass('pg_stat_statements_info') IS NOT NULL";

/// When `pg_stat_statements` was last reset (its 1.9+, PostgreSQL 14+).
const INFO: &str = "SELECT stats_reset::text FROM pg_stat_statements_info";

/// Every statement `pg_stat_statements` holds (up to [`MAX_STATEMENTS`], most execution
/// time first), with its role, database and block counts (8 kB blocks; the columns exist
/// from the 1.8 of PostgreSQL 13 on).
const STATEMENTS: &str = "SELECT s.queryid::text, s.query, r.rolname::text, d.datname::text, \
     s.calls, s.total_exec_time, s.rows, s.shared_blks_hit, s.shared_blks_read, \
     s.local_blks_read + s.temp_blks_read + s.temp_blks_written \
     FROM pg_stat_statements s LEFT JOIN pg_roles r ON r.oid = s.userid \
     LEFT JOIN pg_database d ON d.oid = s.dbid \
     WHERE s.queryid IS NOT NULL ORDER BY s.total_exec_time DESC LIMIT $1";

/// One `pg_stat_statements` row.
#[derive(Clone, Debug)]
pub struct PssRow {
    /// `queryid` as text (a signed 64-bit hash).
    pub queryid: String,
    /// Its normalized text (`$n` for constants).
    pub query: String,
    /// The role that ran it (`userid`), if it still exists.
    pub role: Option<String>,
    /// The database (`dbid`), if it still exists.
    pub database: Option<String>,
    /// Executions.
    pub calls: i64,
    /// Milliseconds.
    pub total_exec_time: f64,
    /// Rows returned or affected.
    pub rows: i64,
    /// Shared-buffer hits, blocks.
    pub shared_blks_hit: i64,
    /// Blocks read into shared buffers (from the OS cache or the disk).
    pub shared_blks_read: i64,
    /// Local blocks read and temporary blocks read and written (sorts, hashes and
    /// temporary tables that spilled).
    pub other_blks: i64,
}

/// `pg_stat_statements`' figures of one fingerprint, summed over its rows (roles,
/// databases, queryids).
#[derive(Clone, Debug, Default, Serialize)]
pub struct PssSide {
    /// Its text (of the row with the most execution time).
    pub query: String,
    /// Executions.
    pub calls: i64,
    /// Milliseconds.
    pub total_ms: f64,
    /// Milliseconds per call.
    pub mean_ms: f64,
    /// Rows returned or affected.
    pub rows: i64,
    /// Shared-buffer hits, blocks.
    pub shared_blks_hit: i64,
    /// Blocks read into shared buffers.
    pub shared_blks_read: i64,
    /// Blocks of I/O: `shared_blks_read` plus local reads and temporary reads and writes;
    /// the order of `by_io`.
    pub io_blks: i64,
    /// Its `pg_stat_statements` rows' queryids.
    pub queryids: BTreeSet<String>,
    /// The roles that ran it.
    pub roles: BTreeSet<String>,
    /// The databases it ran in.
    pub databases: BTreeSet<String>,
}

/// pgmon's figures of one fingerprint, summed over the roles that ran it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PgmonSide {
    /// Normalized text (constants as `$n`).
    pub normalized: String,
    /// Executions completed.
    pub calls: u64,
    /// Executions that ended in an error.
    pub errors: u64,
    /// Milliseconds, request to completion on the wire.
    pub total_ms: f64,
    /// Milliseconds per call.
    pub mean_ms: f64,
    /// The roles that ran it.
    pub roles: BTreeSet<String>,
}

/// One statement of the answer.
#[derive(Clone, Debug, Serialize)]
pub struct TopQuery {
    /// libpg_query fingerprint, 16 hex digits; null for a `pg_stat_statements` text that
    /// libpg_query cannot parse (then keyed by its queryid alone).
    pub fingerprint: Option<String>,
    /// `both`, `pg_stat_statements` or `pgmon`: which side saw it.
    pub seen_by: &'static str,
    /// `pg_stat_statements`' side, when it has the statement.
    pub pg_stat_statements: Option<PssSide>,
    /// pgmon's side, when it captured the statement.
    pub pgmon: Option<PgmonSide>,
}

/// What the statements of an answer are ranked by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The larger of the two sides' total time (`statements`).
    Time,
    /// The larger of the two sides' calls (`by_calls`).
    Calls,
    /// `pg_stat_statements`' blocks of I/O, [`PssSide::io_blks`] (`by_io`; pgmon sees no
    /// I/O).
    Io,
}

impl TopQuery {
    /// Its weight in `order`: the larger of the two sides' figure.
    fn weight(&self, order: Order) -> f64 {
        let pss = self.pg_stat_statements.as_ref();
        let pgmon = self.pgmon.as_ref();
        match order {
            Order::Time => pss
                .map_or(0.0, |s| s.total_ms)
                .max(pgmon.map_or(0.0, |s| s.total_ms)),
            Order::Calls => {
                (pss.map_or(0, |s| s.calls.max(0) as u64)).max(pgmon.map_or(0, |s| s.calls)) as f64
            }
            Order::Io => pss.map_or(0.0, |s| s.io_blks as f64),
        }
    }
}

/// The `limit` statements of `joined` with the most `order`, most first (ties by
/// fingerprint); statements with none of it (no I/O) are left out of [`Order::Io`] and
/// [`Order::Calls`].
pub fn top(joined: &[TopQuery], order: Order, limit: usize) -> Vec<TopQuery> {
    let mut v: Vec<&TopQuery> = joined
        .iter()
        .filter(|q| order == Order::Time || q.weight(order) > 0.0)
        .collect();
    v.sort_by(|a, b| {
        b.weight(order)
            .total_cmp(&a.weight(order))
            .then_with(|| a.fingerprint.cmp(&b.fingerprint))
    });
    v.into_iter().take(limit).cloned().collect()
}

/// Joins the two sides on the fingerprint, in no order (see [`top`]). Runs libpg_query on
/// each `pg_stat_statements` text.
/// The libpg_query fingerprint of a `pg_stat_statements` query text. That text is
/// normalized by the server, which writes a typed literal (`interval '180 days'`, PostgreSQL
/// docs 4.2.8 "Type Casts") as `interval $2`, a form libpg_query's grammar refuses; such
/// texts are read again with each `type $n` of a common type written as the equivalent
/// cast `$n::type`, which fingerprints as the typed literal does.
fn pss_fingerprint(query: &str) -> Option<u64> {
    static TYPED: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r"(?i)\b(interval|date|time|timestamp|timestamptz|timetz|numeric|decimal|int2|int4|int8|integer|int|bigint|smallint|real|float4|float8|text|varchar|char|bool|boolean|json|jsonb|uuid|inet|cidr|macaddr|bytea|money|tsquery|tsvector|xml|oid|regclass)\s+\$([0-9]+)",
        )
        .expect("a valid pattern")
    });
    pg_query::fingerprint(query, 0, 0)
        .or_else(|e| match TYPED.replace_all(query, "$$$2::$1") {
            std::borrow::Cow::Owned(cast) => pg_query::fingerprint(&cast, 0, 0),
            std::borrow::Cow::Borrowed(_) => Err(e),
        })
        .ok()
        .map(|f| f.value)
}

pub fn join(pss: Vec<PssRow>, pgmon: &[RoleStatus]) -> Vec<TopQuery> {
    let mut out: HashMap<String, TopQuery> = HashMap::new();
    for r in pss {
        let fp = pss_fingerprint(&r.query).map(crate::query::fingerprint_hex);
        let key = fp
            .clone()
            .unwrap_or_else(|| format!("queryid:{}", r.queryid));
        let e = out.entry(key).or_insert_with(|| TopQuery {
            fingerprint: fp,
            seen_by: "pg_stat_statements",
            pg_stat_statements: Some(PssSide {
                query: r.query.clone(),
                ..PssSide::default()
            }),
            pgmon: None,
        });
        let s = e.pg_stat_statements.as_mut().expect("created with it");
        s.calls += r.calls;
        s.total_ms += r.total_exec_time;
        s.rows += r.rows;
        s.shared_blks_hit += r.shared_blks_hit;
        s.shared_blks_read += r.shared_blks_read;
        s.io_blks += r.shared_blks_read + r.other_blks;
        s.queryids.insert(r.queryid);
        s.roles.extend(r.role);
        s.databases.extend(r.database);
    }
    for role in pgmon {
        for f in &role.fingerprints {
            let e = out
                .entry(f.fingerprint.clone())
                .or_insert_with(|| TopQuery {
                    fingerprint: Some(f.fingerprint.clone()),
                    seen_by: "pgmon",
                    pg_stat_statements: None,
                    pgmon: None,
                });
            let s = e.pgmon.get_or_insert_with(|| PgmonSide {
                normalized: f.normalized.clone(),
                ..PgmonSide::default()
            });
            s.calls += f.calls;
            s.errors += f.errors;
            s.total_ms += f.total_ms();
            s.roles.insert(role.role.clone());
        }
    }
    out.into_values()
        .map(|mut q| {
            if let Some(s) = &mut q.pg_stat_statements {
                s.mean_ms = s.total_ms / (s.calls.max(1) as f64);
            }
            if let Some(s) = &mut q.pgmon {
                s.mean_ms = s.total_ms / (s.calls.max(1) as f64);
            }
            if q.pg_stat_statements.is_some() && q.pgmon.is_some() {
                q.seen_by = "both";
            }
            q
        })
        .collect()
}

/// The answer: both sides' availability and the joined list.
pub async fn answer(
    api: &Api,
    s: &Session,
    rec: &mut Recorder,
    limit: i64,
) -> Result<Value, ApiError> {
    let (c, db) = (&s.client, s.database.as_str());
    let views = rec.raw(c, db, ("views", VIEWS), &[]).await?;
    let (has_pss, has_info) = views
        .first()
        .map_or((false, false), |r| (r.get(0), r.get(1)));
    let mut pss_rows = Vec::new();
    let mut stats_reset = None;
    if has_pss {
        if has_info {
            let rows = rec.raw(c, db, ("stats_reset", INFO), &[]).await?;
            stats_reset = rows.first().and_then(|r| r.get::<_, Option<String>>(0));
        }
        for r in rec
            .raw(c, db, ("statements", STATEMENTS), &[&MAX_STATEMENTS])
            .await?
        {
            pss_rows.push(PssRow {
                queryid: r.get(0),
                query: r.get::<_, Option<String>>(1).unwrap_or_default(),
                role: r.get(2),
                database: r.get(3),
                calls: r.get(4),
                total_exec_time: r.get(5),
                rows: r.get(6),
                shared_blks_hit: r.get(7),
                shared_blks_read: r.get(8),
                other_blks: r.get(9),
            });
        }
    }
    let read = pss_rows.len();
    let pgmon = crate::status::request_status(&api.status).await;
    let (pgmon_json, roles) = match pgmon {
        Ok(st) => (
            json!({"available": true, "uptime_seconds": st.agent.uptime_seconds,
                   "fingerprints_read": st.roles.iter().map(|r| r.fingerprints.len()).sum::<usize>()}),
            st.roles,
        ),
        Err(why) => (json!({"available": false, "reason": why}), Vec::new()),
    };
    let limit = limit as usize;
    let mut joined = tokio::task::spawn_blocking(move || join(pss_rows, &roles))
        .await
        .unwrap_or_default();
    if api.redact_sql_text {
        // Joined on the texts first; shown without them. (pgmon's side comes from the status
        // document, which the capture thread already redacts.)
        for q in &mut joined {
            if let Some(s) = &mut q.pg_stat_statements {
                s.query = crate::query::config::REDACTED.to_owned();
            }
        }
    }
    Ok(json!({
        "pg_stat_statements": {
            "available": has_pss,
            "reason": (!has_pss).then(|| format!("the extension is not installed in database {db:?} (the monitor connection's)")),
            "database": db, "stats_reset": stats_reset, "statements_read": read,
        },
        "pgmon": pgmon_json,
        "statements": top(&joined, Order::Time, limit),
        "by_calls": top(&joined, Order::Calls, limit),
        "by_io": top(&joined, Order::Io, limit),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FingerprintStatus;

    fn pss(queryid: &str, query: &str, role: &str, calls: i64, total: f64) -> PssRow {
        PssRow {
            queryid: queryid.into(),
            query: query.into(),
            role: Some(role.into()),
            database: Some("app".into()),
            calls,
            total_exec_time: total,
            rows: calls,
            shared_blks_hit: calls * 3,
            shared_blks_read: total as i64,
            other_blks: 0,
        }
    }

    fn role(name: &str, fps: &[(&str, u64, f64)]) -> RoleStatus {
        RoleStatus {
            role: name.into(),
            databases: vec!["app".into()],
            queries: fps.iter().map(|f| f.1).sum(),
            errors: 0,
            errors_by_class: Default::default(),
            connection_errors: 0,
            connection_errors_by_class: Default::default(),
            prepare_errors: 0,
            prepare_errors_by_class: Default::default(),
            connections: 0,
            unreadable_cpu_seconds: 0.0,
            p50_ms: None,
            p99_ms: None,
            fingerprints: fps
                .iter()
                .map(|(text, calls, mean_ms)| FingerprintStatus {
                    fingerprint: crate::query::fingerprint_hex(
                        pg_query::fingerprint(text, 0, 0).unwrap().value,
                    ),
                    calls: *calls,
                    errors: 0,
                    mean_ms: *mean_ms,
                    text_bytes: text.len() as u32,
                    normalized: (*text).into(),
                    cost_state: "disabled".into(),
                    plan_cost: None,
                    total_cost: None,
                    cost_per_second: None,
                })
                .collect(),
        }
    }

    #[test]
    fn typed_literals_as_pg_stat_statements_writes_them_meet_pgmons() {
        let pgmon_text = "SELECT id FROM objects WHERE modified_at < now() - interval '180 days' AND d = date '2020-01-01'";
        let rows = vec![pss(
            "7",
            "SELECT id FROM objects WHERE modified_at < now() - interval $1 AND d = DATE $2",
            "a",
            3,
            3.0,
        )];
        let joined = join(rows, &[role("a", &[(pgmon_text, 3, 1.0)])]);
        assert_eq!(
            joined.len(),
            1,
            "{:?}",
            joined.iter().map(|q| q.seen_by).collect::<Vec<_>>()
        );
        assert_eq!(joined[0].seen_by, "both");
        assert_eq!(
            pss_fingerprint("SELECT 1 LIMIT $1"),
            Some(
                pg_query::fingerprint("SELECT 1 LIMIT 5", 0, 0)
                    .unwrap()
                    .value
            ),
            "texts that parse are not rewritten"
        );
    }

    #[test]
    fn both_sides_meet_on_the_fingerprint() {
        let rows = vec![
            pss("1", "SELECT v FROM t WHERE id = $1", "a", 10, 50.0),
            // The same statement by another role: one entry, summed.
            pss("2", "SELECT v FROM t WHERE id = $1", "b", 5, 25.0),
            pss("3", "SELECT pg_sleep($1)", "a", 1, 1000.0),
            pss("4", "not sql at all", "a", 1, 0.5),
        ];
        let roles = [
            role("a", &[("SELECT v FROM t WHERE id = $1", 12, 2.0)]),
            role("b", &[("UPDATE t SET v = $1", 4, 1.0)]),
        ];
        let joined = join(rows, &roles);
        let v = top(&joined, Order::Time, 10);
        assert_eq!(v.len(), 4);
        assert_eq!(v[0].seen_by, "pg_stat_statements", "pg_sleep: most time");
        let both = v.iter().find(|q| q.seen_by == "both").unwrap();
        let p = both.pg_stat_statements.as_ref().unwrap();
        assert_eq!((p.calls, p.total_ms, p.mean_ms), (15, 75.0, 5.0));
        assert_eq!(p.queryids.len(), 2);
        assert_eq!(p.roles.len(), 2);
        let m = both.pgmon.as_ref().unwrap();
        assert_eq!((m.calls, m.total_ms, m.mean_ms), (12, 24.0, 2.0));
        let only = v.iter().find(|q| q.seen_by == "pgmon").unwrap();
        assert_eq!(
            only.pgmon.as_ref().unwrap().normalized,
            "UPDATE t SET v = $1"
        );
        let unparsed = v.iter().find(|q| q.fingerprint.is_none()).unwrap();
        assert_eq!(unparsed.seen_by, "pg_stat_statements");
        assert_eq!(top(&joined, Order::Time, 1).len(), 1, "limit");
        let by_calls = top(&joined, Order::Calls, 10);
        assert_eq!(
            by_calls[0].fingerprint, both.fingerprint,
            "15 calls on one side, 12 on the other: 15 ranks first"
        );
        assert_eq!(by_calls.len(), 4);
        let by_io = top(&joined, Order::Io, 10);
        assert_eq!(
            by_io.len(),
            2,
            "pgmon alone sees no I/O, and the unparsable one read no block: left out"
        );
        assert_eq!(by_io[0].seen_by, "pg_stat_statements", "1000 blocks read");
        let p = by_io[1].pg_stat_statements.as_ref().unwrap();
        assert_eq!(
            (p.shared_blks_read, p.shared_blks_hit, p.io_blks),
            (75, 45, 75)
        );
    }
}
