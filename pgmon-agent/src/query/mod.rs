//! Normalization and fingerprinting of captured statements (libpg_query through `pg_query`),
//! behind a cache keyed by the statement's shape (see [`shape`]).
//!
//! A `Q` message is split into its statements; a `Parse` message holds one. Each statement
//! gets libpg_query's fingerprint (the same function `pg_query_fingerprint` that tools such
//! as pganalyze use; constants and parameter values do not change it) and its normalized
//! text (`pg_query_normalize`: constants replaced by `$n`). Text that libpg_query cannot
//! parse is kept as one statement with fingerprint 0 and counted, never dropped.

pub mod config;
pub mod shape;

use std::sync::Arc;

/// What pgmon knows about one statement. Shared (`Arc`) by the cache, the prepared
/// statements and portals of every connection that uses it, and the statistics.
#[derive(Debug)]
pub struct StatementInfo {
    /// libpg_query fingerprint; for a text it could not parse, a fallback identity: the
    /// hash of the text with its constants masked ([`shape::fallback_shape`]), so such
    /// statements are still counted and budgeted per shape; 0 only for a message too long
    /// to reassemble.
    pub fingerprint: u64,
    /// Normalized text (constants as `$n`), cut to `query.max_text_chars` characters; for an
    /// unparsable statement, a marker saying so followed by its shape (constants as `?`,
    /// comments dropped: the raw text is never kept, it may hold secrets).
    pub normalized: Arc<str>,
    /// `normalized` was cut at `query.max_text_chars` (it can no longer be planned).
    pub normalized_truncated: bool,
    /// Length of the statement's text as sent, bytes.
    pub text_bytes: u32,
    /// The text could not be parsed by libpg_query: `fingerprint` is a fallback identity.
    pub parse_error: bool,
}

/// A statement handle as stored in connections and statistics.
pub type Stmt = Arc<StatementInfo>;

/// Counters of the normalizer, exported as `pgmon_statement_cache_*` and
/// `pgmon_normalize_errors_total`.
#[derive(Clone, Copy, Debug, Default)]
pub struct NormalizerStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that ran libpg_query.
    pub misses: u64,
    /// Statements libpg_query could not parse (or texts that were not valid for it, e.g.
    /// with a NUL byte), counted once per text the cache missed: each carries a fallback
    /// identity.
    pub errors: u64,
    /// Texts the shape scanner was unsure of, keyed on their whole text instead.
    pub unshaped: u64,
}

/// Cache key: the shape hash (or the whole text's, see [`Entry::ByText`]), and whether the
/// text came from a simple `Q` (may hold several statements) or a `Parse` (exactly one).
type Key = (u64, bool);

/// A cache entry.
#[derive(Clone)]
enum Entry {
    /// The statements of every text of this key.
    Stmts(Arc<[Stmt]>),
    /// Texts of this shape are not interchangeable: one of them kept a constant through
    /// normalization (the grammar read it as something else than a constant), or did not
    /// parse (a constant may be why: `ALTER COLUMN 0`, `float(0)`). Each is looked up by
    /// its whole text instead.
    ByText,
}

/// Turns statement texts into [`Stmt`]s, at most one libpg_query run per distinct shape
/// while it stays cached. Not thread-safe by design: it lives on the capture thread.
pub struct Normalizer {
    /// Hashed with aHash, as the agent's other maps: quick_cache without its default
    /// features falls back to SipHash (about 180 instructions per lookup of a pgbench Query,
    /// measured with `pgmon-agent replay`).
    cache: quick_cache::unsync::Cache<
        Key,
        Entry,
        quick_cache::UnitWeighter,
        ahash::RandomState,
        quick_cache::unsync::DefaultLifecycle<Key, Entry>,
    >,
    scratch: Vec<u8>,
    /// A text rewritten for `standard_conforming_strings = off`.
    rewritten: Vec<u8>,
    max_text_chars: usize,
    stats: NormalizerStats,
}

impl Normalizer {
    /// A normalizer caching up to `entries` shapes and keeping `max_text_chars` characters
    /// of normalized text per statement.
    pub fn new(entries: usize, max_text_chars: usize) -> Self {
        Self {
            cache: {
                let entries = entries.max(16);
                quick_cache::unsync::Cache::with(
                    entries,
                    entries as u64,
                    quick_cache::UnitWeighter,
                    ahash::RandomState::default(),
                    Default::default(),
                )
            },
            scratch: Vec::with_capacity(1024),
            rewritten: Vec::new(),
            max_text_chars,
            stats: NormalizerStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> NormalizerStats {
        self.stats
    }

    /// Entries in the cache.
    pub fn cached(&self) -> usize {
        self.cache.len()
    }

    /// [`Normalizer::prepare`] of a text sent while the connection's
    /// `standard_conforming_strings` was `standard_strings`. Under `off` a backslash in a
    /// plain literal is an escape (PostgreSQL docs 4.1.2.2), which libpg_query (always
    /// `on`) would misread: such literals are rewritten as the `E'…'` literals they mean
    /// first ([`shape::escape_strings`]), so the statement gets the fingerprint of its `on`
    /// form.
    pub fn prepare_as(
        &mut self,
        text: &[u8],
        simple: bool,
        standard_strings: bool,
        out: &mut Vec<Stmt>,
    ) {
        if standard_strings || !text.contains(&b'\\') {
            return self.prepare(text, simple, out);
        }
        let mut rewritten = std::mem::take(&mut self.rewritten);
        match shape::escape_strings(text, &mut rewritten) {
            Some(true) => self.prepare(&rewritten, simple, out),
            _ => self.prepare(text, simple, out),
        }
        self.rewritten = rewritten;
    }

    /// Appends to `out` the statements of `text`: one per statement of a simple-protocol
    /// `Q` (`simple`), exactly one for a `Parse`. An empty or comment-only `Q` adds none.
    pub fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<Stmt>) {
        let shaped = shape::shape(text, &mut self.scratch);
        if shaped.is_none() {
            self.stats.unshaped += 1;
        }
        let mut key = (shaped.unwrap_or_else(|| whole_text_hash(text)), simple);
        let mut found = self.cache.get(&key);
        if matches!(found, Some(Entry::ByText)) {
            key.0 = whole_text_hash(text);
            found = self.cache.get(&key);
        }
        if let Some(Entry::Stmts(stmts)) = found {
            self.stats.hits += 1;
            out.extend(stmts.iter().cloned());
            return;
        }
        self.stats.misses += 1;
        let (stmts, interchangeable) = self.analyse(text, simple);
        let stmts: Arc<[Stmt]> = stmts.into();
        out.extend(stmts.iter().cloned());
        if shaped.is_some_and(|h| h == key.0) && !interchangeable {
            self.cache.insert(key, Entry::ByText);
            key.0 = whole_text_hash(text);
        }
        self.cache.insert(key, Entry::Stmts(stmts));
    }

    /// The libpg_query path (a cache miss): the statements, and whether every text of the
    /// same shape would give the same ones (all parsed, and no constant left in their
    /// normalized text).
    fn analyse(&mut self, text: &[u8], simple: bool) -> (Vec<Stmt>, bool) {
        let text = String::from_utf8_lossy(text);
        if !simple {
            let (stmt, interchangeable) = self.one(&text);
            return (vec![stmt], interchangeable);
        }
        match pg_query::split_with_parser(&text) {
            Ok(parts) => {
                let mut all = true;
                let stmts = parts
                    .into_iter()
                    .filter(|p| !p.trim().is_empty())
                    .map(|p| {
                        let (stmt, interchangeable) = self.one(p);
                        all &= interchangeable;
                        stmt
                    })
                    .collect();
                (stmts, all)
            }
            // A syntax error anywhere: the server rejects the whole message too.
            Err(_) => (vec![self.unparsable(&text)], false),
        }
    }

    fn one(&mut self, text: &str) -> (Stmt, bool) {
        let fp = pg_query::fingerprint(text, 0, 0);
        let norm = pg_query::normalize(text);
        match (fp, norm) {
            (Ok(fp), Ok(norm)) => {
                let full = norm.trim();
                let kept = truncate_chars(full, self.max_text_chars);
                let interchangeable =
                    shape::literals(full.as_bytes(), &mut self.scratch) == Some(0);
                let stmt = Arc::new(StatementInfo {
                    fingerprint: fp.value,
                    normalized_truncated: kept.len() < full.len(),
                    normalized: kept.into(),
                    text_bytes: text.len().try_into().unwrap_or(u32::MAX),
                    parse_error: false,
                });
                (stmt, interchangeable)
            }
            _ => (self.unparsable(text), false),
        }
    }

    fn unparsable(&mut self, text: &str) -> Stmt {
        self.stats.errors += 1;
        let (hash, normalized) = match shape::fallback_shape(text.as_bytes(), &mut self.scratch) {
            Some(h) => {
                let shown = String::from_utf8_lossy(&self.scratch);
                let kept = truncate_chars(&shown, self.max_text_chars);
                (h, format!("{UNPARSABLE} {kept}"))
            }
            // An unterminated quote or comment: nothing safe to show.
            None => (whole_text_hash(text.as_bytes()), UNPARSABLE.to_owned()),
        };
        Arc::new(StatementInfo {
            // 0 means "no identity"; a hash of 0 is nudged.
            fingerprint: hash.max(1),
            normalized: normalized.into(),
            normalized_truncated: false,
            text_bytes: text.len().try_into().unwrap_or(u32::MAX),
            parse_error: true,
        })
    }
}

/// What the normalized text of a statement libpg_query refused starts with.
pub const UNPARSABLE: &str = "(not parsable by libpg_query)";

impl Normalizer {
    /// The statement recorded for a `Q`/`Parse` longer than `capture.max_message_bytes`
    /// (`len` bytes): its text was not reassembled, so it has no fingerprint; its executions
    /// are still counted.
    pub fn oversized(&mut self, len: usize) -> Stmt {
        Arc::new(StatementInfo {
            fingerprint: 0,
            normalized: format!("(message of {len} bytes, over capture.max_message_bytes)").into(),
            normalized_truncated: false,
            text_bytes: len.try_into().unwrap_or(u32::MAX),
            parse_error: false,
        })
    }
}

/// The key of a text looked up whole (not by shape): tagged so that it cannot meet a
/// shape hash of the same value by construction of the inputs.
fn whole_text_hash(text: &[u8]) -> u64 {
    let mut h = ahash::AHasher::default();
    std::hash::Hasher::write(&mut h, b"\0raw\0");
    std::hash::Hasher::write(&mut h, text);
    std::hash::Hasher::finish(&h)
}

/// Formats a fingerprint the way libpg_query prints it: 16 lowercase hex digits.
pub fn fingerprint_hex(fp: u64) -> String {
    format!("{fp:016x}")
}

fn truncate_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simple_query_with_several_statements() {
        let mut n = Normalizer::new(100, 4096);
        let mut out = Vec::new();
        n.prepare(
            b"BEGIN; SELECT 1 FROM t WHERE a = 5; ; COMMIT;",
            true,
            &mut out,
        );
        let texts: Vec<_> = out.iter().map(|s| &*s.normalized).collect();
        assert_eq!(texts, ["BEGIN", "SELECT $1 FROM t WHERE a = $2", "COMMIT"]);
        assert_eq!(n.stats().misses, 1);
    }

    #[test]
    fn second_literal_hits_the_cache_with_the_same_fingerprint() {
        let mut n = Normalizer::new(100, 4096);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        n.prepare(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
            true,
            &mut a,
        );
        n.prepare(
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 99;",
            true,
            &mut b,
        );
        assert_eq!(n.stats().hits, 1);
        assert_eq!(a[0].fingerprint, b[0].fingerprint);
        let direct =
            pg_query::fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = $1", 0, 0);
        assert_eq!(a[0].fingerprint, direct.unwrap().value);
    }

    #[test]
    fn garbage_is_counted_not_dropped() {
        let mut n = Normalizer::new(100, 4096);
        let mut out = Vec::new();
        n.prepare(b"SELEC nonsense (((", true, &mut out);
        n.prepare(b"\xff\xfe\0\x01", false, &mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|s| s.parse_error && s.fingerprint != 0));
        assert_eq!(n.stats().errors, 2);
    }

    #[test]
    fn unparsable_statements_share_a_fallback_identity_per_shape() {
        let mut n = Normalizer::new(100, 4096);
        let mut out = Vec::new();
        for text in [
            "SELEC a FROM t WHERE b = 1",
            "SELEC a FROM t WHERE b = 22 -- again",
            "SELEC a FROM t WHERE b = 'x\\'y'",
            "SELEC other FROM t WHERE b = 1",
            "SELECT 'never closed",
        ] {
            n.prepare(text.as_bytes(), true, &mut out);
        }
        assert!(out.iter().all(|s| s.parse_error));
        let fps: Vec<u64> = out.iter().map(|s| s.fingerprint).collect();
        assert_eq!(fps[0], fps[1]);
        assert_eq!(fps[0], fps[2], "a backslash escape read as under off");
        assert_ne!(fps[0], fps[3]);
        assert_eq!(
            &*out[0].normalized,
            "(not parsable by libpg_query) SELEC a FROM t WHERE b = ?"
        );
        assert_eq!(&*out[4].normalized, UNPARSABLE, "nothing safe to show");
        assert_eq!(n.stats().errors, 5);
    }

    /// Prepares `texts` in order with one normalizer: (fingerprint, parse_error) of each,
    /// the fingerprint 0 for a fallback identity.
    fn run(texts: &[&str], simple: bool) -> Vec<(u64, bool)> {
        let mut n = Normalizer::new(100, 4096);
        texts
            .iter()
            .map(|t| {
                let mut out = Vec::new();
                n.prepare(t.as_bytes(), simple, &mut out);
                // A fallback identity compares as "none" with what libpg_query says.
                match out[0].parse_error {
                    true => (0, true),
                    false => (out[0].fingerprint, false),
                }
            })
            .collect()
    }

    /// What libpg_query says of `text` alone: (fingerprint, parse_error).
    fn direct(text: &str) -> (u64, bool) {
        match pg_query::fingerprint(text, 0, 0) {
            Ok(f) => (f.value, false),
            Err(_) => (0, true),
        }
    }

    #[test]
    fn constants_the_grammar_checks_never_share_an_outcome() {
        for (bad, good) in [
            (
                "ALTER INDEX i ALTER COLUMN 0 SET STATISTICS 100",
                "ALTER INDEX i ALTER COLUMN 1 SET STATISTICS 100",
            ),
            ("SELECT 1::float(0)", "SELECT 2::float(10)"),
        ] {
            assert!(direct(bad).1 && !direct(good).1, "{bad} / {good}");
            for simple in [true, false] {
                assert_eq!(
                    run(&[bad, good, bad], simple),
                    [direct(bad), direct(good), direct(bad)],
                    "bad first: {good}"
                );
                assert_eq!(
                    run(&[good, bad, good], simple),
                    [direct(good), direct(bad), direct(good)],
                    "good first: {good}"
                );
            }
        }
    }

    #[test]
    fn constants_read_as_names_or_numbers_keep_their_own_fingerprint() {
        let texts = [
            "ALTER INDEX i ALTER COLUMN 1 SET STATISTICS 100",
            "ALTER INDEX i ALTER COLUMN 2 SET STATISTICS 100",
            "SELECT 1::float(10)",
            "SELECT 1::float(40)",
        ];
        let got = run(&texts, true);
        let want: Vec<_> = texts.iter().map(|t| direct(t)).collect();
        assert_eq!(got, want);
    }

    #[test]
    fn ordinary_constants_still_share_one_entry() {
        let mut n = Normalizer::new(100, 4096);
        let mut out = Vec::new();
        for aid in [1, 2, 3] {
            n.prepare(
                format!("UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = {aid}; SELECT 'x', true, 1.5e3").as_bytes(),
                true,
                &mut out,
            );
        }
        assert_eq!((n.stats().misses, n.stats().hits), (1, 2));
    }

    #[test]
    fn backslash_escapes_under_standard_conforming_strings_off() {
        let mut n = Normalizer::new(100, 4096);
        let mut fp = |text: &str, standard: bool| {
            let mut out = Vec::new();
            n.prepare_as(text.as_bytes(), true, standard, &mut out);
            (out[0].fingerprint, out[0].parse_error)
        };
        let on = fp(
            "SELECT 'it''s' AS a, date '2020-01-01' FROM t WHERE b = 'x'",
            true,
        );
        assert!(!on.1);
        // The same statement as a client sends it under `off`.
        let off = fp(
            "SELECT 'it\\'s' AS a, date'2020-01-01' FROM t WHERE b = 'x\\\\'",
            false,
        );
        assert_eq!(off, on);
        // Read as `on`, that text is a syntax error (the literal never ends).
        assert!(fp("SELECT 'it\\'s' AS a FROM t", true).1);
    }

    #[test]
    fn empty_query_has_no_statement() {
        let mut n = Normalizer::new(100, 4096);
        let mut out = Vec::new();
        n.prepare(b"  -- nothing\n", true, &mut out);
        assert!(out.is_empty());
    }
}
