//! The Prometheus registry: every metric pgmon exports, in one place.
//!
//! Traffic families are labelled by `role` and `database` only; per-statement series are a
//! bounded top-K by fingerprint; no SQL text, no PIDs in labels (DESIGN.md, principle 4).
//! Counters about the agent itself are updated where they happen through [`Metrics`]; the
//! kernel's per-CPU counters and the top-K are published by the capture thread into
//! [`Shared`] and read at scrape time.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
    },
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
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

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

/// Every metric family, and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    queries: Family<RoleDbLabels, Counter>,
    duration: Family<RoleDbLabels, Histogram, fn() -> Histogram>,
    errors: Family<ErrorLabels, Counter>,
    connection_errors: Family<ConnectionErrorLabels, Counter>,
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
    /// Failed monitor-connection attempts.
    pub db_connect_errors: Counter,
    /// Policy reloads (SIGHUP), by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload was applied (or none was asked), 0 when it was refused.
    pub last_reload_successful: Gauge,
    /// Values published by the capture thread.
    pub shared: Arc<Shared>,
    /// `pgmon_cost_*`.
    pub cost: crate::cost::CostMetrics,
    /// `pgmon_role_budget_*`, `pgmon_enforcement_actions_total`.
    pub budget: crate::budget::metrics::BudgetMetrics,
    /// What the health loops last read (exported at scrape time).
    pub health: crate::health::Board,
    /// `pgmon_role_storage_*`, `pgmon_storage_*`.
    pub storage: crate::storage::metrics::StorageMetrics,
    /// `pgmon_alerts_firing`, `pgmon_alert_notifications_total`, and what
    /// `/api/v1/alerts` shows.
    pub alerts: crate::alerts::AlertBook,
}

fn duration_histogram() -> Histogram {
    // 50 µs … ~100 s, ×2.5 per bucket: pgbench -S on loopback sits around 0.1–0.5 ms.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.00005, 2.5, 17,
    ))
}

impl Metrics {
    /// Registers every family; `hook` and its cost rank become `pgmon_probe_info`.
    pub fn new(hook: &str, cost_rank: usize) -> Arc<Self> {
        let mut registry = Registry::default();
        let queries = Family::<RoleDbLabels, Counter>::default();
        let duration = Family::<RoleDbLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            duration_histogram as fn() -> Histogram,
        );
        let errors = Family::<ErrorLabels, Counter>::default();
        let connection_errors = Family::<ConnectionErrorLabels, Counter>::default();
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
        let db_connect_errors = Counter::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let last_reload_successful = Gauge::default();
        last_reload_successful.set(1);
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
        registry.register(
            "pgmon_db_connect_errors",
            "Failed attempts to open the monitor connection",
            db_connect_errors.clone(),
        );
        registry.register(
            "pgmon_config_reloads",
            "Policy reloads asked by SIGHUP, by result (applied, or refused: the old policy stays)",
            reloads.clone(),
        );
        registry.register(
            "pgmon_config_last_reload_successful",
            "1 when the last policy reload was applied (or none was asked), 0 when it was refused",
            last_reload_successful.clone(),
        );
        registry.register_collector(Box::new(SharedCollector {
            shared: shared.clone(),
            hook: hook.to_owned(),
            cost_rank,
        }));
        let cost = crate::cost::CostMetrics::register(&mut registry);
        let budget = crate::budget::metrics::BudgetMetrics::register(&mut registry);
        let health = crate::health::Board::default();
        registry.register_collector(health.collector());
        let storage = crate::storage::metrics::StorageMetrics::register(&mut registry);
        let alerts = crate::alerts::AlertBook::register(&mut registry);
        Arc::new(Self {
            alerts,
            registry,
            health,
            cost,
            budget,
            storage,
            queries,
            duration,
            errors,
            connection_errors,
            connections,
            unreadable_cpu,
            desyncs,
            unattributed,
            encrypted_sessions,
            tls_capture,
            oversized_messages,
            attributed_late,
            db_connect_errors,
            reloads,
            last_reload_successful,
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

    /// Counts one desynchronisation of `direction` (`frontend` or `backend`) for `reason`.
    pub fn desync(&self, direction: &'static str, reason: &'static str) {
        self.desyncs
            .get_or_create(&DesyncLabels { direction, reason })
            .inc();
    }

    /// The exposition text (OpenMetrics text format, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Scrape-time view of [`Shared`], the probe choice and the process's own resources.
#[derive(Debug)]
struct SharedCollector {
    shared: Arc<Shared>,
    hook: String,
    cost_rank: usize,
}

fn counter(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: u64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    ConstCounter::new(v).encode(m)
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
}

impl Collector for SharedCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let s = &self.shared;
        let ld = |a: &AtomicU64| a.load(Ordering::Relaxed);
        counter(
            &mut e,
            "pgmon_capture_events",
            "Records the kernel submitted to the ring buffer.",
            ld(&s.events),
        )?;
        counter(
            &mut e,
            "pgmon_capture_dropped",
            "Records lost because the ring buffer was full.",
            ld(&s.dropped),
        )?;
        counter(
            &mut e,
            "pgmon_capture_dropped_bytes",
            "Payload bytes lost with dropped records.",
            ld(&s.dropped_bytes),
        )?;
        counter(
            &mut e,
            "pgmon_capture_truncated",
            "Socket calls longer than capture.max_bytes_per_call, cut.",
            ld(&s.truncated),
        )?;
        counter(
            &mut e,
            "pgmon_capture_truncated_bytes",
            "Bytes not copied because of capture.max_bytes_per_call.",
            ld(&s.truncated_bytes),
        )?;
        counter(
            &mut e,
            "pgmon_capture_probe_errors",
            "Kernel probe failures (user-memory reads, map updates).",
            ld(&s.probe_errors),
        )?;
        gauge(
            &mut e,
            "pgmon_tracked_backends",
            "Processes of the tracked cluster the kernel programs follow.",
            ld(&s.tracked_backends) as i64,
        )?;
        counter(
            &mut e,
            "pgmon_statement_cache_hits",
            "Statement texts answered from the cache.",
            ld(&s.statement_cache_hits),
        )?;
        counter(
            &mut e,
            "pgmon_statement_cache_misses",
            "Statement texts normalized by libpg_query.",
            ld(&s.statement_cache_misses),
        )?;
        gauge(
            &mut e,
            "pgmon_statement_cache_entries",
            "Entries in the statement cache.",
            ld(&s.statement_cache_entries) as i64,
        )?;
        counter(
            &mut e,
            "pgmon_normalize_errors",
            "Statements libpg_query could not parse.",
            ld(&s.normalize_errors),
        )?;
        {
            let mut m = e.encode_descriptor(
                "pgmon_probe_info",
                "The kernel hook family in use (cost_rank 0 is the cheapest pgmon knows).",
                None,
                MetricType::Gauge,
            )?;
            let rank = self.cost_rank.to_string();
            let labels = [("hook", self.hook.as_str()), ("cost_rank", rank.as_str())];
            ConstGauge::new(1i64).encode(m.encode_family(&labels)?)?;
        }
        {
            let stats = s.probe_stats.lock().map(|t| t.clone()).unwrap_or_default();
            if !stats.is_empty() {
                let mut m = e.encode_descriptor(
                    "pgmon_probe_run_seconds",
                    "Time the kernel spent in each pgmon program (capture.probe_stats).",
                    None,
                    MetricType::Counter,
                )?;
                for p in &stats {
                    let v = p.run_ns as f64 / 1e9;
                    ConstCounter::new(v)
                        .encode(m.encode_family(&[("program", p.name.as_str())])?)?;
                }
                let mut m = e.encode_descriptor(
                    "pgmon_probe_runs",
                    "Runs of each pgmon kernel program (capture.probe_stats).",
                    None,
                    MetricType::Counter,
                )?;
                for p in &stats {
                    ConstCounter::new(p.runs)
                        .encode(m.encode_family(&[("program", p.name.as_str())])?)?;
                }
            }
        }
        {
            let top = s
                .top_statements
                .lock()
                .map(|t| t.clone())
                .unwrap_or_default();
            let mut m = e.encode_descriptor(
                "pgmon_statement_calls",
                "Executions of the top-K fingerprints (query.top_k_fingerprints), all roles.",
                None,
                MetricType::Counter,
            )?;
            for t in &top {
                let labels = [("fingerprint", t.fingerprint.as_str())];
                ConstCounter::new(t.calls).encode(m.encode_family(&labels)?)?;
            }
            let mut m = e.encode_descriptor(
                "pgmon_statement_exec_seconds",
                "Summed execution time of the top-K fingerprints (request to completion on the wire).",
                None,
                MetricType::Counter,
            )?;
            for t in &top {
                let labels = [("fingerprint", t.fingerprint.as_str())];
                ConstCounter::new(t.exec_seconds).encode(m.encode_family(&labels)?)?;
            }
            let mut m = e.encode_descriptor(
                "pgmon_statement_plan_cost",
                "Generic-plan total cost of one execution of a top-K fingerprint, planner units (costed ones only).",
                None,
                MetricType::Gauge,
            )?;
            for t in &top {
                if let Some(c) = t.plan_cost {
                    let labels = [("fingerprint", t.fingerprint.as_str())];
                    ConstGauge::new(c).encode(m.encode_family(&labels)?)?;
                }
            }
            let mut m = e.encode_descriptor(
                "pgmon_statement_cost_per_second",
                "Estimated cost per measured second of a top-K fingerprint: plan cost / mean execution seconds. An outlier is a fingerprint whose estimate misleads.",
                None,
                MetricType::Gauge,
            )?;
            for t in &top {
                if let Some(r) = t.cost_per_second {
                    let labels = [("fingerprint", t.fingerprint.as_str())];
                    ConstGauge::new(r).encode(m.encode_family(&labels)?)?;
                }
            }
        }
        if let Some((rss, cpu)) = process_usage() {
            gauge(
                &mut e,
                "process_resident_memory_bytes",
                "Resident memory of the agent.",
                rss as i64,
            )?;
            let m = e.encode_descriptor(
                "process_cpu_seconds",
                "User and system CPU time of the agent.",
                None,
                MetricType::Counter,
            )?;
            ConstCounter::new(cpu).encode(m)?;
        }
        Ok(())
    }
}

/// OpenMetrics text (what [`Metrics::encode`] writes) as the Prometheus text format 0.0.4
/// (Prometheus docs, "Exposition formats"): a counter's `# HELP`/`# TYPE` lines name its
/// `_total` samples, and the `# UNIT` and `# EOF` lines go. Sample lines are the same in
/// both formats.
pub fn to_text_format(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// (resident bytes, CPU seconds) of this process, from /proc/self/stat (proc(5)).
pub fn process_usage() -> Option<(u64, f64)> {
    let me = procfs::process::Process::myself().ok()?;
    let stat = me.stat().ok()?;
    let ticks = procfs::ticks_per_second() as f64;
    let page = procfs::page_size();
    Some((stat.rss * page, (stat.utime + stat.stime) as f64 / ticks))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_names_follow_prometheus_conventions() {
        let m = Metrics::new("tracepoint", 2);
        let h = m.role_db("alice", "shop");
        h.queries.inc();
        h.duration.observe(0.001);
        m.query_error("alice", "shop", *b"22");
        m.connection_error("alice", *b"28");
        *m.shared.top_statements.lock().unwrap() = vec![TopStatement {
            fingerprint: "00ff00ff00ff00ff".into(),
            calls: 7,
            exec_seconds: 0.5,
            plan_cost: Some(35.0),
            cost_per_second: Some(490.0),
        }];
        let text = m.encode();
        let classic = to_text_format(&text);
        assert!(classic.contains("# TYPE pgmon_capture_dropped_total counter\n"));
        assert!(classic.contains("# HELP pgmon_capture_dropped_total "));
        assert!(classic.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(!classic.contains("# EOF"));
        for needle in [
            "pgmon_queries_total{role=\"alice\",database=\"shop\"} 1",
            "pgmon_query_duration_seconds_count{role=\"alice\",database=\"shop\"} 1",
            "pgmon_query_errors_total{role=\"alice\",database=\"shop\",sqlstate_class=\"22\"} 1",
            "pgmon_connection_errors_total{role=\"alice\",sqlstate_class=\"28\"} 1",
            "pgmon_statement_calls_total{fingerprint=\"00ff00ff00ff00ff\"} 7",
            "pgmon_statement_exec_seconds_total{fingerprint=\"00ff00ff00ff00ff\"} 0.5",
            "pgmon_statement_plan_cost{fingerprint=\"00ff00ff00ff00ff\"} 35.0",
            "pgmon_statement_cost_per_second{fingerprint=\"00ff00ff00ff00ff\"} 490.0",
            "pgmon_probe_info{hook=\"tracepoint\",cost_rank=\"2\"} 1",
            "pgmon_capture_dropped_total 0",
            "process_resident_memory_bytes ",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }
}
