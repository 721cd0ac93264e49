//! Section 3 of the storage benchmark (issue 27): can a tenant outrun its hard limit?
//! For each mode (`shared_hosting`, whose 15 s usage cache TTL was the gap, and
//! `enterprise_db`), roles `bulk_*` (hard limit 50 MB, grace 0) created before a fresh
//! agent starts:
//!
//! - CREATE TABLE in one transaction, 300 ms later (its count done, the TTL running) an
//!   ~80 MB INSERT in another: milliseconds from the INSERT's commit to the role being
//!   NOLOGIN with no session left (a superuser session polling on the server every 1 ms,
//!   as in section 2), and the bytes the role owns past its hard limit once locked.
//! - CREATE TABLE, then a loop of 1 MB commits in one session until the agent ends it:
//!   the bytes past the hard limit once locked, and how many commits went through.
//! - A role created after the agent started, its CREATE TABLE and the load at once: the
//!   agent lists new roles every second, syncs their limits and counts them.

use std::{fmt::Write as _, path::Path, thread::JoinHandle, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use pgmon_tests::{Agent, Cluster, Transport, free_port};

use crate::bench_stats::median;

/// The roles' hard limit, bytes (50 MB as the policy writes it: 50 × 10⁶).
const HARD: u64 = 50_000_000;

/// One mode's figures.
pub struct Outrun {
    pub mode: &'static str,
    /// Commit of the ~80 MB load → locked and no session left, ms.
    pub load_lock_ms: Vec<f64>,
    /// Bytes past the hard limit after the load.
    pub load_past: Vec<u64>,
    /// Bytes past the hard limit after the loop of 1 MB commits.
    pub loop_past: Vec<u64>,
    /// Commits of the loop that went through.
    pub loop_commits: Vec<u64>,
    /// A role created after the agent started, CREATE TABLE and the load at once: (ms from
    /// the commit to locked, bytes past the hard limit).
    pub new_role: Option<(f64, u64)>,
}

fn config(cluster: &Cluster, port: u16, mode: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=pgmon dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n\
         storage:\n  enabled: true\n  mode: {mode}\n  roles:\n\
         \x20   - {{match: 'bulk_*', soft_limit: 25MB, hard_limit: 50MB, hard_grace_period: 0, unlock_grace_period: 86400}}\n",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// Bytes `role` owns in `db`, as the server counts them.
fn owned(cluster: &Cluster, db: &str, role: &str) -> Result<u64> {
    cluster
        .query_value(
            "postgres",
            db,
            &format!(
                "SELECT coalesce(sum(pg_total_relation_size(oid)), 0) FROM pg_class \
                 WHERE relowner = '{role}'::regrole AND relkind IN ('r', 'm', 'p')"
            ),
        )?
        .parse()
        .context("bytes")
}

/// Starts a superuser session that waits for rows in `table` (or for `role` to be locked
/// first: caught before its commit, then the time is ~0), then times (ms, on the server's
/// clock) until `role` is NOLOGIN and has no session (20 s at most).
pub fn lock_watcher(
    cluster: &Cluster,
    db: &str,
    role: &str,
    table: &str,
) -> Result<JoinHandle<Result<f64>>> {
    let mut watcher = cluster.hold_session("postgres", db, Transport::Unix)?;
    watcher.run("CREATE TEMP TABLE lat (ms float8)")?;
    let sql = format!(
        "DO $$ DECLARE t0 timestamptz; BEGIN \
           LOOP EXIT WHEN EXISTS (SELECT FROM {table}) \
             OR NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'); \
             EXIT WHEN clock_timestamp() - statement_timestamp() > interval '40 s'; \
             PERFORM pg_sleep(0.001); END LOOP; \
           t0 := clock_timestamp(); \
           LOOP PERFORM pg_stat_clear_snapshot(); \
             EXIT WHEN NOT (SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}') \
               AND NOT EXISTS (SELECT FROM pg_stat_activity WHERE usename = '{role}'); \
             EXIT WHEN clock_timestamp() - t0 > interval '20 s'; \
             PERFORM pg_sleep(0.001); END LOOP; \
           INSERT INTO lat VALUES (extract(epoch FROM clock_timestamp() - t0) * 1000); END $$"
    );
    Ok(std::thread::spawn(move || -> Result<f64> {
        watcher.run(&sql)?;
        watcher
            .run("SELECT ms FROM lat")?
            .trim()
            .parse()
            .context("latency")
    }))
}

/// Creates `role` with a schema of its own in `db` (where its `CREATE TABLE w` goes).
fn make_role(cluster: &Cluster, db: &str, role: &str) -> Result<()> {
    cluster.psql_admin(&format!("CREATE ROLE {role} LOGIN"))?;
    cluster.psql(
        "postgres",
        db,
        Transport::Unix,
        &format!("CREATE SCHEMA AUTHORIZATION {role}"),
    )?;
    Ok(())
}

fn create_table(cluster: &Cluster, db: &str, role: &str) -> Result<()> {
    cluster.psql(role, db, Transport::Unix, "CREATE TABLE w (v text)")?;
    Ok(())
}

/// CREATE TABLE (done by the caller), then the 80 MB INSERT: (ms from its commit to
/// locked with no session, 0 when it was caught before its commit; bytes past the hard
/// limit).
fn load(cluster: &Cluster, db: &str, mode: &str, role: &str) -> Result<(f64, u64)> {
    let watch = lock_watcher(cluster, db, role, &format!("{role}.w"))?;
    std::thread::sleep(Duration::from_millis(100));
    let mut writer = cluster.hold_session(role, db, Transport::Unix)?;
    // Terminated right after its commit.
    let _ = writer.run("INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 80000)");
    let ms = watch.join().map_err(|_| anyhow!("watcher panicked"))??;
    let past = owned(cluster, db, role)?.saturating_sub(HARD);
    let committed = cluster.query_value(
        "postgres",
        db,
        &format!("SELECT EXISTS (SELECT FROM {role}.w)"),
    )? == "t";
    if !committed {
        eprintln!(
            "bench storage {mode}: {role} locked, its session ended, before its 80 MB INSERT committed; {past} bytes of its files past the hard limit"
        );
        return Ok((0.0, past));
    }
    eprintln!(
        "bench storage {mode}: {role} locked {ms:.1} ms after its 80 MB commit, {past} bytes past the hard limit"
    );
    if can_login(cluster, role)? {
        bail!("{mode}: {role} was not locked within 20 s of its commit");
    }
    Ok((ms, past))
}

fn can_login(cluster: &Cluster, role: &str) -> Result<bool> {
    Ok(cluster.query_value(
        "postgres",
        "postgres",
        &format!("SELECT rolcanlogin FROM pg_roles WHERE rolname = '{role}'"),
    )? == "t")
}

fn one_mode(
    cluster: &Cluster,
    binary: &Path,
    db: &str,
    mode: &'static str,
    samples: usize,
) -> Result<Outrun> {
    let short = &mode[..1];
    // The tenants exist before the agent starts, as in issue 27's report.
    for s in 0..samples {
        make_role(cluster, db, &format!("bulk_{short}_load_{s}"))?;
        make_role(cluster, db, &format!("bulk_{short}_loop_{s}"))?;
    }
    let port = free_port();
    let agent = Agent::start(
        binary,
        &config(cluster, port, mode),
        format!("127.0.0.1:{port}"),
    )?;
    let deadline = std::time::Instant::now() + Duration::from_secs(300);
    while agent.status_json()?["storage"]["last_recount_seconds"].is_null() {
        if std::time::Instant::now() > deadline {
            bail!("the agent's first full recount did not finish within 300 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut out = Outrun {
        mode,
        load_lock_ms: Vec::new(),
        load_past: Vec::new(),
        loop_past: Vec::new(),
        loop_commits: Vec::new(),
        new_role: None,
    };
    for s in 0..samples {
        // CREATE TABLE, its count done (the usage TTL running), then the bulk load.
        let role = format!("bulk_{short}_load_{s}");
        create_table(cluster, db, &role)?;
        std::thread::sleep(Duration::from_millis(300));
        let (ms, past) = load(cluster, db, mode, &role)?;
        out.load_lock_ms.push(ms);
        out.load_past.push(past);

        // The loop of 1 MB commits.
        let role = format!("bulk_{short}_loop_{s}");
        create_table(cluster, db, &role)?;
        std::thread::sleep(Duration::from_millis(300));
        let mut writer = cluster.hold_session(&role, db, Transport::Unix)?;
        let t = std::thread::spawn(move || {
            writer.run(
                "DO $$ BEGIN LOOP \
                   INSERT INTO w SELECT repeat('x', 1000) FROM generate_series(1, 1000); \
                   COMMIT; END LOOP; END $$",
            )
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        while can_login(cluster, &role)? {
            if std::time::Instant::now() > deadline {
                bail!("{mode}: {role} was not locked within 60 s of 1 MB commits");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = t.join();
        let past = owned(cluster, db, &role)?.saturating_sub(HARD);
        let commits: u64 = cluster
            .query_value(
                "postgres",
                db,
                &format!("SELECT count(*) / 1000 FROM {role}.w"),
            )?
            .parse()
            .context("rows")?;
        eprintln!(
            "bench storage {mode}: {role} locked after {commits} commits of 1 MB, {past} bytes past the hard limit"
        );
        out.loop_past.push(past);
        out.loop_commits.push(commits);
    }
    // A tenant created after the agent started: the role, its table and the load at once.
    let role = format!("bulk_{short}_new");
    make_role(cluster, db, &role)?;
    create_table(cluster, db, &role)?;
    out.new_role = Some(load(cluster, db, mode, &role)?);
    drop(agent);
    Ok(out)
}

/// Runs both modes in database `db` of `cluster` (sql/004_storage.sql installed, CREATE
/// on its schema public granted to PUBLIC); each role writes in a schema of its own name.
pub fn run(cluster: &Cluster, binary: &Path, db: &str, samples: usize) -> Result<Vec<Outrun>> {
    ["shared_hosting", "enterprise_db"]
        .into_iter()
        .map(|mode| one_mode(cluster, binary, db, mode, samples))
        .collect()
}

/// The report rows (Markdown table rows, no header) and the JSON.
pub fn report(runs: &[Outrun]) -> (String, serde_json::Value) {
    let mb = |v: &[u64]| {
        v.iter()
            .map(|b| format!("{:.1}", *b as f64 / 1e6))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let med = |v: &[u64]| median(v.iter().map(|b| *b as f64).collect()) / 1e6;
    let mut md = String::new();
    for r in runs {
        let ms = r
            .load_lock_ms
            .iter()
            .map(|m| format!("{m:.0}"))
            .collect::<Vec<_>>()
            .join(" ");
        let _ = writeln!(
            md,
            "| `{}`: CREATE TABLE, then an 80 MB INSERT in its own transaction → locked, sessions gone (hard 50 MB, grace 0) | median {:.0} ms ({ms}); {:.1} MB past the hard limit (all of it the one commit) | < 1 s |",
            r.mode,
            median(r.load_lock_ms.clone()),
            med(&r.load_past),
        );
        let _ = writeln!(
            md,
            "| `{}`: CREATE TABLE, then 1 MB commits in a loop until the agent ends the session | median {:.1} MB past the hard limit ({} MB; commits {}) | reported |",
            r.mode,
            med(&r.loop_past),
            mb(&r.loop_past),
            r.loop_commits
                .iter()
                .map(u64::to_string)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    for r in runs {
        if let Some((ms, past)) = r.new_role {
            let _ = writeln!(
                md,
                "| `{}`: a role created after the agent started, its CREATE TABLE and 80 MB INSERT at once → locked | {ms:.0} ms; {:.1} MB past | < 1 s after the role is listed (≤ 1 s) |",
                r.mode,
                past as f64 / 1e6
            );
        }
    }
    let json = runs
        .iter()
        .map(|r| {
            serde_json::json!({
                "mode": r.mode, "load_lock_ms": r.load_lock_ms, "load_past_bytes": r.load_past,
                "loop_past_bytes": r.loop_past, "loop_commits": r.loop_commits,
                "new_role_lock_ms": r.new_role.map(|n| n.0), "new_role_past_bytes": r.new_role.map(|n| n.1),
            })
        })
        .collect();
    (md, serde_json::Value::Array(json))
}
