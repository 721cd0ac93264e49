//! The agent's Prometheus registry and exporter.
//!
//! Each subsystem owns its metric families and registers them here at start-up, the way
//! vector keeps its internal events beside the component that emits them:
//! [`crate::pipeline::metrics::TrafficMetrics`] (traffic, capture, statement cache),
//! [`crate::cost::CostMetrics`], [`crate::budget::metrics::BudgetMetrics`],
//! [`crate::storage::metrics::StorageMetrics`], [`crate::alerts::AlertBook`] and the health
//! board's collector ([`crate::health::Board::collector`]). This module owns only the
//! families about the agent itself (policy reloads, monitor-connection failures, its own
//! memory and CPU) and the encoding: OpenMetrics text, or the Prometheus text format 0.0.4
//! for scrapers that do not ask for OpenMetrics.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, text::encode},
    metrics::{
        MetricType,
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

/// `{result}`: `applied` or `refused`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    pub result: &'static str,
}

/// The registry every subsystem registers into, and the agent's own families.
pub struct Metrics {
    registry: Registry,
    /// Failed monitor-connection attempts.
    pub db_connect_errors: Counter,
    /// Policy reloads (SIGHUP), by result.
    pub reloads: Family<ReloadLabels, Counter>,
    /// 1 when the last reload was applied (or none was asked), 0 when it was refused.
    pub last_reload_successful: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry with the agent's own families and the process collector.
    pub fn new() -> Self {
        Self::for_cluster(None)
    }

    /// [`Metrics::new`] whose every series, collectors' included, carries
    /// `cluster="NAME"` when `cluster` is given (`cluster.name`).
    pub fn for_cluster(cluster: Option<&str>) -> Self {
        let mut registry = match cluster {
            Some(name) => Registry::with_labels(std::iter::once((
                std::borrow::Cow::Borrowed("cluster"),
                std::borrow::Cow::Owned(name.to_owned()),
            ))),
            None => Registry::default(),
        };
        let db_connect_errors = Counter::default();
        let reloads = Family::<ReloadLabels, Counter>::default();
        let last_reload_successful = Gauge::default();
        last_reload_successful.set(1);
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
        registry.register_collector(Box::new(ProcessCollector));
        Self {
            registry,
            db_connect_errors,
            reloads,
            last_reload_successful,
        }
    }

    /// Where a subsystem registers its families (at start-up, before the exporter is
    /// shared).
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The exposition text (OpenMetrics text format, which Prometheus scrapes natively).
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(16 * 1024);
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// `process_resident_memory_bytes` and `process_cpu_seconds_total` of the agent, read at
/// scrape time.
#[derive(Debug)]
struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some((rss, cpu)) = crate::util::process_usage() {
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

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    v: i64,
) -> Result<(), std::fmt::Error> {
    let m = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    ConstGauge::new(v).encode(m)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_names_counters_total() {
        let mut m = Metrics::new();
        let traffic =
            crate::pipeline::metrics::TrafficMetrics::register(m.registry(), "tracepoint", 2);
        traffic.role_db("alice", "shop").queries.inc();
        m.db_connect_errors.inc();
        let classic = to_text_format(&m.encode());
        assert!(classic.contains("# TYPE pgmon_capture_dropped_total counter\n"));
        assert!(classic.contains("# HELP pgmon_capture_dropped_total "));
        assert!(classic.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(classic.contains("# TYPE pgmon_db_connect_errors_total counter\n"));
        assert!(classic.contains("pgmon_db_connect_errors_total 1\n"));
        assert!(classic.contains("pgmon_queries_total{role=\"alice\",database=\"shop\"} 1\n"));
        assert!(classic.contains("pgmon_config_last_reload_successful 1\n"));
        assert!(!classic.contains("# EOF"));
        assert!(!classic.contains("# UNIT"));
    }

    #[test]
    fn cluster_name_labels_every_series() {
        let mut m = Metrics::for_cluster(Some("main-eu"));
        let traffic =
            crate::pipeline::metrics::TrafficMetrics::register(m.registry(), "tracepoint", 2);
        traffic.role_db("alice", "shop").queries.inc();
        let board = crate::health::Board::default();
        board.publish(
            "fast",
            vec![crate::health::Family::single(
                "pg_up",
                "",
                crate::health::Kind::Gauge,
                1.0,
            )],
        );
        m.registry().register_collector(board.collector());
        let text = m.encode();
        for needle in [
            "pgmon_queries_total{cluster=\"main-eu\",role=\"alice\",database=\"shop\"} 1",
            "pg_up{cluster=\"main-eu\"} 1",
            "process_resident_memory_bytes{cluster=\"main-eu\"}",
            "pgmon_db_connect_errors_total{cluster=\"main-eu\"} 0",
        ] {
            assert!(text.contains(needle), "no {needle} in\n{text}");
        }
    }
}
