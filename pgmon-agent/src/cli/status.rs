//! `pgmon-agent status`: reads `/api/v1/status` from a running agent and prints it for a
//! person (or as JSON with `--json`).

use std::fmt::Write as _;

use anyhow::{Context as _, bail};

use super::table::{self, Align::Left as L, Align::Right as R, table};
use crate::{
    budget::BudgetStatus,
    status::{FingerprintStatus, RoleStatus, Status},
};

/// Fetches and prints the status of the running agent.
pub fn status(
    agent: &super::client::AgentArgs,
    json: bool,
    role: Option<&str>,
) -> anyhow::Result<()> {
    let body = agent.request(
        hyper::Method::GET,
        "/api/v1/status",
        std::time::Duration::from_secs(10),
    )?;
    if json && role.is_none() {
        println!("{body}");
        return Ok(());
    }
    let status: Status =
        serde_json::from_str(&body).context("agent answered with unexpected JSON")?;
    match role {
        Some(name) => {
            let Some(r) = status.roles.iter().find(|r| r.role == name) else {
                bail!(
                    "role {name:?} has no captured traffic (roles seen: {})",
                    status.roles.len()
                );
            };
            let mut r = r.clone();
            by_expense(&mut r.fingerprints);
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                let budget = status.budgets.iter().find(|b| b.role == name);
                print!("{}", render_role(&r, budget));
            }
        }
        None => print!("{}", render(&status)),
    }
    Ok(())
}

/// Most expensive first: by `total_cost` (calls × plan cost), then, for fingerprints not
/// costed, by summed execution time.
fn by_expense(fps: &mut [FingerprintStatus]) {
    fps.sort_by(|a, b| {
        let cost = |f: &FingerprintStatus| f.total_cost.unwrap_or(-1.0);
        cost(b)
            .total_cmp(&cost(a))
            .then(b.total_ms().total_cmp(&a.total_ms()))
            .then(a.fingerprint.cmp(&b.fingerprint))
    });
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{v:.2}"))
}

/// The human-readable status.
pub fn render(s: &Status) -> String {
    let mut o = String::new();
    let c = &s.capture;
    let _ = writeln!(
        o,
        "pgmon {} (pid {}), up {:.0} s, RSS {:.1} MiB, CPU {:.1} s",
        s.agent.version,
        s.agent.pid,
        s.agent.uptime_seconds,
        s.agent.resident_memory_bytes as f64 / (1 << 20) as f64,
        s.agent.cpu_seconds
    );
    if let Some(r) = &s.agent.recent {
        let _ = write!(
            o,
            "cost      last {:.0} s: {:.2} % of a core at {:.0} queries/s",
            r.window_seconds,
            r.cpu_fraction * 100.0,
            r.queries_per_second
        );
        match r.cpu_fraction_per_1000_queries_per_second {
            Some(per) => {
                let _ = writeln!(o, ", {:.3} % of a core per 1,000 queries/s", per * 100.0);
            }
            None => {
                let _ = writeln!(o, " (too few queries for a per-rate figure)");
            }
        }
    }
    let _ = writeln!(
        o,
        "cluster   {} (postmaster {}), {} processes tracked, {} client connections",
        s.cluster.data_directory,
        s.cluster.postmaster_pid,
        s.cluster.tracked_processes,
        s.cluster.connections
    );
    let _ = write!(
        o,
        "capture   hook {} (cost rank {})",
        c.hook, c.hook_cost_rank
    );
    for r in &c.refused_hooks {
        let _ = write!(o, "; {} refused: {}", r.hook, r.error);
    }
    let _ = writeln!(o);
    let _ = writeln!(
        o,
        "          {} records, {} dropped ({} B), {} truncated ({} B), {} probe errors",
        c.kernel.events,
        c.kernel.dropped,
        c.kernel.dropped_bytes,
        c.kernel.truncated,
        c.kernel.truncated_bytes,
        c.kernel.probe_errors
    );
    if !c.probes.is_empty() {
        let list: Vec<String> = c
            .probes
            .iter()
            .map(|p| {
                format!(
                    "{} {} runs {:.0} ns/run",
                    p.name.trim_start_matches("pgmon_"),
                    p.runs,
                    p.run_ns as f64 / p.runs.max(1) as f64
                )
            })
            .collect();
        let _ = writeln!(o, "          kernel time: {}", list.join(", "));
    }
    let _ = writeln!(
        o,
        "          desyncs {} frontend / {} backend, {} unattributed queries, {} oversized messages",
        c.desyncs_frontend, c.desyncs_backend, c.unattributed_queries, c.oversized_messages
    );
    let _ = match &c.tls {
        crate::capture::tls::TlsCapture::On { library, functions } => writeln!(
            o,
            "     tls: on, entry probes on {} in {library}",
            functions.join(", ")
        ),
        crate::capture::tls::TlsCapture::Off { reason } => writeln!(o, "     tls: off ({reason})"),
    };
    let _ = writeln!(
        o,
        "          {} encrypted sessions open: {} read through libssl, {} unreadable (charged by CPU time); since start: {} read, {} unreadable",
        c.encrypted_sessions,
        c.encrypted_sessions_readable,
        c.encrypted_sessions - c.encrypted_sessions_readable,
        c.encrypted_sessions_opened.0,
        c.encrypted_sessions_opened.1
    );
    let _ = writeln!(
        o,
        "          statement cache: {} entries, {} hits, {} misses, {} not parsable (fallback identity)",
        c.statement_cache_entries,
        c.statement_cache_hits,
        c.statement_cache_misses,
        c.normalize_errors
    );
    let _ = writeln!(o);
    let mut t = table(&[
        ("role", L),
        ("queries", R),
        ("errors", R),
        ("conn errs", R),
        ("prep errs", R),
        ("conns", R),
        ("p50 ms", R),
        ("p99 ms", R),
        ("databases", L),
    ]);
    for r in &s.roles {
        t.add_row([
            r.role.clone(),
            r.queries.to_string(),
            r.errors.to_string(),
            r.connection_errors.to_string(),
            r.prepare_errors.to_string(),
            r.connections.to_string(),
            ms(r.p50_ms),
            ms(r.p99_ms),
            r.databases.join(","),
        ]);
    }
    o.push_str(&table::render(&t));
    if !s.budgets.is_empty() {
        let _ = writeln!(o);
        let mut t = table(&[
            ("budget role", L),
            ("tier", L),
            ("spend", R),
            ("budget", R),
            ("util", R),
            ("step (why)", L),
        ]);
        for b in &s.budgets {
            let step = match (b.step, b.step_at, b.connection_limit) {
                (Some(a), Some(at), Some(l)) => {
                    format!("{} {l} (utilisation ≥ {at})", a.as_str())
                }
                (Some(a), Some(at), None) => format!("{} (utilisation ≥ {at})", a.as_str()),
                _ => "-".to_owned(),
            };
            t.add_row([
                b.role.clone(),
                b.tier.clone(),
                format!("{:.1}", b.spend),
                format!("{:.1}", b.budget),
                format!("{:.2}", b.utilisation),
                step,
            ]);
        }
        o.push_str(&table::render(&t));
    }
    if let Some(st) = &s.storage {
        o.push_str(&render_storage(st, 50));
    }
    for r in &s.roles {
        let _ = writeln!(o);
        o.push_str(&render_role_top(r, 5));
    }
    o
}

/// `bytes` in the largest binary unit that keeps it ≥ 1 (`12.0 MiB`).
fn size(bytes: u64) -> String {
    crate::util::bytes(bytes as f64)
}

/// The storage section: databases not fully covered, then the `k` fullest roles with their
/// usage, limits, state and the time left in a grace period.
pub fn render_storage(st: &crate::storage::StorageStatus, k: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o);
    let recount = match (st.last_recount_seconds, st.last_recount_age_seconds) {
        (Some(s), Some(age)) => format!("last full recount {s:.2} s long, {age:.0} s ago"),
        _ => "no full recount yet".to_owned(),
    };
    let _ = writeln!(
        o,
        "storage   {} databases, {} roles limited{}; {recount}",
        st.databases.len(),
        st.roles.iter().filter(|r| r.limited).count(),
        if st.dry_run { " (dry run)" } else { "" }
    );
    for d in &st.databases {
        if !d.state.connected {
            let _ = writeln!(
                o,
                "          database {}: not connected ({})",
                d.name,
                d.state.error.as_deref().unwrap_or("connecting")
            );
        } else if !d.state.sql_installed {
            let _ = writeln!(
                o,
                "          database {}: sql/004_storage.sql not installed (periodic recount only)",
                d.name
            );
        }
    }
    let mut t = table(&[
        ("storage role", L),
        ("usage", R),
        ("soft", R),
        ("hard", R),
        ("state", L),
        ("time left", R),
        ("note", L),
    ]);
    for r in st.roles.iter().take(k) {
        let left = r
            .time_left_seconds
            .map_or_else(|| "-".to_owned(), |s| format!("{s:.0} s"));
        let mut note = Vec::new();
        if r.state == crate::storage::state::Phase::Locked && r.manual_unlock {
            note.push(format!("manual unlock: pgmon-agent unlock {}", r.role));
        }
        if !r.limited {
            note.push("no longer limited by the policy".to_owned());
        }
        if let Some(e) = &r.enforcement_error {
            note.push(e.clone());
        }
        t.add_row([
            r.role.clone(),
            r.usage_bytes.map_or_else(|| "uncounted".to_owned(), size),
            size(r.soft_limit_bytes),
            size(r.hard_limit_bytes),
            r.state.as_str().to_owned(),
            left,
            note.join("; "),
        ]);
    }
    o.push_str(&table::render(&t));
    if st.roles.len() > k {
        let _ = writeln!(o, "… and {} more (--json shows all)", st.roles.len() - k);
    }
    o
}

fn render_role(r: &RoleStatus, budget: Option<&BudgetStatus>) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "role {}: {} queries, {} errors {:?}, {} connection errors {:?}, {} failed prepares {:?}, {} connections, p50 {} ms, p99 {} ms, databases {}",
        r.role,
        r.queries,
        r.errors,
        r.errors_by_class,
        r.connection_errors,
        r.connection_errors_by_class,
        r.prepare_errors,
        r.prepare_errors_by_class,
        r.connections,
        ms(r.p50_ms),
        ms(r.p99_ms),
        r.databases.join(",")
    );
    if let Some(b) = budget {
        let _ = writeln!(
            o,
            "budget: tier {}, spend {:.1} of {:.1} {} per {} (utilisation {:.2}), step {}",
            b.tier,
            b.spend,
            b.budget,
            b.unit.as_str(),
            match b.reset {
                Some(crate::budget::policy::Reset::Hourly) => "hour (UTC)".to_owned(),
                Some(crate::budget::policy::Reset::Daily) => "day (UTC)".to_owned(),
                None => format!("{} s", b.window_seconds),
            },
            b.utilisation,
            b.step.map_or("-", |s| s.as_str())
        );
        if !b.unlock.is_empty() {
            let _ = writeln!(o, "unlock --budget would: {}", b.unlock);
        }
    }
    let _ = writeln!(
        o,
        "most expensive fingerprints (cost = generic-plan total cost per execution, planner units):"
    );
    let mut t = table(&[
        ("fingerprint", L),
        ("calls", R),
        ("cost", R),
        ("total cost", R),
        ("mean ms", R),
        ("cost/s", R),
        ("normalized text", L),
    ]);
    for f in &r.fingerprints {
        let cost = match (f.plan_cost, f.cost_state.as_str()) {
            (Some(c), _) => format!("{c:.2}"),
            (None, "not_costable") => "n/a".to_owned(),
            (None, "pending") => "pending".to_owned(),
            _ => "-".to_owned(),
        };
        let opt =
            |v: Option<f64>, p: usize| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.p$}"));
        t.add_row([
            f.fingerprint.clone(),
            f.calls.to_string(),
            cost,
            opt(f.total_cost, 1),
            format!("{:.3}", f.mean_ms),
            opt(f.cost_per_second, 0),
            one_line(&f.normalized),
        ]);
    }
    o.push_str(&table::render(&t));
    o
}

/// `text` on one line, at most 90 characters.
fn one_line(text: &str) -> String {
    let mut t: String = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.chars().count() > 90 {
        t = t.chars().take(87).collect::<String>() + "...";
    }
    t
}

fn render_role_top(r: &RoleStatus, k: usize) -> String {
    let mut o = String::new();
    let _ = writeln!(o, "top fingerprints of {}:", r.role);
    let mut t = table(&[
        ("fingerprint", L),
        ("calls", R),
        ("errors", R),
        ("mean ms", R),
        ("normalized text", L),
    ]);
    for f in r.fingerprints.iter().take(k) {
        t.add_row([
            f.fingerprint.clone(),
            f.calls.to_string(),
            f.errors.to_string(),
            format!("{:.3}", f.mean_ms),
            one_line(&f.normalized),
        ]);
    }
    o.push_str(&table::render(&t));
    o
}

#[cfg(test)]
mod tests;
