//! Small readers of message bodies (§54.6 Message Data Types, §54.7 Message Formats).

/// Splits a NUL-terminated String off the front of `b`: `(string, rest after the NUL)`.
pub(super) fn cstr(b: &[u8]) -> Option<(&[u8], &[u8])> {
    let i = b.iter().position(|&c| c == 0)?;
    Some((&b[..i], &b[i + 1..]))
}

/// The text of a Query body (`text\0`). A truncated body has no NUL: all of it is text.
pub(super) fn query_text(body: &[u8], truncated: bool) -> Option<&[u8]> {
    if truncated {
        return Some(body.split(|&c| c == 0).next().unwrap_or(body));
    }
    // The String's NUL must be the body's last byte, and the only NUL: checked with the
    // slice's memchr rather than byte by byte (`cstr`), half the instructions per pgbench
    // Query.
    match body.split_last() {
        Some((0, text)) if !text.contains(&0) => Some(text),
        _ => None,
    }
}

/// Parse: `(statement name, query text)`. For a truncated body the query text is what is
/// there after the name.
pub(super) fn parse_msg(body: &[u8], truncated: bool) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    if truncated {
        let text = rest.split(|&c| c == 0).next().unwrap_or(rest);
        return Some((name, text));
    }
    let (text, rest) = cstr(rest)?;
    let n = usize::from(u16::from_be_bytes([*rest.first()?, *rest.get(1)?]));
    (rest.len() == 2 + 4 * n).then_some((name, text))
}

/// Bind: `(portal name, statement name)`; the parameters after them are not read.
pub(super) fn bind_msg(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (portal, rest) = cstr(body)?;
    let (stmt, _) = cstr(rest)?;
    Some((portal, stmt))
}

/// Execute: the portal name (the Int32 row limit after it is not needed).
pub(super) fn execute_msg(body: &[u8]) -> Option<&[u8]> {
    let (portal, rest) = cstr(body)?;
    (rest.len() == 4).then_some(portal)
}

/// Describe and Close: `(b'S' | b'P', name)`.
pub(super) fn target_msg(body: &[u8]) -> Option<(u8, &[u8])> {
    let (&what, rest) = body.split_first()?;
    let (name, rest) = cstr(rest)?;
    (matches!(what, b'S' | b'P') && rest.is_empty()).then_some((what, name))
}

/// ParameterStatus: `(name, value)`.
pub(super) fn parameter_status(body: &[u8]) -> Option<(&[u8], &[u8])> {
    let (name, rest) = cstr(body)?;
    let (value, _) = cstr(rest)?;
    Some((name, value))
}

/// The fields of an ErrorResponse pgmon reads (§54.8): its SQLSTATE (field `C`; `XX000`,
/// internal_error, if the kept prefix holds none) and whether its severity is FATAL or PANIC
/// (field `V`, never localized, PostgreSQL 9.6+; else field `S` when it reads so).
pub(super) fn error_response(mut body: &[u8]) -> super::ErrorResponse {
    let mut sqlstate = None;
    let (mut v, mut s) = (None, None);
    while let Some((&code, rest)) = body.split_first() {
        if code == 0 {
            break;
        }
        let Some((value, rest)) = cstr(rest) else {
            break;
        };
        match code {
            b'C' if sqlstate.is_none() => sqlstate = <[u8; 5]>::try_from(value).ok(),
            b'V' => v = Some(value),
            b'S' => s = Some(value),
            _ => {}
        }
        body = rest;
    }
    let severity = v.or(s).unwrap_or_default();
    super::ErrorResponse {
        sqlstate: sqlstate.unwrap_or(*b"XX000"),
        fatal: matches!(severity, b"FATAL" | b"PANIC"),
    }
}

/// The row count of a CommandComplete tag (§54.7 CommandComplete): the last word of
/// `INSERT oid rows`, `SELECT rows`, `UPDATE rows`, `DELETE rows`, `MERGE rows`,
/// `FETCH rows`, `MOVE rows`, `COPY rows`; `None` for other commands.
pub(super) fn tag_rows(body: &[u8]) -> Option<u64> {
    // One pass over the tag (up to its NUL) for its first and last spaces: the command is
    // the first word, the count the last; a tag of one word has no count. (This runs once
    // per completion: 153 instructions for `SELECT 1` against 180 with split iterators,
    // measured with `pgmon-agent replay` on pgbench -S traffic.)
    let mut end = body.len();
    let mut spaces: Option<(usize, usize)> = None;
    for (i, &c) in body.iter().enumerate() {
        match c {
            0 => {
                end = i;
                break;
            }
            b' ' => spaces = Some((spaces.map_or(i, |(first, _)| first), i)),
            _ => {}
        }
    }
    let (first_space, last_space) = spaces?;
    let counted = matches!(
        &body[..first_space],
        b"SELECT" | b"INSERT" | b"UPDATE" | b"DELETE" | b"MERGE" | b"FETCH" | b"MOVE" | b"COPY"
    );
    if !counted {
        return None;
    }
    let last = &body[last_space + 1..end];
    if last.is_empty() || last.len() > 20 || !last.iter().all(u8::is_ascii_digit) {
        return None;
    }
    last.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}
