//! What may be costed, and the rewrites that make normalized text preparable.
//!
//! Normalized text (libpg_query's `normalize`) replaces every constant with `$n`. Two forms
//! then no longer parse or plan as PostgreSQL would prepare them:
//! - typed literals, `date '2024-01-01'` → `date $1` and `interval '3' month` →
//!   `interval $2 month`: the type-name-then-string syntax only accepts a string constant
//!   (PostgreSQL docs, section 4.1.2.7 "Constants of Other Types"), so they are rewritten
//!   to the cast `$1::date` / `$2::interval`;
//! - parameters whose type the planner cannot infer (`SELECT $1`): costed with the
//!   parameters declared `text` where that is allowed (see the worker).

use std::sync::LazyLock;

use regex::Regex;

/// Why a statement is not sent to EXPLAIN at all. Exported as the `reason` label of
/// `pgmon_cost_cache_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Refusal {
    /// libpg_query could not parse the normalized text.
    Parse,
    /// More than one statement (a multi-statement `Q`).
    MultiStatement,
    /// Not SELECT/INSERT/UPDATE/DELETE/MERGE (utility statements, `SELECT … INTO`, DDL).
    Utility,
    /// The normalized text was cut at `query.max_text_chars`.
    Truncated,
    /// The statement has no fingerprint (unparsable or over `capture.max_message_bytes`).
    NoFingerprint,
    /// Transaction control or session state (BEGIN, COMMIT, SET, SHOW, DISCARD,
    /// DEALLOCATE, LISTEN, NOTIFY, …): nothing to plan and no work a budget should charge,
    /// so it costs 0 rather than the default. Not counted as an error.
    Free,
}

impl Refusal {
    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Refusal::Parse => "parse_error",
            Refusal::MultiStatement => "multi_statement",
            Refusal::Utility => "utility_statement",
            Refusal::Truncated => "text_truncated",
            Refusal::NoFingerprint => "no_fingerprint",
            Refusal::Free => "free",
        }
    }
}

/// A statement the worker may cost: exactly one plannable DML/SELECT statement, with the
/// highest parameter number it uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Costable {
    /// The text to EXPLAIN (typed literals rewritten).
    pub text: String,
    /// Highest `$n` in `text` (0 when there are none).
    pub params: usize,
    /// The relations it reads or writes, as written (`schema.name` or `name`; CTE names
    /// excluded), from libpg_query.
    pub relations: Vec<String>,
}

/// Decides whether `normalized` may be costed and rewrites it for EXPLAIN. Only a single
/// statement that libpg_query parses as SELECT (without INTO), INSERT, UPDATE, DELETE or
/// MERGE passes; anything else is refused, so the worker never sends a utility statement,
/// a transaction-control statement or a second statement to the server.
pub fn costable(normalized: &str) -> Result<Costable, Refusal> {
    use pg_query::NodeEnum;
    let text = rewrite_typed_literals(normalized);
    let parsed = pg_query::parse(&text, 0).map_err(|_| Refusal::Parse)?;
    let stmts = &parsed.protobuf.stmts;
    if stmts.len() != 1 {
        return Err(if stmts.is_empty() {
            Refusal::Utility
        } else {
            Refusal::MultiStatement
        });
    }
    let node = stmts[0]
        .stmt
        .as_ref()
        .and_then(|n| n.node.as_ref())
        .ok_or(Refusal::Utility)?;
    let ok = match node {
        NodeEnum::SelectStmt(s) => s.into_clause.is_none(),
        NodeEnum::InsertStmt(_)
        | NodeEnum::UpdateStmt(_)
        | NodeEnum::DeleteStmt(_)
        | NodeEnum::MergeStmt(_) => true,
        NodeEnum::TransactionStmt(_)
        | NodeEnum::VariableSetStmt(_)
        | NodeEnum::VariableShowStmt(_)
        | NodeEnum::DiscardStmt(_)
        | NodeEnum::DeallocateStmt(_)
        | NodeEnum::ListenStmt(_)
        | NodeEnum::UnlistenStmt(_)
        | NodeEnum::NotifyStmt(_) => return Err(Refusal::Free),
        _ => false,
    };
    if !ok {
        return Err(Refusal::Utility);
    }
    let params = max_param(&text);
    let relations = parsed.tables();
    Ok(Costable {
        text,
        params,
        relations,
    })
}

static TYPED_LITERAL: LazyLock<Regex> = LazyLock::new(|| {
    // A type name (possibly two words, `double precision`, `timestamp with time zone`) right
    // before a `$n`, and for intervals an optional field (`month`, `day to second`, …).
    Regex::new(
        r"(?ix)
        \b(?P<ty>
            date | time(?:stamp)?(?:\s+with(?:out)?\s+time\s+zone)? | timestamptz | timetz
          | interval | numeric | decimal | real | double\s+precision | float[48]?
          | int[248]? | integer | smallint | bigint | bool(?:ean)? | text | varchar | char
          | bpchar | bytea | uuid | jsonb? | inet | cidr | macaddr | money | oid | xml
          | point | box | tsquery | tsvector
        )\s+\$(?P<n>[0-9]+)
        (?P<field>\s+(?:year|month|day|hour|minute|second)
            (?:\s+to\s+(?:month|hour|minute|second))?\b)?",
    )
    .expect("static regex")
});

/// Rewrites `date $1` to `$1::date`, `interval $2 month` to `$2::interval`, and so on.
/// A type name preceded by `::` or `AS` (already a cast target) is left alone.
pub fn rewrite_typed_literals(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut last = 0;
    for caps in TYPED_LITERAL.captures_iter(text) {
        let whole = caps.get(0).expect("match");
        let before = text[..whole.start()].trim_end();
        let is_cast_target = before.ends_with("::")
            || before
                .rsplit(|c: char| !c.is_ascii_alphanumeric() && c != '_')
                .next()
                .is_some_and(|w| w.eq_ignore_ascii_case("as"));
        if is_cast_target {
            continue;
        }
        out.push_str(&text[last..whole.start()]);
        let ty = caps["ty"].split_whitespace().collect::<Vec<_>>().join(" ");
        out.push('$');
        out.push_str(&caps["n"]);
        out.push_str("::");
        out.push_str(&ty);
        last = whole.end();
    }
    out.push_str(&text[last..]);
    out
}

/// Highest `$n` parameter number in `text` (outside nothing: normalized text has no
/// string constants left, so every `$n` is a parameter).
pub fn max_param(text: &str) -> usize {
    let b = text.as_bytes();
    let mut max = 0;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'$' && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_')) {
            let start = i + 1;
            let mut j = start;
            while j < b.len() && b[j].is_ascii_digit() {
                j += 1;
            }
            if j > start {
                max = max.max(text[start..j].parse().unwrap_or(0));
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_literals_become_casts() {
        assert_eq!(
            rewrite_typed_literals("SELECT * FROM t WHERE d > date $1 - interval $2 month"),
            "SELECT * FROM t WHERE d > $1::date - $2::interval"
        );
        assert_eq!(
            rewrite_typed_literals("SELECT timestamp with time zone $1, double precision $2"),
            "SELECT $1::timestamp with time zone, $2::double precision"
        );
        assert_eq!(
            rewrite_typed_literals("SELECT interval $1 day to second"),
            "SELECT $1::interval"
        );
        // Already casts, or a column named like a type: left alone.
        assert_eq!(rewrite_typed_literals("SELECT $1::date"), "SELECT $1::date");
        assert_eq!(
            rewrite_typed_literals("SELECT CAST($1 AS text)"),
            "SELECT CAST($1 AS text)"
        );
        assert_eq!(
            rewrite_typed_literals("SELECT x FROM t WHERE id = $1"),
            "SELECT x FROM t WHERE id = $1"
        );
    }

    #[test]
    fn only_single_dml_is_costable() {
        let c = costable("SELECT abalance FROM pgbench_accounts WHERE aid = $1").unwrap();
        assert_eq!(c.params, 1);
        assert!(costable("UPDATE t SET a = a + $1 WHERE b = $2").is_ok());
        assert!(costable("INSERT INTO t VALUES ($1, $2)").is_ok());
        assert!(costable("DELETE FROM t WHERE a = $1").is_ok());
        assert_eq!(costable("SELECT 1; SELECT 2"), Err(Refusal::MultiStatement));
        assert_eq!(costable("CREATE TABLE x (a int)"), Err(Refusal::Utility));
        assert_eq!(costable("SELECT * INTO x FROM t"), Err(Refusal::Utility));
        assert_eq!(costable("VACUUM t"), Err(Refusal::Utility));
        for free in [
            "BEGIN",
            "END",
            "COMMIT",
            "ROLLBACK TO SAVEPOINT s",
            "SET search_path = a",
            "SHOW work_mem",
            "DISCARD ALL",
            "DEALLOCATE ALL",
            "LISTEN c",
            "NOTIFY c",
        ] {
            assert_eq!(costable(free), Err(Refusal::Free), "{free}");
        }
        // Plain EXPLAIN skips the read-only check (ExecutorStart with EXEC_FLAG_EXPLAIN_ONLY).
        assert!(costable("SELECT * FROM t WHERE a = $1 FOR UPDATE").is_ok());
        assert_eq!(costable("SELEC oops"), Err(Refusal::Parse));
        assert_eq!(costable(""), Err(Refusal::Utility));
        let d = costable("SELECT count(*) FROM o WHERE d >= date $1").unwrap();
        assert_eq!(d.text, "SELECT count(*) FROM o WHERE d >= $1::date");
    }

    #[test]
    fn parameter_numbers() {
        assert_eq!(max_param("SELECT $1, $12, a$3"), 12);
        assert_eq!(max_param("SELECT 1"), 0);
    }
}
