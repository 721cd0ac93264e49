//! Applies ladder decisions through pgmon's SECURITY DEFINER functions
//! (`sql/002_enforcement.sql`: `pgmon.set_connection_limit`, `pgmon.lock_role`,
//! `pgmon.restore_role`, which refuse superusers, replication roles and the exempt list
//! themselves), writes the audit row of every action and undo, and persists steps and
//! ledgers (`pgmon.budget_state`, `pgmon.budget_ledgers`: one row per role) so a restart
//! loses neither.
//!
//! A lost connection is reopened with exponential backoff (0.5 s doubling to 30 s); the
//! decision in hand is applied once it is back.

use std::{collections::HashSet, time::Duration};

use tokio::sync::mpsc::UnboundedReceiver;
use tokio_postgres::Client;

use crate::db::connect_with_backoff;

use super::{
    Decision, Persisted, ToEnforcer,
    metrics::BudgetMetrics,
    policy::{ActionKind, Compiled, Mode, Step},
};

/// What a step leaves in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Original,
    Limit(i32),
    Locked,
}

fn effect(ladder: &[Step], step: Option<usize>) -> Effect {
    match step.and_then(|i| ladder.get(i)) {
        Some(Step {
            action: ActionKind::ConnectionLimit,
            limit: Some(l),
            ..
        }) => Effect::Limit(*l),
        Some(Step {
            action: ActionKind::Lock,
            ..
        }) => Effect::Locked,
        _ => Effect::Original,
    }
}

/// The SQL calls (action name, statement, connection limit) that move a role from one
/// step to another, in order. The lock and the connection limit commit alone (batch 0);
/// [`Enforcer::apply`] ends the sessions after ([`crate::enforcement`]).
///
/// Down from `lock` to a `connection_limit` step, the limit is set while the role is still
/// NOLOGIN and only then is the budget's lock taken off (`pgmon.unlock_role`, which keeps
/// the saved originals while the limit differs from them): at no moment does the role get
/// its original connection limit back before the window says so.
fn calls(ladder: &[Step], d: &Decision) -> Vec<(&'static str, &'static str, Option<i32>)> {
    let (from, to) = (effect(ladder, d.from), effect(ladder, d.to));
    if from == to {
        return Vec::new();
    }
    match to {
        Effect::Original => vec![("restore", "SELECT pgmon.restore_role($1)::text", None)],
        Effect::Limit(l) => {
            let set = (
                "connection_limit",
                "SELECT pgmon.set_connection_limit($1, $2, 0)::text",
                Some(l),
            );
            if from == Effect::Locked {
                let unlock = ("unlock", "SELECT pgmon.unlock_role($1, 'budget')", None);
                vec![set, unlock]
            } else {
                vec![set]
            }
        }
        Effect::Locked => vec![(
            "lock",
            "SELECT pgmon.lock_role($1, 'budget', 0)::text",
            None,
        )],
    }
}

/// Loads persisted steps and the last day's ledger buckets; an absent schema (SQL not
/// installed) gives an empty state and a warning.
pub async fn load(config: &crate::db::DbConfig) -> Persisted {
    let client = connect_with_backoff(config, "enforcement", None).await;
    let mut p = Persisted::default();
    match client
        .query("SELECT role::text, step FROM pgmon.budget_state", &[])
        .await
    {
        Ok(rows) => {
            for r in rows {
                p.steps.insert(r.get(0), r.get::<_, i32>(1).max(0) as usize);
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "pgmon.budget_state unreadable (is sql/002_enforcement.sql installed?); starting with empty budgets");
            return p;
        }
    }
    match client
        .query(
            "SELECT role::text, buckets::text FROM pgmon.budget_ledgers \
             WHERE updated_at > now() - interval '1 day'",
            &[],
        )
        .await
    {
        Ok(rows) => {
            for r in rows {
                match serde_json::from_str::<Vec<(u64, f64)>>(r.get(1)) {
                    Ok(b) => {
                        p.buckets.insert(r.get(0), b);
                    }
                    Err(e) => {
                        tracing::warn!(role = %r.get::<_, String>(0), error = %e, "pgmon.budget_ledgers: a row that does not parse is ignored");
                    }
                }
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "pgmon.budget_ledgers unreadable (is sql/002_enforcement.sql up to date?); ledgers start empty");
        }
    }
    p
}

/// Superusers and replication roles (`pg_roles`): never charged, never touched.
pub async fn protected_roles(client: &Client) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = client
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolsuper OR rolreplication",
            &[],
        )
        .await?;
    Ok(rows.into_iter().map(|r| r.get(0)).collect())
}

/// Copies the roles `budgets.exempt` names (those that exist now) into
/// `pgmon.exempt_roles`, whose rows the SQL functions refuse, and removes the rows it no
/// longer names. Returns how many roles are listed.
pub async fn sync_exempt(
    client: &Client,
    policy: &Compiled,
) -> Result<usize, tokio_postgres::Error> {
    let names: Vec<String> = client
        .query("SELECT rolname::text FROM pg_roles", &[])
        .await?
        .into_iter()
        .map(|r| r.get::<_, String>(0))
        .filter(|n| policy.listed_exempt(n))
        .collect();
    client
        .execute(
            "DELETE FROM pgmon.exempt_roles WHERE NOT (rolname::text = ANY($1))",
            &[&names],
        )
        .await?;
    client
        .execute(
            "INSERT INTO pgmon.exempt_roles (rolname) SELECT unnest($1::text[]) ON CONFLICT DO NOTHING",
            &[&names],
        )
        .await?;
    Ok(names.len())
}

/// The enforcement task.
pub struct Enforcer {
    pub config: crate::db::DbConfig,
    pub mode: Mode,
    pub ladder: Vec<Step>,
    /// For `budgets.exempt`, copied into `pgmon.exempt_roles` ([`sync_exempt`]).
    pub policy: Compiled,
    pub metrics: BudgetMetrics,
}

impl Enforcer {
    /// Serves until `rx` closes. Sends the protected-role set to `protected` at start and
    /// every minute.
    pub async fn serve(
        mut self,
        mut rx: UnboundedReceiver<ToEnforcer>,
        protected: std::sync::mpsc::Sender<HashSet<String>>,
    ) {
        let mut client = connect_with_backoff(&self.config, "enforcement", None).await;
        let mut refresh = tokio::time::interval(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = refresh.tick() => {
                    match protected_roles(&client).await {
                        Ok(set) => { let _ = protected.send(set); }
                        Err(e) => tracing::warn!(error = %e, "pg_roles lookup failed"),
                    }
                    if let Err(e) = sync_exempt(&client, &self.policy).await {
                        tracing::warn!(error = %e, "cannot copy budgets.exempt into pgmon.exempt_roles (is sql/002_enforcement.sql installed?)");
                    }
                }
                msg = rx.recv() => {
                    let Some(msg) = msg else { return };
                    if let ToEnforcer::Policy(policy) = msg {
                        self.mode = policy.policy.mode;
                        self.ladder = policy.policy.ladder.clone();
                        self.policy = policy;
                        if let Err(e) = sync_exempt(&client, &self.policy).await {
                            tracing::warn!(error = %e, "cannot copy budgets.exempt into pgmon.exempt_roles");
                        }
                        continue;
                    }
                    loop {
                        if client.is_closed() {
                            client = connect_with_backoff(&self.config, "enforcement", None).await;
                        }
                        match self.handle(&client, &msg).await {
                            Err(e) if e.as_db_error().is_none() => {
                                tracing::warn!(error = %e, "enforcement connection lost; retrying");
                                tokio::time::sleep(Duration::from_millis(500)).await;
                            }
                            Err(e) => {
                                tracing::error!(error = %e, "budget persistence failed");
                                break;
                            }
                            Ok(()) => break,
                        }
                    }
                }
            }
        }
    }

    async fn handle(&self, client: &Client, msg: &ToEnforcer) -> Result<(), tokio_postgres::Error> {
        match msg {
            ToEnforcer::Decision(d) => self.apply(client, d).await,
            ToEnforcer::Reset(r) => self.reset(client, r).await,
            ToEnforcer::Policy(_) => Ok(()),
            ToEnforcer::Ledgers(ledgers) => {
                let roles: Vec<String> = ledgers.iter().map(|(r, _, _)| r.to_string()).collect();
                let tiers: Vec<&str> = ledgers.iter().map(|(_, t, _)| t.as_str()).collect();
                let buckets: Vec<String> = ledgers
                    .iter()
                    .map(|(_, _, b)| serde_json::to_string(b).unwrap_or_else(|_| "[]".into()))
                    .collect();
                client
                    .execute(
                        "INSERT INTO pgmon.budget_ledgers (role, tier, buckets) \
                         SELECT r, t, b::jsonb FROM unnest($1::text[], $2::text[], $3::text[]) AS u(r, t, b) \
                         ON CONFLICT (role) DO UPDATE \
                           SET tier = EXCLUDED.tier, buckets = EXCLUDED.buckets, updated_at = now()",
                        &[&roles, &tiers, &buckets],
                    )
                    .await?;
                Ok(())
            }
        }
    }

    /// Step `s` of this ladder by [`step_name`].
    pub(super) fn step_name(&self, s: Option<usize>) -> String {
        step_name(&self.ladder, s)
    }

    async fn apply(&self, client: &Client, d: &Decision) -> Result<(), tokio_postgres::Error> {
        let step_name = |s| self.step_name(s);
        let to_name = step_name(d.to);
        let mut outcomes: Vec<(&'static str, String)> = Vec::new();
        let going_up = d.to.unwrap_or(0) > d.from.unwrap_or(0) || d.from.is_none();
        if d.to.is_some_and(|i| {
            self.ladder
                .get(i)
                .is_some_and(|s| s.action == ActionKind::Warn)
        }) && going_up
        {
            outcomes.push(("warn", "logged".to_owned()));
            self.metrics.action("warn", "applied");
        }
        for (action, sql, limit) in calls(&self.ladder, d) {
            let result = if self.mode == Mode::Observe {
                self.metrics.action(action, "observed");
                "observed (mode: observe)".to_owned()
            } else {
                let role = d.role.to_string();
                let r = match limit {
                    Some(l) => client.query_one(sql, &[&role, &l]).await,
                    None => client.query_one(sql, &[&role]).await,
                };
                // Sessions beyond what the committed step allows (none when locked).
                let keep = match action {
                    "lock" => Some(0),
                    "connection_limit" => limit.filter(|l| *l >= 0),
                    _ => None,
                };
                match r {
                    Ok(_) if keep.is_some() => {
                        self.metrics.action(action, "applied");
                        let keep = keep.unwrap_or(0);
                        let batch = crate::enforcement::DEFAULT_BATCH;
                        let pause = crate::enforcement::DEFAULT_PAUSE;
                        match crate::enforcement::terminate_beyond(
                            client, &role, keep, batch, pause,
                        )
                        .await
                        {
                            Ok(n) => format!("applied: {n}"),
                            Err(e) if e.as_db_error().is_some() => {
                                format!("applied; terminating its sessions failed: {e}")
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(row) => {
                        self.metrics.action(action, "applied");
                        format!(
                            "applied: {}",
                            row.get::<_, Option<String>>(0).unwrap_or_default()
                        )
                    }
                    Err(e) if e.as_db_error().is_some() => {
                        let refused = e.code().is_some_and(|c| c.code() == "42501");
                        self.metrics
                            .action(action, if refused { "refused" } else { "failed" });
                        format!("{}: {e}", if refused { "refused" } else { "failed" })
                    }
                    Err(e) => return Err(e),
                }
            };
            outcomes.push((action, result));
        }
        for (action, result) in &outcomes {
            tracing::warn!(target: "pgmon::enforcement", role = %d.role, tier = %d.tier, from = %step_name(d.from), to = %to_name, utilisation = d.utilisation, spend = d.spend, action, result = %result, "budget step");
            client
                .execute(
                    "INSERT INTO pgmon.audit (role, source, step, utilisation, action, result) \
                     VALUES ($1, 'budget', $2, $3, $4, $5)",
                    &[&d.role.as_ref(), &to_name, &d.utilisation, action, result],
                )
                .await?;
        }
        match d.to {
            Some(step) => client
                .execute(
                    "INSERT INTO pgmon.budget_state (role, tier, step) VALUES ($1, $2, $3) \
                     ON CONFLICT (role) DO UPDATE SET tier = EXCLUDED.tier, step = EXCLUDED.step, updated_at = now()",
                    &[&d.role.as_ref(), &d.tier, &(step as i32)],
                )
                .await?,
            None => client
                .execute(
                    "DELETE FROM pgmon.budget_state WHERE role = $1",
                    &[&d.role.as_ref()],
                )
                .await?,
        };
        Ok(())
    }
}

/// Step `s` of `ladder` as the audit and the log name it, in the policy file's words:
/// `connection_limit 2 at 1`, `lock at 2`, `warn at 0.8`; `none` for no step.
fn step_name(ladder: &[Step], s: Option<usize>) -> String {
    match s.and_then(|i| ladder.get(i)) {
        None => "none".to_owned(),
        Some(st) => match st.limit {
            Some(l) => format!("{} {l} at {}", st.action.as_str(), st.at),
            None => format!("{} at {}", st.action.as_str(), st.at),
        },
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn step(at: f64, action: ActionKind, limit: Option<i32>) -> Step {
        Step { at, action, limit }
    }

    /// The action names of the calls from step `from` to step `to` of the usual ladder
    /// (warn, connection_limit 2, lock).
    fn names(from: Option<usize>, to: Option<usize>) -> Vec<&'static str> {
        let ladder = [
            step(0.5, ActionKind::Warn, None),
            step(1.0, ActionKind::ConnectionLimit, Some(2)),
            step(2.0, ActionKind::Lock, None),
        ];
        let d = Decision {
            role: Arc::from("r"),
            tier: "free".into(),
            from,
            to,
            utilisation: 0.0,
            spend: 0.0,
            at_ms: 0,
        };
        calls(&ladder, &d).into_iter().map(|(a, _, _)| a).collect()
    }

    #[test]
    fn steps_are_named_as_the_policy_file_names_them() {
        let ladder = [
            step(0.8, ActionKind::Warn, None),
            step(1.0, ActionKind::ConnectionLimit, Some(5)),
            step(2.0, ActionKind::Lock, None),
        ];
        let names: Vec<_> = [None, Some(0), Some(1), Some(2)]
            .into_iter()
            .map(|s| step_name(&ladder, s))
            .collect();
        assert_eq!(
            names,
            [
                "none",
                "warn at 0.8",
                "connection_limit 5 at 1",
                "lock at 2"
            ]
        );
    }

    #[test]
    fn each_move_calls_what_it_changes_and_no_more() {
        assert!(names(None, Some(0)).is_empty(), "warn changes no setting");
        assert_eq!(names(Some(0), Some(1)), ["connection_limit"]);
        assert_eq!(names(None, Some(2)), ["lock"]);
        assert_eq!(names(Some(1), Some(2)), ["lock"]);
        // Down from lock to the limit: the limit first, then LOGIN back.
        assert_eq!(names(Some(2), Some(1)), ["connection_limit", "unlock"]);
        assert_eq!(names(Some(2), Some(0)), ["restore"]);
        assert_eq!(names(Some(1), None), ["restore"]);
        assert!(names(Some(0), None).is_empty());
    }
}
