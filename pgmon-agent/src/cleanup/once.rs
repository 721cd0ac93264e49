//! One round of the cleanup rules, for `pgmon-agent cleanup --once`: read
//! `pg_stat_activity` once, decide with the same rules as the agent's loop
//! ([`Policy::decide`]), carry each action out through `sql/005_sessions.sql` with its log
//! line and audit row ([`super::carry_out`]), and report what became of each.

use serde::Serialize;
use tokio_postgres::Client;

use super::{Policy, carry_out, server_version, sessions};

/// What one round did.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// The server's `server_version_num`.
    pub server_version_num: u32,
    /// Client backends looked at (superusers' and replication roles' are never listed).
    pub sessions: usize,
    /// Only decided, audited and logged (`--dry-run`); nothing was signalled.
    pub dry_run: bool,
    /// One entry per action, in the order taken.
    pub actions: Vec<Done>,
    /// Actions by outcome.
    pub applied: usize,
    pub observed: usize,
    pub refused: usize,
    pub failed: usize,
    /// What the round could not judge (e.g. lock waits on PostgreSQL 13).
    pub notes: Vec<String>,
}

/// One action and its outcome.
#[derive(Clone, Debug, Serialize)]
pub struct Done {
    /// `cancel` (the statement) or `terminate` (the session).
    pub action: &'static str,
    pub pid: i32,
    pub role: String,
    /// The rule and its limit, with what was seen, e.g. `idle_in_transaction > 3 s (5.1 s)`.
    pub rule: String,
    /// `applied` (the function answered: `terminated`, `cancelled`, or `gone` / `moved on`
    /// when the session changed before it could act), `observed` (dry run), `refused` (the
    /// SQL function refused the role) or `failed`.
    pub outcome: &'static str,
    /// The result as audited in `pgmon.audit`.
    pub result: String,
}

impl Report {
    /// The command's exit code: 0 when there was nothing to do or every action was applied
    /// (or observed in a dry run), 1 when any was refused or failed.
    pub fn exit_code(&self) -> u8 {
        u8::from(self.refused + self.failed > 0)
    }
}

/// Runs one round under `policy` on `client`; with `dry_run` every action is only
/// observed. Errors when the sessions cannot be read; a connection lost midway marks the
/// action in hand `failed` and ends the round.
pub async fn once(
    client: &Client,
    policy: &Policy,
    dry_run: bool,
) -> Result<Report, tokio_postgres::Error> {
    let version = server_version(client).await?;
    let mut notes = Vec::new();
    if policy.config.lock_wait_seconds.is_some() && !crate::health::fast::lock_wait_known(version) {
        notes.push(
            "cleanup.lock_wait_seconds needs PostgreSQL 14+ (pg_locks.waitstart): not judged"
                .to_owned(),
        );
    }
    let seen = sessions(client, version).await?;
    let mut report = Report {
        server_version_num: version,
        sessions: seen.len(),
        dry_run,
        actions: Vec::new(),
        applied: 0,
        observed: 0,
        refused: 0,
        failed: 0,
        notes,
    };
    for a in policy.decide(&seen) {
        let observe = dry_run.then_some("dry run");
        let (outcome, result, lost) = match carry_out(client, &a, observe, "cleanup --once").await {
            Ok((outcome, result)) => (outcome, result, false),
            Err(e) => ("failed", format!("failed: connection lost: {e}"), true),
        };
        match outcome {
            "applied" => report.applied += 1,
            "observed" => report.observed += 1,
            "refused" => report.refused += 1,
            _ => report.failed += 1,
        }
        report.actions.push(Done {
            action: a.action,
            pid: a.target.pid,
            role: a.target.role,
            rule: a.rule,
            outcome,
            result,
        });
        if lost {
            break;
        }
    }
    Ok(report)
}

impl Policy {
    /// Whether any rule has a limit (otherwise a round has nothing to judge by).
    pub fn has_rules(&self) -> bool {
        let c = &self.config;
        c.idle_in_transaction_seconds.is_some()
            || c.statement_seconds.is_some()
            || c.lock_wait_seconds.is_some()
            || !self.by_role.is_empty()
    }
}

/// The report as text: one line per action, then the counts.
pub fn render(report: &Report) -> String {
    use std::fmt::Write as _;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "cleanup --once{}: {} client sessions looked at, {} action(s)",
        if report.dry_run { " (dry run)" } else { "" },
        report.sessions,
        report.actions.len()
    );
    for d in &report.actions {
        let _ = writeln!(
            o,
            "  {:<9} pid {:>7}  {:<20} {:<44} {}",
            d.action, d.pid, d.role, d.rule, d.result
        );
    }
    for n in &report.notes {
        let _ = writeln!(o, "  note: {n}");
    }
    let _ = writeln!(
        o,
        "{} applied, {} observed, {} refused, {} failed (audited in pgmon.audit, source cleanup)",
        report.applied, report.observed, report.refused, report.failed
    );
    o
}
