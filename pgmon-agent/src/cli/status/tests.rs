//! `pgmon-agent status` as a person reads it: every table stays aligned.

use super::*;

/// A role name of 63 bytes, the longest PostgreSQL keeps (`NAMEDATALEN` − 1).
const LONG: &str = "tenant_with_a_name_as_long_as_postgresql_allows_namedatalen_063";

fn status() -> Status {
    let fp = |fingerprint: &str, calls: u64, normalized: &str| {
        serde_json::json!({
            "fingerprint": fingerprint, "calls": calls, "errors": 1, "mean_ms": 0.25,
            "text_bytes": 40, "normalized": normalized, "cost_state": "costed",
            "plan_cost": 12.5, "total_cost": 12.5 * calls as f64, "cost_per_second": 50000.0
        })
    };
    let role = |name: &str, queries: u64| {
        serde_json::json!({
            "role": name, "databases": ["app", "shop"], "queries": queries, "errors": 3,
            "errors_by_class": {"22": 3}, "connection_errors": 0,
            "connection_errors_by_class": {}, "connections": 4, "p50_ms": 0.31,
            "p99_ms": 12.0,
            "fingerprints": [
                fp("00000000000000ff", queries, "SELECT * FROM items WHERE id = $1"),
                fp("0123456789abcdef", 7, "UPDATE items SET n = n + $1"),
            ]
        })
    };
    let budget = |name: &str, step: Option<&str>| {
        serde_json::json!({
            "role": name, "tier": "small", "unit": "plan_cost", "spend": 1234.5,
            "budget": 100000.0, "window_seconds": 3600, "utilisation": 0.0123,
            "step": step, "step_at": step.map(|_| 0.8), "connection_limit": null
        })
    };
    let storage = |name: &str, usage: Option<u64>| {
        serde_json::json!({
            "role": name, "usage_bytes": usage, "soft_limit_bytes": 1u64 << 30,
            "hard_limit_bytes": 2u64 << 30, "state": "ok", "state_seconds": 10.0,
            "time_left_seconds": null, "manual_unlock": false, "limited": true,
            "enforcement_error": null
        })
    };
    serde_json::from_value(serde_json::json!({
        "agent": {"version": "0.1.0", "pid": 42, "uptime_seconds": 61.0,
                  "resident_memory_bytes": 31457280, "cpu_seconds": 1.5},
        "cluster": {"data_directory": "/var/lib/postgresql/15/main", "postmaster_pid": 7,
                    "tracked_processes": 12, "connections": 5},
        "capture": {"hook": "raw_tracepoint", "hook_cost_rank": 1, "refused_hooks": [],
                    "events": 100, "dropped": 0, "dropped_bytes": 0, "truncated": 0,
                    "truncated_bytes": 0, "probe_errors": 0, "forks": 3,
                    "desyncs_frontend": 0, "desyncs_backend": 0,
                    "unattributed_queries": 0, "encrypted_sessions": 0,
                    "tls": {"state": "off", "reason": "no libssl"},
                    "oversized_messages": 0, "late_attributions": 0,
                    "statement_cache_hits": 9, "statement_cache_misses": 2,
                    "statement_cache_entries": 2, "normalize_errors": 0},
        "roles": [role(LONG, 1_234_567), role("bob", 8)],
        "budgets": [budget(LONG, Some("warn")), budget("bob", None)],
        "storage": {"dry_run": false, "usage_ttl_seconds": 1.0,
                    "last_recount_seconds": 0.5, "last_recount_age_seconds": 3.0,
                    "databases": [],
                    "roles": [storage("bob", Some(5 << 20)), storage(LONG, None)]}
    }))
    .expect("a status document")
}

/// The tables of `text`: runs of lines drawn with `|` (rows) or `-+-` (the header rule).
fn tables(text: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    let mut open = false;
    for line in text.lines() {
        if line.contains(" | ") || line.contains("-+-") {
            if !open {
                out.push(Vec::new());
            }
            out.last_mut().expect("pushed").push(line);
            open = true;
        } else {
            open = false;
        }
    }
    out
}

/// Character offsets of the column separators of a table line: ` | ` in a row, `-+-`
/// in the header rule.
fn separators(line: &str) -> Vec<usize> {
    // A row whose last cell is empty ends in `|`, its blank trimmed.
    let c: Vec<char> = line.chars().chain([' ']).collect();
    (1..c.len().saturating_sub(1))
        .filter(|&i| {
            matches!(
                (c[i - 1], c[i], c[i + 1]),
                (' ', '|', ' ') | ('-', '+', '-')
            )
        })
        .collect()
}

#[test]
fn a_63_byte_role_name_keeps_the_columns_aligned() {
    assert_eq!(LONG.len(), 63);
    let mut s = status();
    let mut text = render(&s);
    by_expense(&mut s.roles[0].fingerprints);
    text.push_str(&render_role(&s.roles[0], s.budgets.first()));
    let tables = tables(&text);
    // roles, budgets, storage, two "top fingerprints", one "most expensive".
    assert_eq!(tables.len(), 6, "{text}");
    for t in &tables {
        let at = separators(t[0]);
        assert!(!at.is_empty(), "{text}");
        for line in t {
            assert_eq!(separators(line), at, "{line:?} out of line in\n{text}");
        }
    }
    // The whole name in the first column of the roles, budgets and storage tables.
    for t in &tables[..3] {
        assert!(
            t.iter()
                .any(|l| l.split('|').next().unwrap().trim() == LONG),
            "{t:#?}"
        );
    }
    // Numbers right-aligned: each ends where its column ends.
    let roles = &tables[0];
    let queries = roles[2..]
        .iter()
        .map(|l| l.split('|').nth(1).unwrap())
        .collect::<Vec<_>>();
    assert_eq!(queries, [" 1234567 ", "       8 "], "{roles:#?}");
}

#[test]
fn steps_and_units_read_as_the_policy_file_writes_them() {
    let mut s = status();
    s.budgets[1].step = Some(crate::budget::policy::ActionKind::ConnectionLimit);
    s.budgets[1].step_at = Some(1.0);
    s.budgets[1].connection_limit = Some(5);
    let text = render(&s);
    let row = |role: &str| {
        text.lines()
            .find(|l| l.split('|').next().is_some_and(|c| c.trim() == role) && l.contains("small"))
            .unwrap_or_else(|| panic!("{role}'s budget row in\n{text}"))
            .to_owned()
    };
    assert!(row(LONG).ends_with("| warn (utilisation ≥ 0.8)"), "{text}");
    assert!(
        row("bob").ends_with("| connection_limit 5 (utilisation ≥ 1)"),
        "{text}"
    );
    let one = render_role(&s.roles[1], Some(&s.budgets[1]));
    assert!(
        one.contains("spend 1234.5 of 100000.0 plan_cost per 3600 s (utilisation 0.01), step connection_limit"),
        "{one}"
    );
}
