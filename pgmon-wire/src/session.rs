//! A session's mirror of the server's state: prepared statements, portals, and the FIFO of
//! responses the frontend's requests are waiting for; and how frontend messages change it.
//!
//! The maps are updated when a frontend message is read, which is when the server reads it
//! too (the capture sees `recvfrom` in the backend); executions look their statement up at
//! that moment and carry it in the FIFO, so later map changes cannot affect them.

use std::collections::VecDeque;

use ahash::AHashMap;

use super::body;
use super::frame::Msg;
use super::trial::Trial;
use super::{DesyncReason, Direction, Limits, Sink};

/// What an execution will be attributed to.
#[derive(Clone, Debug)]
pub(super) enum Target<S> {
    /// A statement [`Sink::prepare`] returned.
    Known(S),
    /// A statement with no SQL in it (`prepare` pushed nothing): its Execute answers
    /// EmptyQueryResponse and is not reported.
    Empty,
    /// A portal or statement never seen (its Parse or Bind preceded the capture).
    Unknown,
}

/// A portal: what it executes and the `ready_seq` when it was bound.
struct Portal<S> {
    target: Target<S>,
    bound_at: u64,
}

/// Which request a ReadyForQuery answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadyKind {
    Sync,
    Query,
    Function,
}

/// One response the backend owes, oldest first (§54.2.2–54.2.6).
pub(super) enum Pending<S> {
    /// ParseComplete `'1'`.
    Parse,
    /// BindComplete `'2'`.
    Bind,
    /// Describe: ParameterDescription `'t'` (statement only), then RowDescription `'T'` or
    /// NoData `'n'`.
    Describe { statement: bool },
    /// CloseComplete `'3'`.
    Close,
    /// Execute: DataRow… then CommandComplete, EmptyQueryResponse or PortalSuspended.
    Execute {
        target: Target<S>,
        start_ns: u64,
        rows: u64,
    },
    /// One statement of a simple Query: RowDescription, DataRow…, CommandComplete or
    /// EmptyQueryResponse.
    Statement { stmt: S, start_ns: u64, rows: u64 },
    /// FunctionCallResponse `'V'`.
    FunctionCall,
    /// The frontend's CopyDone or CopyFail: where a COPY FROM STDIN's data ends. Answers
    /// nothing; marks up to where Syncs are swallowed by the copy (§54.2.6).
    CopyEnd,
    /// ReadyForQuery `'Z'`, owed for a Sync, a Query, or a FunctionCall. `seq` numbers them
    /// in frontend order. For a Query: its timestamp, how many statements `prepare`
    /// returned, the last of them (to attribute extra completions to), and whether a count
    /// mismatch was already reported.
    Ready {
        kind: ReadyKind,
        seq: u64,
        start_ns: u64,
        stmts: usize,
        last: Option<S>,
        miscounted: bool,
    },
}

/// A session's state (everything but the framing).
pub(super) struct Session<S> {
    pub(super) limits: Limits,
    /// `None`: no unnamed statement; `Some(None)`: an empty one.
    unnamed_stmt: Option<Option<S>>,
    named_stmts: AHashMap<Box<[u8]>, Option<S>>,
    unnamed_portal: Option<Portal<S>>,
    named_portals: AHashMap<Box<[u8]>, Portal<S>>,
    pub(super) queue: VecDeque<Pending<S>>,
    /// How many `Pending::Ready` are in `queue`.
    pub(super) readies: usize,
    /// `Pending::Ready` entries queued so far.
    ready_seq: u64,
    /// Mirror of the server's `ignore_till_sync`: after an error in the extended protocol
    /// with no Sync yet received, the server discards every message but Sync
    /// (§54.2.3; `PostgresMain`).
    pub(super) ignore_till_sync: bool,
    /// The server is in COPY FROM STDIN and the frontend's CopyDone/CopyFail is not yet
    /// read: Sync and Flush are swallowed by the copy (§54.2.6).
    pub(super) copy_in: bool,
    /// Responses cannot be trusted to match `queue` (after a desync, or mid-stream): nothing
    /// is reported until a ReadyForQuery leaves no Sync/Query pending, or until a trial
    /// confirms the queue.
    pub(super) quarantined: bool,
    /// A mid-stream connection matching the backend's first responses against `queue` before
    /// it trusts them (only while `quarantined`; see [`super::trial`]). Boxed: it is rare and
    /// short-lived, and every connection carries the field.
    pub(super) trial: Option<Box<Trial<S>>>,
    /// ReadyForQuery messages still owed for requests dropped by a desync that left the
    /// backend stream intact; they come before those of the requests in `queue`.
    pub(super) owed: usize,
    /// `end_ns` of the last completion.
    pub(super) last_end: u64,
    scratch: Vec<S>,
}

impl<S: Clone> Session<S> {
    pub fn new(limits: Limits, quarantined: bool) -> Self {
        Session {
            limits,
            unnamed_stmt: None,
            named_stmts: AHashMap::default(),
            unnamed_portal: None,
            named_portals: AHashMap::default(),
            queue: VecDeque::new(),
            readies: 0,
            ready_seq: 0,
            ignore_till_sync: false,
            copy_in: false,
            quarantined,
            trial: None,
            owed: 0,
            last_end: 0,
            scratch: Vec::new(),
        }
    }

    /// Drops every pending response (uncounted) and distrusts responses until the next
    /// ReadyForQuery that leaves nothing pending. The maps stay. `backend_intact`: the
    /// backend stream is still framed, so the ReadyForQuery messages of the dropped requests
    /// will still come and must not be taken for those of later requests.
    pub fn drop_pending(&mut self, backend_intact: bool) {
        self.owed = if backend_intact {
            self.owed + self.readies
        } else {
            0
        };
        self.queue.clear();
        self.readies = 0;
        self.ignore_till_sync = false;
        self.copy_in = false;
        self.quarantined = true;
        self.trial = None;
    }

    /// Handles one typed frontend message. `Err` means the message is malformed.
    pub fn frontend<K: Sink<Stmt = S>>(
        &mut self,
        m: &Msg<'_>,
        ts: u64,
        sink: &mut K,
    ) -> Result<(), DesyncReason> {
        if self.ignore_till_sync && m.ty != b'S' {
            return Ok(());
        }
        match m.ty {
            b'Q' => self.query(m, ts, sink)?,
            b'P' => self.parse(m, sink)?,
            b'B' => {
                let (portal, stmt) = body::bind_msg(m.body).ok_or(DesyncReason::Malformed)?;
                let target = self.statement(stmt);
                self.bind(portal, target, sink);
                self.queue.push_back(Pending::Bind);
            }
            b'E' => {
                let portal = body::execute_msg(m.body).ok_or(DesyncReason::Malformed)?;
                let target = self.portal(portal);
                if matches!(target, Target::Unknown) {
                    sink.desync(Direction::Frontend, DesyncReason::UnknownPortal);
                }
                self.queue.push_back(Pending::Execute {
                    target,
                    start_ns: ts,
                    rows: 0,
                });
            }
            b'D' => {
                let (what, _) = body::target_msg(m.body).ok_or(DesyncReason::Malformed)?;
                self.queue.push_back(Pending::Describe {
                    statement: what == b'S',
                });
            }
            b'C' => {
                match body::target_msg(m.body).ok_or(DesyncReason::Malformed)? {
                    (b'S', b"") => self.unnamed_stmt = None,
                    (b'S', name) => drop(self.named_stmts.remove(name)),
                    (_, b"") => self.unnamed_portal = None,
                    (_, name) => drop(self.named_portals.remove(name)),
                }
                self.queue.push_back(Pending::Close);
            }
            b'S' => {
                self.ignore_till_sync = false;
                if !self.copy_in {
                    self.push_ready(ReadyKind::Sync, ts, 0, None);
                }
            }
            b'F' => {
                self.queue.push_back(Pending::FunctionCall);
                self.push_ready(ReadyKind::Function, ts, 0, None);
            }
            b'c' | b'f' => {
                if self.copy_in {
                    self.copy_in = false;
                } else {
                    self.queue.push_back(Pending::CopyEnd);
                }
            }
            // Flush, Terminate, CopyData, password/SASL/GSS responses: nothing owed.
            _ => {}
        }
        Ok(())
    }

    /// Query (§54.2.2): one Statement per statement `prepare` returned, then a Ready. A
    /// Query also destroys the unnamed statement and portal (`exec_simple_query`).
    fn query<K: Sink<Stmt = S>>(
        &mut self,
        m: &Msg<'_>,
        ts: u64,
        sink: &mut K,
    ) -> Result<(), DesyncReason> {
        let truncated = m.truncated();
        let text = body::query_text(m.body, truncated).ok_or(DesyncReason::Malformed)?;
        self.unnamed_stmt = None;
        self.unnamed_portal = None;
        self.scratch.clear();
        if truncated {
            // The query string is the body without its NUL.
            sink.truncated(text, m.len as usize - 1, true, &mut self.scratch);
        } else {
            sink.prepare(text, true, &mut self.scratch);
        }
        let stmts = self.scratch.len();
        let last = self.scratch.last().cloned();
        for stmt in self.scratch.drain(..) {
            self.queue.push_back(Pending::Statement {
                stmt,
                start_ns: ts,
                rows: 0,
            });
        }
        self.push_ready(ReadyKind::Query, ts, stmts, last);
        Ok(())
    }

    /// Parse (§54.2.3): defines the unnamed statement (replacing it) or a named one.
    fn parse<K: Sink<Stmt = S>>(&mut self, m: &Msg<'_>, sink: &mut K) -> Result<(), DesyncReason> {
        let truncated = m.truncated();
        let (name, text) = body::parse_msg(m.body, truncated).ok_or(DesyncReason::Malformed)?;
        self.scratch.clear();
        if truncated {
            // Without the statement name, its NUL, and the query's NUL; the parameter types
            // after it are unknown, so this is an upper bound.
            let len = (m.len as usize).saturating_sub(name.len() + 2 + 2);
            sink.truncated(text, len, false, &mut self.scratch);
        } else {
            sink.prepare(text, false, &mut self.scratch);
        }
        let stmt = self.scratch.drain(..).next();
        self.scratch.clear();
        if name.is_empty() {
            self.unnamed_stmt = Some(stmt);
        } else if let Some(slot) = self.named_stmts.get_mut(name) {
            *slot = stmt;
        } else if self.named_stmts.len() < self.limits.max_names {
            self.named_stmts.insert(name.into(), stmt);
        } else {
            sink.desync(Direction::Frontend, DesyncReason::TooManyNames);
        }
        self.queue.push_back(Pending::Parse);
        Ok(())
    }

    fn statement(&self, name: &[u8]) -> Target<S> {
        let found = if name.is_empty() {
            self.unnamed_stmt.as_ref()
        } else {
            self.named_stmts.get(name)
        };
        match found {
            Some(Some(s)) => Target::Known(s.clone()),
            Some(None) => Target::Empty,
            None => Target::Unknown,
        }
    }

    /// Bind (§54.2.3): defines the unnamed portal (replacing it) or a named one.
    fn bind<K: Sink<Stmt = S>>(&mut self, name: &[u8], target: Target<S>, sink: &mut K) {
        let portal = Portal {
            target,
            bound_at: self.ready_seq,
        };
        if name.is_empty() {
            self.unnamed_portal = Some(portal);
        } else if let Some(slot) = self.named_portals.get_mut(name) {
            *slot = portal;
        } else if self.named_portals.len() < self.limits.max_names {
            self.named_portals.insert(name.into(), portal);
        } else {
            sink.desync(Direction::Frontend, DesyncReason::TooManyNames);
        }
    }

    fn portal(&self, name: &[u8]) -> Target<S> {
        let found = if name.is_empty() {
            self.unnamed_portal.as_ref()
        } else {
            self.named_portals.get(name)
        };
        found.map_or(Target::Unknown, |p| p.target.clone())
    }

    fn push_ready(&mut self, kind: ReadyKind, ts: u64, stmts: usize, last: Option<S>) {
        self.ready_seq += 1;
        self.readies += 1;
        let seq = self.ready_seq;
        self.queue.push_back(Pending::Ready {
            kind,
            seq,
            start_ns: ts,
            stmts,
            last,
            miscounted: false,
        });
    }

    /// A ReadyForQuery with status `I` (idle, outside a transaction block) ended the
    /// transaction in which every portal bound before Ready number `seq` was created:
    /// portals last until the end of their transaction (§54.2.3). `None`: all of them.
    pub fn end_transaction(&mut self, seq: Option<u64>) {
        let before = seq.unwrap_or(u64::MAX);
        if self
            .unnamed_portal
            .as_ref()
            .is_some_and(|p| p.bound_at < before)
        {
            self.unnamed_portal = None;
        }
        if !self.named_portals.is_empty() {
            self.named_portals.retain(|_, p| p.bound_at >= before);
            if self.named_portals.is_empty() && self.named_portals.capacity() > 64 {
                self.named_portals = AHashMap::default();
            }
        }
    }

    /// Pops the front entry, keeping `readies` in step.
    pub(super) fn pop(&mut self) -> Option<Pending<S>> {
        let p = self.queue.pop_front();
        if matches!(p, Some(Pending::Ready { .. })) {
            self.readies = self.readies.saturating_sub(1);
        }
        p
    }

    /// The server started COPY FROM STDIN for the front request: Syncs the frontend sent
    /// after it and before its CopyDone/CopyFail are swallowed by the copy and get no
    /// ReadyForQuery (§54.2.6: "The backend will ignore Flush and Sync messages received
    /// during copy-in mode").
    pub(super) fn copy_in_started(&mut self) {
        let mut i = 1;
        while i < self.queue.len() {
            match self.queue[i] {
                Pending::CopyEnd => {
                    self.queue.remove(i);
                    return;
                }
                Pending::Ready {
                    kind: ReadyKind::Sync,
                    ..
                } => {
                    self.queue.remove(i);
                    self.readies = self.readies.saturating_sub(1);
                }
                _ => i += 1,
            }
        }
        self.copy_in = true;
    }
}
