//! One connection: two framed streams, the startup phase, and the session behind them.

use super::frame::{Item, Msg, Reader};
use super::responses::Handled;
use super::session::Session;
use super::startup::{self, Packet};
use super::{DesyncReason, Direction, Encryption, ErrorContext, Limits, Phase, Sink, body};

/// The parser of one client connection (one backend and one client socket; the caller keys
/// connections by `(pid, fd)`).
///
/// Feed it the frontend stream with [`frontend`](Self::frontend) and the backend stream with
/// [`backend`](Self::backend), chunk by chunk, in the order the backend read and wrote them;
/// report missing bytes with [`frontend_gap`](Self::frontend_gap),
/// [`backend_gap`](Self::backend_gap) and [`lost`](Self::lost). Events go to the [`Sink`]
/// passed in each call. `S` is the caller's per-statement value ([`Sink::Stmt`]).
///
/// Memory: the statement and portal maps, the FIFO of pending responses (each bounded by
/// [`Limits`]) and one reassembly buffer per direction, used only for a message split
/// across chunks and never larger than [`Limits::max_message`].
pub struct Connection<S> {
    fe: Reader,
    be: Reader,
    st: State<S>,
}

/// Everything but the two readers, so that a message borrowed from a reader can be handled
/// while the other fields change.
struct State<S> {
    phase: Phase,
    /// An SSLRequest/GSSENCRequest awaiting its one-byte answer.
    negotiating: Option<Encryption>,
    sess: Session<S>,
    /// Timestamps of the last chunk of each direction, for messages a gap completes.
    fe_ts: u64,
    be_ts: u64,
}

/// What the connection must do after an item, once the reader's borrow is over.
enum Action {
    None,
    Desync(Direction, DesyncReason),
    /// Expect the answer to SSLRequest/GSSENCRequest on the backend stream.
    AwaitReply,
    /// The startup packet is done: typed frontend messages follow.
    Typed,
    Encrypted(Encryption),
    Cancel,
    /// The byte read as an answer to SSLRequest is the start of a typed message.
    Refeed,
    /// The backend's first bytes on a connection picked up mid-stream: try framing them.
    First,
    /// A trial ended with the backend still framed: usual framing limits from here.
    Settled,
}

impl<S: Clone> Default for Connection<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: Clone> Connection<S> {
    /// A connection seen from its start: the first frontend bytes are a startup-phase packet
    /// (StartupMessage, SSLRequest, GSSENCRequest or CancelRequest; §54.2.1). Default
    /// [`Limits`].
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    /// [`new`](Self::new) with explicit limits.
    pub fn with_limits(limits: Limits) -> Self {
        let mut fe = Reader::new(Direction::Frontend, limits.max_message);
        fe.expect_startup();
        Connection {
            fe,
            be: Reader::new(Direction::Backend, limits.max_message),
            st: State::new(Phase::Startup, Session::new(limits, false)),
        }
    }

    /// A connection opened before the capture began: no startup packet will be seen, and
    /// both streams may start in the middle of a message. The frontend resumes at the first
    /// chunk that starts with plausible messages. If the backend sends nothing before that,
    /// its first bytes are taken for the answer to what the frontend sent, on trial: the
    /// executions are reported if that answer matches up to its ReadyForQuery (the usual
    /// case: an idle session whose client sends its next request). Otherwise the backend
    /// resumes after the first chunk that ends with ReadyForQuery, and executions are
    /// reported from the first ReadyForQuery that leaves no earlier request unanswered.
    /// Default [`Limits`].
    pub fn new_mid_stream() -> Self {
        Self::mid_stream_with_limits(Limits::default())
    }

    /// [`new_mid_stream`](Self::new_mid_stream) with explicit limits.
    pub fn mid_stream_with_limits(limits: Limits) -> Self {
        let mut fe = Reader::new(Direction::Frontend, limits.max_message);
        let mut be = Reader::new(Direction::Backend, limits.max_message);
        fe.resync();
        be.resync();
        be.watch_first_bytes();
        Connection {
            fe,
            be,
            st: State::new(Phase::Ready, Session::new(limits, true)),
        }
    }

    /// Bytes the backend received from its client, captured at `ts_ns` (the caller's clock,
    /// in nanoseconds; it should not go backwards).
    pub fn frontend<K: Sink<Stmt = S>>(&mut self, ts_ns: u64, bytes: &[u8], sink: &mut K) {
        self.st.fe_ts = ts_ns;
        let mut pos = 0;
        while let Some(item) = self.fe.next(bytes, &mut pos) {
            // Most messages need no action: skip the call.
            match self.st.frontend_item(item, ts_ns, sink) {
                Action::None => {}
                action => self.apply(action, sink),
            }
        }
    }

    /// Bytes the backend sent to its client, captured at `ts_ns`.
    pub fn backend<K: Sink<Stmt = S>>(&mut self, ts_ns: u64, bytes: &[u8], sink: &mut K) {
        self.st.be_ts = ts_ns;
        let mut pos = 0;
        while let Some(item) = self.be.next(bytes, &mut pos) {
            match self.st.backend_item(item, ts_ns, sink) {
                Action::None => {}
                Action::Refeed => pos = pos.saturating_sub(1),
                action => self.apply(action, sink),
            }
        }
    }

    /// `n` bytes of the frontend stream are missing at this point. Skipped silently if they
    /// fall inside the unparsed part of a message (CopyData, the parameters of a Bind, the
    /// rest of an over-long Query); otherwise a [`DesyncReason::Gap`].
    pub fn frontend_gap<K: Sink<Stmt = S>>(&mut self, n: u64, sink: &mut K) {
        match self.fe.gap(n) {
            Ok(()) => self.frontend(self.st.fe_ts, &[], sink),
            Err(reason) => self.desync(Direction::Frontend, reason, sink),
        }
    }

    /// `n` bytes of the backend stream are missing at this point. Skipped silently if they
    /// fall inside a message whose body is not parsed (DataRow, CopyData, RowDescription,
    /// NoticeResponse, …); otherwise a [`DesyncReason::Gap`].
    pub fn backend_gap<K: Sink<Stmt = S>>(&mut self, n: u64, sink: &mut K) {
        match self.be.gap(n) {
            Ok(()) => self.backend(self.st.be_ts, &[], sink),
            Err(reason) => self.desync(Direction::Backend, reason, sink),
        }
    }

    /// An unknown amount of both streams was lost: both resynchronise, pending executions
    /// are dropped. Counted as [`DesyncReason::Lost`] for each direction that was in sync.
    pub fn lost<K: Sink<Stmt = S>>(&mut self, sink: &mut K) {
        if self.fe.is_off() {
            return;
        }
        // What was lost may have been the backend's first bytes, or what the first request
        // answers: no trial.
        self.be.forget_first();
        self.st.sess.abandon_trial(sink);
        for (dir, reader) in [
            (Direction::Frontend, &mut self.fe),
            (Direction::Backend, &mut self.be),
        ] {
            if !reader.is_resyncing() {
                sink.desync(dir, DesyncReason::Lost);
                reader.resync();
            }
        }
        self.st.lost_sync(false);
    }

    /// Where the connection is in its life.
    pub fn phase(&self) -> Phase {
        self.st.phase
    }

    /// Whether the session is encrypted (nothing more will be parsed; the caller may drop
    /// the connection's state).
    pub fn is_encrypted(&self) -> bool {
        self.st.phase == Phase::Encrypted
    }

    /// Whether nothing more will be parsed: encrypted, or a CancelRequest connection.
    pub fn is_ignored(&self) -> bool {
        matches!(self.st.phase, Phase::Encrypted | Phase::Cancel)
    }

    /// Whether executions are being reported: `false` while the connection resynchronises
    /// after a desync or after being picked up mid-stream (also during a trial, whose
    /// reports are held until its ReadyForQuery).
    pub fn is_synchronized(&self) -> bool {
        !self.st.sess.quarantined && !self.fe.is_resyncing() && !self.be.is_resyncing()
    }

    /// Responses the backend still owes (pending Parse, Bind, Execute, Sync, …).
    pub fn pending(&self) -> usize {
        self.st.sess.queue.len()
    }

    /// Capacity of both reassembly buffers, in bytes.
    #[cfg(test)]
    pub(super) fn buffer_capacity(&self) -> usize {
        self.fe.buffer_capacity() + self.be.buffer_capacity()
    }

    fn apply<K: Sink<Stmt = S>>(&mut self, action: Action, sink: &mut K) {
        match action {
            Action::None | Action::Refeed => {}
            Action::Desync(dir, reason) => self.desync(dir, reason, sink),
            Action::AwaitReply => self.be.expect_reply(),
            Action::Typed => self.fe.expect_typed(),
            Action::Encrypted(how) => {
                sink.encrypted(how);
                self.st.phase = Phase::Encrypted;
                self.fe.off();
                self.be.off();
            }
            Action::Cancel => {
                sink.cancel_request();
                self.st.phase = Phase::Cancel;
                self.fe.off();
                self.be.off();
            }
            Action::First => self.first_backend_bytes(),
            Action::Settled => self.be.end_trial(),
        }
    }

    /// The backend's first bytes on a connection picked up mid-stream: frame them on trial if
    /// the frontend has queued a request (see `trial.rs`).
    #[cold]
    #[inline(never)]
    fn first_backend_bytes(&mut self) {
        if self.st.phase == Phase::Ready && self.st.sess.begin_trial() {
            self.be.begin_trial();
        }
    }

    /// A desync during a trial: held errors go out as unmatched; a backend that does not
    /// frame fails the trial ([`DesyncReason::Tentative`]). Returns the reason to count.
    #[cold]
    #[inline(never)]
    fn end_trial_at_desync<K: Sink<Stmt = S>>(
        &mut self,
        dir: Direction,
        reason: DesyncReason,
        sink: &mut K,
    ) -> DesyncReason {
        self.st.sess.abandon_trial(sink);
        match reason {
            DesyncReason::UnknownType | DesyncReason::BadLength | DesyncReason::Malformed
                if dir == Direction::Backend =>
            {
                DesyncReason::Tentative
            }
            _ => reason,
        }
    }

    /// Counts a desync; framing desyncs resynchronise their stream; all drop the pending
    /// responses. During a trial, the backend's framing was never confirmed: it resynchronises
    /// too, and a backend that does not frame counts as a failed trial.
    fn desync<K: Sink<Stmt = S>>(&mut self, dir: Direction, reason: DesyncReason, sink: &mut K) {
        if self.is_ignored() {
            return;
        }
        let trial = self.st.sess.in_trial();
        let reason = if trial {
            self.end_trial_at_desync(dir, reason, sink)
        } else {
            reason
        };
        sink.desync(dir, reason);
        let framing = !matches!(
            reason,
            DesyncReason::UnexpectedMessage | DesyncReason::QueueOverflow
        );
        if framing {
            match dir {
                Direction::Frontend => self.fe.resync(),
                Direction::Backend => self.be.resync(),
            }
        }
        if trial {
            self.be.resync();
        }
        let backend_intact = !(trial || (framing && dir == Direction::Backend));
        self.st.lost_sync(backend_intact);
    }
}

impl<S: Clone> State<S> {
    fn new(phase: Phase, sess: Session<S>) -> Self {
        State {
            phase,
            negotiating: None,
            sess,
            fe_ts: 0,
            be_ts: 0,
        }
    }

    /// After a desync: pending responses are dropped, and a connection still in its startup
    /// continues as one in normal operation whose start was not seen.
    fn lost_sync(&mut self, backend_intact: bool) {
        self.sess.drop_pending(backend_intact);
        self.negotiating = None;
        if matches!(self.phase, Phase::Startup | Phase::Authenticating) {
            self.phase = Phase::Ready;
        }
    }

    fn frontend_item<K: Sink<Stmt = S>>(
        &mut self,
        item: Item<'_>,
        ts: u64,
        sink: &mut K,
    ) -> Action {
        match item {
            Item::Msg(m) if m.ty == 0 => self.startup_packet(&m, sink),
            Item::Msg(m) => {
                if let Err(reason) = self.sess.frontend(&m, ts, sink) {
                    return Action::Desync(Direction::Frontend, reason);
                }
                if self.sess.queue.len() > self.sess.limits.max_pending {
                    return Action::Desync(Direction::Frontend, DesyncReason::QueueOverflow);
                }
                Action::None
            }
            Item::Tls => Action::Encrypted(self.negotiating.unwrap_or(Encryption::DirectTls)),
            // After SSLRequest/GSSENCRequest whose answer was not seen, bytes that are no
            // startup packet are the encrypted session.
            Item::Desync(_) if self.negotiating.is_some() => {
                Action::Encrypted(self.negotiating.unwrap_or(Encryption::DirectTls))
            }
            Item::Desync(reason) => Action::Desync(Direction::Frontend, reason),
            Item::Reply(_) | Item::First => Action::None,
        }
    }

    /// A startup-phase packet (§54.2.1, §54.2.8, §54.2.10, §54.2.11).
    fn startup_packet<K: Sink<Stmt = S>>(&mut self, m: &Msg<'_>, sink: &mut K) -> Action {
        match startup::packet(m.body) {
            Some(Packet::Ssl) => {
                self.negotiating = Some(Encryption::Ssl);
                Action::AwaitReply
            }
            Some(Packet::Gss) => {
                self.negotiating = Some(Encryption::Gss);
                Action::AwaitReply
            }
            Some(Packet::Cancel) => Action::Cancel,
            Some(Packet::Startup(s)) => {
                sink.startup(&s);
                self.negotiating = None;
                self.phase = Phase::Authenticating;
                Action::Typed
            }
            None => match self.negotiating {
                Some(how) => Action::Encrypted(how),
                None => Action::Desync(Direction::Frontend, DesyncReason::BadStartup),
            },
        }
    }

    fn backend_item<K: Sink<Stmt = S>>(&mut self, item: Item<'_>, ts: u64, sink: &mut K) -> Action {
        match item {
            Item::Msg(m) => self.backend_msg(&m, ts, sink),
            Item::Reply(b) => match (self.negotiating, b) {
                (Some(Encryption::Ssl), b'S') => Action::Encrypted(Encryption::Ssl),
                (Some(Encryption::Gss), b'G') => Action::Encrypted(Encryption::Gss),
                (_, b'N') => {
                    self.negotiating = None;
                    Action::None
                }
                // A server that cannot negotiate answers with an ErrorResponse (§54.2.10).
                (_, b'E') => {
                    self.negotiating = None;
                    Action::Refeed
                }
                _ => Action::Desync(Direction::Backend, DesyncReason::BadStartup),
            },
            Item::Tls => Action::None,
            Item::Desync(reason) => Action::Desync(Direction::Backend, reason),
            Item::First => Action::First,
        }
    }

    fn backend_msg<K: Sink<Stmt = S>>(&mut self, m: &Msg<'_>, ts: u64, sink: &mut K) -> Action {
        match self.phase {
            Phase::Ready => match self.sess.backend(m, ts, sink) {
                Ok(Handled::Done) => Action::None,
                Ok(Handled::Settled) => Action::Settled,
                Err(reason) => Action::Desync(Direction::Backend, reason),
            },
            Phase::Startup | Phase::Authenticating => {
                match m.ty {
                    // The first ReadyForQuery ends the startup; it answers no request, and
                    // a query pipelined behind the startup packet starts after it.
                    b'Z' if self.phase == Phase::Authenticating => {
                        self.phase = Phase::Ready;
                        self.sess.last_end = self.sess.last_end.max(ts);
                    }
                    b'E' => sink.error(body::error_response(m.body), ErrorContext::Startup),
                    b'S' => {
                        if let Some((name, value)) = body::parameter_status(m.body) {
                            sink.parameter_status(name, value);
                        }
                    }
                    _ => {}
                }
                Action::None
            }
            Phase::Encrypted | Phase::Cancel => Action::None,
        }
    }
}
