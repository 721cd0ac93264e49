//! Applies storage transitions in the monitor database, one at a time, in order: the lock
//! (`pgmon.lock_role(role, 'storage', 0)`, NOLOGIN alone, committed; then
//! `pgmon.terminate_backends(role, 0, batch)` batch after batch
//! ([`crate::enforcement::terminate_beyond`]), so no session ends before new logins are
//! refused) and the
//! unlock (`pgmon.unlock_role(role, 'storage')`), both from sql/002_enforcement.sql, which
//! refuse superusers, replication roles and the exempt list themselves and never unlock a
//! role the 'storage' holder does not hold; then the audit row, the persisted state
//! (`pgmon.storage_state`), and the notification. A lost connection is reopened with
//! exponential backoff (0.5 s doubling to 30 s) and the transition in hand is applied once
//! it is back.

use std::{collections::HashMap, time::Duration};

use tokio::sync::{mpsc, oneshot};
use tokio_postgres::Client;

use super::{
    Event,
    metrics::StorageMetrics,
    notify::{self, Notifier},
    policy::Limits,
    state::{Action, Phase, Quota, Transition},
};

/// What the coordinator sends.
#[derive(Debug)]
pub enum Enforce {
    /// Apply (or, in dry run, only record) a transition; `quota` is the state after it.
    Transition {
        role: String,
        transition: Transition,
        limits: Limits,
        quota: Quota,
        reply: Option<oneshot::Sender<Result<String, String>>>,
    },
    /// Persist a state whose timers changed without a transition.
    Persist { role: String, quota: Quota },
    /// A reloaded policy's `dry_run`, termination batch and pause (ms), for the
    /// transitions after it.
    Configure {
        dry_run: bool,
        batch: u32,
        pause_ms: u64,
    },
}

/// A role's persisted state, read at start.
#[derive(Clone, Debug, PartialEq)]
pub struct Persisted {
    pub quota: Quota,
    /// The 'storage' lock holder row exists (pgmon.role_locks).
    pub holds_lock: bool,
}

async fn connect(config: &crate::db::DbConfig) -> Client {
    crate::db::connect_with_backoff(config, "storage enforcement", None).await
}

/// Reads pgmon.storage_state and the 'storage' rows of pgmon.role_locks; a lock without a
/// state row (state lost) is resumed as locked since its `locked_at`. An absent schema
/// (sql/004_storage.sql not installed in the monitor database) gives nothing and a warning.
pub async fn load(config: &crate::db::DbConfig) -> HashMap<String, Persisted> {
    let client = connect(config).await;
    let mut out = HashMap::new();
    let ms = |v: Option<f64>| v.map(|s| (s * 1000.0) as u64);
    match client
        .query(
            "SELECT role::text, state, extract(epoch FROM since)::float8, \
                    extract(epoch FROM under_since)::float8, usage_bytes \
             FROM pgmon.storage_state",
            &[],
        )
        .await
    {
        Ok(rows) => {
            for r in rows {
                let Some(phase) = Phase::parse(r.get(1)) else {
                    continue;
                };
                out.insert(
                    r.get(0),
                    Persisted {
                        quota: Quota {
                            phase,
                            since_ms: ms(r.get(2)).unwrap_or(0),
                            under_since_ms: ms(r.get(3)),
                            usage: r.get::<_, i64>(4).max(0) as u64,
                        },
                        holds_lock: false,
                    },
                );
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "storage: pgmon.storage_state unreadable: is sql/004_storage.sql installed in the monitor database? Quota state will not survive a restart");
        }
    }
    match client
        .query(
            "SELECT rolname::text, extract(epoch FROM locked_at)::float8 \
             FROM pgmon.role_locks WHERE holder = 'storage'",
            &[],
        )
        .await
    {
        Ok(rows) => {
            for r in rows {
                let locked_at = ms(r.get(1)).unwrap_or(0);
                let p = out.entry(r.get(0)).or_insert_with(|| Persisted {
                    quota: Quota {
                        phase: Phase::Locked,
                        since_ms: locked_at,
                        under_since_ms: None,
                        usage: 0,
                    },
                    holds_lock: true,
                });
                p.holds_lock = true;
                if p.quota.phase != Phase::Locked {
                    tracing::warn!(role = %r.get::<_, String>(0), state = p.quota.phase.as_str(), "storage: pgmon holds a lock on this role; resuming it as locked");
                    p.quota.phase = Phase::Locked;
                    p.quota.since_ms = locked_at;
                    p.quota.under_since_ms = None;
                }
            }
        }
        Err(e) => {
            tracing::error!(error = %e, "storage: pgmon.role_locks unreadable (sql/002_enforcement.sql outdated?)")
        }
    }
    out
}

/// The enforcement task.
pub struct Enforcer {
    pub config: crate::db::DbConfig,
    pub dry_run: bool,
    pub batch: u32,
    /// Pause between termination batches, ms (`storage.termination_pause_ms`).
    pub pause_ms: u64,
    pub metrics: StorageMetrics,
    pub notifier: Notifier,
    /// Results go back to the coordinator (for status).
    pub events: mpsc::UnboundedSender<Event>,
}

impl Enforcer {
    /// Serves until `rx` closes.
    pub async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Enforce>) {
        let mut client = connect(&self.config).await;
        while let Some(msg) = rx.recv().await {
            if let Enforce::Configure {
                dry_run,
                batch,
                pause_ms,
            } = msg
            {
                (self.dry_run, self.batch, self.pause_ms) = (dry_run, batch, pause_ms);
                continue;
            }
            let mut msg = Some(msg);
            loop {
                if client.is_closed() {
                    client = connect(&self.config).await;
                }
                match self.handle(&client, &mut msg).await {
                    Err(e) if e.as_db_error().is_none() => {
                        tracing::warn!(error = %e, "storage enforcement connection lost; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "storage: persisting the quota state failed");
                        break;
                    }
                    Ok(()) => break,
                }
            }
        }
    }

    /// Runs one call; `Ok(Err(text))` when the database refused or failed it, `Err` when
    /// the connection is gone (the caller retries).
    async fn call(
        &self,
        client: &Client,
        action: &'static str,
        sql: &str,
        role: &str,
    ) -> Result<Result<String, String>, tokio_postgres::Error> {
        match client.query_one(sql, &[&role]).await {
            Ok(row) => {
                self.metrics.action(action, "applied");
                Ok(Ok(row.get::<_, Option<String>>(0).unwrap_or_default()))
            }
            Err(e) if e.as_db_error().is_some() => {
                let refused = e.code().is_some_and(|c| c.code() == "42501");
                let what = if refused { "refused" } else { "failed" };
                self.metrics.action(action, what);
                let msg = e
                    .as_db_error()
                    .map_or_else(|| e.to_string(), |d| d.message().to_owned());
                Ok(Err(format!("{what}: {msg}")))
            }
            Err(e) => Err(e),
        }
    }

    /// Applies `msg`; once a transition is applied (and audited, and notified) `msg`
    /// becomes the persisting of its state, so a retry after a lost connection does not
    /// apply it twice.
    async fn handle(
        &self,
        client: &Client,
        msg: &mut Option<Enforce>,
    ) -> Result<(), tokio_postgres::Error> {
        if let Some(Enforce::Transition {
            role,
            transition,
            limits,
            quota,
            reply,
        }) = msg.as_mut()
        {
            self.apply(client, role, transition, limits, reply).await?;
            *msg = Some(Enforce::Persist {
                role: std::mem::take(role),
                quota: quota.clone(),
            });
        }
        if let Some(Enforce::Persist { role, quota }) = msg.as_ref()
            && let Err(e) = persist(client, role, quota).await
        {
            if e.as_db_error().is_none() {
                return Err(e);
            }
            tracing::error!(role = %role, error = %e, "storage: pgmon.storage_state not written (is sql/004_storage.sql installed in the monitor database?)");
        }
        Ok(())
    }

    async fn apply(
        &self,
        client: &Client,
        role: &str,
        t: &Transition,
        limits: &Limits,
        reply: &mut Option<oneshot::Sender<Result<String, String>>>,
    ) -> Result<(), tokio_postgres::Error> {
        let batch = i32::try_from(self.batch).unwrap_or(crate::enforcement::DEFAULT_BATCH);
        let (action, outcome) = match t.action {
            Action::Record => (
                match t.to {
                    Phase::Soft if t.from == Phase::Ok => "warn",
                    Phase::Hard => "grace",
                    _ => "clear",
                },
                Ok("logged".to_owned()),
            ),
            _ if self.dry_run => {
                let a = if t.action == Action::Lock {
                    "lock"
                } else {
                    "unlock"
                };
                self.metrics.action(a, "dry_run");
                (a, Ok("dry run (storage.dry_run)".to_owned()))
            }
            Action::Lock => {
                // Lock first, then terminate: NOLOGIN is visible to logins only from its
                // commit on, so the lock commits alone (batch 0) and the sessions are ended
                // after it; a client reconnecting in a loop finds the door shut.
                let first = self
                    .call(
                        client,
                        "lock",
                        "SELECT pgmon.lock_role($1, 'storage', 0)::text",
                        role,
                    )
                    .await?;
                let outcome = match first {
                    Ok(_) => {
                        let pause = Duration::from_millis(self.pause_ms);
                        let ended =
                            crate::enforcement::terminate_beyond(client, role, 0, batch, pause)
                                .await;
                        match ended {
                            Ok(n) => Ok(format!("applied: NOLOGIN, {n} session(s) terminated")),
                            Err(e) => Ok(format!(
                                "applied: NOLOGIN; terminating its sessions failed: {}",
                                e.as_db_error()
                                    .map_or_else(|| e.to_string(), |d| d.message().to_owned())
                            )),
                        }
                    }
                    Err(e) => Err(e),
                };
                ("lock", outcome)
            }
            Action::Unlock => {
                let r = self
                    .call(
                        client,
                        "unlock",
                        "SELECT pgmon.unlock_role($1, 'storage')",
                        role,
                    )
                    .await?;
                ("unlock", r.map(|s| format!("applied: {s}")))
            }
        };
        let result = match &outcome {
            Ok(s) | Err(s) => s.clone(),
        };
        let hard = limits.hard.max(1) as f64;
        tracing::warn!(target: "pgmon::enforcement", role = %role, from = t.from.as_str(), to = t.to.as_str(), reason = t.reason.as_str(), usage_bytes = t.usage, soft_limit = limits.soft, hard_limit = limits.hard, action, result = %result, "storage quota");
        if let Err(e) = client
            .execute(
                "INSERT INTO pgmon.audit (role, source, step, utilisation, action, result) \
                 VALUES ($1, 'storage', $2, $3, $4, $5)",
                &[
                    &role,
                    &t.to.as_str(),
                    &(t.usage as f64 / hard),
                    &action,
                    &result,
                ],
            )
            .await
        {
            if e.as_db_error().is_none() {
                return Err(e);
            }
            tracing::error!(role = %role, error = %e, "storage: audit row not written");
        }
        let mut event = notify::Event {
            role: role.to_owned(),
            from: t.from,
            to: t.to,
            action,
            result: result.clone(),
            reason: t.reason.as_str(),
            usage_bytes: t.usage,
            soft_limit_bytes: limits.soft,
            hard_limit_bytes: limits.hard,
            grace_seconds: (t.to == Phase::Hard).then_some(limits.hard_grace_ms / 1000),
            at: crate::util::rfc3339(t.at_ms),
            message: String::new(),
        };
        event.message = event.describe();
        self.notifier.send(event);
        let _ = self.events.send(Event::Enforced {
            role: role.to_owned(),
            result,
            ok: outcome.is_ok(),
        });
        if let Some(reply) = reply.take() {
            let _ = reply.send(outcome);
        }
        Ok(())
    }
}

/// Writes `quota` as `role`'s row of pgmon.storage_state (none when ok: nothing to resume).
async fn persist(client: &Client, role: &str, q: &Quota) -> Result<(), tokio_postgres::Error> {
    if q.phase == Phase::Ok {
        client
            .execute("DELETE FROM pgmon.storage_state WHERE role = $1", &[&role])
            .await?;
        return Ok(());
    }
    let secs = |ms: u64| ms as f64 / 1000.0;
    client
        .execute(
            "INSERT INTO pgmon.storage_state (role, state, since, under_since, usage_bytes) \
             VALUES ($1, $2, to_timestamp($3), to_timestamp($4), $5) \
             ON CONFLICT (role) DO UPDATE SET state = EXCLUDED.state, since = EXCLUDED.since, \
               under_since = EXCLUDED.under_since, usage_bytes = EXCLUDED.usage_bytes, updated_at = now()",
            &[
                &role,
                &q.phase.as_str(),
                &secs(q.since_ms),
                &q.under_since_ms.map(secs),
                &i64::try_from(q.usage).unwrap_or(i64::MAX),
            ],
        )
        .await?;
    Ok(())
}
