//! From ring-buffer records to per-role statistics: one [`pgmon_wire::Connection`] per
//! (backend pid, socket fd), identity per backend, statements through the [`Normalizer`].
//!
//! Runs on the capture thread only; owns all its state, so nothing here takes a lock.

pub mod metrics;
pub mod stats;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, path::Path, sync::Arc, time::Instant};

use pgmon_common::{flags, kind};
use tokio::sync::mpsc::UnboundedSender;

use crate::{
    attribution::Answer,
    budget::{Budgets, CostKnown},
    capture::{Capture, Record},
    cost::CostAnswer,
    query::{Normalizer, Stmt, fingerprint_hex},
    status::{AgentStatus, CaptureStatus, ClusterStatus, RefusedHook, Status},
};
use metrics::{TopStatement, TrafficMetrics};
use pgmon_wire::{
    Completion, DesyncReason, Direction, Encryption, ErrorContext, ErrorResponse, ErrorScope,
    Limits, Outcome, Replication, Startup,
};
use stats::{RoleDbId, Stats};

/// Most completions held for a connection awaiting its pg_stat_activity answer.
const MAX_PENDING: usize = 100_000;

/// Who a backend's traffic is charged to.
#[derive(Debug)]
enum Identity {
    /// Forked while we watch: its StartupMessage will tell.
    AwaitStartup,
    /// Opened before the agent: asked of pg_stat_activity; completions wait here.
    Pending(Vec<(Stmt, u64, Option<[u8; 5]>)>),
    /// Attributed.
    Known(RoleDbId),
    /// pgmon's own session, a replication connection or a cancel request: not traffic.
    Ignored,
    /// Nobody could say: its queries are counted as unattributed.
    Unknown,
}

/// Whether pgmon reads an encrypted session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Crypto {
    /// TLS negotiated (SSLRequest answered `S`, or a direct TLS ClientHello) at `since_ns`
    /// (CLOCK_MONOTONIC); its plaintext has not shown yet.
    Awaiting { since_ns: u64 },
    /// Its plaintext comes from the libssl probes.
    Readable,
    /// Nothing of it can be read (GSSAPI, TLS with the probes off or not reaching it): its
    /// backend is charged by CPU time.
    Unreadable,
}

/// How long a TLS session may go without plaintext before it counts as unreadable. The
/// handshake and the StartupMessage take milliseconds; a session whose libssl is not the
/// probed one never shows any.
const AWAIT_PLAINTEXT_NS: u64 = 3_000_000_000;

/// How often the CPU time of unreadable backends is read and charged.
const CPU_CHARGE_EVERY_MS: u64 = 200;

/// A backend process of the tracked cluster.
#[derive(Debug)]
struct Backend {
    identity: Identity,
    /// Forked after the capture attached (its first bytes are a startup packet).
    fresh: bool,
    /// Set once the session is encrypted.
    crypto: Option<Crypto>,
    /// CPU time (clock ticks) already charged, for an unreadable backend.
    cpu_ticks: Option<u64>,
    fds: Vec<u32>,
}

/// One client connection: its parser and, per direction, where the previous record of the
/// current syscall ended (records of one call arrive in order; a jump is bytes the kernel
/// did not copy).
struct Conn {
    wire: pgmon_wire::Connection<Stmt>,
    /// End offset within the current call: [frontend, backend].
    next_offset: [u32; 2],
}

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
    /// Backends whose sessions are unreadable, charged by CPU time.
    unreadable: std::collections::HashSet<u32>,
    last_cpu_charge_ms: u64,
    last_crypto_check_ms: u64,
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
            unreadable: Default::default(),
            last_cpu_charge_ms: 0,
            last_crypto_check_ms: 0,
        }
    }

    /// Whether the libssl probes are attached (`Capture::tls`): without them every TLS
    /// session is unreadable from its start.
    pub fn set_tls_capture(&mut self, on: bool) {
        self.tls_on = on;
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
            backend,
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
        if backend_unreadable(self.backends.get(&pid)) {
            self.start_unreadable(pid);
        }
    }

    /// A session of `pid` turned out unreadable: counts it, asks pg_stat_activity for its
    /// role (its StartupMessage was inside the encryption), and charges its CPU time from
    /// now on.
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
        b.cpu_ticks = Some(cpu_ticks(pid).unwrap_or(0));
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

    /// Publishes kernel counters, cache counters and the top-K for the next scrape.
    pub fn publish(&self, capture: &Capture) {
        use std::sync::atomic::Ordering::Relaxed;
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
            roles: self.stats.roles(&|fp| self.cost_of(fp)),
            budgets: self
                .budget
                .as_ref()
                .map(|l| l.budgets.status(self.now_ms))
                .unwrap_or_default(),
            storage: None,
        }
    }
}

impl Backend {
    fn new(fresh: bool) -> Self {
        Self {
            identity: Identity::AwaitStartup,
            fresh,
            crypto: None,
            cpu_ticks: None,
            fds: Vec::new(),
        }
    }
}

/// Whether `b` is unreadable and not yet charged by CPU time.
fn backend_unreadable(b: Option<&Backend>) -> bool {
    b.is_some_and(|b| b.crypto == Some(Crypto::Unreadable) && b.cpu_ticks.is_none())
}

/// CLOCK_MONOTONIC now, nanoseconds (the clock of `bpf_ktime_get_ns`, so of record
/// timestamps).
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of process `pid`, clock ticks (proc(5), `/proc/<pid>/stat` fields 14 and
/// 15); `None` once it is gone.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    // After the command: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of [`cpu_ticks`] (100 on Linux).
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}

/// The [`pgmon_wire::Sink`] of one connection: charges what the parser reports.
struct ConnSink<'a> {
    budgets: Option<&'a mut Budgets>,
    now_ms: u64,
    /// The record's timestamp (CLOCK_MONOTONIC, ns).
    record_ns: u64,
    /// The libssl probes are attached.
    tls_on: bool,
    backend: &'a mut Backend,
    normalizer: &'a mut Normalizer,
    stats: &'a mut Stats,
    metrics: &'a TrafficMetrics,
    counters: &'a mut Counters,
}

impl pgmon_wire::Sink for ConnSink<'_> {
    type Stmt = Stmt;

    fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<Stmt>) {
        self.normalizer.prepare(text, simple, out);
    }

    fn truncated(&mut self, _prefix: &[u8], len: usize, _simple: bool, out: &mut Vec<Stmt>) {
        self.counters.oversized += 1;
        self.metrics.oversized_messages.inc();
        out.push(self.normalizer.oversized(len));
    }

    fn startup(&mut self, s: &Startup<'_>) {
        let ignored =
            s.application_name == Some(b"pgmon".as_slice()) || s.replication != Replication::No;
        self.backend.identity = if ignored {
            Identity::Ignored
        } else {
            let role = String::from_utf8_lossy(s.user);
            let database = String::from_utf8_lossy(s.database);
            let id = self.stats.role_db(&role, &database);
            self.stats.connection(id, 1);
            Identity::Known(id)
        };
    }

    fn encrypted(&mut self, how: Encryption) {
        if self.backend.crypto.is_some() {
            return;
        }
        let readable_later = self.tls_on && how != Encryption::Gss;
        self.backend.crypto = Some(if readable_later {
            Crypto::Awaiting {
                since_ns: self.record_ns,
            }
        } else {
            self.metrics.encrypted_sessions.opened(false);
            Crypto::Unreadable
        });
    }

    fn cancel_request(&mut self) {
        // A CancelRequest arrives on a connection of its own, which then closes.
        self.backend.identity = Identity::Ignored;
    }

    fn completed(&mut self, c: Completion<Stmt>) {
        let duration = c.end_ns.saturating_sub(c.start_ns);
        let error = match c.outcome {
            Outcome::Error { sqlstate } => Some(sqlstate),
            _ => None,
        };
        match &mut self.backend.identity {
            Identity::Known(id) => {
                self.stats.record(*id, &c.stmt, duration, error);
                if let Some(b) = self.budgets.as_deref_mut() {
                    let (r, d) = self.stats.names(*id);
                    b.charge(self.now_ms, r, d, &c.stmt, duration);
                }
            }
            Identity::Pending(p) if p.len() < MAX_PENDING => p.push((c.stmt, duration, error)),
            Identity::Ignored => {}
            Identity::Pending(_) | Identity::AwaitStartup | Identity::Unknown => {
                self.counters.unattributed += 1;
                self.metrics.unattributed.inc();
            }
        }
    }

    fn error(&mut self, e: ErrorResponse, ctx: ErrorContext) {
        let Identity::Known(id) = self.backend.identity else {
            return;
        };
        match ErrorScope::of(e, ctx) {
            // Counted with its completion.
            ErrorScope::Execution => {}
            ErrorScope::Request => self.stats.failed_request(id, e.sqlstate),
            ErrorScope::Connection => self.stats.connection_error(id, e.sqlstate),
        }
    }

    fn unattributed(&mut self, _c: Completion<()>) {
        // An execution of a statement prepared before the capture began: its text was never
        // seen, so it cannot be charged to a fingerprint.
        self.counters.unattributed += 1;
        self.metrics.unattributed.inc();
    }

    fn desync(&mut self, dir: Direction, reason: DesyncReason) {
        match dir {
            Direction::Frontend => self.counters.desyncs_frontend += 1,
            Direction::Backend => self.counters.desyncs_backend += 1,
        }
        self.metrics.desync(dir.as_str(), reason.as_str());
    }
}
