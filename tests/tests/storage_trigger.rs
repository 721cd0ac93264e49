//! The storage trigger itself (`pgmon.storage_notify()`, sql/004_storage.sql), on a real
//! cluster with no agent: which implementation a database gets (C on PostgreSQL 15, where
//! `cargo xtask setup` installs `$libdir/pgmon_storage`; PL/pgSQL on the npm PostgreSQL 18,
//! which has no server headers), and that both notify the owner at most once per session,
//! owner and quarter second of the clock (a DO block committing in a loop too), and again after a rolled-back (sub)transaction took its notification
//! away.

mod storage_util;

use std::{collections::HashMap, io::Write as _};

use pgmon_tests::{Cluster, PgVersion, Transport, require_root};
use storage_util::{role, sql};

/// Runs `script` with `psql -f` as the superuser in `tenants` (one statement at a time, so
/// each COMMIT is its own), listening on `pgmon_storage` first; returns how many
/// notifications each payload got (psql prints the ones it received after each command).
fn notifications(cluster: &Cluster, script: &str) -> HashMap<String, usize> {
    let mut f = tempfile::Builder::new()
        .suffix(".sql")
        .tempfile()
        .expect("tempfile");
    write!(f, "LISTEN pgmon_storage;\n{script}\nSELECT 1;\n").expect("write");
    f.flush().expect("flush");
    let out = cluster
        .psql_cmd("postgres", "tenants", Transport::Unix)
        .arg("-f")
        .arg(f.path())
        .output()
        .expect("psql");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut counts = HashMap::new();
    for line in stdout.lines() {
        if let Some(rest) =
            line.strip_prefix("Asynchronous notification \"pgmon_storage\" with payload \"")
        {
            let payload = rest.split('"').next().unwrap_or_default();
            // owner US relid US bytes: the size is a number the agent can use.
            let parts: Vec<&str> = payload.split('\u{1f}').collect();
            assert_eq!(parts.len(), 3, "payload {payload:?}");
            assert!(
                parts[1].parse::<u32>().is_ok() && parts[2].parse::<u64>().is_ok(),
                "{payload:?}"
            );
            *counts.entry(parts[0].to_string()).or_insert(0) += 1;
        }
    }
    counts
}

fn trigger(version: PgVersion) {
    let cluster = storage_util::slow_tenant_cluster(version);
    role(&cluster, "other_owner", "");
    for owner in ["slow", "other_owner"] {
        let table = format!("t_{owner}");
        sql(
            &cluster,
            owner,
            "tenants",
            &format!("CREATE TABLE {table} (v int)"),
        );
        // Attached by hand: neither role is in pgmon.storage_limits (no agent here).
        sql(
            &cluster,
            "postgres",
            "tenants",
            &format!("SELECT pgmon.storage_set_trigger('{table}', '{owner}')"),
        );
    }

    let language = sql(
        &cluster,
        "postgres",
        "tenants",
        "SELECT l.lanname FROM pg_proc p JOIN pg_language l ON l.oid = p.prolang \
         WHERE p.oid = 'pgmon.storage_notify()'::regprocedure",
    );
    let expected = match version {
        PgVersion::Pg15 => "c",
        _ => "plpgsql",
    };
    assert_eq!(
        language.trim(),
        expected,
        "pgmon.storage_notify() on {version:?} (PostgreSQL 15 gets the C version from \
         /usr/lib/postgresql/15/lib/pgmon_storage.so, which `cargo xtask setup` installs)"
    );

    // 200 committed transactions, each writing both owners' tables, in well under a
    // second or two: each owner is notified once per quarter second that saw a write, not
    // 200 times.
    let script: String = (0..200)
        .map(|i| {
            format!(
                "BEGIN; INSERT INTO t_slow VALUES ({i}); \
                 INSERT INTO t_other_owner VALUES ({i}); COMMIT;\n"
            )
        })
        .collect();
    let started = std::time::Instant::now();
    let counts = notifications(&cluster, &script);
    let seconds = started.elapsed().as_secs() as usize + 1;
    let slots = 4 * seconds;
    let language = language.trim();
    println!("{version:?} ({language}): 200 transactions in ≤ {seconds} s: {counts:?}");
    for owner in ["slow", "other_owner"] {
        let n = counts.get(owner).copied().unwrap_or(0);
        assert!(
            (1..=slots + 1).contains(&n),
            "{owner}: {n} notifications for 200 transactions in ≤ {seconds} s ({slots} quarter seconds): {counts:?}"
        );
    }
    assert_eq!(counts.len(), 2, "only the owners are payloads: {counts:?}");

    // A rolled-back transaction's notification is discarded by PostgreSQL; the next
    // write must notify again (a fresh session: nothing remembered yet).
    let counts = notifications(
        &cluster,
        "BEGIN; INSERT INTO t_slow VALUES (1); ROLLBACK;\n\
         INSERT INTO t_slow VALUES (2);\n",
    );
    assert_eq!(counts.get("slow"), Some(&1), "after a ROLLBACK: {counts:?}");
    let counts = notifications(
        &cluster,
        "BEGIN; SAVEPOINT s; INSERT INTO t_slow VALUES (1); ROLLBACK TO SAVEPOINT s;\n\
         INSERT INTO t_slow VALUES (2); COMMIT;\n",
    );
    assert_eq!(
        counts.get("slow"),
        Some(&1),
        "after a ROLLBACK TO SAVEPOINT: {counts:?}"
    );
    // A DO block committing in a loop keeps one transaction start time for all its
    // transactions: the throttle follows the clock, so ~1.2 s of commits is heard in
    // each quarter second, not once.
    let counts = notifications(
        &cluster,
        "DO $$ BEGIN FOR i IN 1..40 LOOP INSERT INTO t_slow VALUES (i); COMMIT; \
         PERFORM pg_sleep(0.03); END LOOP; END $$;\n",
    );
    let n = counts.get("slow").copied().unwrap_or(0);
    assert!(
        (3..=7).contains(&n),
        "a DO block committing for ~1.2 s: {n} notifications: {counts:?}"
    );
    // DELETE frees nothing until VACUUM: no trigger.
    let counts = notifications(&cluster, "DELETE FROM t_slow;\n");
    assert!(counts.is_empty(), "DELETE notified: {counts:?}");
}

#[test]
fn storage_trigger_pg15() {
    if require_root("storage_trigger_pg15") {
        trigger(PgVersion::Pg15);
    }
}

#[test]
fn storage_trigger_pg18() {
    if require_root("storage_trigger_pg18") {
        trigger(PgVersion::Pg18);
    }
}
