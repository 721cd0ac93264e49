//! What `/api/v1/status` returns and `pgmon-agent status` prints: one JSON document,
//! built by the capture thread on request so its counts are current to the last drain.

use serde::{Deserialize, Serialize};

/// The whole status document.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Status {
    pub agent: AgentStatus,
    pub cluster: ClusterStatus,
    pub capture: CaptureStatus,
    /// Every role seen, most queries first.
    pub roles: Vec<RoleStatus>,
    /// Budgeted roles, highest utilisation first (empty when budgets are off).
    #[serde(default)]
    pub budgets: Vec<crate::budget::BudgetStatus>,
    /// Storage quotas (absent when `storage.enabled` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage: Option<crate::storage::StorageStatus>,
}

/// The agent process.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    pub pid: u32,
    pub uptime_seconds: f64,
    pub resident_memory_bytes: u64,
    pub cpu_seconds: f64,
    /// The agent's cost over the last ~10 s (`crate::pipeline::usage`); absent in the
    /// first 5 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recent: Option<RecentUsage>,
}

/// The agent's CPU against the query rate it captured, over a recent window.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecentUsage {
    /// The span measured, seconds (about 10).
    pub window_seconds: f64,
    /// The agent's CPU (all its threads), fraction of one core.
    pub cpu_fraction: f64,
    /// Statements completed per second, every role.
    pub queries_per_second: f64,
    /// `cpu_fraction` per 1,000 queries/s; absent below 10 queries/s, where the agent's
    /// fixed work dominates.
    pub cpu_fraction_per_1000_queries_per_second: Option<f64>,
}

/// The tracked cluster.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub data_directory: String,
    pub postmaster_pid: u32,
    /// Processes the kernel programs follow (backends and auxiliary processes).
    pub tracked_processes: u64,
    /// Client connections with state in the agent.
    pub connections: u64,
}

/// Capture health: every drop, truncation, desync and unattributed query.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaptureStatus {
    /// Hook family in use (`fexit`, `raw_tracepoint`, `tracepoint`).
    pub hook: String,
    /// 0 = the cheapest family pgmon knows.
    pub hook_cost_rank: usize,
    /// Cheaper families the kernel refused, with its reason.
    pub refused_hooks: Vec<RefusedHook>,
    /// The kernel's counters: records, drops, truncations, probe errors, forks.
    #[serde(flatten)]
    pub kernel: crate::capture::KernelCounters,
    pub desyncs_frontend: u64,
    pub desyncs_backend: u64,
    pub unattributed_queries: u64,
    /// Encrypted sessions open now (TLS or GSSAPI), readable or not.
    pub encrypted_sessions: i64,
    /// Of those, the ones whose plaintext pgmon reads (TLS through the libssl probes).
    #[serde(default)]
    pub encrypted_sessions_readable: i64,
    /// Encrypted sessions opened since the agent started: (read through libssl, unreadable).
    #[serde(default)]
    pub encrypted_sessions_opened: (u64, u64),
    /// TLS capture: on (library, functions) or off (reason).
    #[serde(default = "tls_unknown")]
    pub tls: crate::capture::tls::TlsCapture,
    pub oversized_messages: u64,
    pub late_attributions: u64,
    pub statement_cache_hits: u64,
    pub statement_cache_misses: u64,
    pub statement_cache_entries: u64,
    pub normalize_errors: u64,
    /// Run time and runs of each kernel program (`capture.probe_stats`; empty otherwise).
    #[serde(default)]
    pub probes: Vec<crate::capture::ProgramStats>,
}

fn tls_unknown() -> crate::capture::tls::TlsCapture {
    crate::capture::tls::TlsCapture::Off {
        reason: "not reported by this agent".to_owned(),
    }
}

/// A hook family the kernel would not take.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RefusedHook {
    pub hook: String,
    pub error: String,
}

/// A request to the capture thread, answered between two drains of the ring buffer.
pub enum StatusRequest {
    /// The whole status document (`pgmon-agent status`, `/api/v1/status`).
    Document(tokio::sync::oneshot::Sender<Status>),
    /// What the history ring samples ([`IntervalStatus`]); each request closes the
    /// latency interval the previous one opened. Only the history sampler asks this.
    Interval(tokio::sync::oneshot::Sender<IntervalStatus>),
}

/// Asks the capture thread for a fresh status document; the error says why there is none
/// (the capture thread stopped, or did not answer within 5 s).
pub async fn request_status(
    tx: &std::sync::mpsc::Sender<StatusRequest>,
) -> Result<Status, &'static str> {
    ask(tx, StatusRequest::Document).await
}

/// Asks the capture thread for the per-role figures of the interval since the previous
/// such request ([`IntervalStatus`]); errors as [`request_status`].
pub async fn request_interval(
    tx: &std::sync::mpsc::Sender<StatusRequest>,
) -> Result<IntervalStatus, &'static str> {
    ask(tx, StatusRequest::Interval).await
}

async fn ask<T>(
    tx: &std::sync::mpsc::Sender<StatusRequest>,
    request: fn(tokio::sync::oneshot::Sender<T>) -> StatusRequest,
) -> Result<T, &'static str> {
    let (reply, rx) = tokio::sync::oneshot::channel();
    tx.send(request(reply)).map_err(|_| "capture stopped")?;
    match tokio::time::timeout(std::time::Duration::from_secs(5), rx).await {
        Ok(Ok(answer)) => Ok(answer),
        _ => Err("capture thread busy"),
    }
}

/// Every role's totals and its latency over one interval, for the history ring: lighter
/// than [`Status`] (no fingerprints, no capture counters).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct IntervalStatus {
    pub roles: Vec<RoleInterval>,
    /// (role, spend ÷ budget now) of every budgeted role; empty when budgets are off.
    pub budgets: Vec<(String, f64)>,
}

/// One role in an [`IntervalStatus`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RoleInterval {
    pub role: String,
    /// Statements since the agent started (as [`RoleStatus::queries`]).
    pub queries: u64,
    /// Failed statements since the agent started (as [`RoleStatus::errors`]).
    pub errors: u64,
    /// Median and 99th percentile of the executions that completed in the interval,
    /// milliseconds (2 significant digits); `None` when none did.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One role in `/api/v1/status` and `pgmon-agent status`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RoleStatus {
    pub role: String,
    pub databases: Vec<String>,
    pub queries: u64,
    pub errors: u64,
    /// Errors by SQLSTATE class, e.g. `"22": 3` (data exception).
    pub errors_by_class: std::collections::BTreeMap<String, u64>,
    /// ErrorResponses that answered no statement: failed logins (e.g. 28P01 bad password,
    /// 3D000 no such database), sessions ended while idle (57P01), FATAL protocol violations
    /// (08P01). Not in `errors`.
    #[serde(default)]
    pub connection_errors: u64,
    /// Connection errors by SQLSTATE class, e.g. `"28": 2` (invalid authorization).
    #[serde(default)]
    pub connection_errors_by_class: std::collections::BTreeMap<String, u64>,
    /// Parse messages the server refused (a driver's prepare of a typo, psql's `\gdesc` of
    /// a bad query): a prepare is not an execution, so they are in neither `queries` nor
    /// `errors`.
    #[serde(default)]
    pub prepare_errors: u64,
    /// Failed prepares by SQLSTATE class, e.g. `"42": 1` (syntax error or access rule).
    #[serde(default)]
    pub prepare_errors_by_class: std::collections::BTreeMap<String, u64>,
    pub connections: i64,
    /// CPU time of the role's backends whose sessions pgmon could not read (GSSAPI, TLS
    /// without the libssl probes), seconds: charged to its budget instead of statements.
    #[serde(default)]
    pub unreadable_cpu_seconds: f64,
    /// Median and 99th percentile of execution time, milliseconds (request to completion
    /// on the wire); null before the first completion.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    /// The role's most called fingerprints, most called first.
    pub fingerprints: Vec<FingerprintStatus>,
}

/// One fingerprint in a role's status.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FingerprintStatus {
    /// libpg_query fingerprint, 16 hex digits.
    pub fingerprint: String,
    pub calls: u64,
    pub errors: u64,
    /// Mean execution time, milliseconds.
    pub mean_ms: f64,
    /// Length of the statement text as sent, bytes.
    pub text_bytes: u32,
    /// Normalized text (constants as `$n`).
    pub normalized: String,
    /// What is known of its cost: `costed`, `not_costable` (charged `cost.default_cost`),
    /// `pending`, or `disabled` (`cost.enabled: false` or budgets off).
    #[serde(default)]
    pub cost_state: String,
    /// Total cost of its generic plan, per execution, planner units (PostgreSQL docs,
    /// section 19.7.2); null unless costed.
    #[serde(default)]
    pub plan_cost: Option<f64>,
    /// `calls × plan_cost`: what its executions cost in all, planner units.
    #[serde(default)]
    pub total_cost: Option<f64>,
    /// `plan_cost ÷ mean execution seconds`: planner units per second of measured time.
    /// A fingerprint far from the others here is one whose estimate misleads.
    #[serde(default)]
    pub cost_per_second: Option<f64>,
}

impl FingerprintStatus {
    /// Summed execution time, milliseconds.
    pub fn total_ms(&self) -> f64 {
        self.mean_ms * self.calls as f64
    }
}
