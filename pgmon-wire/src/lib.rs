//! `pgmon-wire` parses the PostgreSQL frontend/backend protocol, versions 3.0 and 3.2, as a
//! passive observer of one connection's two byte streams (PostgreSQL documentation, chapter
//! "Frontend/Backend Protocol": chapter 54 in PostgreSQL 18, 53 in 17; the title is the same
//! in every version).
//!
//! **What goes in.** One [`Connection`] per client connection, fed the bytes the backend
//! received from its client ([`Connection::frontend`], the *frontend* stream) and sent to it
//! ([`Connection::backend`], the *backend* stream), in the order the backend performed its
//! `recvfrom`/`sendto` calls, as chunks of any size, each with a timestamp in the caller's
//! nanoseconds; and what the capture knows it missed ([`Connection::frontend_gap`],
//! [`Connection::backend_gap`], [`Connection::lost`]). A connection first seen after its
//! startup is made with [`Connection::new_mid_stream`].
//!
//! **What comes out.** Calls on the caller's [`Sink`]: the startup packet (role, database,
//! `application_name`, protocol version), each statement to prepare ([`Sink::prepare`],
//! whose `Stmt` values the parser carries through statement and portal maps), each finished
//! execution with its timing and outcome ([`Completion`]), each `ErrorResponse` with where it
//! arrived, ParameterStatus, encryption and cancel requests, and each desynchronisation with
//! its [`DesyncReason`]. The connection frames the streams into messages, mirrors the
//! server's prepared-statement and portal maps, and keeps a FIFO of the responses it expects.
//!
//! **Guarantees.** The parser is pure: no I/O, no clock (timestamps come in with the bytes),
//! no global state. It never panics and always returns, whatever the bytes: what it cannot
//! read is reported to [`Sink::desync`] (counted by reason and direction) and the stream
//! resynchronises at a later ReadyForQuery. Memory per connection is bounded by [`Limits`].
//! Connections share nothing, so one connection's bytes, however malformed, never change
//! what another reports. The property tests (`src/tests/prop.rs`) and the `feed` fuzz
//! target (`fuzz/`) check these.
//!
//! How responses are matched (details on the items):
//!
//! - Each Parse, Bind, Describe, Close, Execute, Sync, FunctionCall and each statement of a
//!   Query (as split by [`Sink::prepare`]) queues the response it is owed; backend messages
//!   answer the oldest. An ErrorResponse fails the oldest execution and, in the extended
//!   protocol, drops everything up to the next Sync, as the server does.
//! - A Query answered by more `CommandComplete`s than `prepare` returned statements: the
//!   extra ones are attributed to its last statement; fewer: the rest are dropped; either
//!   way counted once as [`DesyncReason::StatementCount`].
//! - A FunctionCall is matched (its error is reported as [`ErrorContext::FunctionCall`]) but
//!   not reported as a completion: it has no statement.
//! - On a connection picked up mid-stream, the first request seen is matched on trial: its
//!   executions are reported if the backend's answer matches it exactly up to its
//!   ReadyForQuery, and the connection is then synchronized; an answer that shows an older
//!   request fails the trial ([`DesyncReason::Tentative`]). See `trial.rs` for what a
//!   pipelining client can still make it get wrong.
//! - After a desync, or a failed trial, nothing is reported until a ReadyForQuery leaves no
//!   earlier request unanswered; a client that keeps pipelining through that moment may
//!   have a few executions attributed one request off until its pipeline drains (the
//!   stream alone cannot tell).
//!
//! References are to the PostgreSQL 18 documentation, chapter 54 "Frontend/Backend Protocol":
//! §54.2 Message Flow (54.2.1 Start-up, 54.2.2 Simple Query, 54.2.3 Extended Query,
//! 54.2.4 Pipelining, 54.2.5 Function Call, 54.2.6 COPY Operations, 54.2.7 Asynchronous
//! Operations, 54.2.8 Canceling Requests in Progress, 54.2.10 SSL Session Encryption,
//! 54.2.11 GSSAPI Session Encryption), §54.7 Message Formats, §54.8 Error and Notice Message
//! Fields. Where the documentation is silent, the rule comes from the server's source
//! (`src/backend/tcop/postgres.c`, `SocketBackend` and `PostgresMain`) and is said so.

mod body;
mod conn;
#[cfg(any(test, feature = "fixtures"))]
pub mod enc;
mod frame;
mod responses;
mod session;
mod startup;
mod trial;

#[cfg(test)]
pub(crate) mod tests;

pub use conn::Connection;
pub use startup::{Params, Startup};

/// Which of a connection's two byte streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Bytes the backend received from its client (frontend messages).
    Frontend,
    /// Bytes the backend sent to its client (backend messages).
    Backend,
}

impl Direction {
    /// A stable lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Frontend => "frontend",
            Direction::Backend => "backend",
        }
    }
}

/// How a session became encrypted, after which nothing more of it is parsed (§54.2.10,
/// §54.2.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Encryption {
    /// SSLRequest answered `'S'`: TLS follows.
    Ssl,
    /// GSSENCRequest answered `'G'`: GSSAPI encryption follows.
    Gss,
    /// PostgreSQL 17+ "direct SSL": the first frontend bytes are a TLS record (0x16 0x03),
    /// with no SSLRequest before them.
    DirectTls,
}

/// The `replication` startup parameter (§54.4 Streaming Replication Protocol).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Replication {
    /// Absent or false: an ordinary session.
    No,
    /// `replication=true` (or another boolean true): a physical-replication walsender.
    Physical,
    /// `replication=database`: a logical-replication walsender connected to a database.
    Logical,
}

/// How one execution ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// `CommandComplete` (or `EmptyQueryResponse`). `rows` is the count in the command tag
    /// for the commands that carry one (SELECT, INSERT, UPDATE, DELETE, MERGE, FETCH, MOVE,
    /// COPY; §54.7 CommandComplete), `None` otherwise.
    Ok {
        /// Rows affected or returned, from the command tag.
        rows: Option<u64>,
    },
    /// `ErrorResponse`: the execution failed with this SQLSTATE (§54.8 field `C`).
    Error {
        /// The five-character SQLSTATE, e.g. `*b"57014"`.
        sqlstate: [u8; 5],
    },
    /// `PortalSuspended`: an Execute with a row limit stopped before the portal's end
    /// (§54.2.3). The portal lives on; a later Execute of it is a new execution.
    Suspended {
        /// `DataRow` messages sent by this execution.
        rows: u64,
    },
}

/// One finished execution: an Execute of a portal (extended protocol) or one statement of a
/// simple Query.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Completion<S> {
    /// What [`Sink::prepare`] returned for the statement executed.
    pub stmt: S,
    /// Start, in the caller's nanoseconds: the later of the timestamp of the frontend chunk
    /// that completed the Query/Execute message and `end_ns` of the previous completion on
    /// this connection (a pipelined execution waits for the one before it). Never after
    /// `end_ns`.
    pub start_ns: u64,
    /// End, in the caller's nanoseconds: the timestamp of the backend chunk that completed
    /// the `CommandComplete`, `EmptyQueryResponse`, `PortalSuspended` or `ErrorResponse`.
    pub end_ns: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// Where an `ErrorResponse` arrived, given to [`Sink::error`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorContext {
    /// Before the first ReadyForQuery: the startup or authentication failed (e.g. 28P01,
    /// 3D000, 53300). The server closes the connection after it.
    Startup,
    /// It failed an execution; [`Sink::completed`] (or [`Sink::unattributed`]) was called
    /// with [`Outcome::Error`] just before.
    Execution,
    /// It answered a Parse (e.g. a syntax error, 42601).
    Parse,
    /// It answered a Bind (e.g. a parameter that does not convert, 22P02).
    Bind,
    /// It answered a Describe.
    Describe,
    /// It answered a Close.
    Close,
    /// It arrived at a Sync, where an implicit transaction commits (e.g. a deferred
    /// constraint, 23503, or a serialization failure, 40001).
    Sync,
    /// It answered a FunctionCall (§54.2.5).
    FunctionCall,
    /// Nothing was pending: an idle session was ended by the server (e.g. 57P01, 57P05,
    /// 25P03).
    Idle,
    /// The parser could not tell: the connection is resynchronising after a desync, or was
    /// picked up mid-stream (also an error held by a trial that failed).
    Unmatched,
}

impl ErrorContext {
    /// A stable lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorContext::Startup => "startup",
            ErrorContext::Execution => "execution",
            ErrorContext::Parse => "parse",
            ErrorContext::Bind => "bind",
            ErrorContext::Describe => "describe",
            ErrorContext::Close => "close",
            ErrorContext::Sync => "sync",
            ErrorContext::FunctionCall => "function_call",
            ErrorContext::Idle => "idle",
            ErrorContext::Unmatched => "unmatched",
        }
    }
}

/// What pgmon reads of an `ErrorResponse` (§54.8 Error and Notice Message Fields).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ErrorResponse {
    /// The five-character SQLSTATE (field `C`), e.g. `*b"28P01"`; `XX000` (internal_error)
    /// if the message carries none. Its first two characters are the class (PostgreSQL docs,
    /// Appendix A "PostgreSQL Error Codes").
    pub sqlstate: [u8; 5],
    /// Severity FATAL or PANIC (field `V`, or `S` before PostgreSQL 9.6): the server ends the
    /// session after sending it.
    pub fatal: bool,
}

/// What an `ErrorResponse` failed, for counting: a role's statement errors never exceed its
/// statements, because every error counted as a statement's either failed an execution
/// already counted or is itself counted as one failed statement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorScope {
    /// It failed an execution, reported through [`Sink::completed`] (or
    /// [`Sink::unattributed`]) just before ([`ErrorContext::Execution`]), even a FATAL one
    /// (a session terminated while its statement ran: 57P01).
    Execution,
    /// It failed a request that executed nothing: a Bind, Describe, Close or FunctionCall
    /// answered by an error, the implicit commit at a Sync, or a non-fatal error the parser
    /// could not match to its request ([`ErrorContext::Unmatched`]). Counted as one
    /// statement that failed.
    Request,
    /// It failed a Parse (a syntax error in a driver's prepare, psql's `\gdesc` of a bad
    /// query): a prepare is not an execution, so it is counted apart, as a failed prepare,
    /// like [`Connection`](Self::Connection) errors.
    Prepare,
    /// It answers no statement: the startup or authentication failed (3D000 no such
    /// database, 28P01 bad password, 53300 too many connections), the server ended an idle
    /// session (57P01, 57P05, 25P03), or a FATAL error outside an execution (08P01 protocol
    /// violation). Counted as a connection error.
    Connection,
}

impl ErrorScope {
    /// The scope of error `e` that arrived in `ctx`.
    pub fn of(e: ErrorResponse, ctx: ErrorContext) -> ErrorScope {
        match ctx {
            ErrorContext::Execution => ErrorScope::Execution,
            ErrorContext::Startup | ErrorContext::Idle => ErrorScope::Connection,
            _ if e.fatal => ErrorScope::Connection,
            ErrorContext::Parse => ErrorScope::Prepare,
            ErrorContext::Bind
            | ErrorContext::Describe
            | ErrorContext::Close
            | ErrorContext::Sync
            | ErrorContext::FunctionCall
            | ErrorContext::Unmatched => ErrorScope::Request,
        }
    }
}

/// Why the parser lost (or could not establish) its understanding of a stream, given to
/// [`Sink::desync`]. The first group drops the pending executions and resynchronises; the
/// second ([`UnknownPortal`](Self::UnknownPortal) and later) only counts an execution or a
/// statement the parser could not attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DesyncReason {
    /// A message type byte that does not exist in this direction (§54.7).
    UnknownType,
    /// A length word below 4, above 1 GiB, or outside what the message type allows.
    BadLength,
    /// A message whose body does not follow its format (§54.7).
    Malformed,
    /// A startup-phase packet that is neither a StartupMessage (protocol 3.x), an SSLRequest,
    /// a GSSENCRequest nor a CancelRequest, or a bad answer to SSLRequest/GSSENCRequest.
    BadStartup,
    /// The capture reported bytes missing where the parser needed them.
    Gap,
    /// The capture reported records lost in both directions.
    Lost,
    /// A backend message that does not answer the oldest pending request, or a
    /// ReadyForQuery that skipped unanswered requests.
    UnexpectedMessage,
    /// More requests outstanding than the configured limit ([`Limits::max_pending`]).
    QueueOverflow,
    /// On a connection picked up mid-stream ([`Connection::new_mid_stream`]), the backend's
    /// first messages did not answer the first request the frontend was seen to send: they
    /// belong to a request sent before the capture began (or began in the middle of a
    /// message). That request's executions are not reported; the connection resynchronises.
    Tentative,
    /// An Execute of a portal the parser does not know, or one bound to a statement it does
    /// not know (typically a connection picked up mid-stream, whose Parse was never seen).
    /// The execution is still reported, through [`Sink::unattributed`].
    UnknownPortal,
    /// A simple Query whose `CommandComplete`s did not match, in number, the statements
    /// [`Sink::prepare`] returned for it (counted once per Query). Extra completions are
    /// attributed to the last statement; missing ones are dropped.
    StatementCount,
    /// A named statement or portal not tracked because the connection already holds
    /// [`Limits::max_names`] of them.
    TooManyNames,
}

impl DesyncReason {
    /// A stable lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            DesyncReason::UnknownType => "unknown_type",
            DesyncReason::BadLength => "bad_length",
            DesyncReason::Malformed => "malformed",
            DesyncReason::BadStartup => "bad_startup",
            DesyncReason::Gap => "gap",
            DesyncReason::Lost => "lost",
            DesyncReason::UnexpectedMessage => "unexpected_message",
            DesyncReason::QueueOverflow => "queue_overflow",
            DesyncReason::Tentative => "tentative",
            DesyncReason::UnknownPortal => "unknown_portal",
            DesyncReason::StatementCount => "statement_count",
            DesyncReason::TooManyNames => "too_many_names",
        }
    }

    /// Whether this reason made the connection drop its pending executions and
    /// resynchronise (as opposed to counting one unattributed execution or statement).
    pub fn resynchronises(self) -> bool {
        !matches!(
            self,
            DesyncReason::UnknownPortal | DesyncReason::StatementCount | DesyncReason::TooManyNames
        )
    }
}

/// Where a connection is in its life (§54.2.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Waiting for the startup packet (also after an SSLRequest/GSSENCRequest answered `'N'`).
    Startup,
    /// StartupMessage seen; authentication in progress until the first ReadyForQuery.
    Authenticating,
    /// Normal operation (also: picked up mid-stream, or after a desync in startup).
    Ready,
    /// Encrypted: nothing more is parsed.
    Encrypted,
    /// A CancelRequest connection: nothing more is expected.
    Cancel,
}

/// Bounds on what one connection may hold. The defaults suit a host agent with thousands of
/// connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The most bytes of one message kept for parsing (default 1 MiB). A longer Query or
    /// Parse goes to [`Sink::truncated`] with its first `max_message` bytes; longer messages
    /// of other types keep their first `max_message` bytes, which hold everything parsed.
    /// Messages whose bodies are not needed (DataRow, CopyData, …) are skipped by length
    /// and never buffered, whatever their size.
    pub max_message: u32,
    /// The most responses one connection may be waiting for (default 65 536). Beyond it the
    /// connection desyncs with [`DesyncReason::QueueOverflow`].
    pub max_pending: usize,
    /// The most named prepared statements, and separately named portals, tracked per
    /// connection (default 10 000). Beyond it new names are not tracked
    /// ([`DesyncReason::TooManyNames`]).
    pub max_names: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 1 << 20,
            max_pending: 1 << 16,
            max_names: 10_000,
        }
    }
}

/// What a [`Connection`] reports to. One sink may serve many connections; the connection
/// passes it in every call, so it holds no reference.
pub trait Sink {
    /// What the caller keeps per parsed statement (e.g. an `Arc` with a fingerprint). Cloned
    /// from the statement map into portals and pending executions.
    type Stmt: Clone;

    /// Called once per Parse (`simple == false`, `text` is its query string, one statement)
    /// and once per Query message (`simple == true`, `text` may hold several statements),
    /// without the terminating NUL. Push one `Stmt` per statement, in order. Pushing nothing
    /// is allowed for a text with no statement (empty, only comments or semicolons): the
    /// server answers it with EmptyQueryResponse, which completes nothing. For a Parse only
    /// the first pushed `Stmt` is kept (the server refuses a Parse of several statements).
    fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<Self::Stmt>);

    /// Like [`prepare`](Self::prepare), for a Query or Parse longer than
    /// [`Limits::max_message`]: `prefix` holds the first bytes of its query string, `len` is
    /// the query string's full length in bytes (for a Parse, an upper bound that also counts
    /// 4 bytes per declared parameter type, which follow the query and were not read). Push
    /// what its executions should be attributed to (e.g. one placeholder), or nothing.
    fn truncated(&mut self, prefix: &[u8], len: usize, simple: bool, out: &mut Vec<Self::Stmt>);

    /// A StartupMessage (§54.2.1, §54.7 StartupMessage).
    fn startup(&mut self, s: &Startup<'_>);

    /// The session became encrypted; nothing more of it will be parsed.
    fn encrypted(&mut self, how: Encryption);

    /// The connection carried a CancelRequest (§54.2.8); nothing more is expected on it.
    fn cancel_request(&mut self);

    /// One execution finished.
    fn completed(&mut self, c: Completion<Self::Stmt>);

    /// One execution finished whose statement the parser does not know (its Execute was
    /// counted as [`DesyncReason::UnknownPortal`]). Ignored unless overridden.
    fn unattributed(&mut self, c: Completion<()>) {
        let _ = c;
    }

    /// Every `ErrorResponse` the backend sent, with its SQLSTATE and severity, and where it
    /// arrived ([`ErrorScope::of`] says what it failed).
    fn error(&mut self, e: ErrorResponse, ctx: ErrorContext);

    /// The parser lost sync, or could not attribute something; see [`DesyncReason`].
    fn desync(&mut self, dir: Direction, reason: DesyncReason);

    /// A ParameterStatus from the backend (§54.2.7), e.g. `application_name` after a `SET`.
    /// Ignored unless overridden.
    fn parameter_status(&mut self, name: &[u8], value: &[u8]) {
        let _ = (name, value);
    }
}
