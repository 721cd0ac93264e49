//! `pgmon_role_budget_*` and `pgmon_enforcement_actions_total`.

use std::sync::atomic::AtomicU64;

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

/// `{role, tier}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleTierLabels {
    pub role: String,
    pub tier: String,
}

/// `{role}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabels {
    pub role: String,
}

/// `{action, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `warn`, `connection_limit`, `lock`, `restore`.
    pub action: &'static str,
    /// `applied`, `observed` (observe mode), `refused` (the SQL function refused the
    /// role), `failed`.
    pub result: &'static str,
}

type F64Gauge = Gauge<f64, AtomicU64>;

/// The budget families.
#[derive(Clone)]
pub struct BudgetMetrics {
    spent: Family<RoleTierLabels, F64Gauge>,
    limit: Family<RoleTierLabels, F64Gauge>,
    utilisation: Family<RoleLabels, F64Gauge>,
    /// Actions and undos, by result.
    pub actions: Family<ActionLabels, Counter>,
}

impl BudgetMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spent: Family::default(),
            limit: Family::default(),
            utilisation: Family::default(),
            actions: Family::default(),
        };
        registry.register(
            "pgmon_role_budget_spent",
            "Spend in the tier's rolling window (plan cost units or seconds)",
            m.spent.clone(),
        );
        registry.register(
            "pgmon_role_budget_limit",
            "Budget per rolling window of the role's tier",
            m.limit.clone(),
        );
        registry.register(
            "pgmon_role_budget_utilisation",
            "max(0, spend - burst) / budget",
            m.utilisation.clone(),
        );
        registry.register(
            "pgmon_enforcement_actions",
            "Budget ladder actions and undos, by result",
            m.actions.clone(),
        );
        m
    }

    /// Sets one role's gauges.
    pub fn observe(&self, role: &str, tier: &str, spend: f64, budget: f64, utilisation: f64) {
        let rt = RoleTierLabels {
            role: role.to_owned(),
            tier: tier.to_owned(),
        };
        self.spent.get_or_create(&rt).set(spend);
        self.limit.get_or_create(&rt).set(budget);
        self.utilisation
            .get_or_create(&RoleLabels {
                role: role.to_owned(),
            })
            .set(utilisation);
    }

    /// Counts one action.
    pub fn action(&self, action: &'static str, result: &'static str) {
        self.actions
            .get_or_create(&ActionLabels { action, result })
            .inc();
    }
}
