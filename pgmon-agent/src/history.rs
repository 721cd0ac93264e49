//! The last hour in memory, for the web UI's charts: every [`INTERVAL_SECONDS`] a sample
//! of the cluster (connections, transactions and statements per second, WAL rate) and of
//! the busiest roles (statements and errors per second, p50/p99 latency of the interval,
//! budget utilisation), kept
//! in a ring of [`CAPACITY`] samples. `GET /api/v1/history` returns it.
//!
//! Bounded: at most [`CAPACITY`] samples of at most `MAX_ROLES` roles each (the roles with
//! the most statements in the interval, then the highest budget utilisation): 360 × (≈ 80
//! bytes + 50 × ≈ 64 bytes) ≈ 1.2 MB at most. Nothing is written to disk; a restart starts
//! an empty hour.
//!
//! Sources: statement counts and latency from the capture thread
//! ([`crate::status::IntervalStatus`]: the counts `status` shows, the latency of the
//! executions that completed since the previous sample); transactions per second and the WAL position from the health loops' board
//! (`pgmon_transactions_per_second`, 60-second loop; `pgmon_wal_position_bytes`, whose
//! rate between two samples is the WAL rate); connections from `pg_stat_activity_backends`
//! (15-second loop). A figure its loop has not read yet is `null`, never 0.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
};

use serde::Serialize;

use crate::{health::Board, status::IntervalStatus};

/// Seconds between samples.
pub const INTERVAL_SECONDS: u64 = 10;

/// Samples kept: one hour at [`INTERVAL_SECONDS`].
pub const CAPACITY: usize = 360;

/// Roles kept per sample.
pub const MAX_ROLES: usize = 50;

/// One sample.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Sample {
    /// Milliseconds since the UNIX epoch.
    pub t_ms: u64,
    /// Client backends (`pg_stat_activity_backends`, summed over states and databases).
    pub connections: Option<f64>,
    /// `max_connections`.
    pub max_connections: Option<f64>,
    /// Commits and rollbacks per second, every database (the health loop's last minute).
    pub transactions_per_second: Option<f64>,
    /// Statements per second that pgmon saw completing, every role, over the interval.
    pub statements_per_second: Option<f64>,
    /// WAL written per second over the interval, bytes.
    pub wal_bytes_per_second: Option<f64>,
    /// The busiest roles of the interval.
    pub roles: Vec<RoleSample>,
}

/// One role in a [`Sample`].
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct RoleSample {
    pub role: String,
    /// Statements per second over the interval.
    pub statements_per_second: f64,
    /// Failed statements per second over the interval.
    pub errors_per_second: f64,
    /// Median and 99th percentile of the role's executions that completed in the
    /// interval, milliseconds (2 significant digits); `None` when none did.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// Spend ÷ budget now (budgeted roles only).
    pub budget_utilisation: Option<f64>,
}

/// The ring, shared between the sampler and the HTTP handler.
#[derive(Clone, Default)]
pub struct History {
    inner: Arc<Mutex<Ring>>,
}

#[derive(Default)]
struct Ring {
    samples: VecDeque<Sample>,
    /// Totals at the previous sample: (t_ms, statements, errors per role, WAL position).
    last: Option<Totals>,
}

#[derive(Clone, Debug, Default)]
struct Totals {
    t_ms: u64,
    queries: HashMap<String, (u64, u64)>,
    wal_position: Option<f64>,
}

/// What `/api/v1/history` returns.
#[derive(Serialize)]
pub struct HistoryDocument {
    pub interval_seconds: u64,
    pub capacity: usize,
    pub samples: Vec<Sample>,
}

impl History {
    /// Takes one sample from `status` (the capture thread's figures of the interval that
    /// ends now) and `board` at `t_ms`. The first call only sets the baseline of the rates
    /// (its sample has no per-second figures).
    pub fn observe(&self, t_ms: u64, status: &IntervalStatus, board: &Board) {
        let sum = |name: &str| {
            board
                .samples(name)
                .map(|s| s.iter().map(|(_, v)| *v).sum::<f64>())
        };
        let totals = Totals {
            t_ms,
            queries: status
                .roles
                .iter()
                .map(|r| (r.role.clone(), (r.queries, r.errors)))
                .collect(),
            wal_position: sum("pgmon_wal_position_bytes"),
        };
        let Ok(mut ring) = self.inner.lock() else {
            return;
        };
        let previous = ring.last.replace(totals.clone());
        let seconds = previous
            .as_ref()
            .map(|p| t_ms.saturating_sub(p.t_ms) as f64 / 1000.0)
            .filter(|s| *s > 0.0);
        let utilisation: HashMap<&str, f64> = status
            .budgets
            .iter()
            .map(|(role, u)| (role.as_str(), *u))
            .collect();
        let mut roles: Vec<RoleSample> = status
            .roles
            .iter()
            .map(|r| {
                let (q0, e0) = previous
                    .as_ref()
                    .and_then(|p| p.queries.get(&r.role).copied())
                    .unwrap_or((0, 0));
                let rate = |now: u64, before: u64| {
                    seconds.map_or(0.0, |s| now.saturating_sub(before) as f64 / s)
                };
                RoleSample {
                    role: r.role.clone(),
                    statements_per_second: rate(r.queries, q0),
                    errors_per_second: rate(r.errors, e0),
                    p50_ms: r.p50_ms,
                    p99_ms: r.p99_ms,
                    budget_utilisation: utilisation.get(r.role.as_str()).copied(),
                }
            })
            .collect();
        roles.sort_by(|a, b| {
            b.statements_per_second
                .total_cmp(&a.statements_per_second)
                .then(
                    b.budget_utilisation
                        .unwrap_or(0.0)
                        .total_cmp(&a.budget_utilisation.unwrap_or(0.0)),
                )
                .then(a.role.cmp(&b.role))
        });
        roles.truncate(MAX_ROLES);
        let statements_per_second = seconds.map(|s| {
            let before: u64 = previous
                .as_ref()
                .map_or(0, |p| p.queries.values().map(|(q, _)| q).sum());
            let now: u64 = totals.queries.values().map(|(q, _)| q).sum();
            now.saturating_sub(before) as f64 / s
        });
        let wal_bytes_per_second = match (seconds, previous.and_then(|p| p.wal_position)) {
            (Some(s), Some(before)) => totals.wal_position.map(|now| (now - before).max(0.0) / s),
            _ => None,
        };
        let sample = Sample {
            t_ms,
            connections: sum("pg_stat_activity_backends"),
            max_connections: sum("pg_settings_max_connections"),
            transactions_per_second: sum("pgmon_transactions_per_second"),
            statements_per_second,
            wal_bytes_per_second,
            roles,
        };
        if ring.samples.len() == CAPACITY {
            ring.samples.pop_front();
        }
        ring.samples.push_back(sample);
    }

    /// Every sample kept, oldest first.
    pub fn document(&self) -> HistoryDocument {
        HistoryDocument {
            interval_seconds: INTERVAL_SECONDS,
            capacity: CAPACITY,
            samples: self
                .inner
                .lock()
                .map(|r| r.samples.iter().cloned().collect())
                .unwrap_or_default(),
        }
    }
}

/// Samples every [`INTERVAL_SECONDS`] until `status` closes: asks the capture thread for
/// the interval's figures ([`crate::status::request_interval`]) and reads `board`. A status the capture thread did not give in
/// time skips that sample (the next one's rates span both intervals).
pub async fn run(
    history: History,
    status: std::sync::mpsc::Sender<crate::status::StatusRequest>,
    board: Board,
) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(INTERVAL_SECONDS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match crate::status::request_interval(&status).await {
            Ok(s) => history.observe(crate::util::now_ms(), &s, &board),
            Err("capture stopped") => return,
            Err(_) => {}
        }
    }
}

#[cfg(test)]
mod tests;
