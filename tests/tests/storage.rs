//! Privileged tests of storage quotas (issue 4) on PostgreSQL 15 and 18, with the real
//! agent connected as `pgmon` (least privilege) and sql/004_storage.sql installed:
//! - usage: tables made before installation, in another database (without 004: the
//!   recount alone), with CREATE TABLE AS, and indexes all count, exactly as
//!   pg_total_relation_size says; a role that owns nothing is 0, not missing;
//! - soft 5 MB / hard 10 MB: 6 MB warns; COPY of 20 MB crosses the hard limit; after the
//!   grace its session is gone and it cannot log in; DELETE + VACUUM FULL bring it under
//!   and after the unlock grace it logs in again; with `manual_unlock` it stays locked
//!   until `pgmon-agent unlock`;
//! - exempt and superuser roles over their limit are never locked;
//! - the alert engine notifies the manual lock (firing, then resolved at the unlock);
//! - every transition reaches a JSON webhook, while a Slack URL that refuses connections
//!   (retried in the background) holds nothing up;
//! - lock holders: a budget restore does not give LOGIN back while storage holds the role,
//!   and the other way round.

mod storage_util;

use std::time::Duration;

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Receiver, Transport, agent_binary, free_port,
    require_root,
};
use storage_util::*;

const ROLES: &str = concat!(
    "    - {match: quota, soft_limit: 5MB, hard_limit: 10MB}\n",
    "    - {match: manual, soft_limit: 5MB, hard_limit: 10MB, manual_unlock: true}\n",
    "    - {match: wide, soft_limit: 1GB, hard_limit: 2GB}\n",
    "    - {match: '*', soft_limit: 1MB, hard_limit: 2MB}\n",
);

fn quotas(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL);
    for r in ["quota", "manual", "wide", "empty", "exempt_me", "dual"] {
        role(&cluster, r, "");
    }
    role(&cluster, "boss", "SUPERUSER");
    database(&cluster, "tenants");
    database(&cluster, "other");
    // Before 004 is installed in `tenants`: a table (with an index and TOAST) and the
    // exempt and superuser roles' tables, over the default hard limit.
    sql(
        &cluster,
        "wide",
        "tenants",
        "CREATE TABLE pre (id int PRIMARY KEY, v text); \
         INSERT INTO pre SELECT g, repeat(md5(g::text), 100) FROM generate_series(1, 3000) g",
    );
    for r in ["exempt_me", "boss"] {
        sql(
            &cluster,
            r,
            "tenants",
            &format!(
                "CREATE TABLE big_{r} AS SELECT repeat('y', 1000) AS v FROM generate_series(1, 4000)"
            ),
        );
    }
    install(&cluster, "tenants", &pgmon_tests::STORAGE_TENANT_SQL);
    // `other` has no pgmon SQL at all: counted by the periodic recount only.
    sql(
        &cluster,
        "wide",
        "other",
        "CREATE TABLE o AS SELECT g, md5(g::text) AS v FROM generate_series(1, 5000) g",
    );
    lock_holders(&cluster);

    let hooks = Receiver::start();
    let port = free_port();
    let yaml = format!(
        "{}  notifications:\n    webhook_url: {}\n    \
         slack_webhook_url: http://127.0.0.1:{}/nobody-listens\n\
         alerts:\n  evaluation_interval_seconds: 1\n  notifiers:\n    - webhook: {{url: '{}'}}\n",
        config(&cluster, port, ROLES),
        hooks.url("/hook"),
        free_port(),
        hooks.url("/alerts"),
    )
    // Notifications link to the UI's Storage quotas page.
    .replacen(
        &format!("listen: 127.0.0.1:{port}\n"),
        &format!("listen: 127.0.0.1:{port}\n  external_url: https://db1.example.com:8181\n"),
        1,
    );
    assert!(yaml.contains("external_url"), "{yaml}");
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // The walk put the trigger on the table made before installation.
    wait_until(
        "the trigger on a pre-existing table",
        Duration::from_secs(10),
        || {
            sql(
                &cluster,
                "postgres",
                "tenants",
                "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'pre'::regclass \
             AND tgname = 'pgmon_storage_notify'",
            )
            .trim()
                == "1"
        },
    );
    wait_until("empty counted as 0", Duration::from_secs(10), || {
        storage_role(&agent, "empty").is_some_and(|r| r["usage_bytes"] == 0)
    });
    let wide_expected =
        || server_usage(&cluster, "tenants", "wide") + server_usage(&cluster, "other", "wide");
    let usage = |r: &str| storage_role(&agent, r).and_then(|r| r["usage_bytes"].as_u64());
    wait_until("wide = the server's sizes", Duration::from_secs(10), || {
        usage("wide") == Some(wide_expected())
    });
    // CREATE TABLE AS and an index: notified by the event trigger, no DML.
    let before = usage("wide").unwrap_or(0);
    sql(
        &cluster,
        "wide",
        "tenants",
        "CREATE TABLE c AS SELECT g, md5(g::text) AS v FROM generate_series(1, 20000) g; \
         CREATE INDEX c_v ON c (v)",
    );
    wait_until(
        "CREATE TABLE AS + index counted",
        Duration::from_secs(5),
        || usage("wide") == Some(wide_expected()),
    );
    let after = wide_expected();
    assert!(
        after > before + 1_000_000,
        "c and its index are ~2 MB: {before} → {after}"
    );
    let status = agent.status_json().expect("status");
    let other = status["storage"]["databases"]
        .as_array()
        .and_then(|d| d.iter().find(|d| d["name"] == "other").cloned())
        .expect("database other listed");
    assert_eq!(other["sql_installed"], false, "{other}");
    assert_eq!(other["connected"], true, "{other}");

    // quota and manual: 6 MB warns.
    let dir = tempfile::tempdir().expect("tmp");
    let copy20 = copy_file(dir.path(), "20mb.txt", 20);
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .expect("chmod");
    for r in ["quota", "manual"] {
        sql(
            &cluster,
            r,
            "tenants",
            &format!(
                "CREATE TABLE t_{r} (v text); \
                 INSERT INTO t_{r} SELECT repeat('x', 1000) FROM generate_series(1, 6000)"
            ),
        );
    }
    for r in ["quota", "manual"] {
        wait_until(&format!("{r} soft"), Duration::from_secs(3), || {
            state(&agent, r) == "soft"
        });
    }
    // COPY of 20 MB crosses the hard limit; a session held open must be terminated.
    let mut held = cluster
        .hold_session("quota", "tenants", Transport::Unix)
        .expect("session");
    for r in ["quota", "manual"] {
        sql(
            &cluster,
            r,
            "tenants",
            &format!("\\copy t_{r} FROM '{}'", copy20.display()),
        );
    }
    wait_until("quota hard", Duration::from_secs(3), || {
        state(&agent, "quota") == "hard"
    });
    let left = storage_role(&agent, "quota").expect("quota")["time_left_seconds"]
        .as_f64()
        .expect("grace time left");
    assert!(left > 0.5 && left <= 3.0, "time left {left}");
    assert!(can_login(&cluster, "quota"), "not locked within the grace");
    wait_until("quota locked", Duration::from_secs(8), || {
        state(&agent, "quota") == "locked" && !can_login(&cluster, "quota")
    });
    wait_until("quota's sessions gone", Duration::from_secs(5), || {
        sessions(&cluster, "quota") == 0
    });
    assert!(
        held.run("SELECT 1").is_err(),
        "the held session survived the lock"
    );
    let refused = cluster.psql("quota", "tenants", Transport::Unix, "SELECT 1");
    assert!(
        format!("{:#}", refused.expect_err("login refused")).contains("not permitted to log in"),
        "NOLOGIN"
    );
    wait_until("manual locked", Duration::from_secs(5), || {
        state(&agent, "manual") == "locked" && !can_login(&cluster, "manual")
    });

    // Delete + VACUUM FULL (no notification: the periodic recount sees it).
    for r in ["quota", "manual"] {
        sql(
            &cluster,
            "postgres",
            "tenants",
            &format!("DELETE FROM t_{r}"),
        );
        sql(
            &cluster,
            "postgres",
            "tenants",
            &format!("VACUUM FULL t_{r}"),
        );
    }
    wait_until("quota unlocked", Duration::from_secs(12), || {
        can_login(&cluster, "quota")
    });
    sql(&cluster, "quota", "tenants", "SELECT 1");
    assert_eq!(state(&agent, "quota"), "ok");
    assert_eq!(
        audit(&cluster, "quota"),
        [
            "soft:warn:logged",
            "hard:grace:logged",
            "locked:lock:applied",
            "ok:unlock:applied"
        ]
    );
    // manual stays locked, however long it has been under: once the agent has counted it
    // under the hard limit, wait out what gave quota back (the unlock grace, 3 s, and a
    // refresh, 1 s) counting from then, not from the DELETE.
    wait_until("manual counted under", Duration::from_secs(12), || {
        storage_role(&agent, "manual")
            .and_then(|m| m["usage_bytes"].as_u64())
            .is_some_and(|u| u < 10 << 20)
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(state(&agent, "manual"), "locked");
    assert!(!can_login(&cluster, "manual"));
    let m = storage_role(&agent, "manual").expect("manual");
    assert!(
        m["usage_bytes"].as_u64().unwrap_or(u64::MAX) < 5 << 20,
        "{m}"
    );
    assert!(m["time_left_seconds"].is_null(), "{m}");
    // The alert engine saw it too.
    let alert = |status: &str| {
        hooks.wait_for(
            &format!("PgmonStorageLocked manual {status}"),
            Duration::from_secs(10),
            |b| {
                b["alertname"] == "PgmonStorageLocked"
                    && b["labels"]["role"] == "manual"
                    && b["status"] == status
            },
        )
    };
    assert_eq!(alert("firing")["severity"], "critical");
    let out = std::process::Command::new(agent_binary().expect("binary"))
        .args(["unlock", "manual", "--addr", agent.addr()])
        .output()
        .expect("pgmon-agent unlock");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("unlocked"));
    assert!(can_login(&cluster, "manual"));
    alert("resolved");
    sql(&cluster, "manual", "tenants", "SELECT 1");
    let again = std::process::Command::new(agent_binary().expect("binary"))
        .args(["unlock", "manual", "--addr", agent.addr()])
        .output()
        .expect("pgmon-agent unlock");
    assert!(!again.status.success(), "unlocking an unlocked role fails");

    // `pgmon-agent status` shows usage, limits and state.
    let out = std::process::Command::new(agent_binary().expect("binary"))
        .args(["status", "--addr", agent.addr()])
        .output()
        .expect("pgmon-agent status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("storage role"), "{text}");
    assert!(
        text.lines().any(|l| l
            .split('|')
            .next()
            .is_some_and(|role| role.trim() == "empty")
            && l.contains("0 B")
            && l.contains("ok")),
        "{text}"
    );
    assert!(
        text.contains("database other: sql/004_storage.sql not installed"),
        "{text}"
    );

    // Exempt and superuser: over the default hard limit all along, never touched.
    for r in ["exempt_me", "boss"] {
        assert!(storage_role(&agent, r).is_none(), "{r} is not limited");
        assert!(can_login(&cluster, r));
        assert!(audit(&cluster, r).is_empty());
        assert!(server_usage(&cluster, "tenants", r) > 3 << 20);
    }

    // The webhook got every transition of quota, as JSON.
    wait_until("quota's notifications", Duration::from_secs(5), || {
        hooks
            .bodies()
            .iter()
            .filter(|b| b["role"] == "quota")
            .count()
            == 4
    });
    let got = hooks.bodies();
    let locked = got
        .iter()
        .find(|b| b["role"] == "quota" && b["to"] == "locked")
        .expect("a locked notification");
    assert_eq!(locked["action"], "lock", "{locked}");
    assert_eq!(
        locked["url"], "https://db1.example.com:8181/#/quotas",
        "{locked}"
    );
    assert_eq!(locked["hard_limit_bytes"], 10 << 20, "{locked}");
    assert!(
        locked["message"]
            .as_str()
            .unwrap_or("")
            .contains("\"quota\""),
        "{locked}"
    );

    let metrics = agent.metrics_text().expect("metrics");
    for needle in [
        "pgmon_role_storage_bytes{role=\"empty\"} 0",
        "pgmon_role_storage_limit_bytes{role=\"quota\",limit=\"hard\"} 10485760",
        "pgmon_role_storage_state{role=\"quota\",state=\"ok\"} 1",
        "pgmon_storage_recount_seconds ",
    ] {
        assert!(metrics.contains(needle), "missing {needle}");
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    drop(held);
}

/// Budget and storage hold a role independently (sql/002_enforcement.sql's role_locks).
fn lock_holders(cluster: &Cluster) {
    let q = |s: &str| sql(cluster, "postgres", "postgres", s).trim().to_owned();
    q("ALTER ROLE dual CONNECTION LIMIT 7");
    q("SELECT pgmon.lock_role('dual')");
    q("SELECT pgmon.lock_role('dual', 'storage')");
    assert_eq!(
        q("SELECT pgmon.restore_role('dual')"),
        "restored the connection limit; still locked by storage"
    );
    assert!(!can_login(cluster, "dual"));
    assert_eq!(
        q("SELECT pgmon.unlock_role('dual', 'budget')"),
        "not locked by budget"
    );
    q("SELECT pgmon.set_connection_limit('dual', 2)");
    assert_eq!(q("SELECT pgmon.unlock_role('dual', 'storage')"), "unlocked");
    assert_eq!(
        q("SELECT rolcanlogin || ',' || rolconnlimit FROM pg_roles WHERE rolname = 'dual'"),
        "true,2",
        "LOGIN back, the budget's connection limit kept"
    );
    assert_eq!(q("SELECT pgmon.restore_role('dual')"), "restored");
    assert_eq!(
        q("SELECT rolcanlogin || ',' || rolconnlimit FROM pg_roles WHERE rolname = 'dual'"),
        "true,7"
    );
    assert_eq!(q("SELECT count(*) FROM pgmon.role_original"), "0");
}

#[test]
fn storage_pg15() {
    if require_root("storage_pg15") {
        quotas(PgVersion::Pg15);
    }
}

#[test]
fn storage_pg18() {
    if require_root("storage_pg18") {
        quotas(PgVersion::Pg18);
    }
}
