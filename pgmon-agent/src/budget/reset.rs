//! `pgmon-agent unlock --budget ROLE`: a role's budget given back by hand.
//!
//! The HTTP handler (`POST /api/v1/budget/unlock?role=`) sends a [`ResetRequest`] to the
//! capture thread, which owns [`Budgets`]. There [`Budgets::reset`] empties the role's
//! ledger and takes it off its ladder step; the step change goes to the enforcer as an
//! ordinary [`Decision`] (step → none: `pgmon.restore_role` gives back the connection limit
//! and LOGIN the step took), followed by a [`Reset`], on which the enforcer deletes the
//! role's persisted ledger row, writes the audit row (`source = 'budget'`,
//! `action = 'reset'`), logs under `pgmon::enforcement` and answers the request with what
//! it did and the role's settings now.

use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio_postgres::Client;

use super::{Budgets, Decision, ToEnforcer, enforce::Enforcer, ledger::Ledger};

/// The answer to a reset: what was done (`Ok`), or why nothing was (`Err`), in words.
pub type ResetReply = oneshot::Sender<Result<String, String>>;

/// A request of `pgmon-agent unlock --budget`, for the capture thread.
#[derive(Debug)]
pub struct ResetRequest {
    /// The role whose ledger and step are reset.
    pub role: String,
    /// Where the answer goes once the enforcer has acted (or at once on a refusal).
    pub reply: ResetReply,
}

/// The enforcer's part of a reset, sent after the step's [`Decision`] (if any).
#[derive(Clone, Debug)]
pub struct Reset {
    pub role: Arc<str>,
    pub tier: String,
    /// The step the role was on (index into the ladder), `None` = none.
    pub from: Option<usize>,
    /// The spend and utilisation the reset forgot.
    pub spend: f64,
    pub utilisation: f64,
    /// Taken (once) by the enforcer when it answers; shared so the message stays `Clone`.
    pub reply: Arc<Mutex<Option<ResetReply>>>,
}

impl Reset {
    fn answer(&self, result: Result<String, String>) {
        if let Some(tx) = self.reply.lock().ok().and_then(|mut r| r.take()) {
            let _ = tx.send(result);
        }
    }
}

impl Budgets {
    /// Resets `role`'s ledger and ladder step at `now_ms` (see the module doc). Answers at
    /// once with an error when the role has no budget under the policy (exempt, protected,
    /// or no tier); otherwise the enforcer answers once it has acted. Estimates still owed
    /// for the role's earlier executions will not correct the emptied ledger.
    pub fn reset(&mut self, now_ms: u64, request: ResetRequest) {
        let ResetRequest { role, reply } = request;
        let role: Arc<str> = role.into();
        let tiers = self.policy.policy.tiers.clone();
        let Some(r) = self.role(&role) else {
            let _ = reply.send(Err(format!(
                "{role} has no budget under this policy (exempt, superuser or replication, or no tier matches)"
            )));
            return;
        };
        let Some(tier) = tiers.get(&r.tier) else {
            let _ = reply.send(Err(format!("{role}: tier {} is gone", r.tier)));
            return;
        };
        let spend = r.ledger.spend(now_ms, tier.window_at(now_ms));
        let utilisation = (spend - tier.burst).max(0.0) / tier.budget;
        let from = r.step.take();
        r.ledger = Ledger::default();
        r.dirty = false;
        r.unsaved = false;
        let tier_name = r.tier.clone();
        for owed in self.awaiting.values_mut() {
            owed.charges.retain(|(who, _, _)| who != &role);
        }
        self.metrics
            .observe(&role, &tier_name, 0.0, tier.budget, 0.0);
        if from.is_some() {
            let _ = self.out.send(ToEnforcer::Decision(Decision {
                role: role.clone(),
                tier: tier_name.clone(),
                from,
                to: None,
                utilisation: 0.0,
                spend: 0.0,
                at_ms: now_ms,
            }));
        }
        let _ = self.out.send(ToEnforcer::Reset(Reset {
            role,
            tier: tier_name,
            from,
            spend,
            utilisation,
            reply: Arc::new(Mutex::new(Some(reply))),
        }));
    }
}

impl Enforcer {
    /// Forgets the role's persisted ledger, audits and logs the reset, and answers with
    /// what was reset and the role's LOGIN, connection limit and remaining lock holders.
    pub(super) async fn reset(
        &self,
        client: &Client,
        reset: &Reset,
    ) -> Result<(), tokio_postgres::Error> {
        let done = self.reset_inner(client, reset).await;
        match &done {
            Ok(text) => reset.answer(Ok(text.clone())),
            Err(e) if e.as_db_error().is_some() => reset.answer(Err(format!("failed: {e}"))),
            Err(_) => {} // the connection: retried with the reply still in hand
        }
        done.map(|_| ())
    }

    async fn reset_inner(
        &self,
        client: &Client,
        reset: &Reset,
    ) -> Result<String, tokio_postgres::Error> {
        let role = reset.role.as_ref();
        client
            .execute("DELETE FROM pgmon.budget_ledgers WHERE role = $1", &[&role])
            .await?;
        let now = client
            .query_opt(
                "SELECT r.rolcanlogin, r.rolconnlimit, \
                        (SELECT string_agg(l.holder, ', ' ORDER BY l.holder) \
                           FROM pgmon.role_locks l WHERE l.rolname = r.rolname) \
                   FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
                &[&role],
            )
            .await?;
        let settings = match now {
            None => "the role no longer exists".to_owned(),
            Some(row) => {
                let login = if row.get::<_, bool>(0) {
                    "LOGIN"
                } else {
                    "NOLOGIN"
                };
                let limit: i32 = row.get(1);
                match row.get::<_, Option<String>>(2) {
                    Some(h) => {
                        format!("role now {login}, connection limit {limit}, still locked by {h}")
                    }
                    None => format!("role now {login}, connection limit {limit}"),
                }
            }
        };
        let from = self.step_name(reset.from);
        let result = format!(
            "reset by hand: spend {:.1} (utilisation {:.2}) forgotten, step {from} cleared{}; {settings}",
            reset.spend,
            reset.utilisation,
            if self.mode == super::policy::Mode::Observe {
                " (mode: observe, the step had changed nothing)"
            } else {
                ""
            }
        );
        tracing::warn!(target: "pgmon::enforcement", role, tier = %reset.tier, from = %from, spend = reset.spend, utilisation = reset.utilisation, result = %result, "budget reset");
        client
            .execute(
                "INSERT INTO pgmon.audit (role, source, step, utilisation, action, result) \
                 VALUES ($1, 'budget', 'none', $2, 'reset', $3)",
                &[&role, &reset.utilisation, &result],
            )
            .await?;
        Ok(result)
    }
}
