//! The cost of each statement: a parameter-independent (generic) plan's total cost, in the
//! planner's units (PostgreSQL docs, section 19.7.2 "Planner Cost Constants"), cached by
//! fingerprint.
//!
//! The capture thread never waits for a plan: [`Costs::get`] answers from the cache or
//! says the estimate is unknown; the caller then charges `cost.default_cost` and sends a
//! [`CostRequest`] to the [`worker`], whose [`CostAnswer`] later corrects the charge.

pub mod queue;
pub mod rewrite;
pub mod store;
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
    /// Executions charged the default while it waits (the capture thread bumps it; the
    /// worker takes the most called first: [`queue`]).
    pub calls: Arc<std::sync::atomic::AtomicU32>,
}

/// The worker's answer for one fingerprint.
#[derive(Clone, Debug, PartialEq)]
pub struct CostAnswer {
    pub fingerprint: u64,
    /// Total cost of the generic plan; `None` when it could not be made (the default
    /// stays charged, and the reason is counted).
    pub cost: Option<f64>,
}

/// One cached estimate.
#[derive(Clone, Debug)]
struct Entry {
    /// Generic-plan total cost; `None`: not costable.
    cost: Option<f64>,
    /// The database it was planned in.
    database: Arc<str>,
    /// Names (without schema) of the relations the statement reads or writes, as
    /// libpg_query reports them: DDL on any of them forgets the entry.
    relations: Box<[Box<str>]>,
    /// How long it is trusted from its insert: `cost.cache_ttl_seconds`, or what is left
    /// of it for an estimate loaded from `pgmon.cost_estimates`.
    ttl: Duration,
}

/// Expires each entry after its own [`Entry::ttl`].
struct EntryExpiry;

impl moka::Expiry<u64, Entry> for EntryExpiry {
    fn expire_after_create(&self, _: &u64, e: &Entry, _: std::time::Instant) -> Option<Duration> {
        Some(e.ttl)
    }
}

/// Which estimates an operator forgets (`pgmon-agent cost forget`).
#[derive(Clone, Debug, PartialEq)]
pub enum Forget {
    /// One fingerprint.
    Fingerprint(u64),
    /// Every estimate that uses a relation of this name (without schema), in `database`
    /// or in every database.
    Relation {
        relation: String,
        database: Option<String>,
    },
    /// Every estimate.
    All,
}

impl std::fmt::Display for Forget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Forget::Fingerprint(fp) => {
                write!(f, "fingerprint {}", crate::query::fingerprint_hex(*fp))
            }
            Forget::Relation {
                relation,
                database: Some(db),
            } => write!(f, "relation {relation} in database {db}"),
            Forget::Relation { relation, .. } => write!(f, "relation {relation} in every database"),
            Forget::All => f.write_str("every estimate"),
        }
    }
}

/// The shared cache: fingerprint → generic-plan total cost (or `None`: not costable, the
/// default applies). Size-bounded and expiring (`moka`); DDL on a relation a statement
/// uses forgets its entry ([`Costs::forget_relation`], driven by `sql/003_ddl_notify.sql`).
#[derive(Clone)]
pub struct Costs {
    cache: moka::sync::Cache<u64, Entry>,
    ttl: Duration,
    /// Bumped by every insert and invalidation: a reader's local copy of entries is stale
    /// once this moves.
    generation: Arc<std::sync::atomic::AtomicU64>,
}

impl Costs {
    /// A cache for `config`.
    pub fn new(config: &CostConfig) -> Self {
        Self {
            cache: moka::sync::Cache::builder()
                .max_capacity(config.cache_entries)
                .expire_after(EntryExpiry)
                .support_invalidation_closures()
                .build(),
            ttl: Duration::from_secs(config.cache_ttl_seconds.max(1)),
            generation: Arc::default(),
        }
    }

    /// `Some(Some(cost))` when costed, `Some(None)` when known not to be costable, `None`
    /// when unknown (ask the worker).
    pub fn get(&self, fingerprint: u64) -> Option<Option<f64>> {
        self.cache.get(&fingerprint).map(|e| e.cost)
    }

    /// Changes with every insert and invalidation (see [`Costs::get`]'s callers' local copies).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn bump(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Records the worker's answer for a statement planned in `database` over `relations`.
    pub fn insert(
        &self,
        fingerprint: u64,
        cost: Option<f64>,
        database: &Arc<str>,
        relations: &[String],
    ) {
        self.insert_for(fingerprint, cost, database, relations, self.ttl);
    }

    /// [`Costs::insert`] trusted for `ttl` only (an estimate loaded from
    /// `pgmon.cost_estimates` keeps the rest of its `cost.cache_ttl_seconds`).
    pub fn insert_for(
        &self,
        fingerprint: u64,
        cost: Option<f64>,
        database: &Arc<str>,
        relations: &[String],
        ttl: Duration,
    ) {
        let relations = relations.iter().map(|r| short_name(r).into()).collect();
        self.cache.insert(
            fingerprint,
            Entry {
                cost,
                database: database.clone(),
                relations,
                ttl: ttl.min(self.ttl),
            },
        );
        self.bump();
    }

    /// `cost.cache_ttl_seconds`.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Forgets what `what` names; returns how many estimates the cache held that matched.
    pub fn forget(&self, what: &Forget) -> u64 {
        let n = match what {
            Forget::Fingerprint(fp) => u64::from(self.cache.remove(fp).is_some()),
            Forget::Relation { relation, database } => {
                let relation = short_name(relation);
                let matches = |e: &Entry| {
                    database.as_deref().is_none_or(|d| &*e.database == d)
                        && e.relations.iter().any(|r| &**r == relation)
                };
                let n = self.cache.iter().filter(|(_, e)| matches(e)).count() as u64;
                let (relation, database): (Box<str>, Option<Arc<str>>) =
                    (relation.into(), database.as_deref().map(Arc::from));
                if self
                    .cache
                    .invalidate_entries_if(move |_, e| {
                        database.as_ref().is_none_or(|d| e.database == *d)
                            && e.relations.contains(&relation)
                    })
                    .is_err()
                {
                    self.cache.invalidate_all();
                }
                n
            }
            Forget::All => {
                let n = self.cache.iter().count() as u64;
                self.cache.invalidate_all();
                n
            }
        };
        self.bump();
        n
    }

    /// Forgets every estimate made in `database` that uses a relation named `relation`
    /// (without schema; several schemas may hold one, and forgetting too much only costs
    /// an EXPLAIN), or every estimate made there when `relation` is `*`.
    pub fn forget_relation(&self, database: &str, relation: &str) {
        let (database, relation): (Arc<str>, Box<str>) = (database.into(), relation.into());
        let all = &*relation == "*";
        self.bump();
        let forgotten = self.cache.invalidate_entries_if(move |_, e| {
            e.database == database && (all || e.relations.contains(&relation))
        });
        if let Err(e) = forgotten {
            // Only when the builder lacks support_invalidation_closures: fall back to
            // forgetting everything rather than keep stale estimates.
            tracing::warn!(error = %e, "cost cache: predicate invalidation refused; clearing it");
            self.cache.invalidate_all();
        }
    }

    /// Entries now (approximate, moka's count).
    pub fn entries(&self) -> u64 {
        self.cache.entry_count()
    }
}

/// What the HTTP endpoint needs to forget estimates by hand (`POST /api/v1/cost/forget`).
#[derive(Clone)]
pub struct Control {
    pub costs: Costs,
    pub store: store::Store,
}

impl Control {
    /// Forgets `what` in the cache and in `pgmon.cost_estimates` (with an audit row and a
    /// line under target `pgmon::enforcement`); says what was forgotten, or why the
    /// persisted rows were not deleted.
    pub async fn forget(&self, what: Forget) -> Result<String, String> {
        let cached = self.costs.forget(&what);
        let rows = self.store.forget(what.clone(), cached).await;
        match &rows {
            Ok(n) => {
                tracing::warn!(target: "pgmon::enforcement", what = %what, cached, persisted = n, "cost forget")
            }
            Err(e) => {
                tracing::warn!(target: "pgmon::enforcement", what = %what, cached, error = %e, "cost forget: the persisted rows were not deleted")
            }
        }
        let rows = rows.map_err(|e| {
            format!("{what}: {cached} estimate(s) forgotten in the cache, but pgmon.cost_estimates was not changed: {e}")
        })?;
        Ok(format!(
            "{what}: {cached} estimate(s) forgotten in the cache, {rows} persisted row(s) deleted; the next execution is estimated anew"
        ))
    }
}

/// `schema.name` → `name` (estimates are keyed by relation names without schema).
fn short_name(r: &str) -> &str {
    r.rsplit('.').next().unwrap_or(r)
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
    /// DDL notifications acted on (and sessions lost, which forget a database's estimates).
    pub invalidations: Counter,
    /// The worker's queue (depth, oldest), read at scrape time.
    pub queue: queue::QueueGauges,
    /// Estimates restored from `pgmon.cost_estimates` at start, by result.
    pub restored: Family<ResultLabels, Counter>,
}

/// `{result}` of `pgmon_cost_estimates_restored_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: &'static str,
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
            invalidations: Counter::default(),
            queue: queue::QueueGauges::default(),
            restored: Family::default(),
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
            "pgmon_cost_cache_invalidations",
            "Times the cost cache forgot estimates: a DDL notification (sql/003_ddl_notify.sql) or a lost worker session",
            m.invalidations.clone(),
        );
        registry.register(
            "pgmon_cost_estimate_seconds",
            "Time to make one estimate (EXPLAIN round trips)",
            m.estimate_seconds.clone(),
        );
        registry.register(
            "pgmon_cost_estimates_restored",
            "Estimates read from pgmon.cost_estimates at start: kept, or discarded because a relation they use changed while the agent was down (ddl) or they expired",
            m.restored.clone(),
        );
        registry.register_collector(Box::new(m.queue.clone()));
        m
    }

    /// Counts a fingerprint not costed for `reason`.
    pub fn error(&self, reason: &'static str) {
        self.errors.get_or_create(&ReasonLabels { reason }).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_forgets_the_estimates_that_use_the_relation_in_its_database() {
        let costs = Costs::new(&CostConfig::default());
        let (a, b): (Arc<str>, Arc<str>) = ("a".into(), "b".into());
        costs.insert(1, Some(10.0), &a, &["public.items".into()]);
        costs.insert(2, Some(20.0), &a, &["orders".into(), "lineitem".into()]);
        costs.insert(3, Some(30.0), &b, &["items".into()]);
        costs.insert(4, None, &a, &[]);
        costs.forget_relation("a", "items");
        assert_eq!(costs.get(1), None, "schema-qualified name matched");
        assert_eq!(costs.get(2), Some(Some(20.0)));
        assert_eq!(costs.get(3), Some(Some(30.0)), "other database untouched");
        assert_eq!(costs.get(4), Some(None));
        costs.forget_relation("a", "*");
        assert_eq!((costs.get(2), costs.get(4)), (None, None));
        assert_eq!(costs.get(3), Some(Some(30.0)));
    }
}
