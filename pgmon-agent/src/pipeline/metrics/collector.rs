//! `pgmon_capture_*`, `pgmon_statement_*`, `pgmon_probe_*`: what the capture thread
//! published into [`Shared`], encoded at scrape time.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

use super::Shared;

/// Scrape-time view of [`Shared`] and the probe choice.
#[derive(Debug)]
pub(super) struct SharedCollector {
    pub(super) shared: Arc<Shared>,
    pub(super) hook: String,
    pub(super) cost_rank: usize,
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
            "Statement texts libpg_query could not parse (counted once per text the statement cache missed); each carries a fallback identity, the hash of its shape.",
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
        Ok(())
    }
}
