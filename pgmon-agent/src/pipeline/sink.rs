//! The [`pgmon_wire::Sink`] of one connection: what the parser reports (statements,
//! completions, errors, startup, encryption, desyncs) charged to the backend's role.

use pgmon_wire::{
    Completion, DesyncReason, Direction, Encryption, ErrorContext, ErrorResponse, ErrorScope,
    Outcome, Replication, Startup,
};

use super::{
    Counters, MAX_PENDING,
    backend::{Backend, Crypto, Identity},
    metrics::TrafficMetrics,
    stats::Stats,
};
use crate::{
    budget::Budgets,
    query::{Normalizer, Stmt},
};

/// The [`pgmon_wire::Sink`] of one connection: charges what the parser reports.
pub(super) struct ConnSink<'a> {
    pub(super) budgets: Option<&'a mut Budgets>,
    pub(super) now_ms: u64,
    /// The record's timestamp (CLOCK_MONOTONIC, ns).
    pub(super) record_ns: u64,
    /// The libssl probes are attached.
    pub(super) tls_on: bool,
    pub(super) backend: &'a mut Backend,
    pub(super) normalizer: &'a mut Normalizer,
    pub(super) stats: &'a mut Stats,
    pub(super) metrics: &'a TrafficMetrics,
    pub(super) counters: &'a mut Counters,
}

impl pgmon_wire::Sink for ConnSink<'_> {
    type Stmt = Stmt;

    fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<Stmt>) {
        self.normalizer
            .prepare_as(text, simple, self.backend.standard_strings, out);
    }

    fn parameter_status(&mut self, name: &[u8], value: &[u8]) {
        if name == b"standard_conforming_strings" {
            self.backend.standard_strings = value != b"off";
        }
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
            ErrorScope::Prepare => self.stats.prepare_error(id, e.sqlstate),
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
