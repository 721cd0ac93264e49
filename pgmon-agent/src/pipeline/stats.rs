//! Statistics per (role, database) and per fingerprint, kept by the capture thread.
//!
//! Bounded: per-role fingerprint tables keep the most called `fingerprints_per_role`
//! entries, the global table `max_fingerprints`; an evicted entry's calls stay counted in
//! its role's totals. Latency quantiles come from an HDR histogram per (role, database)
//! (microsecond resolution, 3 significant digits), since the agent started; a second,
//! coarser one (2 significant digits, 32-bit counts, ≈ 13 kB, allocated on a role's first
//! completion) holds the interval the history ring last closed ([`Stats::interval`]).

use std::{collections::HashMap, sync::Arc};

use ahash::AHashMap;

use super::metrics::{RoleDbHandles, TrafficMetrics};
use crate::{
    budget::CostKnown,
    query::{Stmt, fingerprint_hex},
    status::{FingerprintStatus, RoleInterval, RoleStatus},
};

/// Largest latency the HDR histograms record, microseconds (1 hour); longer is clamped.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Counters of one fingerprint (in one role, or across all roles).
#[derive(Clone, Debug)]
pub struct FingerprintCounters {
    pub stmt: Stmt,
    /// Executions completed (successful or not).
    pub calls: u64,
    /// Executions that ended in an ErrorResponse.
    pub errors: u64,
    /// Sum of their durations, nanoseconds.
    pub total_ns: u64,
}

/// Statistics of one (role, database).
pub struct RoleDb {
    pub role: Arc<str>,
    pub database: Arc<str>,
    /// Statements: executions completed, and requests that failed before executing.
    pub queries: u64,
    /// Statements that failed (never more than `queries`).
    pub errors: u64,
    /// Errors by SQLSTATE class (first two characters).
    pub errors_by_class: HashMap<[u8; 2], u64>,
    /// ErrorResponses that answered no statement (failed logins, sessions ended while idle).
    pub connection_errors: u64,
    /// Connection errors by SQLSTATE class.
    pub connection_errors_by_class: HashMap<[u8; 2], u64>,
    /// Parse messages the server refused (a prepare, not an execution: not in `errors`).
    pub prepare_errors: u64,
    /// Failed prepares by SQLSTATE class.
    pub prepare_errors_by_class: HashMap<[u8; 2], u64>,
    /// Executions whose completion was seen, durations in microseconds.
    latency_us: hdrhistogram::Histogram<u64>,
    /// Executions completed since the last [`Stats::interval`], microseconds.
    recent_us: Option<Box<hdrhistogram::Histogram<u32>>>,
    pub connections: i64,
    /// CPU time of its backends whose sessions pgmon could not read, seconds.
    pub unreadable_cpu_seconds: f64,
    fingerprints: AHashMap<u64, FingerprintCounters>,
    handles: RoleDbHandles,
}

/// All statistics; owned by the pipeline.
pub struct Stats {
    index: HashMap<(Arc<str>, Arc<str>), usize>,
    role_dbs: Vec<RoleDb>,
    global: AHashMap<u64, FingerprintCounters>,
    per_role_cap: usize,
    global_cap: usize,
    metrics: Arc<TrafficMetrics>,
}

/// Identifies a [`RoleDb`] inside [`Stats`]; stable for the agent's lifetime.
pub type RoleDbId = usize;

impl Stats {
    /// Empty statistics exporting through `metrics`.
    pub fn new(metrics: Arc<TrafficMetrics>, per_role_cap: usize, global_cap: usize) -> Self {
        Self {
            index: HashMap::new(),
            role_dbs: Vec::new(),
            global: AHashMap::new(),
            per_role_cap: per_role_cap.max(1),
            global_cap: global_cap.max(1),
            metrics,
        }
    }

    /// The id of (role, database), created on first use.
    pub fn role_db(&mut self, role: &str, database: &str) -> RoleDbId {
        if let Some(&id) = self.index.get(&(Arc::from(role), Arc::from(database))) {
            return id;
        }
        let (role, database): (Arc<str>, Arc<str>) = (role.into(), database.into());
        let id = self.role_dbs.len();
        self.role_dbs.push(RoleDb {
            handles: self.metrics.role_db(&role, &database),
            role: role.clone(),
            database: database.clone(),
            queries: 0,
            errors: 0,
            errors_by_class: HashMap::new(),
            connection_errors: 0,
            connection_errors_by_class: HashMap::new(),
            prepare_errors: 0,
            prepare_errors_by_class: HashMap::new(),
            latency_us: hdrhistogram::Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)
                .expect("constant bounds are valid"),
            recent_us: None,
            connections: 0,
            unreadable_cpu_seconds: 0.0,
            fingerprints: AHashMap::new(),
        });
        self.index.insert((role, database), id);
        id
    }

    /// The role and database of `id`.
    pub fn names(&self, id: RoleDbId) -> (&Arc<str>, &Arc<str>) {
        let r = &self.role_dbs[id];
        (&r.role, &r.database)
    }

    /// A connection of `id` opened (+1) or closed (-1).
    pub fn connection(&mut self, id: RoleDbId, delta: i64) {
        let r = &mut self.role_dbs[id];
        r.connections += delta;
        r.handles.connections.inc_by(delta);
    }

    /// One execution of `stmt` by `id` completed after `duration_ns`, with an error of
    /// SQLSTATE `error` if it failed.
    pub fn record(&mut self, id: RoleDbId, stmt: &Stmt, duration_ns: u64, error: Option<[u8; 5]>) {
        let r = &mut self.role_dbs[id];
        r.queries += 1;
        r.handles.queries.inc();
        r.handles.duration.observe(duration_ns as f64 / 1e9);
        let us = (duration_ns / 1000).clamp(1, MAX_LATENCY_US);
        let _ = r.latency_us.record(us);
        let _ = r
            .recent_us
            .get_or_insert_with(|| {
                Box::new(
                    hdrhistogram::Histogram::new_with_bounds(1, MAX_LATENCY_US, 2)
                        .expect("constant bounds are valid"),
                )
            })
            .record(us);
        let failed = u64::from(error.is_some());
        if let Some(sqlstate) = error {
            Self::count_error(&self.metrics, r, sqlstate);
        }
        bump(
            &mut r.fingerprints,
            self.per_role_cap,
            stmt,
            duration_ns,
            failed,
        );
        bump(&mut self.global, self.global_cap, stmt, duration_ns, failed);
    }

    /// Counts `seconds` of CPU time used by a backend of `id` whose session pgmon cannot
    /// read (what its budget is charged instead of statements).
    pub fn unreadable_cpu(&mut self, id: RoleDbId, seconds: f64) {
        let r = &mut self.role_dbs[id];
        r.unreadable_cpu_seconds += seconds;
        r.handles.unreadable_cpu.inc_by(seconds);
    }

    /// A request of `id` that executed nothing failed with `sqlstate`
    /// ([`pgmon_wire::ErrorScope::Request`]: a Parse or Bind error, a failed implicit
    /// commit): counted as one statement that failed, so that a role's errors never exceed
    /// its statements. No duration is known: the latency histograms leave it out.
    pub fn failed_request(&mut self, id: RoleDbId, sqlstate: [u8; 5]) {
        let r = &mut self.role_dbs[id];
        r.queries += 1;
        r.handles.queries.inc();
        Self::count_error(&self.metrics, r, sqlstate);
    }

    /// An ErrorResponse of `id` that answered no statement
    /// ([`pgmon_wire::ErrorScope::Connection`]: a failed login, a session ended while idle, a
    /// FATAL protocol violation): counted apart from statement errors.
    pub fn connection_error(&mut self, id: RoleDbId, sqlstate: [u8; 5]) {
        let r = &mut self.role_dbs[id];
        let class = [sqlstate[0], sqlstate[1]];
        r.connection_errors += 1;
        *r.connection_errors_by_class.entry(class).or_default() += 1;
        self.metrics.connection_error(&r.role, class);
    }

    /// A Parse of `id` that the server refused ([`pgmon_wire::ErrorScope::Prepare`]): counted
    /// apart from statements and their errors.
    pub fn prepare_error(&mut self, id: RoleDbId, sqlstate: [u8; 5]) {
        let r = &mut self.role_dbs[id];
        let class = [sqlstate[0], sqlstate[1]];
        r.prepare_errors += 1;
        *r.prepare_errors_by_class.entry(class).or_default() += 1;
        self.metrics.prepare_error(&r.role, class);
    }

    fn count_error(metrics: &TrafficMetrics, r: &mut RoleDb, sqlstate: [u8; 5]) {
        r.errors += 1;
        let class = [sqlstate[0], sqlstate[1]];
        *r.errors_by_class.entry(class).or_default() += 1;
        metrics.query_error(&r.role, &r.database, class);
    }

    /// Every role's totals, and the median and p99 of the executions completed since the
    /// previous call (the interval's histograms are emptied), for the history ring.
    pub fn interval(&mut self) -> Vec<RoleInterval> {
        let mut by_role: HashMap<Arc<str>, Vec<usize>> = HashMap::new();
        for (i, r) in self.role_dbs.iter().enumerate() {
            by_role.entry(r.role.clone()).or_default().push(i);
        }
        let mut out: Vec<RoleInterval> = by_role
            .into_iter()
            .map(|(role, ids)| {
                let mut merged: Option<hdrhistogram::Histogram<u32>> = None;
                let (mut queries, mut errors) = (0, 0);
                for i in ids {
                    let r = &mut self.role_dbs[i];
                    queries += r.queries;
                    errors += r.errors;
                    let Some(h) = r.recent_us.as_deref_mut().filter(|h| !h.is_empty()) else {
                        continue;
                    };
                    match merged.as_mut() {
                        None => merged = Some(h.clone()),
                        Some(m) => {
                            let _ = m.add(&*h);
                        }
                    }
                    h.reset();
                }
                let q = |p: f64| {
                    merged
                        .as_ref()
                        .map(|h| h.value_at_quantile(p) as f64 / 1000.0)
                };
                RoleInterval {
                    role: role.to_string(),
                    queries,
                    errors,
                    p50_ms: q(0.5),
                    p99_ms: q(0.99),
                }
            })
            .collect();
        out.sort_by(|a, b| b.queries.cmp(&a.queries).then(a.role.cmp(&b.role)));
        out
    }

    /// Statements completed, all roles and databases.
    pub fn total_queries(&self) -> u64 {
        self.role_dbs.iter().map(|r| r.queries).sum()
    }

    /// The `k` most called fingerprints across all roles: (fingerprint, calls, summed
    /// execution time in nanoseconds).
    pub fn top_fingerprints(&self, k: usize) -> Vec<(u64, u64, u64)> {
        let mut v: Vec<_> = self
            .global
            .iter()
            .map(|(&fp, c)| (fp, c.calls, c.total_ns))
            .collect();
        v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v.truncate(k);
        v
    }

    /// A serializable view of every role (aggregated over its databases), most queries
    /// first; `cost_of` says what is known of each fingerprint's cost.
    pub fn roles(&self, cost_of: &dyn Fn(u64) -> CostKnown) -> Vec<RoleStatus> {
        let mut by_role: HashMap<&str, Vec<&RoleDb>> = HashMap::new();
        for r in &self.role_dbs {
            by_role.entry(&r.role).or_default().push(r);
        }
        let mut out: Vec<RoleStatus> = by_role
            .into_iter()
            .map(|(role, dbs)| RoleStatus::from_parts(role, &dbs, cost_of))
            .collect();
        out.sort_by(|a, b| b.queries.cmp(&a.queries).then(a.role.cmp(&b.role)));
        out
    }
}

fn bump(
    map: &mut AHashMap<u64, FingerprintCounters>,
    cap: usize,
    stmt: &Stmt,
    duration_ns: u64,
    failed: u64,
) {
    if let Some(c) = map.get_mut(&stmt.fingerprint) {
        c.calls += 1;
        c.errors += failed;
        c.total_ns += duration_ns;
        return;
    }
    if map.len() >= cap {
        // Evict the least called (O(cap), only when a new fingerprint arrives at a full table).
        if let Some((&victim, _)) = map.iter().min_by_key(|(_, c)| c.calls) {
            map.remove(&victim);
        }
    }
    map.insert(
        stmt.fingerprint,
        FingerprintCounters {
            stmt: stmt.clone(),
            calls: 1,
            errors: failed,
            total_ns: duration_ns,
        },
    );
}

/// `plan_cost ÷ mean seconds`, when both are known and the time is not zero.
pub fn cost_per_second(plan_cost: Option<f64>, calls: u64, total_ns: u64) -> Option<f64> {
    let cost = plan_cost?;
    (calls > 0 && total_ns > 0).then(|| cost / (total_ns as f64 / 1e9 / calls as f64))
}

impl RoleStatus {
    fn from_parts(role: &str, dbs: &[&RoleDb], cost_of: &dyn Fn(u64) -> CostKnown) -> Self {
        let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, MAX_LATENCY_US, 3)
            .expect("constant bounds are valid");
        let mut fps: HashMap<u64, FingerprintCounters> = HashMap::new();
        let mut errors_by_class = std::collections::BTreeMap::new();
        let mut connection_errors_by_class = std::collections::BTreeMap::new();
        let mut prepare_errors_by_class = std::collections::BTreeMap::new();
        for r in dbs {
            let _ = hist.add(&r.latency_us);
            for (class, n) in &r.errors_by_class {
                *errors_by_class
                    .entry(String::from_utf8_lossy(class).into_owned())
                    .or_default() += n;
            }
            for (class, n) in &r.connection_errors_by_class {
                *connection_errors_by_class
                    .entry(String::from_utf8_lossy(class).into_owned())
                    .or_default() += n;
            }
            for (class, n) in &r.prepare_errors_by_class {
                *prepare_errors_by_class
                    .entry(String::from_utf8_lossy(class).into_owned())
                    .or_default() += n;
            }
            for (fp, c) in &r.fingerprints {
                let e = fps.entry(*fp).or_insert_with(|| FingerprintCounters {
                    stmt: c.stmt.clone(),
                    calls: 0,
                    errors: 0,
                    total_ns: 0,
                });
                e.calls += c.calls;
                e.errors += c.errors;
                e.total_ns += c.total_ns;
            }
        }
        let mut fingerprints: Vec<FingerprintStatus> = fps
            .into_iter()
            .map(|(fp, c)| {
                // A fallback identity has no plan: charged the default, never costed.
                let known = if c.stmt.parse_error {
                    CostKnown::NotCostable
                } else {
                    cost_of(fp)
                };
                let (cost_state, plan_cost) = match known {
                    CostKnown::Costed(v) => ("costed", Some(v)),
                    CostKnown::NotCostable => ("not_costable", None),
                    CostKnown::Pending => ("pending", None),
                    CostKnown::Disabled => ("disabled", None),
                };
                FingerprintStatus {
                    fingerprint: fingerprint_hex(fp),
                    calls: c.calls,
                    errors: c.errors,
                    mean_ms: if c.calls == 0 {
                        0.0
                    } else {
                        c.total_ns as f64 / c.calls as f64 / 1e6
                    },
                    text_bytes: c.stmt.text_bytes,
                    normalized: c.stmt.normalized.to_string(),
                    cost_state: cost_state.to_owned(),
                    plan_cost,
                    total_cost: plan_cost.map(|v| v * c.calls as f64),
                    cost_per_second: cost_per_second(plan_cost, c.calls, c.total_ns),
                }
            })
            .collect();
        fingerprints.sort_by(|a, b| {
            b.calls
                .cmp(&a.calls)
                .then(a.fingerprint.cmp(&b.fingerprint))
        });
        let q = |p: f64| (!hist.is_empty()).then(|| hist.value_at_quantile(p) as f64 / 1000.0);
        let mut databases: Vec<String> = dbs.iter().map(|r| r.database.to_string()).collect();
        databases.sort();
        RoleStatus {
            role: role.to_owned(),
            databases,
            queries: dbs.iter().map(|r| r.queries).sum(),
            errors: dbs.iter().map(|r| r.errors).sum(),
            errors_by_class,
            connection_errors: dbs.iter().map(|r| r.connection_errors).sum(),
            connection_errors_by_class,
            prepare_errors: dbs.iter().map(|r| r.prepare_errors).sum(),
            prepare_errors_by_class,
            connections: dbs.iter().map(|r| r.connections).sum(),
            unreadable_cpu_seconds: dbs.iter().map(|r| r.unreadable_cpu_seconds).sum(),
            p50_ms: q(0.5),
            p99_ms: q(0.99),
            fingerprints,
        }
    }
}
