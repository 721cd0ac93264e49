//! Framing: turning one direction's chunks into whole messages.
//!
//! A message that lies wholly in a chunk is handed out in place; only a message split across
//! chunks is copied, and only the prefix of its body that the parser reads (its *keep*). The
//! rest of a body is skipped by its length, so a DataRow or CopyData costs nothing whatever
//! its size (§54.7: Byte1 type, Int32 length including itself, body).

mod kinds;

use super::{DesyncReason, Direction};
pub(super) use kinds::plausible_frontend;
use kinds::{ALL, Kind, MAX_STARTUP, TRIAL, kind, kinds};

/// A reassembly buffer grown past this is released once its message is done.
const SHRINK_ABOVE: usize = 64 * 1024;

/// One framed message. `ty` is 0 for an untyped startup-phase packet, whose body then starts
/// with its Int32 code.
pub(super) struct Msg<'a> {
    pub ty: u8,
    /// The kept prefix of the body (the whole body unless `truncated()`).
    pub body: &'a [u8],
    /// The full body length in bytes (length word − 4).
    pub len: u32,
}

impl Msg<'_> {
    /// Whether `body` is shorter than the message.
    pub fn truncated(&self) -> bool {
        self.body.len() < self.len as usize
    }
}

/// What the reader found next in a chunk.
pub(super) enum Item<'a> {
    Msg(Msg<'a>),
    /// The single-byte answer to an SSLRequest or GSSENCRequest.
    Reply(u8),
    /// A TLS record where a startup-phase packet was expected.
    Tls,
    /// The stream is not what it should be; the reader is now resynchronising.
    Desync(DesyncReason),
    /// The first bytes of a resynchronising stream whose reader was told to
    /// [`watch_first_bytes`](Reader::watch_first_bytes); nothing is consumed. Once only.
    First,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    Header,
    Body,
    /// One byte: the answer to SSLRequest/GSSENCRequest.
    Reply,
    /// Looking for a message boundary.
    Resync,
    /// Encrypted or finished: everything is ignored.
    Off,
}

/// One direction's framing state.
pub(super) struct Reader {
    dir: Direction,
    mode: Mode,
    /// The message types of this direction ([`TRIAL`] while the backend framing is on trial).
    table: &'static [Kind; 256],
    /// Hand out the next bytes as [`Item::First`]
    /// (see [`watch_first_bytes`](Self::watch_first_bytes)).
    first: bool,
    /// `false` while a startup-phase packet (no type byte) is expected.
    typed: bool,
    hdr: [u8; 5],
    hdr_len: u8,
    /// While a backend resynchronises: the last bytes of the previous chunks.
    tail: [u8; 5],
    tail_len: u8,
    ty: u8,
    /// Body length, body bytes consumed, body bytes kept.
    len: u32,
    got: u32,
    keep: u32,
    buf: Vec<u8>,
    cap: u32,
}

impl Reader {
    pub fn new(dir: Direction, cap: u32) -> Self {
        Reader {
            dir,
            mode: Mode::Header,
            table: kinds(dir),
            first: false,
            typed: true,
            hdr: [0; 5],
            hdr_len: 0,
            tail: [0; 5],
            tail_len: 0,
            ty: 0,
            len: 0,
            got: 0,
            keep: 0,
            buf: Vec::new(),
            cap: cap.max(1),
        }
    }

    /// Expect an untyped startup-phase packet next.
    pub fn expect_startup(&mut self) {
        self.typed = false;
    }

    /// Expect typed messages from now on.
    pub fn expect_typed(&mut self) {
        self.typed = true;
    }

    /// Expect the one-byte answer to SSLRequest/GSSENCRequest next.
    pub fn expect_reply(&mut self) {
        if self.mode != Mode::Off {
            self.mode = Mode::Reply;
            self.hdr_len = 0;
        }
    }

    /// Ignore everything from now on.
    pub fn off(&mut self) {
        self.mode = Mode::Off;
        self.buf = Vec::new();
    }

    pub fn is_off(&self) -> bool {
        self.mode == Mode::Off
    }

    pub fn is_resyncing(&self) -> bool {
        self.mode == Mode::Resync
    }

    /// Capacity of the reassembly buffer, in bytes.
    #[cfg(test)]
    pub fn buffer_capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// While resynchronising, hand out the first bytes seen as [`Item::First`] before anything
    /// else (a connection picked up mid-stream decides there whether to try framing them).
    /// Forgotten once bytes come, or at [`gap`](Self::gap) or [`forget_first`](Self::forget_first).
    pub fn watch_first_bytes(&mut self) {
        self.first = true;
    }

    /// Bytes of this stream went by unseen: the next ones are not the first.
    pub fn forget_first(&mut self) {
        self.first = false;
    }

    /// Frame the stream from here, from a resynchronising state, as if at a message boundary,
    /// with the stricter backend table [`TRIAL`] until [`end_trial`](Self::end_trial) or
    /// [`resync`](Self::resync).
    pub fn begin_trial(&mut self) {
        if self.mode == Mode::Resync {
            self.mode = Mode::Header;
            self.table = &TRIAL;
            self.hdr_len = 0;
            self.tail_len = 0;
        }
    }

    /// The framing is no longer on trial: the usual table again.
    pub fn end_trial(&mut self) {
        self.table = kinds(self.dir);
    }

    /// Drop any partial message and look for a boundary (typed messages only).
    pub fn resync(&mut self) {
        if self.mode != Mode::Off {
            self.mode = Mode::Resync;
            self.table = kinds(self.dir);
            self.typed = true;
            self.hdr_len = 0;
            self.tail_len = 0;
            self.buf.clear();
        }
    }

    /// `n` bytes of this stream are missing here. `Ok` if they lie inside the skipped part of
    /// the current message (the message then completes on the next [`next`](Self::next),
    /// possibly with an empty chunk), or if the reader is not parsing anyway.
    pub fn gap(&mut self, n: u64) -> Result<(), DesyncReason> {
        match self.mode {
            Mode::Off => Ok(()),
            _ if n == 0 => Ok(()),
            Mode::Resync => {
                self.tail_len = 0;
                self.first = false;
                Ok(())
            }
            Mode::Body if self.got >= self.keep && u64::from(self.len - self.got) >= n => {
                // n ≤ len − got ≤ u32::MAX: the cast is exact.
                self.got += n as u32;
                Ok(())
            }
            _ => Err(DesyncReason::Gap),
        }
    }

    /// The next item of `bytes` from `*pos`, advancing `*pos`; `None` when the chunk is used
    /// up (possibly in the middle of a message, which continues with the next chunk).
    ///
    /// Inlined into the connection's loops for the common case, a typed message lying wholly
    /// in the chunk (or the chunk's end) at a message boundary, handed out in place exactly
    /// as [`next_slow`](Self::next_slow) would; everything else goes there. Measured with
    /// `pgmon-agent replay` on pgbench -S traffic: the call per message was a fifth of the
    /// pipeline's instructions.
    #[inline(always)]
    pub fn next<'a>(&'a mut self, bytes: &'a [u8], pos: &mut usize) -> Option<Item<'a>> {
        if self.mode == Mode::Header && self.hdr_len == 0 && self.typed {
            let rest = bytes.get(*pos..).unwrap_or_default();
            if rest.is_empty() {
                return None;
            }
            if let Some(&[ty, a, b, c, d]) = rest.first_chunk::<5>()
                && self.buf.capacity() <= SHRINK_ABOVE
            {
                let word = u32::from_be_bytes([a, b, c, d]);
                let k = self.table[usize::from(ty)];
                // `k.min` ≥ 4 for every known type, so `word - 4` cannot wrap.
                if k.known && word >= k.min && word <= k.max {
                    let len = (word - 4) as usize;
                    let body = &rest[5..];
                    if body.len() >= len {
                        *pos += 5 + len;
                        self.ty = ty;
                        self.len = word - 4;
                        self.got = 0;
                        self.keep = self.len.min(k.keep).min(self.cap);
                        return Some(Item::Msg(Msg {
                            ty,
                            body: &body[..self.keep as usize],
                            len: self.len,
                        }));
                    }
                }
            }
        }
        self.next_slow(bytes, pos)
    }

    /// [`next`](Self::next) in every state.
    #[inline(never)]
    fn next_slow<'a>(&'a mut self, bytes: &'a [u8], pos: &mut usize) -> Option<Item<'a>> {
        loop {
            match self.mode {
                Mode::Off => {
                    *pos = bytes.len();
                    return None;
                }
                Mode::Reply => {
                    let b = *bytes.get(*pos)?;
                    *pos += 1;
                    self.mode = Mode::Header;
                    return Some(Item::Reply(b));
                }
                Mode::Resync if self.first && *pos < bytes.len() => {
                    self.first = false;
                    return Some(Item::First);
                }
                Mode::Resync => match self.dir {
                    Direction::Frontend => {
                        // Resume only at the start of a chunk that begins with plausible
                        // messages: a recv() of a client's fresh send.
                        if *pos == 0 && plausible_frontend(bytes) {
                            self.mode = Mode::Header;
                        } else {
                            *pos = bytes.len();
                            return None;
                        }
                    }
                    Direction::Backend => {
                        // Every ReadyForQuery is followed by a flush (ReadyForQuery() in
                        // src/backend/tcop/dest.c), so it ends a send() call: resume after
                        // one found at the very end of a chunk (or of a chunk and the few
                        // bytes before it, should the capture have split the send).
                        let n = bytes.len();
                        let chunk = &bytes[*pos..];
                        *pos = n;
                        let found =
                            ends_with_ready(&self.tail[..usize::from(self.tail_len)], chunk);
                        self.remember_tail(chunk);
                        if found {
                            self.mode = Mode::Header;
                            self.tail_len = 0;
                            return Some(Item::Msg(Msg {
                                ty: b'Z',
                                body: &bytes[n - 1..],
                                len: 1,
                            }));
                        }
                        return None;
                    }
                },
                Mode::Header => {
                    if let Some(item) = self.header(bytes, pos) {
                        return Some(item);
                    }
                    if self.mode == Mode::Header {
                        return None; // header incomplete: wait for the next chunk
                    }
                    // Fast path: the whole body is in this chunk; hand it out in place.
                    let rest = &bytes[*pos..];
                    let len = self.len as usize;
                    if rest.len() >= len {
                        *pos += len;
                        self.mode = Mode::Header;
                        let body = &rest[..self.keep as usize];
                        return Some(Item::Msg(Msg {
                            ty: self.ty,
                            body,
                            len: self.len,
                        }));
                    }
                }
                Mode::Body => {
                    let rest = &bytes[*pos..];
                    let remaining = (self.len - self.got) as usize;
                    let take = remaining.min(rest.len());
                    if self.got < self.keep {
                        let k = take.min((self.keep - self.got) as usize);
                        // Grow by doubling, but never past what is kept.
                        let want = self.buf.len() + k;
                        if want > self.buf.capacity() {
                            let cap = want.max(2 * self.buf.capacity()).min(self.keep as usize);
                            self.buf.reserve_exact(cap - self.buf.len());
                        }
                        self.buf.extend_from_slice(&rest[..k]);
                    }
                    // take ≤ remaining ≤ u32::MAX.
                    self.got += take as u32;
                    *pos += take;
                    if self.got < self.len {
                        return None;
                    }
                    self.mode = Mode::Header;
                    return Some(Item::Msg(Msg {
                        ty: self.ty,
                        body: &self.buf,
                        len: self.len,
                    }));
                }
            }
        }
    }

    /// Reads a header. Returns an item for a desync or a TLS record; otherwise leaves the
    /// mode at `Header` (incomplete) or sets up `Body`.
    fn header<'a>(&mut self, bytes: &'a [u8], pos: &mut usize) -> Option<Item<'a>> {
        let rest = &bytes[*pos..];
        if rest.is_empty() {
            return None;
        }
        let size = if self.typed { 5 } else { 4 };
        let mut h = [0u8; 5];
        if self.hdr_len == 0 && rest.len() >= 5 {
            // A fixed-size copy (inlined, not a libc memcpy call: 10 % of the agent's time
            // under pgbench when it was one); an untyped header ignores the fifth byte.
            h.copy_from_slice(&rest[..5]);
            *pos += size;
        } else {
            let have = usize::from(self.hdr_len);
            let take = (size - have).min(rest.len());
            self.hdr[have..have + take].copy_from_slice(&rest[..take]);
            *pos += take;
            self.hdr_len += take as u8;
            if usize::from(self.hdr_len) < size {
                return None;
            }
            self.hdr_len = 0;
            h = self.hdr;
        }
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf = Vec::new();
        }
        let (ty, word, k) = if self.typed {
            let word = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
            let k = self.table[usize::from(h[0])];
            if !k.known {
                return Some(self.fail(DesyncReason::UnknownType, bytes, pos));
            }
            if word < k.min || word > k.max {
                return Some(self.fail(DesyncReason::BadLength, bytes, pos));
            }
            (h[0], word, k)
        } else {
            if h[0] == 0x16 && h[1] == 0x03 {
                *pos = bytes.len();
                return Some(Item::Tls);
            }
            let word = u32::from_be_bytes([h[0], h[1], h[2], h[3]]);
            if !(8..=MAX_STARTUP).contains(&word) {
                return Some(self.fail(DesyncReason::BadStartup, bytes, pos));
            }
            (0, word, kind(8, MAX_STARTUP, ALL))
        };
        self.ty = ty;
        self.len = word - 4;
        self.got = 0;
        // A startup packet (at most 10 000 bytes) is always kept whole.
        let cap = if self.typed { self.cap } else { MAX_STARTUP };
        self.keep = self.len.min(k.keep).min(cap);
        self.buf.clear();
        self.mode = Mode::Body;
        None
    }

    fn fail<'a>(&mut self, reason: DesyncReason, bytes: &[u8], pos: &mut usize) -> Item<'a> {
        self.resync();
        if self.dir == Direction::Frontend {
            // A frontend resumes only at a later chunk's start.
            *pos = bytes.len();
        }
        Item::Desync(reason)
    }

    /// Keeps the last 5 bytes of `tail` followed by `chunk`.
    fn remember_tail(&mut self, chunk: &[u8]) {
        let mut t = [0u8; 5];
        let from_chunk = chunk.len().min(5);
        let from_tail = (5 - from_chunk).min(usize::from(self.tail_len));
        let old = usize::from(self.tail_len);
        t[..from_tail].copy_from_slice(&self.tail[old - from_tail..old]);
        t[from_tail..from_tail + from_chunk].copy_from_slice(&chunk[chunk.len() - from_chunk..]);
        self.tail = t;
        self.tail_len = (from_tail + from_chunk) as u8;
    }
}

/// Whether `tail` followed by a non-empty `chunk` ends with a whole ReadyForQuery: `Z`,
/// length 5, status I/T/E.
fn ends_with_ready(tail: &[u8], chunk: &[u8]) -> bool {
    if chunk.is_empty() {
        return false;
    }
    let from_chunk = chunk.len().min(6);
    let from_tail = 6 - from_chunk;
    if tail.len() < from_tail {
        return false;
    }
    let mut last = [0u8; 6];
    last[..from_tail].copy_from_slice(&tail[tail.len() - from_tail..]);
    last[from_tail..].copy_from_slice(&chunk[chunk.len() - from_chunk..]);
    matches!(last, [b'Z', 0, 0, 0, 5, b'I' | b'T' | b'E'])
}
