//! Privileged test of paced terminations (issue 19): a role with 200 sessions (pgbench,
//! one connection each) is locked by its storage quota with `termination_batch: 50` and
//! `termination_pause_ms: 300`. Its sessions end in steps of at most 50, with the pauses
//! between them, not all at once; the audit row counts all 200. PostgreSQL 15.

mod storage_util;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, free_port, require_root,
};
use storage_util::*;

const ROLES: &str = "    - {match: many, soft_limit: 1MB, hard_limit: 2MB, hard_grace_period: 0}\n";

#[test]
fn termination_batches_pg15() {
    if !require_root("termination_batches_pg15") {
        return;
    }
    let version = PgVersion::Pg15;
    let cluster = Cluster::start(
        version,
        ClusterOptions {
            max_connections: 260,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL);
    role(&cluster, "many", "");
    database(&cluster, "tenants");
    install(&cluster, "tenants", &pgmon_tests::STORAGE_TENANT_SQL);
    let port = free_port();
    let yaml = config(&cluster, port, ROLES).replace(
        "  enabled: true\n",
        "  enabled: true\n  termination_batch: 50\n  termination_pause_ms: 300\n",
    );
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    wait_until("many counted", Duration::from_secs(10), || {
        storage_role(&agent, "many").is_some_and(|r| r["usage_bytes"].is_u64())
    });

    // 200 sessions of `many`, each sleeping in a loop.
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("sleep.sql");
    std::fs::write(&script, "SELECT pg_sleep(0.5);\n").expect("script");
    let mut pgbench = Command::new(version.bin("pgbench"))
        .args(["-n", "-c", "200", "-j", "2", "-T", "120", "-f"])
        .arg(&script)
        .arg("-h")
        .arg(cluster.socket_dir())
        .args(["-p", &cluster.port().to_string(), "-U", "many", "tenants"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("pgbench");
    wait_until("200 sessions", Duration::from_secs(30), || {
        sessions(&cluster, "many") >= 200
    });

    // Past the hard limit: locked, then 200 sessions ended 50 at a time.
    let _ = cluster.psql(
        "many",
        "tenants",
        Transport::Unix,
        "CREATE TABLE fill AS SELECT repeat('m', 1000) AS v FROM generate_series(1, 4000)",
    );
    let mut seen: Vec<(Duration, u64)> = Vec::new();
    let mut first_drop: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let n = sessions(&cluster, "many");
        if n < 200 && first_drop.is_none() {
            first_drop = Some(Instant::now());
        }
        if let Some(t) = first_drop
            && seen.last().is_none_or(|(_, last)| *last != n)
        {
            seen.push((t.elapsed(), n));
        }
        if n == 0 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = pgbench.kill();
    let _ = pgbench.wait();
    eprintln!("sessions of `many` after the first termination: {seen:?}");
    let (spread, last) = *seen.last().expect("sessions dropped");
    assert_eq!(last, 0, "every session ended: {seen:?}");
    // Four batches of 50 with three pauses of 300 ms between them.
    assert!(
        spread >= Duration::from_millis(800),
        "200 sessions ended within {spread:?}: not paced ({seen:?})"
    );
    let plateaus = seen
        .iter()
        .filter(|(_, n)| (1..200).contains(n))
        .map(|(_, n)| *n)
        .collect::<Vec<_>>();
    assert!(
        plateaus.iter().any(|n| (100..=150).contains(n))
            && plateaus.iter().any(|n| (1..=100).contains(n)),
        "no intermediate steps of about 50: {seen:?}"
    );
    let result = || {
        sql(
            &cluster,
            "postgres",
            "postgres",
            "SELECT result FROM pgmon.audit WHERE role = 'many' AND action = 'lock'",
        )
    };
    // The audit row follows the last batch.
    wait_until("the lock's audit row", Duration::from_secs(5), || {
        !result().trim().is_empty()
    });
    let result = result();
    assert!(
        result.contains("200 session(s) terminated")
            || result.contains("201 session(s) terminated"),
        "{result}"
    );
    assert!(!can_login(&cluster, "many"));
    assert!(!agent.log().contains("panicked"));
}
