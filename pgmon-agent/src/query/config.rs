//! `query:` in the policy file: the statement cache and how many fingerprints are kept
//! and exported.

use serde::Deserialize;

/// Normalization and per-statement statistics.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryConfig {
    /// Entries of the statement cache (statement shape → fingerprint and normalized text).
    /// Default 100 000.
    pub statement_cache_entries: usize,
    /// Fingerprints exported in `pgmon_statement_calls_total` (the top-K by calls).
    /// Default 100.
    pub top_k_fingerprints: usize,
    /// Fingerprints kept per role for `status --role` and the API (the most called win).
    /// Default 50.
    pub fingerprints_per_role: usize,
    /// Fingerprints tracked across all roles before the least called are evicted.
    /// Default 10 000.
    pub max_fingerprints: usize,
    /// Characters of normalized text kept per fingerprint for display (default 4096).
    pub max_text_chars: usize,
}

impl Default for QueryConfig {
    fn default() -> Self {
        Self {
            statement_cache_entries: 100_000,
            top_k_fingerprints: 100,
            fingerprints_per_role: 50,
            max_fingerprints: 10_000,
            max_text_chars: 4096,
        }
    }
}

/// `security:` in the policy file: what pgmon shows of the statements it sees.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Show no statement text anywhere: `pgmon-agent status`, `/api/v1/status`,
    /// `/api/v1/top-queries` (pgmon's normalized text and `pg_stat_statements`' query) and
    /// the web UI say [`REDACTED`] instead; fingerprints, counts and times stay (so do the
    /// SQL statements pgmon itself runs, which carry no tenant text). Default false.
    pub redact_sql_text: bool,
}

/// What a redacted statement text reads.
pub const REDACTED: &str = "(redacted: security.redact_sql_text)";
