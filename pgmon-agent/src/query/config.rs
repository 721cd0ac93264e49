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

/// `security:` in the policy file: what pgmon shows of the statements it sees, and what its
/// monitor role may do.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SecurityConfig {
    /// Show no statement text anywhere: `pgmon-agent status`, `/api/v1/status`,
    /// `/api/v1/top-queries` (pgmon's normalized text and `pg_stat_statements`' query) and
    /// the web UI say [`REDACTED`] instead; fingerprints, counts and times stay (so do the
    /// SQL statements pgmon itself runs, which carry no tenant text). Default false.
    pub redact_sql_text: bool,
    /// Refuse to start when the monitor role (`cluster.connection`'s) is a superuser or can
    /// write outside schema `pgmon`: CREATEROLE, CREATEDB, membership of
    /// `pg_write_all_data`, INSERT/UPDATE/DELETE/TRUNCATE on a table, CREATE on a schema
    /// (PostgreSQL 13 and 14 grant it on `public` to PUBLIC: `REVOKE CREATE ON SCHEMA public
    /// FROM PUBLIC`) or on a database. The error names every privilege found;
    /// `pgmon-agent doctor` runs the same check. pgmon needs none of them: it reads as
    /// `pg_monitor` and enforces through its own SECURITY DEFINER functions, granted to
    /// role `pgmon` (sql/001_roles.sql), so a leaked or misused agent session cannot change
    /// tenant data. `cost.connection` is not checked (the cost worker must `SET ROLE` to
    /// the roles it costs for). A database down at start-up is checked when it answers.
    /// Default true.
    pub read_only_enforce: bool,
}

impl Default for SecurityConfig {
    fn default() -> Self {
        Self {
            redact_sql_text: false,
            read_only_enforce: true,
        }
    }
}

/// What a redacted statement text reads.
pub const REDACTED: &str = "(redacted: security.redact_sql_text)";
