//! Health pollers: four loops on read-only monitor sessions, each with an interval and a
//! time budget (15 s / 1 s, 60 s / 3 s, 10 min / 10 s, 1 h / 60 s by default). What they
//! read is published on a [`Board`] and exported at scrape time, with postgres_exporter's
//! names where one exists (`pg_…`) and pgmon's own (`pgmon_…`) otherwise; per-relation and
//! per-statement families are capped at `health.top_n`. Labels carry database, relation,
//! index, standby and queryid names only: no SQL text, user names or PIDs.
//!
//! Each loop has its own session (`application_name = pgmon`, `default_transaction_read_only`,
//! `statement_timeout` = 5 × the budget, `lock_timeout` set), so a slow hourly pass never
//! delays the 15-second one. A run over its budget is logged as degraded and shown in
//! `/healthz`; a failed run keeps the previous values, counts in
//! `pgmon_errors_total{loop}`, and the next tick reconnects (the interval is the backoff).

pub(crate) mod backups;
pub(crate) mod bloat;
pub mod board;
pub(crate) mod databases;
pub(crate) mod fast;
pub(crate) mod medium;
pub(crate) mod settings;
pub(crate) mod wal_io;

use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio_postgres::Client;

pub use board::{Board, Family, Kind, LoopState};

pub use crate::db::{PG14, PG16, PG17, PG18};

/// `health:` in the policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// Run the pollers.
    pub enabled: bool,
    /// Most samples of each per-relation and per-statement family (per database).
    pub top_n: usize,
    /// Most databases the 10-minute and hourly loops open a session in (largest first).
    pub max_databases: usize,
    /// `lock_timeout` of the monitor sessions, milliseconds.
    pub lock_timeout_ms: u64,
    /// Largest tables per database the hourly loop measures with `pgstattuple_approx`
    /// where the extension is installed (it reads their pages that are not all-visible);
    /// 0: estimate only (see `health::bloat`).
    pub bloat_sample_tables: usize,
    pub loops: Loops,
}

/// The four loops.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Loops {
    pub fast: LoopConfig,
    pub medium: LoopConfig,
    pub slow: LoopConfig,
    pub hourly: LoopConfig,
}

/// One loop's schedule.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoopConfig {
    /// Seconds between runs.
    pub interval_seconds: u64,
    /// A run longer than this is degraded, seconds.
    pub budget_seconds: f64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            top_n: 20,
            max_databases: 50,
            lock_timeout_ms: 100,
            bloat_sample_tables: 5,
            loops: Loops::default(),
        }
    }
}

impl Default for Loops {
    fn default() -> Self {
        let l = |interval_seconds, budget_seconds| LoopConfig {
            interval_seconds,
            budget_seconds,
        };
        Self {
            fast: l(15, 1.0),
            medium: l(60, 3.0),
            slow: l(600, 10.0),
            hourly: l(3600, 60.0),
        }
    }
}

impl HealthConfig {
    /// Checks ranges; the error is `(field, message)`.
    pub fn validate(&self) -> Result<(), (String, String)> {
        for (name, l) in [
            ("fast", self.loops.fast),
            ("medium", self.loops.medium),
            ("slow", self.loops.slow),
            ("hourly", self.loops.hourly),
        ] {
            if l.interval_seconds == 0 {
                return Err((
                    format!("health.loops.{name}.interval_seconds"),
                    "must be at least 1".into(),
                ));
            }
            if !(l.budget_seconds > 0.0 && l.budget_seconds <= l.interval_seconds as f64) {
                return Err((
                    format!("health.loops.{name}.budget_seconds"),
                    format!(
                        "{} must be above 0 and at most the interval ({} s)",
                        l.budget_seconds, l.interval_seconds
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Which loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LoopKind {
    Fast,
    Medium,
    Slow,
    Hourly,
}

impl LoopKind {
    /// The `loop` label.
    pub fn name(self) -> &'static str {
        match self {
            LoopKind::Fast => "fast",
            LoopKind::Medium => "medium",
            LoopKind::Slow => "slow",
            LoopKind::Hourly => "hourly",
        }
    }

    const ALL: [LoopKind; 4] = [
        LoopKind::Fast,
        LoopKind::Medium,
        LoopKind::Slow,
        LoopKind::Hourly,
    ];
}

/// Starts the four loops on `runtime`, polling through `monitor`.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    config: &HealthConfig,
    monitor: &crate::db::DbConfig,
    board: &Board,
) {
    for kind in LoopKind::ALL {
        runtime.spawn(serve(kind, config.clone(), monitor.clone(), board.clone()));
    }
}

/// One pass of the 15-second and 60-second loops and of the wraparound query, on one
/// session, published on a fresh board (for `pgmon-agent check`, without a running agent).
pub async fn snapshot(monitor: &crate::db::DbConfig) -> anyhow::Result<Board> {
    let client = crate::db::connect(monitor).await?;
    client.batch_execute(&session_setup(10_000, 100)).await?;
    let version = client
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await?
        .get::<_, i32>(0) as u32;
    let board = Board::default();
    let fast = fast::Fast::prepare(&client, version).await?;
    board.publish("fast", fast.run(&client).await?);
    let mut medium = medium::Medium::prepare(&client, version, 1).await?;
    board.publish("medium", medium.run(&client).await?);
    board.publish(
        "hourly",
        databases::hourly(&client, monitor, 0, (0, 0), "SELECT 1").await?,
    );
    Ok(board)
}

/// The statements that make a monitor session what the loops (and the API) need:
/// `statement_timeout` and `lock_timeout` in milliseconds, and read-only transactions
/// (PostgreSQL docs, section 19.11.1 "Statement Behavior").
pub fn session_setup(statement_timeout_ms: u64, lock_timeout_ms: u64) -> String {
    format!(
        "SET statement_timeout = {statement_timeout_ms}; SET lock_timeout = {lock_timeout_ms}; \
         SET default_transaction_read_only = on"
    )
}

/// A loop's session and its prepared statements.
enum Prepared {
    Fast(fast::Fast),
    Medium(medium::Medium),
    Databases,
}

async fn serve(kind: LoopKind, config: HealthConfig, monitor: crate::db::DbConfig, board: Board) {
    let l = match kind {
        LoopKind::Fast => config.loops.fast,
        LoopKind::Medium => config.loops.medium,
        LoopKind::Slow => config.loops.slow,
        LoopKind::Hourly => config.loops.hourly,
    };
    let setup = session_setup(
        ((l.budget_seconds * 5000.0) as u64).clamp(1000, 300_000),
        config.lock_timeout_ms,
    );
    let mut ticker = tokio::time::interval(Duration::from_secs(l.interval_seconds));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut session: Option<(Client, Prepared)> = None;
    // Kept across sessions: a server restart is when most setting changes land.
    let mut drift = settings::Drift::default();
    let mut state = LoopState {
        interval_seconds: l.interval_seconds,
        budget_seconds: l.budget_seconds,
        since_ms: crate::util::now_ms(),
        ..LoopState::default()
    };
    board.expect(
        kind.name(),
        l.interval_seconds,
        l.budget_seconds,
        state.since_ms,
    );
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let result = run_once(kind, &config, &monitor, &setup, &mut session, &mut drift).await;
        let elapsed = started.elapsed().as_secs_f64();
        let success = match result {
            Ok(families) => {
                board.publish(kind.name(), families);
                true
            }
            Err(e) => {
                state.errors += 1;
                state.consecutive_failures += 1;
                state.last_error = Some(format!("{e:#}"));
                tracing::warn!(r#loop = kind.name(), error = %format!("{e:#}"), "health loop failed; retrying at the next tick");
                if session.as_ref().is_some_and(|(c, _)| c.is_closed()) {
                    session = None;
                }
                if kind == LoopKind::Fast {
                    board.publish(kind.name(), vec![fast::pg_up(false)]);
                }
                false
            }
        };
        let over_budget = elapsed > l.budget_seconds;
        if over_budget {
            tracing::warn!(
                r#loop = kind.name(),
                seconds = elapsed,
                budget_seconds = l.budget_seconds,
                "health loop over its time budget: degraded"
            );
        }
        let now = crate::util::now_ms();
        state.duration_seconds = elapsed;
        state.success = success;
        state.over_budget = over_budget;
        state.last_run_ms = Some(now);
        if success {
            state.consecutive_failures = 0;
            state.last_success_ms = Some(now);
        }
        board.record(kind.name(), state.clone());
    }
}

async fn run_once(
    kind: LoopKind,
    config: &HealthConfig,
    monitor: &crate::db::DbConfig,
    setup: &str,
    session: &mut Option<(Client, Prepared)>,
    drift: &mut settings::Drift,
) -> anyhow::Result<Vec<Family>> {
    if session.as_ref().is_none_or(|(c, _)| c.is_closed()) {
        let client = crate::db::connect(monitor).await?;
        client.batch_execute(setup).await?;
        let version = client
            .query_one("SELECT current_setting('server_version_num')::int", &[])
            .await?
            .get::<_, i32>(0) as u32;
        let prepared = match kind {
            LoopKind::Fast => Prepared::Fast(fast::Fast::prepare(&client, version).await?),
            LoopKind::Medium => {
                Prepared::Medium(medium::Medium::prepare(&client, version, config.top_n).await?)
            }
            LoopKind::Slow | LoopKind::Hourly => Prepared::Databases,
        };
        *session = Some((client, prepared));
    }
    let Some((client, prepared)) = session.as_mut() else {
        unreachable!("set above");
    };
    Ok(match (kind, prepared) {
        (_, Prepared::Fast(f)) => f.run(client).await?,
        (_, Prepared::Medium(m)) => {
            let mut out = m.run(client).await?;
            out.extend(drift.run(client).await?);
            out
        }
        (LoopKind::Hourly, Prepared::Databases) => {
            databases::hourly(
                client,
                monitor,
                config.max_databases,
                (config.top_n, config.bloat_sample_tables),
                setup,
            )
            .await?
        }
        (_, Prepared::Databases) => {
            databases::slow(client, monitor, config.top_n, config.max_databases, setup).await?
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_budget_beyond_the_interval_names_the_field() {
        let mut c = HealthConfig::default();
        assert_eq!(c.validate(), Ok(()));
        c.loops.medium.budget_seconds = 90.0;
        let (field, message) = c.validate().unwrap_err();
        assert_eq!(field, "health.loops.medium.budget_seconds");
        assert!(message.contains("at most the interval (60 s)"), "{message}");
    }
}
