//! The capture thread's metric families: traffic by role and database, the wire parser's
//! desynchronisations, encrypted sessions, and what the capture thread publishes for
//! scrapes (kernel counters, the statement cache, the top-K fingerprints).
//!
//! Traffic families are labelled by `role` and `database` only; per-statement series are a
//! bounded top-K by fingerprint; no SQL text, no PIDs in labels (DESIGN.md, principle 4).
//! The pipeline updates its families where things happen; the kernel's per-CPU counters
//! and the top-K are published into [`Shared`] and read at scrape time by a collector.
//! [`TrafficMetrics::register`] adds all of it to the agent's registry (`crate::metrics`).

use std::sync::{Arc, Mutex, atomic::AtomicU64};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// `{role, database}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleDbLabels {
    pub role: String,
    pub database: String,
}

/// `{role, database, sqlstate_class}`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub role: String,
    pub database: String,
    /// First two characters of the SQLSTATE (PostgreSQL docs, Appendix A "Error Codes").
    pub sqlstate_class: String,
}

/// `{role, sqlstate_class}` of `pgmon_connection_errors_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionErrorLabels {
    pub role: String,
    /// First two characters of the SQLSTATE (PostgreSQL docs, Appendix A "Error Codes").
    pub sqlstate_class: String,
}

/// `{direction, reason}`: `frontend` (client → backend) or `backend` (backend → client),
/// and the parser's reason (`pgmon_wire::DesyncReason::as_str`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DesyncLabels {
    pub direction: &'static str,
    pub reason: &'static str,
}

/// `{readable}`: `true` when pgmon reads the session's plaintext (TLS through the libssl
/// probes), `false` when it cannot (GSSAPI encryption, TLS with `capture.tls: off` or an
/// unprobed library).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadableLabels {
    pub readable: &'static str,
}

/// `{state, library}` of `pgmon_tls_capture_info`: `on` with the libssl file probed, or
/// `off` with an empty library.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TlsCaptureLabels {
    pub state: &'static str,
    pub library: String,
}

/// Encrypted sessions, by whether pgmon reads them.
#[derive(Clone, Default)]
pub struct EncryptedSessions {
    /// Open now.
    pub open: Family<ReadableLabels, Gauge>,
    /// Ever opened (so a session shorter than a scrape still shows).
    pub total: Family<ReadableLabels, Counter>,
}

impl EncryptedSessions {
    fn labels(readable: bool) -> ReadableLabels {
        ReadableLabels {
            readable: if readable { "true" } else { "false" },
        }
    }

    /// A session became encrypted, and pgmon does (`readable`) or does not read it.
    pub fn opened(&self, readable: bool) {
        let l = Self::labels(readable);
        self.open.get_or_create(&l).inc();
        self.total.get_or_create(&l).inc();
    }

    /// A session counted by [`Self::opened`] ended.
    pub fn closed(&self, readable: bool) {
        self.open.get_or_create(&Self::labels(readable)).dec();
    }

    /// Sessions opened since the agent started: (readable, unreadable).
    pub fn opened_so_far(&self) -> (u64, u64) {
        // One statement each, as in open_now.
        let readable = self.total.get_or_create(&Self::labels(true)).get();
        let unreadable = self.total.get_or_create(&Self::labels(false)).get();
        (readable, unreadable)
    }

    /// Open sessions: (readable, unreadable).
    pub fn open_now(&self) -> (i64, i64) {
        // One statement each: a family's guard lives to the end of its statement, and a
        // second get_or_create that must insert would wait for it forever.
        let readable = self.open.get_or_create(&Self::labels(true)).get();
        let unreadable = self.open.get_or_create(&Self::labels(false)).get();
        (readable, unreadable)
    }
}

/// `{result}`: `applied` or `refused`.
/// Handles of one (role, database), cached by the statistics so the hot path skips the
/// family's label lookup.
pub struct RoleDbHandles {
    pub queries: Counter,
    pub duration: Histogram,
    pub connections: Gauge,
    pub unreadable_cpu: Counter<f64, std::sync::atomic::AtomicU64>,
}

/// Values the capture thread publishes for scrapes (kernel counters, top-K, cache sizes).
#[derive(Debug, Default)]
pub struct Shared {
    pub events: AtomicU64,
    pub dropped: AtomicU64,
    pub dropped_bytes: AtomicU64,
    pub truncated: AtomicU64,
    pub truncated_bytes: AtomicU64,
    pub probe_errors: AtomicU64,
    pub tracked_backends: AtomicU64,
    pub statement_cache_hits: AtomicU64,
    pub statement_cache_misses: AtomicU64,
    pub statement_cache_entries: AtomicU64,
    pub normalize_errors: AtomicU64,
    /// The most called fingerprints, most called first, at most `top_k_fingerprints`.
    pub top_statements: Mutex<Vec<TopStatement>>,
    /// The kernel programs' run time and runs (`capture.probe_stats`; empty otherwise).
    pub probe_stats: Mutex<Vec<crate::capture::ProgramStats>>,
}

/// One of the most called fingerprints, as exported.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TopStatement {
    /// 16 hex digits.
    pub fingerprint: String,
    /// Executions completed, all roles.
    pub calls: u64,
    /// Their summed execution time (request to completion on the wire), seconds.
    pub exec_seconds: f64,
    /// Generic-plan total cost per execution, planner units, when costed.
    pub plan_cost: Option<f64>,
    /// `plan_cost ÷ mean execution seconds`, when both are known.
    pub cost_per_second: Option<f64>,
}

/// The pipeline's families (`pgmon_queries_total`, `pgmon_query_duration_seconds`, …) and
/// the values it publishes for scrapes.
pub struct TrafficMetrics {
    queries: Family<RoleDbLabels, Counter>,
    duration: Family<RoleDbLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    connection_errors: Family<ConnectionErrorLabels, Counter>,
    prepare_errors: Family<ConnectionErrorLabels, Counter>,
    connections: Family<RoleDbLabels, Gauge>,
    unreadable_cpu: Family<RoleDbLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    /// Protocol desynchronisations, by direction.
    pub desyncs: Family<DesyncLabels, Counter>,
    /// Queries whose connection could not be attributed to a role.
    pub unattributed: Counter,
    /// Sessions that negotiated TLS or GSS encryption, by whether pgmon reads them.
    pub encrypted_sessions: EncryptedSessions,
    /// `pgmon_tls_capture_info`: 1 for the TLS capture's state and library.
    pub tls_capture: Family<TlsCaptureLabels, Gauge>,
    /// Messages longer than `capture.max_message_bytes`, not reassembled.
    pub oversized_messages: Counter,
    /// Connections attributed through pg_stat_activity (opened before the agent).
    pub attributed_late: Counter,
    /// Values published by the capture thread.
    pub shared: Arc<Shared>,
}

fn duration_histogram() -> Histogram {
    // 50 µs … ~100 s, ×2.5 per bucket: pgbench -S on loopback sits around 0.1–0.5 ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.5, 17,
    ))
}

impl TrafficMetrics {
    /// Creates the families and registers them, with the scrape-time collector of
    /// [`Shared`], in `registry`; `hook` and its cost rank become `pgmon_probe_info`.
    pub fn register(registry: &mut Registry, hook: &str, cost_rank: usize) -> Arc<Self> {
        let queries = Family::<RoleDbLabels, Counter>::default();
        let duration = Family::<RoleDbLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        let connection_errors = Family::<ConnectionErrorLabels, Counter>::default();
        let prepare_errors = Family::<ConnectionErrorLabels, Counter>::default();
        let connections = Family::<RoleDbLabels, Gauge>::default();
        let unreadable_cpu =
            Family::<RoleDbLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        let desyncs = Family::<DesyncLabels, Counter>::default();
        let unattributed = Counter::default();
        let encrypted_sessions = EncryptedSessions::default();
        // Both series exist from the start at 0, so dashboards and rate() see them before the
        // first encrypted session.
        for readable in [true, false] {
            let l = EncryptedSessions::labels(readable);
            let _ = encrypted_sessions.open.get_or_create(&l);
            let _ = encrypted_sessions.total.get_or_create(&l);
        }
        let tls_capture = Family::<TlsCaptureLabels, Gauge>::default();
        let oversized_messages = Counter::default();
        let attributed_late = Counter::default();
        let shared = Arc::new(Shared::default());

        registry.register(
            "pgmon_queries",
            "Statements completed (successfully or not) and requests that failed before executing, by role and database",
            queries.clone(),
        );
        registry.register(
            "pgmon_query_duration_seconds",
            "Execution time on the wire: from the request's arrival to the completion message",
            duration.clone(),
        );
        registry.register(
            "pgmon_query_errors",
            "Statements that failed (an ErrorResponse answering an execution or a request), by role, database and SQLSTATE class; never more than pgmon_queries_total",
            errors.clone(),
        );
        registry.register(
            "pgmon_connection_errors",
            "ErrorResponses that answered no statement (failed logins, sessions ended while idle, FATAL protocol violations), by role and SQLSTATE class",
            connection_errors.clone(),
        );
        registry.register(
            "pgmon_prepare_errors",
            "Parse messages the server refused (a prepare, not an execution: in neither pgmon_queries_total nor pgmon_query_errors_total), by role and SQLSTATE class",
            prepare_errors.clone(),
        );
        registry.register(
            "pgmon_connections",
            "Open client connections, by role and database",
            connections.clone(),
        );
        registry.register(
            "pgmon_unreadable_cpu_seconds",
            "CPU time of backends whose sessions pgmon cannot read (GSSAPI, TLS without the libssl probes), by role and database: what their budgets are charged instead of statements",
            unreadable_cpu.clone(),
        );
        registry.register(
            "pgmon_wire_desyncs",
            "Times a connection's protocol stream could not be followed and was resynchronised",
            desyncs.clone(),
        );
        registry.register(
            "pgmon_unattributed_queries",
            "Statements whose connection could not be attributed to a role",
            unattributed.clone(),
        );
        registry.register(
            "pgmon_encrypted_sessions",
            "Open sessions using TLS or GSS encryption, by whether pgmon reads their plaintext \
             (readable: TLS through the libssl probes; not readable: GSSAPI, or TLS with the probes off)",
            encrypted_sessions.open.clone(),
        );
        registry.register(
            "pgmon_encrypted_sessions_opened",
            "Sessions that became encrypted, by whether pgmon reads their plaintext (a session shorter than a scrape shows here)",
            encrypted_sessions.total.clone(),
        );
        registry.register(
            "pgmon_tls_capture_info",
            "1 for the TLS capture's state (on: libssl's SSL_read/SSL_write plaintext is read; off) and the libssl file probed",
            tls_capture.clone(),
        );
        registry.register(
            "pgmon_oversized_messages",
            "Protocol messages longer than capture.max_message_bytes, skipped",
            oversized_messages.clone(),
        );
        registry.register(
            "pgmon_late_attributions",
            "Connections opened before the agent, attributed through pg_stat_activity",
            attributed_late.clone(),
        );
        registry.register_collector(Box::new(SharedCollector {
            shared: shared.clone(),
            hook: hook.to_owned(),
            cost_rank,
        }));
        Arc::new(Self {
            queries,
            duration,
            errors,
            connection_errors,
            prepare_errors,
            connections,
            unreadable_cpu,
            desyncs,
            unattributed,
            encrypted_sessions,
            tls_capture,
            oversized_messages,
            attributed_late,
            shared,
        })
    }

    /// Publishes the TLS capture's state as `pgmon_tls_capture_info`.
    pub fn set_tls_capture(&self, tls: &crate::capture::tls::TlsCapture) {
        use crate::capture::tls::TlsCapture;
        self.tls_capture.clear();
        let labels = match tls {
            TlsCapture::On { library, .. } => TlsCaptureLabels {
                state: "on",
                library: library.clone(),
            },
            TlsCapture::Off { .. } => TlsCaptureLabels {
                state: "off",
                library: String::new(),
            },
        };
        self.tls_capture.get_or_create(&labels).set(1);
    }

    /// Handles for one (role, database).
    pub fn role_db(&self, role: &str, database: &str) -> RoleDbHandles {
        let l = RoleDbLabels {
            role: role.to_owned(),
            database: database.to_owned(),
        };
        RoleDbHandles {
            queries: self.queries.get_or_create(&l).clone(),
            duration: self.duration.get_or_create(&l).clone(),
            connections: self.connections.get_or_create(&l).clone(),
            unreadable_cpu: self.unreadable_cpu.get_or_create(&l).clone(),
        }
    }

    /// Counts one ErrorResponse of (role, database) in SQLSTATE class `class`.
    pub fn query_error(&self, role: &str, database: &str, class: [u8; 2]) {
        let l = ErrorLabels {
            role: role.to_owned(),
            database: database.to_owned(),
            sqlstate_class: String::from_utf8_lossy(&class).into_owned(),
        };
        self.errors.get_or_create(&l).inc();
    }

    /// Counts one ErrorResponse of `role` that answered no statement, SQLSTATE class `class`.
    pub fn connection_error(&self, role: &str, class: [u8; 2]) {
        let l = ConnectionErrorLabels {
            role: role.to_owned(),
            sqlstate_class: String::from_utf8_lossy(&class).into_owned(),
        };
        self.connection_errors.get_or_create(&l).inc();
    }

    /// Counts one Parse of `role` that the server refused, SQLSTATE class `class`.
    pub fn prepare_error(&self, role: &str, class: [u8; 2]) {
        let l = ConnectionErrorLabels {
            role: role.to_owned(),
            sqlstate_class: String::from_utf8_lossy(&class).into_owned(),
        };
        self.prepare_errors.get_or_create(&l).inc();
    }

    /// Counts one desynchronisation of `direction` (`frontend` or `backend`) for `reason`.
    pub fn desync(&self, direction: &'static str, reason: &'static str) {
        self.desyncs
            .get_or_create(&DesyncLabels { direction, reason })
            .inc();
    }
}

mod collector;
#[cfg(test)]
mod tests;

use collector::SharedCollector;
