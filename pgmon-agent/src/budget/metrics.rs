//! `pgmon_role_budget_*` and `pgmon_enforcement_actions_total`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, atomic::AtomicU64},
};

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

/// `{result}` of `pgmon_idle_sessions_culled_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CullLabels {
    /// `terminated`, `observed` (mode: observe), `spared` (gone, or no longer idle, when its
    /// turn came), `refused` (the SQL function refused the role), `failed`.
    pub result: &'static str,
}

/// `{action, result}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `warn`, `connection_limit`, `lock`, `unlock` (down from `lock` to a limit),
    /// `restore`.
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
    /// Idle sessions culled (`cleanup.idle_culling`), by result.
    pub culled: Family<CullLabels, Counter>,
    /// The last utilisation of each role, for the alert engine (the same value as the
    /// gauge, which prometheus-client does not let us list).
    latest: Arc<Mutex<HashMap<String, f64>>>,
}

impl BudgetMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            spent: Family::default(),
            limit: Family::default(),
            utilisation: Family::default(),
            actions: Family::default(),
            culled: Family::default(),
            latest: Arc::default(),
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
        registry.register(
            "pgmon_idle_sessions_culled",
            "Idle sessions ended (or, in observe mode, that would have been) because client connections passed cleanup.idle_culling's threshold, by result",
            m.culled.clone(),
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
        if let Ok(mut latest) = self.latest.lock() {
            // No allocation once the role is known (this runs on the capture thread).
            match latest.get_mut(role) {
                Some(u) => *u = utilisation,
                None => {
                    latest.insert(role.to_owned(), utilisation);
                }
            }
        }
    }

    /// Each role's last utilisation, max(0, spend − burst) ÷ budget.
    pub fn utilisations(&self) -> Vec<(String, f64)> {
        self.latest
            .lock()
            .map(|l| l.iter().map(|(r, u)| (r.clone(), *u)).collect())
            .unwrap_or_default()
    }

    /// Counts one idle session culled (or observed, spared, refused, failed).
    pub fn idle_culled(&self, result: &'static str) {
        self.culled.get_or_create(&CullLabels { result }).inc();
    }

    /// Counts one action.
    pub fn action(&self, action: &'static str, result: &'static str) {
        self.actions
            .get_or_create(&ActionLabels { action, result })
            .inc();
    }
}
