//! What `/api/v1/status` returns and `pgmon-agent status` prints: one JSON document,
//! built by the capture thread on request so its counts are current to the last drain.

use serde::{Deserialize, Serialize};

pub use crate::pipeline::stats::{FingerprintStatus, RoleStatus};

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
