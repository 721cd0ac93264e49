//! Keeps pgmon's own tables bounded: every hour, the audit rows older than
//! `audit.retention_days` (`pgmon.prune_audit`, sql/002_enforcement.sql, the only way the
//! agent's role may delete audit rows) and the budget ledgers of roles not charged for a
//! day (`pgmon.budget_ledgers`; a ledger is at most a day-long window).

use std::time::Duration;

use serde::Deserialize;

/// `audit:` in the policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Days an audit row is kept (default 90, at least 1).
    pub retention_days: u32,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self { retention_days: 90 }
    }
}

/// How often the pruner runs.
pub const PRUNE_EVERY: Duration = Duration::from_secs(3600);

/// Prunes once: returns (audit rows deleted, ledger rows deleted).
///
/// # Errors
/// The first failing statement (SQL not installed, connection lost).
pub async fn prune_once(
    client: &tokio_postgres::Client,
    retention_days: u32,
) -> Result<(i64, u64), tokio_postgres::Error> {
    let days = i32::try_from(retention_days).unwrap_or(i32::MAX);
    let audit: i64 = client
        .query_one("SELECT pgmon.prune_audit($1)", &[&days])
        .await?
        .get(0);
    let ledgers = client
        .execute(
            "DELETE FROM pgmon.budget_ledgers WHERE updated_at < now() - interval '1 day'",
            &[],
        )
        .await?;
    Ok((audit, ledgers))
}

/// Runs [`prune_once`] at start and every [`PRUNE_EVERY`] on the current runtime, on a
/// connection of its own (reopened with backoff); a failure is logged and retried at the
/// next hour.
pub fn spawn_pruner(monitor: crate::db::DbConfig, retention_days: u32) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(PRUNE_EVERY);
        loop {
            every.tick().await;
            let client = crate::db::connect_with_backoff(&monitor, "audit pruning", None).await;
            match prune_once(&client, retention_days).await {
                Ok((audit, ledgers)) => tracing::info!(
                    audit_rows = audit,
                    ledger_rows = ledgers,
                    retention_days,
                    "pruned pgmon.audit and pgmon.budget_ledgers"
                ),
                Err(e) => tracing::warn!(
                    error = %crate::util::error_chain(&e),
                    "pruning pgmon.audit failed (is sql/002_enforcement.sql up to date?); retried in an hour"
                ),
            }
        }
    });
}
