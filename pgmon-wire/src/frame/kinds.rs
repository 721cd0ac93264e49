//! The message types of each direction and how each is framed: its smallest and largest
//! length word and how much of its body the parser reads (§54.7; limits from the server's
//! `SocketBackend`), and the structural check of a frontend chunk's first messages.

use crate::Direction;

/// The largest length word accepted: the server's `PQ_LARGE_MESSAGE_LIMIT` is 1 GiB − 1
/// (`src/include/libpq/libpq.h`).
const MAX_LEN: u32 = 1 << 30;
/// The server's `PQ_SMALL_MESSAGE_LIMIT` for messages that carry no data (Execute, Describe,
/// Close, Sync, Flush, CopyDone, CopyFail; `SocketBackend` in `postgres.c`).
const SMALL: u32 = 10_000;
/// The server's `MAX_STARTUP_PACKET_LENGTH` (`src/include/libpq/pqcomm.h`).
pub(super) const MAX_STARTUP: u32 = 10_000;
/// Keep the whole body (up to the cap).
pub(super) const ALL: u32 = u32::MAX;
/// Bytes of a Bind kept: its portal and statement names come first; the server truncates
/// names to NAMEDATALEN − 1 = 63 bytes anyway.
const BIND_KEEP: u32 = 512;
/// How one message type is framed.
#[derive(Clone, Copy)]
pub(super) struct Kind {
    pub known: bool,
    /// Smallest and largest length word (including itself).
    pub min: u32,
    pub max: u32,
    /// Bytes of body kept for parsing ([`ALL`] = all, up to the cap).
    pub keep: u32,
}

const UNKNOWN: Kind = Kind {
    known: false,
    min: 0,
    max: 0,
    keep: 0,
};

pub(super) const fn kind(min: u32, max: u32, keep: u32) -> Kind {
    Kind {
        known: true,
        min,
        max,
        keep,
    }
}

/// Frontend message types (§54.7; limits from `SocketBackend`).
static FRONTEND: [Kind; 256] = {
    let mut t = [UNKNOWN; 256];
    t[b'Q' as usize] = kind(5, MAX_LEN, ALL); // Query: text\0
    t[b'P' as usize] = kind(8, MAX_LEN, ALL); // Parse: name\0 query\0 Int16 n, n×Int32
    t[b'B' as usize] = kind(12, MAX_LEN, BIND_KEEP); // Bind: portal\0 stmt\0 …
    t[b'E' as usize] = kind(9, SMALL, ALL); // Execute: portal\0 Int32
    t[b'D' as usize] = kind(6, SMALL, ALL); // Describe: Byte1 name\0
    t[b'C' as usize] = kind(6, SMALL, ALL); // Close: Byte1 name\0
    t[b'S' as usize] = kind(4, 4, 0); // Sync
    t[b'H' as usize] = kind(4, 4, 0); // Flush
    t[b'X' as usize] = kind(4, 4, 0); // Terminate
    t[b'F' as usize] = kind(14, MAX_LEN, 0); // FunctionCall
    t[b'd' as usize] = kind(4, MAX_LEN, 0); // CopyData
    t[b'c' as usize] = kind(4, 4, 0); // CopyDone
    t[b'f' as usize] = kind(5, SMALL, 0); // CopyFail
    t[b'p' as usize] = kind(4, MAX_LEN, 0); // Password, SASL, GSS responses
    t
};

/// Backend message types (§54.7).
static BACKEND: [Kind; 256] = backend_kinds();

/// The longest backend message accepted while a mid-stream connection's backend framing is on
/// trial (16 MiB). A backend stream picked up in the middle of a message is read from an
/// arbitrary byte, and text taken for a header gives a length word of tens or hundreds of
/// MiB (a first length byte of 0x20–0x7e): without this bound it would make the reader skip
/// that much of the stream before anything could be checked. A genuine longer message (a
/// DataRow holding a large value) only costs the trial.
const TRIAL_MAX: u32 = 16 << 20;
/// The longest CommandComplete accepted on trial: a command tag is a few words and a count.
const TRIAL_TAG_MAX: u32 = 4 + 1024;

/// Backend message types while the framing is on trial
/// ([`Reader::begin_trial`](super::Reader::begin_trial)): as [`BACKEND`], with lengths
/// bounded by [`TRIAL_MAX`], and without the messages that only the startup sends
/// (Authentication, BackendKeyData, NegotiateProtocolVersion).
pub(super) static TRIAL: [Kind; 256] = {
    let mut t = backend_kinds();
    let mut i = 0;
    while i < 256 {
        if t[i].max > TRIAL_MAX {
            t[i].max = TRIAL_MAX;
        }
        i += 1;
    }
    t[b'C' as usize].max = TRIAL_TAG_MAX;
    t[b'R' as usize] = UNKNOWN;
    t[b'K' as usize] = UNKNOWN;
    t[b'v' as usize] = UNKNOWN;
    t
};

const fn backend_kinds() -> [Kind; 256] {
    let mut t = [UNKNOWN; 256];
    t[b'R' as usize] = kind(8, MAX_LEN, 0); // Authentication*
    t[b'S' as usize] = kind(6, MAX_LEN, ALL); // ParameterStatus: name\0 value\0
    t[b'K' as usize] = kind(12, MAX_LEN, 0); // BackendKeyData (3.2: variable key)
    t[b'Z' as usize] = kind(5, 5, ALL); // ReadyForQuery: Byte1 status
    t[b'E' as usize] = kind(5, MAX_LEN, ALL); // ErrorResponse: fields\0
    t[b'N' as usize] = kind(5, MAX_LEN, 0); // NoticeResponse
    t[b'C' as usize] = kind(5, MAX_LEN, ALL); // CommandComplete: tag\0
    t[b'I' as usize] = kind(4, 4, 0); // EmptyQueryResponse
    t[b'1' as usize] = kind(4, 4, 0); // ParseComplete
    t[b'2' as usize] = kind(4, 4, 0); // BindComplete
    t[b'3' as usize] = kind(4, 4, 0); // CloseComplete
    t[b'n' as usize] = kind(4, 4, 0); // NoData
    t[b's' as usize] = kind(4, 4, 0); // PortalSuspended
    t[b'c' as usize] = kind(4, 4, 0); // CopyDone
    t[b't' as usize] = kind(6, MAX_LEN, 0); // ParameterDescription
    t[b'T' as usize] = kind(6, MAX_LEN, 0); // RowDescription
    t[b'D' as usize] = kind(6, MAX_LEN, 0); // DataRow
    t[b'd' as usize] = kind(4, MAX_LEN, 0); // CopyData
    t[b'G' as usize] = kind(7, MAX_LEN, 0); // CopyInResponse
    t[b'H' as usize] = kind(7, MAX_LEN, 0); // CopyOutResponse
    t[b'W' as usize] = kind(7, MAX_LEN, 0); // CopyBothResponse
    t[b'V' as usize] = kind(8, MAX_LEN, 0); // FunctionCallResponse
    t[b'A' as usize] = kind(10, MAX_LEN, 0); // NotificationResponse
    t[b'v' as usize] = kind(12, MAX_LEN, 0); // NegotiateProtocolVersion
    t
}

/// The message types of a direction.
pub(super) fn kinds(dir: Direction) -> &'static [Kind; 256] {
    match dir {
        Direction::Frontend => &FRONTEND,
        Direction::Backend => &BACKEND,
    }
}

/// Whether a frontend chunk plausibly starts at a message boundary: every message header in
/// it is valid, at least one message lies wholly in it, and each whole one follows its
/// format. Only the last message may run past the chunk's end.
pub(crate) fn plausible_frontend(b: &[u8]) -> bool {
    let mut p = 0usize;
    let mut whole = 0usize;
    while b.len() - p >= 5 {
        let ty = b[p];
        let word = u32::from_be_bytes([b[p + 1], b[p + 2], b[p + 3], b[p + 4]]);
        let k = FRONTEND[usize::from(ty)];
        if !k.known || word < k.min || word > k.max {
            return false;
        }
        let end = p + 1 + word as usize;
        if end > b.len() {
            break;
        }
        if !well_formed_frontend(ty, &b[p + 5..end]) {
            return false;
        }
        whole += 1;
        p = end;
    }
    whole > 0
}

/// Structural check of a whole frontend message body (§54.7).
fn well_formed_frontend(ty: u8, body: &[u8]) -> bool {
    let nul = |b: &[u8]| b.iter().position(|&c| c == 0);
    match ty {
        b'Q' => nul(body) == Some(body.len() - 1),
        b'P' => (|| {
            let a = nul(body)? + 1;
            let b = a + nul(&body[a..])? + 1;
            let n = usize::from(u16::from_be_bytes([*body.get(b)?, *body.get(b + 1)?]));
            Some(body.len() == b + 2 + 4 * n)
        })()
        .unwrap_or(false),
        b'B' => body.iter().filter(|&&c| c == 0).take(2).count() == 2,
        b'E' => nul(body).is_some_and(|i| i + 5 == body.len()),
        b'D' | b'C' => matches!(body[0], b'S' | b'P') && nul(body) == Some(body.len() - 1),
        b'f' => body.last() == Some(&0),
        _ => true,
    }
}
