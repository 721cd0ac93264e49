//! Per-role query-cost budgets: charge each execution to its role's ledger, compute
//! utilisation over the tier's rolling window (or since its calendar reset), and decide
//! the ladder step.
//!
//! [`Budgets`] lives on the capture thread and never blocks: decisions and ledger snapshots
//! go to the [`enforce`] task, which applies them (or only audits them in observe mode) and
//! persists them in pgmon's schema. Time is passed in (unix ms), so the decisions are
//! tested with an injected clock.

pub mod enforce;
pub mod ledger;
pub mod metrics;
pub mod policy;
pub mod reset;
mod status;
pub mod tier;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use ahash::AHashMap;
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    cost::{CostAnswer, CostMetrics, CostRequest, Costs},
    query::Stmt,
};
use ledger::Ledger;
use metrics::BudgetMetrics;
use policy::{Compiled, Unit};
pub use status::{BudgetStatus, CostKnown};

/// A change of a role's ladder step.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    pub role: Arc<str>,
    pub tier: String,
    /// Step applied before (index into the ladder), `None` = none.
    pub from: Option<usize>,
    /// Step to apply now.
    pub to: Option<usize>,
    pub utilisation: f64,
    pub spend: f64,
    /// When it was decided, unix ms.
    pub at_ms: u64,
}

/// What the capture thread sends to the enforcer.
#[derive(Clone, Debug)]
pub enum ToEnforcer {
    Decision(Decision),
    /// Ledgers changed since the last snapshot.
    Ledgers(Vec<LedgerSnapshot>),
    /// A reloaded policy (SIGHUP): the ladder, mode and exempt list from now on. Sent
    /// before any decision taken under it.
    Policy(Compiled),
    /// A role's ledger and step reset by hand (`pgmon-agent unlock --budget`), sent after
    /// the step's decision.
    Reset(reset::Reset),
}

/// One role's ledger: (role, tier, buckets as (unix second, spend)).
pub type LedgerSnapshot = (Arc<str>, String, Vec<(u64, f64)>);

/// A role's persisted state, loaded at start.
#[derive(Clone, Debug, Default)]
pub struct Persisted {
    pub steps: HashMap<String, usize>,
    pub buckets: HashMap<String, Vec<(u64, f64)>>,
}

struct RoleBudget {
    tier: String,
    /// The tier's unit, kept here so charging needs no tier lookup.
    unit: Unit,
    ledger: Ledger,
    step: Option<usize>,
    /// Charged since the last evaluation.
    dirty: bool,
    /// Charged since the last ledger snapshot.
    unsaved: bool,
    /// The window's spend when the ledger was last written, and when (unix ms; 0: never).
    saved_spend: f64,
    saved_ms: u64,
}

/// A charged ledger is written when its window's spend moved by this share of the budget
/// since its last write, …
pub const PERSIST_MATERIAL: f64 = 0.01;

/// … or when its last write is this old (ms): a restart loses at most 1 % of a budget or a
/// minute of spend, and a tenant far from its limit costs one row a minute instead of one
/// every `persist_interval_seconds` (bench/FOOTPRINT.md: 1,000 roles at one statement a
/// second wrote 199 rows/s, 1.56 × the WAL of their own statements, before this).
pub const PERSIST_AT_LEAST_EVERY_MS: u64 = 60_000;

/// How far below a threshold a utilisation may fall and still reach it: 1e-9, relative.
/// A window's spend is a sum of many `f64` charges, whose rounding leaves a spend that is
/// exactly the threshold in decimal a few units in the last place under it (40 charges of
/// 0.07 s sum to 2.7999999999999994, a utilisation of 1.9999999999999998 against a
/// budget of 1.4); a DBA who sets `at: 2.0` expects the 40th to reach it. One part in a
/// billion is far above that error and far below any charge.
pub const THRESHOLD_TOLERANCE: f64 = 1e-9;

/// Whether `utilisation` reaches `threshold` (a ladder step's `at`, or
/// `alerts.budget_exceeded.utilisation`), within [`THRESHOLD_TOLERANCE`].
pub fn reaches(utilisation: f64, threshold: f64) -> bool {
    utilisation >= threshold * (1.0 - THRESHOLD_TOLERANCE)
}

/// Per-role budgets on the capture thread.
pub struct Budgets {
    policy: Compiled,
    roles: AHashMap<Arc<str>, RoleBudget>,
    /// Roles that have no budget (no tier, or exempt).
    unbudgeted: ahash::AHashSet<Arc<str>>,
    /// Superusers and replication roles, from the catalog.
    protected: HashSet<String>,
    costs: Costs,
    /// The capture thread's copy of cost-cache entries it has read: a hit costs one hash
    /// lookup instead of moka's bookkeeping. Cleared when the cache's generation moves
    /// (an estimate arrived or DDL forgot some) and every minute (so moka's TTL still
    /// applies).
    front: AHashMap<u64, Option<f64>>,
    front_generation: u64,
    front_since_ms: u64,
    cost_enabled: bool,
    default_cost: f64,
    requests: UnboundedSender<CostRequest>,
    max_pending: usize,
    /// Fingerprints sent to the worker, with the default charges to correct.
    awaiting: HashMap<u64, Awaiting>,
    out: UnboundedSender<ToEnforcer>,
    cost_metrics: CostMetrics,
    metrics: BudgetMetrics,
    /// When [`Self::evaluate`] last ran, unix ms: a calendar period that began since then
    /// has every role of its tier judged again.
    last_evaluated_ms: u64,
}

/// A fingerprint sent to the worker.
struct Awaiting {
    /// The default charges to correct: (role, unix second, executions).
    charges: Vec<(Arc<str>, u64, u32)>,
    /// Executions since it was sent, shared with the worker's queue (most called first).
    calls: Arc<std::sync::atomic::AtomicU32>,
}

/// Where the budgets send their work.
pub struct Channels {
    pub cost_requests: UnboundedSender<CostRequest>,
    pub enforcer: UnboundedSender<ToEnforcer>,
}

impl Budgets {
    /// Budgets under `policy`, seeded with `persisted` state.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        policy: Compiled,
        cost: &crate::cost::CostConfig,
        costs: Costs,
        channels: Channels,
        cost_metrics: CostMetrics,
        metrics: BudgetMetrics,
        persisted: Persisted,
    ) -> Self {
        let mut b = Self {
            policy,
            roles: AHashMap::new(),
            unbudgeted: ahash::AHashSet::new(),
            front: AHashMap::new(),
            front_generation: u64::MAX,
            front_since_ms: 0,
            protected: HashSet::new(),
            costs,
            cost_enabled: cost.enabled,
            default_cost: cost.default_cost,
            requests: channels.cost_requests,
            max_pending: cost.max_pending,
            awaiting: HashMap::new(),
            out: channels.enforcer,
            cost_metrics,
            metrics,
            last_evaluated_ms: 0,
        };
        for (role, buckets) in persisted.buckets {
            let role: Arc<str> = role.into();
            if let Some(r) = b.role(&role) {
                for (sec, v) in buckets {
                    r.ledger.charge_second(sec, v);
                }
            }
        }
        let n = b.policy.policy.ladder.len();
        for (role, step) in persisted.steps {
            let role: Arc<str> = role.into();
            if n == 0 {
                break;
            }
            let step = step.min(n - 1);
            match b.role(&role) {
                Some(r) => {
                    r.step = Some(step);
                    r.dirty = true;
                }
                // On a step under the previous policy, unbudgeted (exempt, or no tier) under
                // this one: nothing will ever undo the step, so undo it now.
                None => {
                    let _ = b.out.send(ToEnforcer::Decision(Decision {
                        role,
                        tier: String::new(),
                        from: Some(step),
                        to: None,
                        utilisation: 0.0,
                        spend: 0.0,
                        at_ms: crate::util::now_ms(),
                    }));
                }
            }
        }
        b
    }

    /// Applies a reloaded policy without losing state: ledgers are kept (a role's spend is
    /// its history, whatever its tier); a role that changed tier takes the new tier's limit
    /// and unit at its next evaluation, which moves its step if the new limits say so. A
    /// role the new policy no longer budgets (exempt, or no tier) is restored and
    /// forgotten. When the ladder itself changed, a step index means something else, so
    /// every role on a step is restored under the old ladder first and re-escalated under
    /// the new one at the next evaluation (one drain interval later).
    pub fn set_policy(&mut self, policy: Compiled) {
        let ladder_changed =
            format!("{:?}", policy.policy.ladder) != format!("{:?}", self.policy.policy.ladder);
        let mut undo = Vec::new();
        let (protected, now) = (&self.protected, crate::util::now_ms());
        self.roles.retain(|role, r| {
            let tier = policy.tier_of(role, protected.contains(role.as_ref()));
            if let Some(step) = r.step
                && (tier.is_none() || ladder_changed)
            {
                undo.push(Decision {
                    role: role.clone(),
                    tier: r.tier.clone(),
                    from: Some(step),
                    to: None,
                    utilisation: 0.0,
                    spend: 0.0,
                    at_ms: now,
                });
                r.step = None;
            }
            let Some(tier) = tier else { return false };
            r.tier = tier.to_owned();
            r.unit = policy
                .policy
                .tiers
                .get(tier)
                .map_or(Unit::PlanCost, |t| t.unit);
            r.dirty = true;
            true
        });
        // Undone under the ladder they were taken on; then the new policy.
        for d in undo {
            tracing::info!(role = %d.role, ladder_changed, "budgets: policy reloaded; restoring this role's step");
            let _ = self.out.send(ToEnforcer::Decision(d));
        }
        let _ = self.out.send(ToEnforcer::Policy(policy.clone()));
        self.policy = policy;
        self.unbudgeted.clear();
    }

    /// Replaces the set of superuser and replication roles (from `pg_roles`).
    pub fn set_protected(&mut self, roles: HashSet<String>) {
        self.protected = roles;
        self.unbudgeted.clear();
        let protected = &self.protected;
        let policy = &self.policy;
        self.roles.retain(|role, _| {
            policy
                .tier_of(role, protected.contains(role.as_ref()))
                .is_some()
        });
    }

    fn role(&mut self, role: &Arc<str>) -> Option<&mut RoleBudget> {
        if self.unbudgeted.contains(role) {
            return None;
        }
        if !self.roles.contains_key(role) {
            let Some(tier) = self
                .policy
                .tier_of(role, self.protected.contains(role.as_ref()))
            else {
                self.unbudgeted.insert(role.clone());
                return None;
            };
            let unit = self
                .policy
                .policy
                .tiers
                .get(tier)
                .map_or(Unit::PlanCost, |t| t.unit);
            let tier = tier.to_owned();
            self.roles.insert(
                role.clone(),
                RoleBudget {
                    tier,
                    unit,
                    ledger: Ledger::default(),
                    step: None,
                    dirty: false,
                    unsaved: false,
                    saved_spend: 0.0,
                    saved_ms: 0,
                },
            );
        }
        self.roles.get_mut(role)
    }

    /// Charges one execution of `stmt` by `role` in `database` that took `duration_ns`.
    pub fn charge(
        &mut self,
        now_ms: u64,
        role: &Arc<str>,
        database: &Arc<str>,
        stmt: &Stmt,
        duration_ns: u64,
    ) {
        let Some(unit) = self.role(role).map(|r| r.unit) else {
            return;
        };
        let amount = match unit {
            Unit::ExecSeconds => duration_ns as f64 / 1e9,
            Unit::PlanCost => self.plan_cost(now_ms, role, database, stmt),
        };
        if let Some(r) = self.roles.get_mut(role) {
            r.ledger.charge(now_ms, amount);
            r.dirty = true;
            r.unsaved = true;
        }
    }

    /// Charges `cpu_seconds` of CPU time that a backend of `role` used while pgmon could not
    /// read its statements (an unreadable encrypted session), converted to the tier's unit
    /// (`Tier::cpu_second_cost` planner units per second for `plan_cost`, as they are for
    /// `exec_seconds`).
    pub fn charge_cpu(&mut self, now_ms: u64, role: &Arc<str>, cpu_seconds: f64) {
        let Some(r) = self.role(role) else {
            return;
        };
        let (unit, tier) = (r.unit, r.tier.clone());
        let amount = match unit {
            Unit::ExecSeconds => cpu_seconds,
            Unit::PlanCost => {
                cpu_seconds
                    * self
                        .policy
                        .policy
                        .tiers
                        .get(&tier)
                        .map_or(150_000.0, |t| t.cpu_second_cost)
            }
        };
        if let Some(r) = self.roles.get_mut(role) {
            r.ledger.charge(now_ms, amount);
            r.dirty = true;
            r.unsaved = true;
        }
    }

    fn plan_cost(&mut self, now_ms: u64, role: &Arc<str>, database: &Arc<str>, stmt: &Stmt) -> f64 {
        // No fingerprint, or a fallback one (no plan can be made of a text the parser
        // refused): the default, per statement.
        if !self.cost_enabled || stmt.fingerprint == 0 || stmt.parse_error {
            return self.default_cost;
        }
        let generation = self.costs.generation();
        if generation != self.front_generation
            || now_ms.saturating_sub(self.front_since_ms) > 60_000
        {
            self.front.clear();
            self.front_generation = generation;
            self.front_since_ms = now_ms;
        }
        let known = match self.front.get(&stmt.fingerprint) {
            Some(c) => Some(*c),
            None => {
                let c = self.costs.get(stmt.fingerprint);
                if let Some(c) = c {
                    self.front.insert(stmt.fingerprint, c);
                }
                c
            }
        };
        match known {
            Some(cost) => {
                self.cost_metrics.hits.inc();
                cost.unwrap_or(self.default_cost)
            }
            None => {
                self.cost_metrics.misses.inc();
                let sec = now_ms / 1000;
                let room = self.awaiting.len() < self.max_pending;
                match self.awaiting.get_mut(&stmt.fingerprint) {
                    Some(a) => {
                        a.calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        match a.charges.last_mut() {
                            Some((r, s, n)) if r == role && *s == sec => *n += 1,
                            _ => a.charges.push((role.clone(), sec, 1)),
                        }
                    }
                    None if room => {
                        let calls = Arc::new(std::sync::atomic::AtomicU32::new(1));
                        let req = CostRequest {
                            fingerprint: stmt.fingerprint,
                            normalized: stmt.normalized.clone(),
                            truncated: stmt.normalized_truncated,
                            role: role.clone(),
                            database: database.clone(),
                            calls: calls.clone(),
                        };
                        if self.requests.send(req).is_ok() {
                            self.cost_metrics.queue.sent();
                            self.awaiting.insert(
                                stmt.fingerprint,
                                Awaiting {
                                    charges: vec![(role.clone(), sec, 1)],
                                    calls,
                                },
                            );
                        }
                    }
                    None => self.cost_metrics.error("queue_full"),
                }
                self.default_cost
            }
        }
    }

    /// Corrects the default charged for a fingerprint whose estimate has arrived.
    pub fn on_cost(&mut self, answer: CostAnswer) {
        let Some(Awaiting { charges: list, .. }) = self.awaiting.remove(&answer.fingerprint) else {
            return;
        };
        let Some(cost) = answer.cost else {
            return; // not costable: the default stands
        };
        let delta = cost - self.default_cost;
        for (role, sec, n) in list {
            if let Some(r) = self.roles.get_mut(&role) {
                r.ledger.charge_second(sec, delta * f64::from(n));
                r.dirty = true;
                r.unsaved = true;
            }
        }
    }

    /// Recomputes utilisation for every role charged since the last call, every role on a
    /// step (whose utilisation falls as the window moves), and every role of a tier whose
    /// calendar period began since the last call (its spend is back to zero); sends the
    /// step changes.
    pub fn evaluate(&mut self, now_ms: u64) {
        let ladder = &self.policy.policy.ladder;
        let last = std::mem::replace(&mut self.last_evaluated_ms, now_ms);
        for (role, r) in self.roles.iter_mut() {
            let Some(tier) = self.policy.policy.tiers.get(&r.tier) else {
                continue;
            };
            let new_period = tier
                .period_start_ms(now_ms)
                .is_some_and(|start| last < start);
            if !r.dirty && r.step.is_none() && !new_period {
                continue;
            }
            r.dirty = false;
            let window = tier.window_at(now_ms);
            r.ledger.prune(now_ms, window);
            let spend = r.ledger.spend(now_ms, window);
            let utilisation = (spend - tier.burst).max(0.0) / tier.budget;
            let step = ladder.iter().rposition(|s| reaches(utilisation, s.at));
            self.metrics
                .observe(role, &r.tier, spend, tier.budget, utilisation);
            if step != r.step {
                let d = Decision {
                    role: role.clone(),
                    tier: r.tier.clone(),
                    from: r.step,
                    to: step,
                    utilisation,
                    spend,
                    at_ms: now_ms,
                };
                r.step = step;
                r.unsaved = true;
                let _ = self.out.send(ToEnforcer::Decision(d));
            }
        }
    }

    /// Sends the ledgers charged since their last write whose window's spend moved by
    /// [`PERSIST_MATERIAL`] of the budget, or that are on a step, or whose last write is
    /// [`PERSIST_AT_LEAST_EVERY_MS`] old; each as its window's spend in at most
    /// [`ledger::PERSISTED_BUCKETS`] buckets ([`Ledger::coarse`]); the enforcer writes one
    /// row per role. Called every `budgets.persist_interval_seconds`.
    pub fn snapshot(&mut self, now_ms: u64) {
        let tiers = &self.policy.policy.tiers;
        let every =
            PERSIST_AT_LEAST_EVERY_MS.max(self.policy.policy.persist_interval_seconds * 1000);
        let changed: Vec<_> = self
            .roles
            .iter_mut()
            .filter(|(_, r)| r.unsaved)
            .filter_map(|(role, r)| {
                let (window, budget) = tiers
                    .get(&r.tier)
                    .map_or((60, f64::INFINITY), |t| (t.window_at(now_ms), t.budget));
                let spend = r.ledger.spend(now_ms, window);
                let material = (spend - r.saved_spend).abs() >= PERSIST_MATERIAL * budget;
                if !material && r.step.is_none() && now_ms.saturating_sub(r.saved_ms) < every {
                    return None;
                }
                r.unsaved = false;
                (r.saved_spend, r.saved_ms) = (spend, now_ms);
                Some((
                    role.clone(),
                    r.tier.clone(),
                    r.ledger.coarse(now_ms, window),
                ))
            })
            .collect();
        if !changed.is_empty() {
            let _ = self.out.send(ToEnforcer::Ledgers(changed));
        }
    }

    /// Milliseconds between [`Self::snapshot`] calls.
    pub fn persist_interval_ms(&self) -> u64 {
        self.policy.policy.persist_interval_seconds * 1000
    }

    /// Publishes the cost cache's size as `pgmon_cost_cache_entries`.
    pub fn publish_cost_entries(&self) {
        self.cost_metrics.entries.set(self.costs.entries() as i64);
    }
}

#[cfg(test)]
mod tests;
