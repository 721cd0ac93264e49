//! From ring-buffer records to per-role statistics: one [`pgmon_wire::Connection`] per
//! (backend pid, socket fd), identity per backend, statements through the [`Normalizer`].
//!
//! Runs on the capture thread only; owns all its state, so nothing here takes a lock.

mod backend;
pub mod metrics;
mod report;
mod sink;
pub mod stats;
#[cfg(test)]
mod tests;
pub mod usage;

use std::{collections::HashMap, sync::Arc};

use pgmon_common::{flags, kind};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    attribution::Answer, budget::Budgets, capture::Record, cost::CostAnswer, query::Normalizer,
};
use backend::{
    AWAIT_PLAINTEXT_NS, Backend, CPU_CHARGE_EVERY_MS, Conn, Crypto, Identity, backend_unreadable,
    clock_ticks_per_second, cpu_ticks, monotonic_ns,
};
use metrics::TrafficMetrics;
use pgmon_wire::Limits;
use sink::ConnSink;
use stats::Stats;

/// Most completions held for a connection awaiting its pg_stat_activity answer.
const MAX_PENDING: usize = 100_000;

/// Counters kept by the pipeline itself (exported through [`TrafficMetrics`] as they change).
#[derive(Clone, Copy, Debug, Default)]
struct Counters {
    desyncs_frontend: u64,
    desyncs_backend: u64,
    unattributed: u64,
    oversized: u64,
    late_attributions: u64,
}

/// The budgets and the channels that feed them (when `budgets.enabled`).
pub struct BudgetLink {
    pub budgets: Budgets,
    /// Estimates from the cost worker.
    pub cost_answers: std::sync::mpsc::Receiver<CostAnswer>,
    /// Superuser and replication roles, from the enforcer.
    pub protected: std::sync::mpsc::Receiver<std::collections::HashSet<String>>,
    /// Reloaded budget policies (SIGHUP).
    pub policies: std::sync::mpsc::Receiver<crate::budget::policy::Compiled>,
}

/// The capture-thread pipeline.
pub struct Pipeline {
    budget: Option<BudgetLink>,
    /// Wall clock at the last [`Pipeline::tick`], unix ms (what budgets are charged at).
    now_ms: u64,
    last_snapshot_ms: u64,
    conns: HashMap<(u32, u32), Conn, ahash::RandomState>,
    backends: HashMap<u32, Backend, ahash::RandomState>,
    preexisting: std::collections::HashSet<u32>,
    normalizer: Normalizer,
    stats: Stats,
    metrics: Arc<TrafficMetrics>,
    lookups: UnboundedSender<u32>,
    max_message_bytes: u32,
    top_k: usize,
    counters: Counters,
    /// The libssl probes are attached: a TLS session's plaintext is expected.
    tls_on: bool,
    /// `security.redact_sql_text`: the status document carries no statement text.
    redact_sql_text: bool,
    /// Backends whose sessions are unreadable, charged by CPU time.
    unreadable: std::collections::HashSet<u32>,
    last_cpu_charge_ms: u64,
    last_crypto_check_ms: u64,
    /// The agent's CPU and the statements counted, sampled at each publish.
    usage: std::cell::RefCell<usage::UsageWindow>,
}

impl Pipeline {
    /// A pipeline with the `query:` settings and the largest message reassembled
    /// (`capture.max_message_bytes`), exporting through `metrics`, asking
    /// pg_stat_activity lookups on `lookups`.
    pub fn new(
        query: &crate::query::config::QueryConfig,
        max_message_bytes: usize,
        metrics: Arc<TrafficMetrics>,
        lookups: UnboundedSender<u32>,
    ) -> Self {
        Self {
            budget: None,
            now_ms: crate::util::now_ms(),
            last_snapshot_ms: 0,
            conns: HashMap::default(),
            backends: HashMap::default(),
            preexisting: Default::default(),
            normalizer: Normalizer::new(query.statement_cache_entries, query.max_text_chars),
            stats: Stats::new(
                metrics.clone(),
                query.fingerprints_per_role,
                query.max_fingerprints,
            ),
            metrics,
            lookups,
            max_message_bytes: u32::try_from(max_message_bytes).unwrap_or(u32::MAX),
            top_k: query.top_k_fingerprints,
            counters: Counters::default(),
            tls_on: false,
            redact_sql_text: false,
            unreadable: Default::default(),
            last_cpu_charge_ms: 0,
            last_crypto_check_ms: 0,
            usage: Default::default(),
        }
    }

    /// Whether the libssl probes are attached (`Capture::tls`): without them every TLS
    /// session is unreadable from its start.
    pub fn set_tls_capture(&mut self, on: bool) {
        self.tls_on = on;
    }

    /// `security.redact_sql_text`: statement texts are left out of the status document.
    pub fn set_redact_sql_text(&mut self, on: bool) {
        self.redact_sql_text = on;
    }

    /// Charges completed statements to `link`'s budgets from now on.
    pub fn with_budgets(mut self, link: BudgetLink) -> Self {
        self.budget = Some(link);
        self
    }

    /// Resets a role's budget by hand ([`crate::budget::reset`]); answers at once when
    /// budgets are off.
    pub fn reset_budget(&mut self, request: crate::budget::reset::ResetRequest) {
        match &mut self.budget {
            Some(link) => link.budgets.reset(crate::util::now_ms(), request),
            None => {
                let _ = request
                    .reply
                    .send(Err("budgets are off (budgets.enabled: false)".into()));
            }
        }
    }

    /// Called after each drain: reads the clock, applies cost estimates and the protected
    /// roles, re-evaluates the ladder, and once a second sends the changed ledgers.
    pub fn tick(&mut self) {
        self.now_ms = crate::util::now_ms();
        if self.now_ms.saturating_sub(self.last_crypto_check_ms) >= 1000 {
            self.last_crypto_check_ms = self.now_ms;
            self.expire_awaiting(monotonic_ns());
        }
        if !self.unreadable.is_empty()
            && self.now_ms.saturating_sub(self.last_cpu_charge_ms) >= CPU_CHARGE_EVERY_MS
        {
            self.last_cpu_charge_ms = self.now_ms;
            self.charge_unreadable_cpu();
        }
        let Some(link) = &mut self.budget else {
            return;
        };
        while let Ok(a) = link.cost_answers.try_recv() {
            link.budgets.on_cost(a);
        }
        while let Ok(p) = link.protected.try_recv() {
            link.budgets.set_protected(p);
        }
        while let Ok(p) = link.policies.try_recv() {
            link.budgets.set_policy(p);
        }
        link.budgets.evaluate(self.now_ms);
        if self.now_ms.saturating_sub(self.last_snapshot_ms) >= link.budgets.persist_interval_ms() {
            link.budgets.snapshot(self.now_ms);
            self.last_snapshot_ms = self.now_ms;
        }
        link.budgets.publish_cost_entries();
    }

    /// Pids that were running when the capture attached: their connections start
    /// mid-stream and are attributed through pg_stat_activity.
    pub fn set_preexisting(&mut self, pids: &[u32]) {
        self.preexisting.extend(pids.iter().copied());
    }

    /// Processes one ring-buffer record.
    pub fn on_record(&mut self, r: &Record<'_>) {
        let h = &r.header;
        match h.kind {
            kind::FORK => {
                self.backends.insert(h.pid, Backend::new(true));
            }
            kind::EXIT => self.end_backend(h.pid),
            kind::RECV | kind::SEND => self.on_bytes(r),
            _ => {}
        }
    }

    fn end_backend(&mut self, pid: u32) {
        self.preexisting.remove(&pid);
        self.unreadable.remove(&pid);
        let Some(b) = self.backends.remove(&pid) else {
            return;
        };
        for fd in &b.fds {
            self.conns.remove(&(pid, *fd));
        }
        let sessions = &self.metrics.encrypted_sessions;
        match b.crypto {
            Some(Crypto::Readable) => sessions.closed(true),
            Some(Crypto::Unreadable) => sessions.closed(false),
            // Ended before its plaintext showed or its wait ran out: never read.
            Some(Crypto::Awaiting { .. }) => {
                sessions.opened(false);
                sessions.closed(false);
            }
            None => {}
        }
        match b.identity {
            Identity::Known(id) => self.stats.connection(id, -1),
            // Its answer will find no backend: what waited for it is unattributed.
            Identity::Pending(p) => self.unattributed(p.len() as u64),
            _ => {}
        }
    }

    fn on_bytes(&mut self, r: &Record<'_>) {
        let h = &r.header;
        let pid = h.pid;
        let backend = self.backends.entry(pid).or_insert_with(|| {
            // Not forked under our eyes: a connection opened before the agent.
            Backend::new(false)
        });
        if h.flags & flags::TLS != 0 {
            // Plaintext from libssl: the session is read, whatever was thought of it.
            let sessions = &self.metrics.encrypted_sessions;
            match backend.crypto {
                Some(Crypto::Readable) => {}
                Some(Crypto::Unreadable) => {
                    sessions.closed(false);
                    sessions.opened(true);
                    backend.cpu_ticks = None;
                    self.unreadable.remove(&pid);
                }
                Some(Crypto::Awaiting { .. }) | None => sessions.opened(true),
            }
            backend.crypto = Some(Crypto::Readable);
        }
        let key = (pid, h.fd);
        let conn = match self.conns.get_mut(&key) {
            Some(c) => c,
            // A backend forked under our eyes first receives its client's startup packet;
            // a socket it only sends on is not a client connection (PostgreSQL ≤ 14
            // backends send statistics to the collector's UDP socket).
            None if backend.fresh && h.kind == kind::SEND => return,
            None => {
                backend.fds.push(h.fd);
                let limits = Limits {
                    max_message: self.max_message_bytes,
                    ..Limits::default()
                };
                let c = if backend.fresh {
                    pgmon_wire::Connection::with_limits(limits)
                } else {
                    if matches!(backend.identity, Identity::AwaitStartup) {
                        backend.identity = Identity::Pending(Vec::new());
                        let _ = self.lookups.send(pid);
                    }
                    pgmon_wire::Connection::mid_stream_with_limits(limits)
                };
                self.conns.entry(key).or_insert(Conn {
                    wire: c,
                    next_offset: [0, 0],
                })
            }
        };
        let mut sink = ConnSink {
            budgets: self.budget.as_mut().map(|l| &mut l.budgets),
            now_ms: self.now_ms,
            record_ns: h.ts_ns,
            tls_on: self.tls_on,
            backend: &mut *backend,
            normalizer: &mut self.normalizer,
            stats: &mut self.stats,
            metrics: &self.metrics,
            counters: &mut self.counters,
        };
        if h.flags & flags::LOST_BEFORE != 0 {
            conn.wire.lost(&mut sink);
        }
        let frontend = h.kind == kind::RECV;
        let dir = usize::from(!frontend);
        // A record at offset 0 starts a new call; a later one continues the call, and a jump
        // past where the previous record ended is what the kernel skipped (a truncated call
        // keeps its head and its tail).
        let expected = if h.offset == 0 {
            0
        } else {
            conn.next_offset[dir]
        };
        let skipped = u64::from(h.offset.saturating_sub(expected));
        conn.next_offset[dir] = h.offset.saturating_add(h.len);
        // Bytes after the last record of a call that were not copied.
        let missing_after = if h.flags & flags::LAST_CHUNK != 0 {
            u64::from(h.call_bytes.saturating_sub(h.offset.saturating_add(h.len)))
        } else {
            0
        };
        if frontend {
            if skipped > 0 {
                conn.wire.frontend_gap(skipped, &mut sink);
            }
            conn.wire.frontend(h.ts_ns, r.data, &mut sink);
            if missing_after > 0 {
                conn.wire.frontend_gap(missing_after, &mut sink);
            }
        } else {
            if skipped > 0 {
                conn.wire.backend_gap(skipped, &mut sink);
            }
            conn.wire.backend(h.ts_ns, r.data, &mut sink);
            if missing_after > 0 {
                conn.wire.backend_gap(missing_after, &mut sink);
            }
        }
        // The backend entry is still borrowed: no second lookup.
        if backend_unreadable(Some(backend)) {
            self.start_unreadable(pid);
        }
    }

    /// A session of `pid` turned out unreadable: counts it, asks pg_stat_activity for its
    /// role (its StartupMessage was inside the encryption), and charges its CPU time: all
    /// of it since the backend was forked (a process's utime and stime start at 0, proc(5)),
    /// so the TLS handshake and authentication, spent before the session could be judged
    /// unreadable, are charged too; for a backend older than the agent, only from now on.
    fn start_unreadable(&mut self, pid: u32) {
        let Some(b) = self.backends.get_mut(&pid) else {
            return;
        };
        if b.cpu_ticks.is_some() {
            return;
        }
        if matches!(b.identity, Identity::AwaitStartup) {
            b.identity = Identity::Pending(Vec::new());
            let _ = self.lookups.send(pid);
        }
        b.cpu_ticks = Some(if self.preexisting.contains(&pid) {
            cpu_ticks(pid).unwrap_or(0)
        } else {
            0
        });
        self.unreadable.insert(pid);
    }

    /// TLS sessions that waited [`AWAIT_PLAINTEXT_NS`] for plaintext in vain become
    /// unreadable.
    fn expire_awaiting(&mut self, now_ns: u64) {
        let expired: Vec<u32> = self
            .backends
            .iter_mut()
            .filter_map(|(pid, b)| match b.crypto {
                Some(Crypto::Awaiting { since_ns })
                    if now_ns.saturating_sub(since_ns) > AWAIT_PLAINTEXT_NS =>
                {
                    b.crypto = Some(Crypto::Unreadable);
                    Some(*pid)
                }
                _ => None,
            })
            .collect();
        for pid in expired {
            self.metrics.encrypted_sessions.opened(false);
            self.start_unreadable(pid);
        }
    }

    /// Charges each unreadable backend the CPU time it used since the last charge, to its
    /// role (once pg_stat_activity has named it).
    fn charge_unreadable_cpu(&mut self) {
        let hz = clock_ticks_per_second();
        for pid in &self.unreadable {
            let Some(b) = self.backends.get_mut(pid) else {
                continue;
            };
            let Identity::Known(rd) = b.identity else {
                continue;
            };
            let Some(now) = cpu_ticks(*pid) else {
                continue;
            };
            let before = b.cpu_ticks.replace(now).unwrap_or(now);
            let seconds = now.saturating_sub(before) as f64 / hz;
            if seconds <= 0.0 {
                continue;
            }
            self.stats.unreadable_cpu(rd, seconds);
            if let Some(link) = &mut self.budget {
                let (role, _) = self.stats.names(rd);
                link.budgets.charge_cpu(self.now_ms, role, seconds);
            }
        }
    }

    fn unattributed(&mut self, n: u64) {
        self.counters.unattributed += n;
        self.metrics.unattributed.inc_by(n);
    }

    /// Applies a pg_stat_activity answer: charges the completions that waited for it.
    pub fn on_answer(&mut self, a: Answer) {
        let Some(b) = self.backends.get_mut(&a.pid) else {
            return;
        };
        let Identity::Pending(pending) = std::mem::replace(&mut b.identity, Identity::Unknown)
        else {
            return;
        };
        match a.identity {
            Some(id) if id.application_name == "pgmon" => b.identity = Identity::Ignored,
            Some(id) => {
                let rd = self.stats.role_db(&id.role, &id.database);
                b.identity = Identity::Known(rd);
                self.stats.connection(rd, 1);
                self.counters.late_attributions += 1;
                self.metrics.attributed_late.inc();
                for (stmt, dur, err) in pending {
                    self.stats.record(rd, &stmt, dur, err);
                    if let Some(link) = &mut self.budget {
                        let (r, d) = self.stats.names(rd);
                        link.budgets.charge(self.now_ms, r, d, &stmt, dur);
                    }
                }
            }
            None => {
                let n = pending.len() as u64;
                self.unattributed(n);
            }
        }
    }

    /// Forgets every connection and backend (replay passes start from a clean stream).
    pub fn reset_connections(&mut self) {
        self.conns.clear();
        self.backends.clear();
    }

    /// Statements completed and charged so far, all roles.
    pub fn total_queries(&self) -> u64 {
        self.stats.total_queries()
    }

    /// The statement cache's counters so far (hits, misses, parse errors; see
    /// [`crate::query::NormalizerStats`]).
    pub fn normalizer_stats(&self) -> crate::query::NormalizerStats {
        self.normalizer.stats()
    }
}
