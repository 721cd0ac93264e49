//! Opt-in session cleanup: every `cleanup.interval_seconds` the agent reads
//! `pg_stat_activity` once and
//! - terminates sessions idle in transaction longer than `idle_in_transaction_seconds`,
//! - cancels statements running longer than `statement_seconds` (or the first matching
//!   `statement_seconds_by_role` rule),
//! - terminates the session at the head of a lock wait longer than `lock_wait_seconds`
//!   (PostgreSQL 14+: 13 does not record since when a lock is awaited, `pg_locks.waitstart`,
//!   so there the rule never acts, and the agent says so once per connection),
//! - culls idle sessions, oldest first, while client connections are over a threshold
//!   (`idle_culling`, with its own mode: see [`idle`]),
//!
//! through pgmon's SECURITY DEFINER functions of `sql/005_sessions.sql`, which refuse
//! superusers, replication roles, pgmon's own roles and `pgmon.exempt_roles` themselves and
//! act only if the session is still the one seen. Roles in `cleanup.exempt` are skipped
//! here. `mode: observe` audits and logs what it would do and does nothing. Every action
//! is an audit row (`source = 'cleanup'`) and one structured log line.

use std::{collections::HashSet, time::Duration, time::SystemTime};

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use tokio_postgres::Client;

use crate::budget::{metrics::BudgetMetrics, policy::Mode};

mod idle;
pub mod once;
mod sessions;

pub use idle::{Culling, IdleCulling};
pub use sessions::Session;
use sessions::{server_version, sessions};

/// `cleanup:` in the policy file. Off by default; each rule is off until given a limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CleanupConfig {
    pub enabled: bool,
    /// `observe` (audit and log only) or `enforce`.
    pub mode: Mode,
    /// Seconds between two looks at `pg_stat_activity`.
    pub interval_seconds: u64,
    /// Terminate a session idle in transaction longer than this, seconds.
    pub idle_in_transaction_seconds: Option<f64>,
    /// Cancel a statement running longer than this, seconds.
    pub statement_seconds: Option<f64>,
    /// Per-role statement limits (name or glob, first match wins) before the default.
    pub statement_seconds_by_role: Vec<RoleLimit>,
    /// Terminate the blocker of a lock wait longer than this, seconds.
    pub lock_wait_seconds: Option<f64>,
    /// Roles never touched (names or globs).
    pub exempt: Vec<String>,
    /// Culling of idle sessions when connections pass a threshold (off by default; see
    /// [`IdleCulling`]).
    pub idle_culling: IdleCulling,
}

/// One per-role statement limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimit {
    #[serde(rename = "match")]
    pub pattern: String,
    pub seconds: f64,
}

impl Default for CleanupConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: Mode::Observe,
            interval_seconds: 5,
            idle_in_transaction_seconds: None,
            statement_seconds: None,
            statement_seconds_by_role: Vec::new(),
            lock_wait_seconds: None,
            exempt: Vec::new(),
            idle_culling: IdleCulling::default(),
        }
    }
}

/// The policy with its globs compiled.
#[derive(Clone, Debug)]
pub struct Policy {
    pub config: CleanupConfig,
    by_role: Vec<(GlobMatcher, f64)>,
    exempt: Vec<GlobMatcher>,
    /// `idle_culling`, compiled.
    pub culling: Culling,
}

impl CleanupConfig {
    /// Checks ranges and compiles the globs; the error is `(field, message)`.
    pub fn compile(&self) -> Result<Policy, (String, String)> {
        let glob = |field: String, p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| (field, e.to_string()))
        };
        if self.interval_seconds == 0 {
            return Err((
                "cleanup.interval_seconds".into(),
                "must be at least 1".into(),
            ));
        }
        for (field, v) in [
            (
                "cleanup.idle_in_transaction_seconds",
                self.idle_in_transaction_seconds,
            ),
            ("cleanup.statement_seconds", self.statement_seconds),
            ("cleanup.lock_wait_seconds", self.lock_wait_seconds),
        ] {
            if v.is_some_and(|v| v.is_nan() || v <= 0.0) {
                return Err((field.into(), "must be above 0".into()));
            }
        }
        let by_role = self
            .statement_seconds_by_role
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let field = format!("cleanup.statement_seconds_by_role[{i}]");
                if r.seconds.is_nan() || r.seconds <= 0.0 {
                    return Err((format!("{field}.seconds"), "must be above 0".into()));
                }
                Ok((glob(format!("{field}.match"), &r.pattern)?, r.seconds))
            })
            .collect::<Result<_, _>>()?;
        let exempt = self
            .exempt
            .iter()
            .enumerate()
            .map(|(i, p)| glob(format!("cleanup.exempt[{i}]"), p))
            .collect::<Result<_, _>>()?;
        Ok(Policy {
            config: self.clone(),
            by_role,
            exempt,
            culling: self.idle_culling.compile()?,
        })
    }
}

/// What to do to one session, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Action {
    /// `cancel` or `terminate`.
    pub action: &'static str,
    /// The audit row's `source`: `cleanup`, or `idle_culling`.
    pub source: &'static str,
    /// Whether it is acted on (the rule's mode).
    pub mode: Mode,
    /// The rule and the limit, e.g. `idle_in_transaction > 30 s`.
    pub rule: String,
    pub target: Session,
}

impl Policy {
    fn exempt(&self, role: &str) -> bool {
        crate::budget::policy::always_exempt(role) || self.exempt.iter().any(|g| g.is_match(role))
    }

    fn statement_limit(&self, role: &str) -> Option<f64> {
        self.by_role
            .iter()
            .find(|(g, _)| g.is_match(role))
            .map(|(_, s)| *s)
            .or(self.config.statement_seconds)
    }

    /// The actions `sessions` call for, at most one per session (a blocker first, then
    /// idle in transaction, then a long statement).
    pub fn decide(&self, sessions: &[Session]) -> Vec<Action> {
        let mut out: Vec<Action> = Vec::new();
        let mut taken = HashSet::new();
        if let Some(limit) = self.config.lock_wait_seconds {
            for waiter in sessions
                .iter()
                .filter(|s| s.lock_wait.is_some_and(|w| w > limit))
            {
                let Some(blocker) = waiter
                    .blockers
                    .first()
                    .and_then(|b| sessions.iter().find(|s| s.pid == *b))
                else {
                    continue;
                };
                if self.exempt(&blocker.role) || !taken.insert(blocker.pid) {
                    continue;
                }
                out.push(Action {
                    action: "terminate",
                    source: "cleanup",
                    mode: self.config.mode,
                    rule: format!(
                        "lock_wait > {limit} s (blocks pid {} for {:.1} s)",
                        waiter.pid,
                        waiter.lock_wait.unwrap_or_default()
                    ),
                    target: blocker.clone(),
                });
            }
        }
        for s in sessions {
            if self.exempt(&s.role) || taken.contains(&s.pid) {
                continue;
            }
            if let Some(limit) = self.config.idle_in_transaction_seconds
                && s.state.starts_with("idle in transaction")
                && s.state_age > limit
            {
                taken.insert(s.pid);
                out.push(Action {
                    action: "terminate",
                    source: "cleanup",
                    mode: self.config.mode,
                    rule: format!("idle_in_transaction > {limit} s ({:.1} s)", s.state_age),
                    target: s.clone(),
                });
            } else if let Some(limit) = self.statement_limit(&s.role)
                && s.state == "active"
                && s.query_age > limit
            {
                taken.insert(s.pid);
                out.push(Action {
                    action: "cancel",
                    source: "cleanup",
                    mode: self.config.mode,
                    rule: format!("statement > {limit} s ({:.1} s)", s.query_age),
                    target: s.clone(),
                });
            }
        }
        out
    }
}

/// Runs the cleanup loop until the runtime stops.
pub async fn serve(
    mut policies: tokio::sync::watch::Receiver<Policy>,
    monitor: crate::db::DbConfig,
    metrics: BudgetMetrics,
) {
    let mut client = crate::db::connect_with_backoff(&monitor, "cleanup", None).await;
    let mut policy = policies.borrow_and_update().clone();
    let new_ticker = |secs| {
        let mut t = tokio::time::interval(Duration::from_secs(secs));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        t
    };
    let mut ticker = new_ticker(policy.config.interval_seconds);
    // (pid, backend start, action): reported once while observing or after a refusal.
    let mut reported: HashSet<(i32, SystemTime, &'static str)> = HashSet::new();
    // The server's version, read once per connection (it chooses the sessions statement).
    let mut version: Option<u32> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            changed = policies.changed() => {
                if changed.is_err() {
                    return;
                }
                let next = policies.borrow_and_update().clone();
                if next.config.interval_seconds != policy.config.interval_seconds {
                    ticker = new_ticker(next.config.interval_seconds);
                }
                policy = next;
                reported.clear();
                continue;
            }
        }
        if !policy.config.enabled {
            continue;
        }
        if client.is_closed() {
            client = crate::db::connect_with_backoff(&monitor, "cleanup", None).await;
            version = None;
        }
        let v = match version {
            Some(v) => v,
            None => match server_version(&client).await {
                Ok(v) => {
                    if policy.config.lock_wait_seconds.is_some()
                        && !crate::health::fast::lock_wait_known(v)
                    {
                        tracing::warn!(
                            server_version_num = v,
                            "cleanup.lock_wait_seconds needs PostgreSQL 14+ (pg_locks.waitstart): the rule does not act on this server"
                        );
                    }
                    version = Some(v);
                    v
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cleanup: server_version_num unreadable");
                    continue;
                }
            },
        };
        let seen = match sessions(&client, v).await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cleanup: pg_stat_activity unreadable");
                continue;
            }
        };
        reported.retain(|(pid, start, _)| {
            seen.iter()
                .any(|s| s.pid == *pid && s.backend_start == *start)
        });
        let mut actions = policy.decide(&seen);
        if policy.culling.config.enabled {
            match idle::connections(&client).await {
                Ok((clients, max)) => {
                    actions.extend(
                        policy
                            .culling
                            .pick(&seen, clients, max, |r| policy.exempt(r)),
                    );
                }
                Err(e) => tracing::warn!(error = %e, "cleanup: connection count unreadable"),
            }
        }
        // Culled this round: waited for before the next round counts connections again.
        let mut culled: Vec<i32> = Vec::new();
        for a in actions {
            let key = (a.target.pid, a.target.backend_start, a.action);
            if reported.contains(&key) {
                continue;
            }
            let observe = (a.mode == Mode::Observe).then_some("mode: observe");
            let (kind, result) = match carry_out(&client, &a, observe, "agent").await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(error = %e, "cleanup connection lost");
                    break;
                }
            };
            if kind != "applied" {
                // Observed, refused or failed: reported once for this session.
                reported.insert(key);
            }
            if a.source == "idle_culling" {
                let ended = result == "applied: terminated";
                if ended {
                    culled.push(a.target.pid);
                }
                metrics.idle_culled(match kind {
                    "applied" if ended => "terminated",
                    "applied" => "spared",
                    other => other,
                });
            }
            metrics.action(a.action, kind);
        }
        idle::await_exit(&client, &culled).await;
    }
}

/// Carries out `a` (or, with `observe` naming why, only records it): the SQL call, one log
/// line under `pgmon::enforcement` naming `via` (`agent` or `cleanup --once`), and an
/// audit row (`source` the action's: `cleanup` or `idle_culling`). Returns the outcome (`applied`, `observed`,
/// `refused`: the SQL function refused the role, `failed`) and the result as audited;
/// errors only when the connection is lost.
pub(crate) async fn carry_out(
    client: &Client,
    a: &Action,
    observe: Option<&str>,
    via: &str,
) -> Result<(&'static str, String), tokio_postgres::Error> {
    let (kind, result) = if let Some(why) = observe {
        ("observed", format!("observed ({why})"))
    } else {
        match act(client, a).await {
            Ok(r) => ("applied", format!("applied: {r}")),
            Err(e) if e.as_db_error().is_some() => {
                let kind = if e.code().is_some_and(|c| c.code() == "42501") {
                    "refused"
                } else {
                    "failed"
                };
                (kind, format!("{kind}: {e}"))
            }
            Err(e) => return Err(e),
        }
    };
    tracing::warn!(target: "pgmon::enforcement", role = %a.target.role, pid = a.target.pid, action = a.action, rule = %a.rule, result = %result, via, "{}", a.source);
    let audited = client
        .execute(
            "INSERT INTO pgmon.audit (role, source, step, utilisation, action, result) \
             VALUES ($1, $2, $3, NULL, $4, $5)",
            &[&a.target.role, &a.source, &a.rule, &a.action, &result],
        )
        .await;
    if let Err(e) = audited {
        tracing::warn!(error = %e, "cleanup: audit row not written (is sql/002_enforcement.sql installed?)");
    }
    Ok((kind, result))
}

async fn act(client: &Client, a: &Action) -> Result<String, tokio_postgres::Error> {
    let t = &a.target;
    let row = if a.action == "cancel" {
        client
            .query_one(
                "SELECT pgmon.cancel_statement($1, $2)",
                &[&t.pid, &t.query_start],
            )
            .await?
    } else {
        client
            .query_one(
                "SELECT pgmon.end_session($1, $2, $3)",
                &[&t.pid, &t.backend_start, &t.state_change],
            )
            .await?
    };
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(pid: i32, role: &str, state: &str, age: f64) -> Session {
        Session {
            pid,
            role: role.into(),
            state: state.into(),
            backend_start: SystemTime::UNIX_EPOCH,
            state_change: None,
            query_start: None,
            state_age: age,
            query_age: age,
            blockers: Vec::new(),
            lock_wait: Some(0.0),
        }
    }

    #[test]
    fn each_rule_picks_its_sessions_and_spares_the_exempt() {
        let policy = CleanupConfig {
            enabled: true,
            idle_in_transaction_seconds: Some(30.0),
            statement_seconds: Some(60.0),
            statement_seconds_by_role: vec![RoleLimit {
                pattern: "report*".into(),
                seconds: 600.0,
            }],
            lock_wait_seconds: Some(10.0),
            exempt: vec!["boss".into()],
            ..CleanupConfig::default()
        }
        .compile()
        .unwrap();
        let mut waiter = session(5, "app", "active", 12.0);
        waiter.blockers = vec![4];
        waiter.lock_wait = Some(12.0);
        let sessions = [
            session(1, "app", "idle in transaction", 31.0),
            session(2, "app", "active", 61.0),
            session(3, "reporting", "active", 61.0),
            session(4, "app", "idle in transaction", 5.0),
            waiter,
            session(6, "boss", "idle in transaction", 999.0),
            session(7, "app", "idle", 999.0),
        ];
        let got: Vec<(i32, &str)> = policy
            .decide(&sessions)
            .iter()
            .map(|a| (a.target.pid, a.action))
            .collect();
        assert_eq!(got, [(4, "terminate"), (1, "terminate"), (2, "cancel")]);

        // On PostgreSQL 13 the wait is unknown: the lock rule leaves the blocker alone.
        let mut blind = sessions.clone();
        blind[4].lock_wait = None;
        let got: Vec<(i32, &str)> = policy
            .decide(&blind)
            .iter()
            .map(|a| (a.target.pid, a.action))
            .collect();
        assert_eq!(got, [(1, "terminate"), (2, "cancel")]);
    }

    #[test]
    fn bad_limits_name_the_field() {
        let c = CleanupConfig {
            statement_seconds: Some(0.0),
            ..CleanupConfig::default()
        };
        assert_eq!(c.compile().unwrap_err().0, "cleanup.statement_seconds");
    }
}
