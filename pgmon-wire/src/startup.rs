//! The startup phase's untyped packets (§54.2.1, §54.7 StartupMessage, SSLRequest,
//! GSSENCRequest, CancelRequest).

use super::Replication;
use super::body::cstr;

/// SSLRequest code: 1234 in the high 16 bits, 5679 in the low.
const SSL_REQUEST: u32 = 80_877_103;
/// GSSENCRequest code: 1234, 5680.
const GSSENC_REQUEST: u32 = 80_877_104;
/// CancelRequest code: 1234, 5678.
const CANCEL_REQUEST: u32 = 80_877_102;

/// A StartupMessage, as given to [`Sink::startup`](super::Sink::startup). Strings are the
/// raw bytes the client sent (the server interprets them in its encoding).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Startup<'a> {
    /// Protocol version requested, `(major, minor)`: `(3, 0)` before PostgreSQL 18, `(3, 2)`
    /// from libpq 18 on request. Any 3.x is accepted (the server answers an unsupported minor
    /// with NegotiateProtocolVersion).
    pub protocol: (u16, u16),
    /// `user`; empty if absent (the server then refuses the connection).
    pub user: &'a [u8],
    /// `database`; defaults to `user` when absent or empty, as the server does.
    pub database: &'a [u8],
    /// `application_name`, if sent.
    pub application_name: Option<&'a [u8]>,
    /// `options` (command-line arguments for the backend), if sent.
    pub options: Option<&'a [u8]>,
    /// `replication`.
    pub replication: Replication,
    /// Every parameter as sent, including the ones above and `_pq_.*` protocol options.
    pub params: Params<'a>,
}

/// The key/value pairs of a StartupMessage.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params<'a>(&'a [u8]);

impl<'a> Params<'a> {
    /// The pairs in the order sent.
    pub fn iter(&self) -> impl Iterator<Item = (&'a [u8], &'a [u8])> + 'a {
        let mut rest = self.0;
        std::iter::from_fn(move || {
            let (key, r) = cstr(rest)?;
            if key.is_empty() {
                return None;
            }
            let (value, r) = cstr(r)?;
            rest = r;
            Some((key, value))
        })
    }

    /// The value of `key`, if sent (the last one if sent twice, as the server reads it).
    pub fn get(&self, key: &[u8]) -> Option<&'a [u8]> {
        self.iter()
            .filter(|(k, _)| *k == key)
            .last()
            .map(|(_, v)| v)
    }
}

/// What a startup-phase packet asked for.
pub(super) enum Packet<'a> {
    Startup(Startup<'a>),
    Ssl,
    Gss,
    Cancel,
}

/// Reads a whole startup-phase packet body (its Int32 code first). `None` if it is none of
/// the four kinds, or a StartupMessage whose pairs are not properly terminated (the server
/// refuses those: "invalid startup packet layout").
pub(super) fn packet(body: &[u8]) -> Option<Packet<'_>> {
    let code = u32::from_be_bytes(body.get(..4)?.try_into().ok()?);
    let rest = &body[4..];
    match code {
        SSL_REQUEST if rest.is_empty() => Some(Packet::Ssl),
        GSSENC_REQUEST if rest.is_empty() => Some(Packet::Gss),
        // 3.0: Int32 pid, Int32 key; 3.2: Int32 pid, key of 4 to 256 bytes.
        CANCEL_REQUEST if rest.len() >= 8 => Some(Packet::Cancel),
        _ if code >> 16 == 3 => {
            startup_message((3, (code & 0xffff) as u16), rest).map(Packet::Startup)
        }
        _ => None,
    }
}

fn startup_message(protocol: (u16, u16), pairs: &[u8]) -> Option<Startup<'_>> {
    // Validate the layout: key\0 value\0 … \0, nothing after the final NUL.
    let mut rest = pairs;
    loop {
        let (key, r) = cstr(rest)?;
        if key.is_empty() {
            if !r.is_empty() {
                return None;
            }
            break;
        }
        let (_, r) = cstr(r)?;
        rest = r;
    }
    let params = Params(pairs);
    let user = params.get(b"user").unwrap_or(b"");
    let database = params
        .get(b"database")
        .filter(|d| !d.is_empty())
        .unwrap_or(user);
    Some(Startup {
        protocol,
        user,
        database,
        application_name: params.get(b"application_name"),
        options: params.get(b"options"),
        replication: params
            .get(b"replication")
            .map_or(Replication::No, replication),
        params,
    })
}

/// `replication`: `database` means logical; otherwise a boolean as the server's
/// `parse_bool` reads it (true, yes, on, 1 and unique prefixes of true/yes).
fn replication(v: &[u8]) -> Replication {
    let v = v.to_ascii_lowercase();
    let prefix_of = |word: &[u8]| !v.is_empty() && word.starts_with(&v);
    if v == b"database" {
        Replication::Logical
    } else if prefix_of(b"true") || prefix_of(b"yes") || v == b"on" || v == b"1" {
        Replication::Physical
    } else {
        Replication::No
    }
}
