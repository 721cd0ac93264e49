//! The cost of each statement: a parameter-independent (generic) plan's total cost, in the
//! planner's units (PostgreSQL docs, section 19.7.2 "Planner Cost Constants"), cached by
//! fingerprint.
//!
//! The capture thread never waits for a plan: [`Costs::get`] answers from the cache or
//! says the estimate is unknown; the caller then charges `cost.default_cost` and sends a
//! [`CostRequest`] to the [`worker`], whose [`CostAnswer`] later corrects the charge.

pub mod rewrite;
pub mod worker;

use std::{sync::Arc, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use serde::Deserialize;

/// `cost:` in the policy file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CostConfig {
    /// Estimate the cost of each new fingerprint (needed by `plan_cost` budgets).
    pub enabled: bool,
    /// libpq connection string of the cost worker; `dbname` is replaced by each query's
    /// database. The role must be allowed to `SET ROLE` to every role it costs for
    /// (a superuser, or a member of those roles; PostgreSQL docs, "SET ROLE"): the plan is
    /// made with the privileges of the role that sent the query, never its own.
    /// Default: `cluster.connection`.
    pub connection: Option<String>,
    /// Cost charged for a statement whose estimate is not known yet or cannot be made.
    pub default_cost: f64,
    /// Most fingerprints kept in the cost cache.
    pub cache_entries: u64,
    /// How long an estimate is trusted before it is made again, seconds.
    pub cache_ttl_seconds: u64,
    /// `statement_timeout` of each EXPLAIN, milliseconds.
    pub statement_timeout_ms: u64,
    /// `lock_timeout` of each EXPLAIN, milliseconds (planning takes `AccessShareLock` on
    /// the relations; a table held by `ACCESS EXCLUSIVE` makes the estimate fail fast).
    pub lock_timeout_ms: u64,
    /// Most estimates waiting for the worker; beyond it a request is dropped and counted
    /// (`reason="queue_full"`) and asked again at the next execution.
    pub max_pending: usize,
}

impl Default for CostConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            connection: None,
            default_cost: 1000.0,
            cache_entries: 100_000,
            cache_ttl_seconds: 3600,
            statement_timeout_ms: 2000,
            lock_timeout_ms: 100,
            max_pending: 10_000,
        }
    }
}

/// What the worker is asked to cost.
#[derive(Clone, Debug)]
pub struct CostRequest {
    pub fingerprint: u64,
    /// Normalized text (`$n` for constants).
    pub normalized: Arc<str>,
    /// The text was cut at `query.max_text_chars` (it cannot be planned).
    pub truncated: bool,
    /// The role that sent it: the plan is made with its privileges.
    pub role: Arc<str>,
    /// Its database: the plan is made there.
    pub database: Arc<str>,
}

/// The worker's answer for one fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct CostAnswer {
    pub fingerprint: u64,
    /// Total cost of the generic plan; `None` when it could not be made (the default
    /// stays charged, and the reason is counted).
    pub cost: Option<f64>,
}

/// The shared cache: fingerprint → generic-plan total cost (or `None`: not costable, the
/// default applies). Size-bounded and expiring (`moka`).
#[derive(Clone)]
pub struct Costs {
    cache: moka::sync::Cache<u64, Option<f64>>,
}

impl Costs {
    /// A cache for `config`.
    pub fn new(config: &CostConfig) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .time_to_live(Duration::from_secs(config.cache_ttl_seconds.max(1)))
                .build(),
        }
    }

    /// `Some(Some(cost))` when costed, `Some(None)` when known not to be costable, `None`
    /// when unknown (ask the worker).
    pub fn get(&self, fingerprint: u64) -> Option<Option<f64>> {
        self.cache.get(&fingerprint)
    }

    /// Records the worker's answer.
    pub fn insert(&self, fingerprint: u64, cost: Option<f64>) {
        self.cache.insert(fingerprint, cost);
    }

    /// Forgets one fingerprint (its relations changed).
    pub fn invalidate(&self, fingerprint: u64) {
        self.cache.invalidate(&fingerprint);
    }

    /// Entries now (approximate, moka's count).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// `{reason}` of `pgmon_cost_cache_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

/// `pgmon_cost_*` metrics.
#[derive(Clone)]
pub struct CostMetrics {
    /// Executions charged from a cached estimate.
    pub hits: Counter,
    /// Executions charged the default because the estimate was not known yet.
    pub misses: Counter,
    /// Fingerprints in the cache.
    pub entries: Gauge,
    /// Fingerprints that could not be costed, by reason.
    pub errors: Family<ReasonLabels, Counter>,
    /// Fingerprints costed.
    pub estimated: Counter,
    /// Time of one estimate (round trips to the server), seconds.
    pub estimate_seconds: Histogram,
}

impl CostMetrics {
    /// Registers the families in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            hits: Counter::default(),
            misses: Counter::default(),
            entries: Gauge::default(),
            errors: Family::default(),
            estimated: Counter::default(),
            estimate_seconds: Histogram::new(
                prometheus_client::metrics::histogram::exponential_buckets(0.0005, 2.5, 12),
            ),
        };
        registry.register(
            "pgmon_cost_cache_hits",
            "Executions charged from a cached generic-plan estimate",
            m.hits.clone(),
        );
        registry.register(
            "pgmon_cost_cache_misses",
            "Executions charged cost.default_cost because their estimate was not known yet",
            m.misses.clone(),
        );
        registry.register(
            "pgmon_cost_cache_entries",
            "Fingerprints in the cost cache",
            m.entries.clone(),
        );
        registry.register(
            "pgmon_cost_cache_errors",
            "Fingerprints that could not be costed (charged cost.default_cost), by reason",
            m.errors.clone(),
        );
        registry.register(
            "pgmon_cost_estimates",
            "Fingerprints costed with a generic plan",
            m.estimated.clone(),
        );
        registry.register(
            "pgmon_cost_estimate_seconds",
            "Time to make one estimate (EXPLAIN round trips)",
            m.estimate_seconds.clone(),
        );
        m
    }

    /// Counts a fingerprint not costed for `reason`.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }
}
