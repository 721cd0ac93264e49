//! The statement cache's key: a statement's text with every literal replaced by `?`,
//! comments dropped and whitespace collapsed, hashed to 64 bits.
//!
//! Two texts with the same shape differ only in the values of their constants, and
//! libpg_query's fingerprint ignores constants (`A_Const` nodes are skipped by
//! `pg_query_fingerprint`), so every text of one shape has one fingerprint: the key can
//! stand in for the text without changing any answer. This is what makes the cache useful
//! for the simple protocol, where `pgbench -S` sends a new literal with every query.
//!
//! Lexical rules from the PostgreSQL documentation, section 4.1 "Lexical Structure":
//! string constants (`'…'` with `''`, `E'…'` with backslash escapes, `B'…'`, `X'…'`,
//! `U&'…'`), dollar-quoted constants (`$tag$…$tag$`), numeric constants (incl. `1e-5`,
//! `0x1F`, `1_000`), quoted identifiers (`"…"`, kept verbatim), parameters (`$1`, kept),
//! comments (`-- …` and nested `/* … */`).
//!
//! That holds only where libpg_query reads a constant as a constant. The grammar reads a
//! few as something else (`ALTER INDEX … ALTER COLUMN 2`, `float(24)`, `COMMENT … IS
//! 'text'`), and their value changes the fingerprint or even whether the text parses; the
//! normalizer finds them with [`literals`] (they survive `pg_query_normalize`) and keys
//! such statements on their whole text.
//!
//! Anything the scanner is not sure of (an unterminated quote or comment, a backslash in a
//! standard string, which `standard_conforming_strings = off` would read differently) makes
//! it answer `None`, and the caller keys on the whole text instead: never a wrong key.

use std::hash::Hasher;

/// Writes the shape of `text` into `out` (cleared first) and returns its 64-bit hash, or
/// `None` when the text is not plain enough to be sure (see the module docs).
///
/// `out` is reused between calls, so the steady state allocates nothing. Collisions of the
/// 64-bit hash (aHash) between two different shapes are possible in principle; with 10^5
/// cached shapes the chance is about 3·10^-10.
pub fn shape(text: &[u8], out: &mut Vec<u8>) -> Option<u64> {
    scan(text, out, false).map(|(hash, _)| hash)
}

/// [`shape`] for a text libpg_query refused, which gets it as its fallback identity: a
/// backslash in a plain literal is read as an escape (what `standard_conforming_strings =
/// off` means) instead of making the scanner unsure, so such texts still share a shape.
pub fn fallback_shape(text: &[u8], out: &mut Vec<u8>) -> Option<u64> {
    scan(text, out, true).map(|(hash, _)| hash)
}

/// How many literal constants `text` holds (what [`shape`] masks), `None` when the text is
/// not plain enough to be sure. The normalizer runs it on libpg_query's normalized text: a
/// constant left there is one the grammar took as something else than a constant (a
/// column number, a `float(p)` precision, a comment's text), whose value can change the
/// fingerprint or whether the statement parses, so the shape cannot stand for it.
pub fn literals(text: &[u8], scratch: &mut Vec<u8>) -> Option<usize> {
    scan(text, scratch, false).map(|(_, n)| n)
}

/// The scanner behind [`shape`] and [`literals`]: the shape's hash and its masked count.
fn scan(text: &[u8], out: &mut Vec<u8>, backslash_escapes: bool) -> Option<(u64, usize)> {
    out.clear();
    // The shape is never longer than the text: no growth inside the loop.
    out.reserve(text.len());
    let mut masked = 0usize;
    let n = text.len();
    let mut i = 0;
    let mut pending_space = false;
    while i < n {
        let c = text[i];
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                pending_space = !out.is_empty();
                i += 1;
                continue;
            }
            b'-' if text.get(i + 1) == Some(&b'-') => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
                pending_space = !out.is_empty();
                continue;
            }
            b'/' if text.get(i + 1) == Some(&b'*') => {
                i = skip_block_comment(text, i)?;
                pending_space = !out.is_empty();
                continue;
            }
            _ => {}
        }
        if pending_space {
            out.push(b' ');
            pending_space = false;
        }
        match c {
            b'\'' => {
                let escapes = backslash_escapes || prefix_is_e_string(out);
                i = skip_string(text, i, escapes)?;
                out.push(b'?');
                masked += 1;
            }
            b'"' => {
                let start = i;
                i = skip_quoted_identifier(text, i)?;
                out.extend_from_slice(&text[start..i]);
            }
            b'$' if !prev_is_ident(out) => {
                if text.get(i + 1).is_some_and(u8::is_ascii_digit) {
                    // A parameter, `$1`: kept.
                    let start = i;
                    i += 1;
                    while i < n && text[i].is_ascii_digit() {
                        i += 1;
                    }
                    out.extend_from_slice(&text[start..i]);
                } else {
                    i = skip_dollar_quoted(text, i)?;
                    out.push(b'?');
                    masked += 1;
                }
            }
            b'0'..=b'9' if !prev_is_ident(out) => {
                i = skip_number(text, i);
                out.push(b'?');
                masked += 1;
            }
            b'.' if !prev_is_ident(out) && text.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_number(text, i);
                out.push(b'?');
                masked += 1;
            }
            _ if is_ident_start(c) => {
                // A keyword or identifier, copied in one piece: most of a statement's bytes
                // (this run was a third of the scan's time byte by byte, measured with
                // `pgmon-agent replay` on pgbench traffic).
                let start = i;
                i += 1 + text[i + 1..]
                    .iter()
                    .position(|&b| !is_ident_continue(b))
                    .unwrap_or(n - i - 1);
                out.extend_from_slice(&text[start..i]);
            }
            _ => {
                out.push(c);
                i += 1;
            }
        }
    }
    let mut h = ahash::AHasher::default();
    h.write(out);
    Some((h.finish(), masked))
}

/// Copies `text` into `out` (cleared first) with every plain string literal that holds a
/// backslash rewritten as the escape string it is under `standard_conforming_strings =
/// off` (`'a\'b'` → ` E'a\'b'`; PostgreSQL docs 4.1.2.2). `E'…'`, comments, quoted
/// identifiers and dollar quotes are copied as they are. Returns whether anything was
/// rewritten, or `None` when the text is not plain enough to be sure (a backslash in a
/// `B`, `X`, `N` or `U&` literal, an unterminated quote).
pub fn escape_strings(text: &[u8], out: &mut Vec<u8>) -> Option<bool> {
    out.clear();
    let n = text.len();
    let mut i = 0;
    let mut rewritten = false;
    while i < n {
        let c = text[i];
        let start = i;
        match c {
            b'-' if text.get(i + 1) == Some(&b'-') => {
                while i < n && text[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if text.get(i + 1) == Some(&b'*') => i = skip_block_comment(text, i)?,
            b'"' => i = skip_quoted_identifier(text, i)?,
            b'$' if !prev_is_ident(out) && !text.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                i = skip_dollar_quoted(text, i)?;
            }
            b'\'' => {
                let escaped = prefix_is_e_string(out);
                let special = !escaped
                    && (out.last() == Some(&b'&')
                        || matches!(single_letter_prefix(out), Some(b'b' | b'x' | b'n')));
                i = skip_string(text, i, true)?;
                let has_backslash = text[start..i].contains(&b'\\');
                if has_backslash && special {
                    return None;
                }
                if has_backslash && !escaped {
                    if prev_is_ident(out) {
                        out.push(b' ');
                    }
                    out.push(b'E');
                    rewritten = true;
                }
            }
            _ if is_ident_start(c) => {
                i += 1;
                while i < n && is_ident_continue(text[i]) {
                    i += 1;
                }
            }
            _ => i += 1,
        }
        out.extend_from_slice(&text[start..i]);
    }
    Some(rewritten)
}

/// [`CLASS`] bit: the byte starts an identifier or keyword.
const START: u8 = 1;
/// [`CLASS`] bit: the byte continues one.
const CONTINUE: u8 = 2;

/// The identifier classes of each byte, looked up instead of computed: the scan's inner
/// loop runs once per byte of every statement (the comparisons were a third of the scan's
/// instructions, measured with `pgmon-agent replay` on pgbench -S traffic).
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            t[b] |= START | CONTINUE;
        }
        if c.is_ascii_digit() || c == b'$' {
            t[b] |= CONTINUE;
        }
        b += 1;
    }
    t
};

/// A byte that starts an identifier or keyword (PostgreSQL docs 4.1.1: a letter, `_`, or a
/// non-ASCII byte).
#[inline]
fn is_ident_start(b: u8) -> bool {
    CLASS[usize::from(b)] & START != 0
}

/// A byte that continues one (also digits and `$`).
#[inline]
fn is_ident_continue(b: u8) -> bool {
    CLASS[usize::from(b)] & CONTINUE != 0
}

/// Whether the previous output byte continues an identifier (so a digit or `$` belongs to it).
fn prev_is_ident(out: &[u8]) -> bool {
    out.last().is_some_and(|&b| is_ident_continue(b))
}

/// `E'…'`: the output ends in a lone `e`/`E` that is not the tail of a longer identifier.
fn prefix_is_e_string(out: &[u8]) -> bool {
    single_letter_prefix(out) == Some(b'e')
}

/// The lone letter the output ends in (lowercased), when it is not the tail of a longer
/// identifier: a string constant's prefix (`E`, `B`, `X`, `N`) if a quote follows.
fn single_letter_prefix(out: &[u8]) -> Option<u8> {
    let letter = match out {
        [.., prev, l] if !(prev.is_ascii_alphanumeric() || *prev == b'_' || *prev >= 0x80) => *l,
        [l] => *l,
        _ => return None,
    };
    letter
        .is_ascii_alphabetic()
        .then(|| letter.to_ascii_lowercase())
}

/// Skips a `'…'` literal starting at `i`; returns the index after it.
fn skip_string(text: &[u8], mut i: usize, escapes: bool) -> Option<usize> {
    i += 1;
    while i < text.len() {
        match text[i] {
            b'\'' if text.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            b'\\' if escapes => i += 2,
            // Meaning depends on standard_conforming_strings: do not guess.
            b'\\' => return None,
            _ => i += 1,
        }
    }
    None
}

fn skip_quoted_identifier(text: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < text.len() {
        if text[i] == b'"' {
            if text.get(i + 1) == Some(&b'"') {
                i += 2;
                continue;
            }
            return Some(i + 1);
        }
        i += 1;
    }
    None
}

/// Skips `$tag$ … $tag$` (tag possibly empty) starting at the first `$`.
fn skip_dollar_quoted(text: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    while j < text.len() && (text[j].is_ascii_alphanumeric() || text[j] == b'_' || text[j] >= 0x80)
    {
        j += 1;
    }
    if text.get(j) != Some(&b'$') {
        return None; // a lone `$`: not plain SQL we know
    }
    let tag = &text[i..=j];
    let body = j + 1;
    let end = text[body..].windows(tag.len()).position(|w| w == tag)?;
    Some(body + end + tag.len())
}

/// Skips nested `/* … */` comments.
fn skip_block_comment(text: &[u8], mut i: usize) -> Option<usize> {
    let mut depth = 0usize;
    while i + 1 < text.len() {
        match (text[i], text[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// Skips a numeric constant: digits, `.`, `_`, hex/octal/binary prefixes, an exponent with
/// its sign.
fn skip_number(text: &[u8], mut i: usize) -> usize {
    while i < text.len() {
        let c = text[i];
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            if (c == b'e' || c == b'E')
                && matches!(text.get(i + 1), Some(b'+' | b'-'))
                && text.get(i + 2).is_some_and(u8::is_ascii_digit)
            {
                i += 2;
            }
            i += 1;
        } else {
            break;
        }
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Option<String> {
        let mut out = Vec::new();
        shape(text.as_bytes(), &mut out).map(|_| String::from_utf8(out).unwrap())
    }

    #[test]
    fn literals_become_placeholders() {
        assert_eq!(
            s("SELECT abalance FROM pgbench_accounts WHERE aid = 123;").unwrap(),
            "SELECT abalance FROM pgbench_accounts WHERE aid = ?;"
        );
        assert_eq!(
            s("select 'it''s', E'a\\'b', 1.5e-3, .5, 0x1F, 1_000").unwrap(),
            "select ?, E?, ?, ?, ?, ?"
        );
        assert_eq!(s("select $$a;'b$$, $fn$x$fn$").unwrap(), "select ?, ?");
    }

    #[test]
    fn identifiers_parameters_and_quoted_names_are_kept() {
        assert_eq!(
            s("SELECT t1.c2, \"Weird 'x' 1\" FROM t1 WHERE a = $1").unwrap(),
            "SELECT t1.c2, \"Weird 'x' 1\" FROM t1 WHERE a = $1"
        );
        assert_eq!(s("select a$1 from x").unwrap(), "select a$1 from x");
    }

    #[test]
    fn comments_and_whitespace_collapse() {
        assert_eq!(
            s("  SELECT  1 -- one\n /* two /* nested */ */ ,\t2 ").unwrap(),
            "SELECT ? , ?"
        );
    }

    #[test]
    fn unsure_texts_give_none() {
        assert_eq!(s("select 'unterminated"), None);
        assert_eq!(s("select 'back\\slash'"), None);
        assert_eq!(s("select /* open"), None);
        assert_eq!(s("select $tag$ open"), None);
    }

    #[test]
    fn same_shape_same_fingerprint() {
        // The property the cache relies on, checked against libpg_query itself.
        let pairs = [
            (
                "SELECT * FROM t WHERE a = 1 AND b = 'x'",
                "SELECT * FROM t WHERE a = 22 AND b = 'yy'",
            ),
            (
                "SELECT * FROM t ORDER BY 1 LIMIT 10",
                "SELECT * FROM t ORDER BY 2 LIMIT 99",
            ),
            (
                "SELECT interval '1 day', date '2020-01-01'",
                "SELECT interval '2 days', date '2021-02-02'",
            ),
        ];
        for (a, b) in pairs {
            let fa = pg_query::fingerprint(a, 0, 0).unwrap().value;
            let fb = pg_query::fingerprint(b, 0, 0).unwrap().value;
            let (mut oa, mut ob) = (Vec::new(), Vec::new());
            let ha = shape(a.as_bytes(), &mut oa).unwrap();
            let hb = shape(b.as_bytes(), &mut ob).unwrap();
            assert_eq!(ha, hb, "{a} / {b}");
            assert_eq!(fa, fb, "{a} / {b}");
        }
    }

    fn escaped(text: &str) -> Option<String> {
        let mut out = Vec::new();
        escape_strings(text.as_bytes(), &mut out)
            .map(|changed| format!("{changed} {}", String::from_utf8(out).unwrap()))
    }

    #[test]
    fn escape_strings_rewrites_only_plain_literals_with_backslashes() {
        assert_eq!(
            escaped("SELECT 'a\\'b', 'plain', E'\\n', date'x\\y' -- it's\n").as_deref(),
            Some("true SELECT E'a\\'b', 'plain', E'\\n', date E'x\\y' -- it's\n")
        );
        assert_eq!(
            escaped("SELECT $$a\\b$$, \"q'\" /* ' */").as_deref(),
            Some("false SELECT $$a\\b$$, \"q'\" /* ' */")
        );
        assert_eq!(escaped("SELECT B'1\\0'"), None);
        assert_eq!(escaped("SELECT 'open\\'"), None);
    }
}
