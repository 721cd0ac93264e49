//! The first request of a connection picked up mid-stream ([`Connection::new_mid_stream`]),
//! reported once the backend's answer proves that the two streams are in step.
//!
//! Without a trial such a connection would report nothing until a ReadyForQuery left no
//! earlier request pending, so the first request the client sends after the capture began
//! would only re-establish sync, and one query per pre-existing connection would go
//! unreported and uncounted. The usual client (psql, libpq, JDBC outside of pipeline mode)
//! waits for ReadyForQuery before it sends its next Query or Parse/Bind/Execute/Sync batch:
//! when the capture begins on such an idle connection, the frontend resumes at that request
//! ([`plausible_frontend`](super::frame::plausible_frontend)) and the backend's first bytes
//! are its answer, from a message boundary.
//!
//! The trial:
//!
//! - starts at the backend's first bytes since the capture began ([`Item::First`]) if the
//!   frontend has by then resumed and queued a request that owes a response. Backend bytes
//!   seen before that (the tail of a reply still being sent when the capture began) mean the
//!   backend is not at a boundary: no trial, the backend resynchronises at a ReadyForQuery as
//!   before (and the next request is then reported normally);
//! - frames the backend from there, with tighter length bounds ([`Reader::begin_trial`]), and
//!   matches its messages against the queue as a synchronized connection does, but holds
//!   what it would report (completions, unattributed executions, errors);
//! - is confirmed by a ReadyForQuery that closes the Sync/Query/FunctionCall at the front
//!   with every earlier item answered: the held reports go out (completions with their
//!   timing as measured) and the connection is synchronized;
//! - fails, and counts one [`DesyncReason::Tentative`], on anything that shows an older
//!   reply: a completion or row the front request cannot have produced (rows of a Query
//!   statement without its RowDescription, a ParseComplete where an execution is expected,
//!   more completions than the Query has statements, …), a ReadyForQuery while requests are
//!   still unanswered ahead of it, or backend bytes that do not frame (the capture began in
//!   the middle of a message). The held completions are dropped; held ErrorResponses are
//!   still reported, as [`ErrorContext::Unmatched`]. Then the connection falls back to the
//!   resynchronisation rule: nothing is reported until a ReadyForQuery leaves no request
//!   pending.
//!
//! On failure the queued requests are dropped and their ReadyForQuery messages are owed
//! (`Session::owed`), so that those still to come are not taken for later requests' (a
//! failing ReadyForQuery may be the first request's own: one fewer is owed then). An older
//! request's ReadyForQuery is never owed, even where the failure shows an older reply: that
//! reply may be an extended-protocol batch closed by the Sync seen (see below), and owing a
//! ReadyForQuery that never comes would keep the connection quarantined for good, whereas
//! owing one too few costs at most one more [`DesyncReason::UnexpectedMessage`] before the
//! connection resynchronises. A framing failure resynchronises the backend at a
//! ReadyForQuery and owes nothing.
//!
//! What a trial cannot tell, and why it is rare. The backend reads a request only once its
//! input buffer is used up, and flushes a ReadyForQuery as soon as it sends one: in the
//! capture's order (the backend's own `recvfrom`/`sendto` calls), every Query and every
//! Sync-closed batch the backend read before the first request seen is answered, up to its
//! ReadyForQuery, before that request. What can still come after it is the buffered output
//! of an extended-protocol batch the client had not closed with Sync (a pipelining client,
//! or a batch split across sends: libpq's pipeline mode, a driver sending Flush), which the
//! backend sends together with the new request's answer. Its messages rarely have the
//! shape the new request expects (ParseComplete, BindComplete, rows without a
//! RowDescription, one completion too many all fail the trial); when they do (e.g. a lone
//! CommandComplete left of the older batch, then an error that ends a two-statement Query
//! at its first statement), the new request is credited with the older completion. The
//! same holds, if the capture ever delivered the two directions out of order, for an older
//! reply that ends in CommandComplete and ReadyForQuery ahead of a one-statement Query's:
//! the Query is credited with it and its own answer is unexpected (one
//! [`DesyncReason::UnexpectedMessage`]); the count stays right. If the Sync seen closes a
//! batch begun before the capture, its answer is that batch's, and is correctly matched to
//! the Execute/Sync seen (an Execute of a portal bound before the capture is reported
//! through [`Sink::unattributed`]). Conservative: a first reply with a message over
//! 16 MiB, or whose statements `prepare` counted differently from the server, fails the
//! trial instead of being reported.
//!
//! [`Connection::new_mid_stream`]: super::Connection::new_mid_stream
//! [`Item::First`]: super::frame::Item::First
//! [`Reader::begin_trial`]: super::frame::Reader::begin_trial

use super::responses::Handled;
use super::session::{Pending, ReadyKind, Session};
use super::{
    Completion, DesyncReason, Direction, Encryption, ErrorContext, ErrorResponse, Sink, Startup,
};

/// A trial in progress.
pub(super) struct Trial<S> {
    /// What the matched responses reported, in order.
    held: Vec<Held<S>>,
    /// The front Query statement has sent its RowDescription or Copy*Response: rows or copy
    /// data may follow.
    begun: bool,
}

/// One report held during a trial.
enum Held<S> {
    Done(Completion<S>),
    Unattributed(Completion<()>),
    Error(ErrorResponse, ErrorContext),
    Desync(Direction, DesyncReason),
}

/// A sink that holds the reports of the backend matching code.
struct Holder<S>(Vec<Held<S>>);

impl<S: Clone> Sink for Holder<S> {
    type Stmt = S;

    // The frontend-side calls: never made while matching backend messages.
    fn prepare(&mut self, _: &[u8], _: bool, _: &mut Vec<S>) {}
    fn truncated(&mut self, _: &[u8], _: usize, _: bool, _: &mut Vec<S>) {}
    fn startup(&mut self, _: &Startup<'_>) {}
    fn encrypted(&mut self, _: Encryption) {}
    fn cancel_request(&mut self) {}

    fn completed(&mut self, c: Completion<S>) {
        self.0.push(Held::Done(c));
    }

    fn unattributed(&mut self, c: Completion<()>) {
        self.0.push(Held::Unattributed(c));
    }

    fn error(&mut self, e: ErrorResponse, ctx: ErrorContext) {
        self.0.push(Held::Error(e, ctx));
    }

    fn desync(&mut self, dir: Direction, reason: DesyncReason) {
        self.0.push(Held::Desync(dir, reason));
    }
}

/// Reports the held ErrorResponses of a failed trial, as unmatched; drops the rest.
fn report_errors<S, K: Sink<Stmt = S>>(held: Vec<Held<S>>, sink: &mut K) {
    for h in held {
        if let Held::Error(e, _) = h {
            sink.error(e, ErrorContext::Unmatched);
        }
    }
}

impl<S: Clone> Session<S> {
    /// The backend's first bytes since the capture began, on a connection picked up
    /// mid-stream. Starts a trial if the frontend has queued a request and nothing else is
    /// owed; returns whether it did. Not after the end of a COPY FROM STDIN (CopyDone or
    /// CopyFail): the COPY is an older request, still to be answered.
    pub fn begin_trial(&mut self) -> bool {
        let ok = self.quarantined
            && self.trial.is_none()
            && self.owed == 0
            && !self.queue.is_empty()
            && !self.queue.iter().any(|p| matches!(p, Pending::CopyEnd));
        if ok {
            self.trial = Some(Box::new(Trial {
                held: Vec::new(),
                begun: false,
            }));
        }
        ok
    }

    pub fn in_trial(&self) -> bool {
        self.trial.is_some()
    }

    /// Ends a trial without a verdict (a desync elsewhere decides): held ErrorResponses are
    /// reported as unmatched, the rest is dropped. The caller drops the queue.
    pub fn abandon_trial<K: Sink<Stmt = S>>(&mut self, sink: &mut K) {
        if let Some(t) = self.trial.take() {
            report_errors(t.held, sink);
        }
    }

    /// A response other than ReadyForQuery and ErrorResponse, during a trial.
    #[cold]
    #[inline(never)]
    pub(super) fn trial_response<K: Sink<Stmt = S>>(
        &mut self,
        ty: u8,
        body: &[u8],
        ts: u64,
        sink: &mut K,
    ) -> Handled {
        self.skip_markers();
        let Some(trial) = self.trial.as_deref_mut() else {
            return Handled::Done;
        };
        let front = self.queue.front();
        let fits = match (ty, front) {
            (_, None) => false,
            // Rows or copy data of a Query statement that announced none: the tail of an
            // older reply (§54.2.2: RowDescription comes first).
            (b'D' | b'd' | b'c', Some(Pending::Statement { .. })) => trial.begun,
            // Messages beyond the Query's statements (except an empty Query's
            // EmptyQueryResponse): an older reply, or a count `prepare` got wrong; either
            // way the trial cannot vouch for the match.
            (_, Some(Pending::Ready { kind, stmts, .. })) => {
                *kind == ReadyKind::Query && ty == b'I' && *stmts == 0
            }
            _ => true,
        };
        if !fits {
            return self.trial_failed(ty, sink);
        }
        match (ty, front) {
            (b'T' | b'G' | b'H' | b'W', Some(Pending::Statement { .. })) => trial.begun = true,
            (b'C' | b'I' | b's', _) => trial.begun = false,
            _ => {}
        }
        let mut holder = Holder(std::mem::take(&mut trial.held));
        let matched = self.response(ty, body, ts, &mut holder);
        if let Some(t) = self.trial.as_deref_mut() {
            t.held = holder.0;
        }
        match matched {
            Ok(()) => Handled::Done,
            Err(_) => self.trial_failed(ty, sink),
        }
    }

    /// An ErrorResponse during a trial: it fails the front request as it would on a
    /// synchronized connection, unless there is no request it can fail.
    #[cold]
    #[inline(never)]
    pub(super) fn trial_error<K: Sink<Stmt = S>>(
        &mut self,
        e: ErrorResponse,
        ts: u64,
        sink: &mut K,
    ) -> Handled {
        self.skip_markers();
        let Some(trial) = self.trial.as_deref_mut() else {
            return Handled::Done;
        };
        let fits = !matches!(
            self.queue.front(),
            None | Some(Pending::Ready {
                kind: ReadyKind::Query | ReadyKind::Function,
                ..
            })
        );
        if !fits {
            trial.held.push(Held::Error(e, ErrorContext::Unmatched));
            return self.trial_failed(b'E', sink);
        }
        trial.begun = false;
        let mut holder = Holder(std::mem::take(&mut trial.held));
        let ctx = self.fail_front(e.sqlstate, ts, &mut holder);
        holder.error(e, ctx);
        if let Some(t) = self.trial.as_deref_mut() {
            t.held = holder.0;
        }
        Handled::Done
    }

    /// Whether a ReadyForQuery now confirms the trial: the front request is the Sync, Query
    /// or FunctionCall it answers, every item before it answered.
    pub(super) fn trial_ready_fits(&mut self) -> bool {
        self.skip_markers();
        matches!(self.queue.front(), Some(Pending::Ready { .. }))
    }

    /// The trial is confirmed: reports what it held and trusts the queue.
    #[cold]
    #[inline(never)]
    pub(super) fn trial_confirmed<K: Sink<Stmt = S>>(&mut self, sink: &mut K) {
        let Some(t) = self.trial.take() else {
            return;
        };
        self.quarantined = false;
        for h in t.held {
            match h {
                Held::Done(c) => sink.completed(c),
                Held::Unattributed(c) => sink.unattributed(c),
                Held::Error(e, ctx) => sink.error(e, ctx),
                Held::Desync(dir, reason) => sink.desync(dir, reason),
            }
        }
    }

    /// The backend's message of type `ty` (`b'Z'`, `b'E'` or a response) does not answer the
    /// queue: counts [`DesyncReason::Tentative`], drops the queue, and owes the
    /// ReadyForQuery messages still to come (see the module documentation).
    #[cold]
    #[inline(never)]
    pub(super) fn trial_failed<K: Sink<Stmt = S>>(&mut self, ty: u8, sink: &mut K) -> Handled {
        let Some(trial) = self.trial.take() else {
            return Handled::Done;
        };
        report_errors(trial.held, sink);
        sink.desync(Direction::Backend, DesyncReason::Tentative);
        let readies = self.readies;
        self.drop_pending(true);
        // Each queued Sync/Query/FunctionCall still gets its ReadyForQuery, but a failing
        // ReadyForQuery may have been the first one's.
        self.owed = if ty == b'Z' {
            readies.saturating_sub(1)
        } else {
            readies
        };
        Handled::Settled
    }
}
