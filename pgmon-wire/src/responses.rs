//! Matching backend messages against the FIFO of pending requests (§54.2.2 Simple Query,
//! §54.2.3 Extended Query, §54.2.4 Pipelining, §54.2.5 Function Call, §54.2.6 COPY).

use super::body;
use super::frame::Msg;
use super::session::{Pending, ReadyKind, Session, Target};
use super::{Completion, DesyncReason, Direction, ErrorContext, Outcome, Sink};

/// What a backend message did besides its reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Handled {
    Done,
    /// A trial ended (confirmed, or failed with the backend still framed): the backend is
    /// framed with the usual limits from here.
    Settled,
}

impl<S: Clone> Session<S> {
    /// Handles one backend message after startup. `Err(UnexpectedMessage)`: the message does
    /// not answer the front request (the caller drops the FIFO); `Err(Malformed)`: the
    /// stream itself is damaged; `Ok(Settled)`: a trial ended (see [`super::trial`]).
    /// Messages of a quarantined connection go through the trial's code only, so that a
    /// synchronized connection pays nothing for it.
    pub fn backend<K: Sink<Stmt = S>>(
        &mut self,
        m: &Msg<'_>,
        ts: u64,
        sink: &mut K,
    ) -> Result<Handled, DesyncReason> {
        match m.ty {
            b'S' => {
                if let Some((name, value)) = body::parameter_status(m.body) {
                    sink.parameter_status(name, value);
                }
                Ok(Handled::Done)
            }
            // Asynchronous or startup-only messages: they answer nothing (§54.2.7).
            b'N' | b'A' | b'K' | b'R' | b'v' => Ok(Handled::Done),
            b'Z' => self.ready(m.body, sink),
            b'E' => Ok(self.error(m.body, ts, sink)),
            _ if self.quarantined => match self.trial {
                None => Ok(Handled::Done),
                Some(_) => Ok(self.trial_response(m.ty, m.body, ts, sink)),
            },
            _ => self
                .response(m.ty, m.body, ts, sink)
                .map(|()| Handled::Done),
        }
    }

    /// Any response but ReadyForQuery and ErrorResponse.
    pub(super) fn response<K: Sink<Stmt = S>>(
        &mut self,
        ty: u8,
        body: &[u8],
        ts: u64,
        sink: &mut K,
    ) -> Result<(), DesyncReason> {
        self.skip_markers();
        match (ty, self.queue.front_mut()) {
            (b'1', Some(Pending::Parse))
            | (b'2', Some(Pending::Bind))
            | (b'3', Some(Pending::Close))
            | (b'T' | b'n', Some(Pending::Describe { .. }))
            | (b'V', Some(Pending::FunctionCall)) => {
                self.pop();
            }
            (b't', Some(Pending::Describe { statement: true })) => {}
            (b'D', Some(Pending::Execute { rows, .. } | Pending::Statement { rows, .. })) => {
                *rows += 1
            }
            (b'T' | b'H' | b'd' | b'c', Some(Pending::Statement { .. })) => {}
            (b'H' | b'd' | b'c', Some(Pending::Execute { .. })) => {}
            // CopyIn and CopyBoth: the frontend streams CopyData until CopyDone/CopyFail.
            (b'G' | b'W', Some(Pending::Statement { .. } | Pending::Execute { .. })) => {
                self.copy_in_started()
            }
            // Messages of statements beyond those `prepare` returned for a Query.
            (
                b'T' | b'D' | b'G' | b'H' | b'W' | b'd' | b'c',
                Some(Pending::Ready {
                    kind: ReadyKind::Query,
                    ..
                }),
            ) => {}
            (b'C' | b'I', _) => {
                let rows = if ty == b'C' {
                    body::tag_rows(body)
                } else {
                    None
                };
                return self.complete(ty, Outcome::Ok { rows }, ts, sink);
            }
            (b's', Some(Pending::Execute { .. })) => {
                if let Some(Pending::Execute {
                    target,
                    start_ns,
                    rows,
                }) = self.pop()
                {
                    self.emit(target, start_ns, ts, Outcome::Suspended { rows }, sink);
                }
            }
            _ => return Err(DesyncReason::UnexpectedMessage),
        }
        Ok(())
    }

    /// CommandComplete or EmptyQueryResponse (`ty`), or an ErrorResponse (`ty == b'E'`),
    /// ending the front execution.
    fn complete<K: Sink<Stmt = S>>(
        &mut self,
        ty: u8,
        outcome: Outcome,
        ts: u64,
        sink: &mut K,
    ) -> Result<(), DesyncReason> {
        match self.queue.front_mut() {
            Some(Pending::Execute { .. } | Pending::Statement { .. }) => match self.pop() {
                Some(Pending::Execute {
                    target, start_ns, ..
                }) => self.emit(target, start_ns, ts, outcome, sink),
                Some(Pending::Statement { stmt, start_ns, .. }) => {
                    self.emit(Target::Known(stmt), start_ns, ts, outcome, sink)
                }
                _ => {}
            },
            Some(Pending::Ready {
                kind: ReadyKind::Query,
                start_ns,
                stmts,
                last,
                miscounted,
                ..
            }) => {
                // An empty Query string is answered by EmptyQueryResponse alone.
                if ty == b'I' && *stmts == 0 {
                    return Ok(());
                }
                // More completions than statements: the server split the text into more
                // statements than `prepare` did. Attribute to the last one, count once.
                if !*miscounted {
                    *miscounted = true;
                    sink.desync(Direction::Backend, DesyncReason::StatementCount);
                }
                let (start_ns, last) = (*start_ns, last.clone());
                if let Some(stmt) = last {
                    self.emit(Target::Known(stmt), start_ns, ts, outcome, sink);
                }
            }
            _ => return Err(DesyncReason::UnexpectedMessage),
        }
        Ok(())
    }

    fn emit<K: Sink<Stmt = S>>(
        &mut self,
        target: Target<S>,
        start_ns: u64,
        end_ns: u64,
        outcome: Outcome,
        sink: &mut K,
    ) {
        let start_ns = start_ns.max(self.last_end).min(end_ns);
        self.last_end = self.last_end.max(end_ns);
        match target {
            Target::Known(stmt) => sink.completed(Completion {
                stmt,
                start_ns,
                end_ns,
                outcome,
            }),
            Target::Unknown => sink.unattributed(Completion {
                stmt: (),
                start_ns,
                end_ns,
                outcome,
            }),
            Target::Empty => {}
        }
    }

    /// ReadyForQuery: answers the oldest pending Sync, Query or FunctionCall; anything older
    /// still pending went unanswered.
    fn ready<K: Sink<Stmt = S>>(
        &mut self,
        body: &[u8],
        sink: &mut K,
    ) -> Result<Handled, DesyncReason> {
        let status = match body {
            [s @ (b'I' | b'T' | b'E')] => *s,
            _ => return Err(DesyncReason::Malformed),
        };
        self.copy_in = false;
        let mut handled = Handled::Done;
        if self.quarantined {
            if self.trial.is_some() {
                if !self.trial_ready_fits() {
                    return Ok(self.trial_failed(b'Z', sink));
                }
                // Confirmed: the held reports go out, and the Ready is popped as usual.
                self.trial_confirmed(sink);
                handled = Handled::Settled;
            } else if self.owed > 0 {
                // The answer to a request dropped by the desync.
                self.owed -= 1;
                self.quarantined = self.owed > 0 || self.readies > 0;
                if status == b'I' {
                    self.end_transaction(Some(0));
                }
                return Ok(Handled::Done);
            }
        }
        let mut seq = None;
        let mut unanswered = false;
        let mut short_query = false;
        while let Some(p) = self.pop() {
            match p {
                Pending::Ready {
                    seq: s, miscounted, ..
                } => {
                    seq = Some(s);
                    short_query &= !miscounted;
                    break;
                }
                Pending::Statement { .. } => short_query = true,
                Pending::CopyEnd => {}
                _ => unanswered = true,
            }
        }
        if self.quarantined {
            // Resynchronised once no Sync/Query/FunctionCall seen before this point can
            // still be answered.
            self.quarantined = self.readies > 0;
        } else {
            if short_query {
                // Fewer completions than statements: `prepare` split the text into more
                // statements than the server did.
                sink.desync(Direction::Backend, DesyncReason::StatementCount);
            }
            if unanswered || seq.is_none() {
                sink.desync(Direction::Backend, DesyncReason::UnexpectedMessage);
            }
        }
        if status == b'I' {
            self.end_transaction(seq);
        }
        Ok(handled)
    }

    /// ErrorResponse (§54.2.2, §54.2.3): fails the front request; in the extended protocol
    /// the server then discards messages up to the next Sync, in a Query the remaining
    /// statements.
    fn error<K: Sink<Stmt = S>>(&mut self, body: &[u8], ts: u64, sink: &mut K) -> Handled {
        let e = body::error_response(body);
        self.copy_in = false;
        if self.quarantined {
            if self.trial.is_some() {
                return self.trial_error(e, ts, sink);
            }
            sink.error(e, ErrorContext::Unmatched);
            return Handled::Done;
        }
        let ctx = self.fail_front(e.sqlstate, ts, sink);
        sink.error(e, ctx);
        Handled::Done
    }

    /// What an ErrorResponse does to the front request; returns where it arrived.
    pub(super) fn fail_front<K: Sink<Stmt = S>>(
        &mut self,
        sqlstate: [u8; 5],
        ts: u64,
        sink: &mut K,
    ) -> ErrorContext {
        self.skip_markers();
        let failed = Outcome::Error { sqlstate };
        match self.queue.front() {
            None => ErrorContext::Idle,
            Some(Pending::Ready {
                kind: ReadyKind::Sync,
                ..
            }) => ErrorContext::Sync,
            Some(Pending::Ready {
                kind: ReadyKind::Query,
                stmts,
                ..
            }) => {
                if *stmts > 0 {
                    // A statement beyond those `prepare` returned failed.
                    let _ = self.complete(b'E', failed, ts, sink);
                    ErrorContext::Execution
                } else {
                    ErrorContext::Unmatched
                }
            }
            Some(Pending::Ready {
                kind: ReadyKind::Function,
                ..
            }) => ErrorContext::Unmatched,
            Some(Pending::Statement { .. }) => {
                let _ = self.complete(b'E', failed, ts, sink);
                while matches!(self.queue.front(), Some(Pending::Statement { .. })) {
                    self.pop();
                }
                ErrorContext::Execution
            }
            Some(Pending::FunctionCall) => {
                self.pop();
                ErrorContext::FunctionCall
            }
            Some(front) => {
                let ctx = match front {
                    Pending::Parse => ErrorContext::Parse,
                    Pending::Bind => ErrorContext::Bind,
                    Pending::Describe { .. } => ErrorContext::Describe,
                    Pending::Close => ErrorContext::Close,
                    _ => ErrorContext::Execution,
                };
                if ctx == ErrorContext::Execution {
                    let _ = self.complete(b'E', failed, ts, sink);
                } else {
                    self.pop();
                }
                self.drop_to_sync();
                ctx
            }
        }
    }

    /// After an error in the extended protocol the server discards every message up to the
    /// next Sync (`ignore_till_sync` in `PostgresMain`; §54.2.3).
    fn drop_to_sync(&mut self) {
        while let Some(front) = self.queue.front() {
            if matches!(
                front,
                Pending::Ready {
                    kind: ReadyKind::Sync,
                    ..
                }
            ) {
                return;
            }
            self.pop();
        }
        self.ignore_till_sync = true;
    }

    /// Drops CopyEnd markers at the front: they answer nothing.
    pub(super) fn skip_markers(&mut self) {
        while matches!(self.queue.front(), Some(Pending::CopyEnd)) {
            self.queue.pop_front();
        }
    }
}
