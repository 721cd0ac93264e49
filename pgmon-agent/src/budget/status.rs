//! What the budgets show: each role's spend against its budget and the step applied
//! (`/api/v1/status`, `pgmon-agent status`), and what is known of a fingerprint's cost.

use super::{
    Budgets,
    policy::{ActionKind, Mode, Step, Unit},
};

impl Budgets {
    /// What is known of `fingerprint`'s cost, for status and metrics (not counted as a
    /// cache hit or miss).
    pub fn cost_of(&self, fingerprint: u64) -> CostKnown {
        if !self.cost_enabled {
            return CostKnown::Disabled;
        }
        match self.costs.get(fingerprint) {
            Some(Some(c)) => CostKnown::Costed(c),
            Some(None) => CostKnown::NotCostable,
            None => CostKnown::Pending,
        }
    }

    /// Each budgeted role: (role, tier, spend, budget, utilisation, step action).
    pub fn status(&self, now_ms: u64) -> Vec<BudgetStatus> {
        let ladder = &self.policy.policy.ladder;
        let mut v: Vec<_> = self
            .roles
            .iter()
            .filter_map(|(role, r)| {
                let t = self.policy.policy.tiers.get(&r.tier)?;
                let spend = r.ledger.spend(now_ms, t.window_at(now_ms));
                let utilisation = (spend - t.burst).max(0.0) / t.budget;
                let step = r.step.map(|i| &ladder[i]);
                Some(BudgetStatus {
                    role: role.to_string(),
                    tier: r.tier.clone(),
                    unit: t.unit,
                    spend,
                    budget: t.budget,
                    window_seconds: t.window_seconds,
                    reset: t.reset,
                    utilisation,
                    step: step.map(|s| s.action),
                    step_at: step.map(|s| s.at),
                    connection_limit: step.and_then(|s| s.limit),
                    unlock: unlock_effect(
                        self.policy.policy.mode,
                        (spend, t.unit, utilisation),
                        step,
                        ladder.first().map(|s| s.at),
                    ),
                })
            })
            .collect();
        v.sort_by(|a, b| b.utilisation.total_cmp(&a.utilisation));
        v
    }
}

/// What `pgmon-agent unlock --budget ROLE` would do to a role now ([`super::reset`]), in
/// words: the spend it forgets, the step it takes the role off and what
/// `pgmon.restore_role` gives back (in `enforce` mode; in `observe` mode nothing was
/// applied), and when the ladder would start again (`first_at`: the lowest step).
pub fn unlock_effect(
    mode: Mode,
    (spend, unit, utilisation): (f64, Unit, f64),
    step: Option<&Step>,
    first_at: Option<f64>,
) -> String {
    let unit = match unit {
        Unit::PlanCost => "plan-cost units",
        Unit::ExecSeconds => "seconds",
    };
    let pct = |r: f64| format!("{:.0} %", r * 100.0);
    let mut out = if spend > 0.0 {
        format!(
            "forgets {spend:.1} {unit} of spend (utilisation {} → 0 %)",
            pct(utilisation)
        )
    } else {
        "forgets nothing (no spend in the window)".to_owned()
    };
    match step {
        None => out.push_str("; the role is on no step"),
        Some(s) => {
            let given_back = match (mode, s.action) {
                (Mode::Observe, _) => "nothing to give back: observe mode applied nothing",
                (_, ActionKind::Warn) => "nothing to give back: a warning takes nothing",
                (_, ActionKind::ConnectionLimit) => {
                    "pgmon.restore_role gives back the connection limit it had"
                }
                (_, ActionKind::Lock) => {
                    "pgmon.restore_role gives back LOGIN and the connection limit it had"
                }
            };
            out.push_str(&format!(
                "; takes it off step {} ({given_back})",
                serde_json::to_value(s.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default()
            ));
        }
    }
    if let Some(at) = first_at {
        out.push_str(&format!(
            "; the ladder starts again when it spends past {} of its budget",
            pct(at)
        ));
    }
    out.push_str("; one audit row (source budget, action reset)");
    out
}

/// What the agent knows of one fingerprint's cost.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum CostKnown {
    /// Total cost of its generic plan, planner units.
    Costed(f64),
    /// The worker could not cost it (its reason is counted); the default is charged.
    NotCostable,
    /// Not estimated yet (or expired from the cache).
    Pending,
    /// `cost.enabled: false`.
    Disabled,
}

/// One role's budget in `status`.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct BudgetStatus {
    pub role: String,
    pub tier: String,
    pub unit: Unit,
    pub spend: f64,
    pub budget: f64,
    /// The rolling window, or with `reset` the calendar period's length.
    pub window_seconds: u64,
    /// The tier's calendar reset (`hourly`, `daily`); none: a rolling window.
    #[serde(default)]
    pub reset: Option<super::policy::Reset>,
    pub utilisation: f64,
    /// The ladder step applied (`None`: under every step).
    pub step: Option<ActionKind>,
    /// The utilisation at which that step applies: the reason it is applied.
    pub step_at: Option<f64>,
    pub connection_limit: Option<i32>,
    /// What an unlock would do now ([`unlock_effect`]).
    #[serde(default)]
    pub unlock: String,
}
