//! What the pipeline shows: the figures it publishes for the next scrape and the status
//! document of `pgmon-agent status`.

use std::{path::Path, time::Instant};

use super::{Pipeline, metrics::TopStatement, stats};
use crate::{
    budget::CostKnown,
    capture::Capture,
    query::fingerprint_hex,
    status::{AgentStatus, CaptureStatus, ClusterStatus, IntervalStatus, RefusedHook, Status},
};

impl Pipeline {
    /// Publishes kernel counters, cache counters and the top-K for the next scrape.
    pub fn publish(&self, capture: &Capture) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some((_, cpu)) = crate::util::process_usage() {
            self.usage
                .borrow_mut()
                .record(Instant::now(), cpu, self.total_queries());
        }
        let k = capture.counters();
        let s = &self.metrics.shared;
        s.events.store(k.events, Relaxed);
        s.dropped.store(k.dropped, Relaxed);
        s.dropped_bytes.store(k.dropped_bytes, Relaxed);
        s.truncated.store(k.truncated, Relaxed);
        s.truncated_bytes.store(k.truncated_bytes, Relaxed);
        s.probe_errors.store(k.probe_errors, Relaxed);
        s.tracked_backends
            .store(capture.tracked_count() as u64, Relaxed);
        let programs = capture.program_stats();
        if !programs.is_empty()
            && let Ok(mut p) = s.probe_stats.lock()
        {
            *p = programs;
        }
        let n = self.normalizer.stats();
        s.statement_cache_hits.store(n.hits, Relaxed);
        s.statement_cache_misses.store(n.misses, Relaxed);
        s.statement_cache_entries
            .store(self.normalizer.cached() as u64, Relaxed);
        s.normalize_errors.store(n.errors, Relaxed);
        let top = self
            .stats
            .top_fingerprints(self.top_k)
            .into_iter()
            .map(|(fp, calls, total_ns)| {
                let plan_cost = match self.cost_of(fp) {
                    CostKnown::Costed(c) => Some(c),
                    _ => None,
                };
                TopStatement {
                    fingerprint: fingerprint_hex(fp),
                    calls,
                    exec_seconds: total_ns as f64 / 1e9,
                    plan_cost,
                    cost_per_second: stats::cost_per_second(plan_cost, calls, total_ns),
                }
            })
            .collect();
        if let Ok(mut t) = s.top_statements.lock() {
            *t = top;
        }
    }

    /// What is known of a fingerprint's cost (`Disabled` when budgets are off: nothing
    /// asks for estimates then).
    fn cost_of(&self, fingerprint: u64) -> CostKnown {
        self.budget
            .as_ref()
            .map_or(CostKnown::Disabled, |l| l.budgets.cost_of(fingerprint))
    }

    /// The status document.
    pub fn status(&self, capture: &Capture, started: Instant, data_directory: &Path) -> Status {
        let k = capture.counters();
        let n = self.normalizer.stats();
        let (rss, cpu) = crate::util::process_usage().unwrap_or((0, 0.0));
        let c = &self.counters;
        Status {
            agent: AgentStatus {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                pid: std::process::id(),
                uptime_seconds: started.elapsed().as_secs_f64(),
                resident_memory_bytes: rss,
                cpu_seconds: cpu,
                recent: self.usage.borrow().recent(),
            },
            cluster: ClusterStatus {
                data_directory: data_directory.display().to_string(),
                postmaster_pid: capture.postmaster_pid(),
                tracked_processes: capture.tracked_count() as u64,
                connections: self.conns.len() as u64,
            },
            capture: CaptureStatus {
                hook: capture.hook().name().to_owned(),
                hook_cost_rank: capture.hook().cost_rank(),
                refused_hooks: capture
                    .refused()
                    .iter()
                    .map(|(f, e)| RefusedHook {
                        hook: f.name().to_owned(),
                        error: e.clone(),
                    })
                    .collect(),
                kernel: k,
                desyncs_frontend: c.desyncs_frontend,
                desyncs_backend: c.desyncs_backend,
                unattributed_queries: c.unattributed,
                encrypted_sessions: {
                    let (r, u) = self.metrics.encrypted_sessions.open_now();
                    r + u
                },
                encrypted_sessions_readable: self.metrics.encrypted_sessions.open_now().0,
                encrypted_sessions_opened: self.metrics.encrypted_sessions.opened_so_far(),
                tls: capture.tls().clone(),
                oversized_messages: c.oversized,
                late_attributions: c.late_attributions,
                statement_cache_hits: n.hits,
                statement_cache_misses: n.misses,
                statement_cache_entries: self.normalizer.cached() as u64,
                normalize_errors: n.errors,
                // As published just before (run.rs publishes, then asks for status).
                probes: self
                    .metrics
                    .shared
                    .probe_stats
                    .lock()
                    .map(|p| p.clone())
                    .unwrap_or_default(),
            },
            roles: {
                let mut roles = self.stats.roles(&|fp| self.cost_of(fp));
                if self.redact_sql_text {
                    for f in roles.iter_mut().flat_map(|r| r.fingerprints.iter_mut()) {
                        f.normalized = crate::query::config::REDACTED.to_owned();
                    }
                }
                roles
            },
            budgets: self
                .budget
                .as_ref()
                .map(|l| l.budgets.status(self.now_ms))
                .unwrap_or_default(),
            storage: None,
        }
    }

    /// The history ring's sample: every role's totals, its latency since the previous
    /// call, and every budgeted role's utilisation.
    pub fn interval_status(&mut self) -> IntervalStatus {
        IntervalStatus {
            roles: self.stats.interval(),
            budgets: self
                .budget
                .as_ref()
                .map(|l| {
                    l.budgets
                        .status(self.now_ms)
                        .into_iter()
                        .map(|b| (b.role, b.utilisation))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }
}
