//! Privileged test of storage quota state across agent crashes (issue 4), PostgreSQL 15
//! and 18: the agent killed with SIGKILL during a hard grace period and restarted locks
//! the role when the grace that began before the crash ends (not a full grace after the
//! restart); killed again while the role is locked, the restarted agent still knows the
//! lock it applied, and unlocks it once the role is back under its hard limit. The usage
//! counted before a crash is persisted (pgmon.storage_usage) and judged on at once by the
//! restarted agent, before its first full recount.

mod storage_util;

use std::time::{Duration, Instant};

use pgmon_tests::{Agent, Cluster, PgVersion, agent_binary, free_port, require_root};
use storage_util::*;

const ROLES: &str = "    - {match: slow, soft_limit: 1MB, hard_limit: 2MB, hard_grace_period: 8}\n";

fn sigkill(agent: &mut Agent) {
    // SAFETY: kill(2) on the agent's pid, which we started and have not reaped.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGKILL) }, 0);
    agent
        .wait_exit(Duration::from_secs(10))
        .expect("wait")
        .expect("the agent exited");
}

/// Seconds between the 'grace' audit row and the 'lock' one.
fn grace_to_lock_seconds(cluster: &Cluster) -> f64 {
    sql(
        cluster,
        "postgres",
        "postgres",
        "SELECT extract(epoch FROM (SELECT at FROM pgmon.audit WHERE role = 'slow' AND action = 'lock') \
              - (SELECT at FROM pgmon.audit WHERE role = 'slow' AND action = 'grace'))",
    )
    .trim()
    .parse()
    .expect("seconds")
}

fn restart(version: PgVersion) {
    let cluster = slow_tenant_cluster(version);
    let binary = agent_binary().expect("binary");
    let port = free_port();
    let yaml = config(&cluster, port, ROLES);
    let start = || Agent::start(&binary, &yaml, format!("127.0.0.1:{port}")).expect("agent");

    let mut agent = start();
    wait_until("slow counted", Duration::from_secs(10), || {
        storage_role(&agent, "slow").is_some_and(|r| r["usage_bytes"].is_u64())
    });
    sql(
        &cluster,
        "slow",
        "tenants",
        "CREATE TABLE s AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)",
    );
    wait_until("slow hard", Duration::from_secs(3), || {
        state(&agent, "slow") == "hard"
    });
    let crossed = Instant::now();
    let counted = server_usage(&cluster, "tenants", "slow");
    let persisted = || {
        sql(
            &cluster,
            "postgres",
            "postgres",
            "SELECT coalesce(sum(bytes), 0) FROM pgmon.storage_usage \
             WHERE role = 'slow' AND datname = 'tenants'",
        )
        .trim()
        .parse::<u64>()
        .expect("bytes")
    };
    // A full recount runs every 2 s and persists what moved by 1 % of the hard limit.
    wait_until("slow's usage persisted", Duration::from_secs(3), || {
        persisted().abs_diff(counted) <= 20_000
    });
    std::thread::sleep(Duration::from_secs(3).saturating_sub(crossed.elapsed()));
    sigkill(&mut agent);
    drop(agent);
    assert!(can_login(&cluster, "slow"), "the grace had not ended");

    let mut agent = start();
    wait_until("slow resumed", Duration::from_secs(5), || {
        storage_role(&agent, "slow").is_some()
    });
    let log = agent.log();
    assert!(
        log.contains("usage_roles=1")
            && log.contains("judging roles on their persisted usage until the first full recount"),
        "the restarted agent judges on the persisted usage at once:\n{log}"
    );
    let left = storage_role(&agent, "slow").expect("slow resumed")["time_left_seconds"].as_f64();
    assert_eq!(state(&agent, "slow"), "hard", "resumed in hard");
    if let Some(left) = left {
        assert!(
            left < 6.0,
            "the grace continues ({left} s left), it does not restart"
        );
    }
    wait_until("slow locked", Duration::from_secs(10), || {
        !can_login(&cluster, "slow")
    });
    let elapsed = crossed.elapsed().as_secs_f64();
    assert!(
        elapsed < 10.5,
        "locked {elapsed} s after crossing (grace 8 s)"
    );
    let g = grace_to_lock_seconds(&cluster);
    assert!((7.5..10.0).contains(&g), "grace row to lock row: {g} s");

    // Killed while the role is locked: the restarted agent knows the lock.
    sigkill(&mut agent);
    drop(agent);
    let agent = start();
    wait_until("slow resumed", Duration::from_secs(5), || {
        storage_role(&agent, "slow").is_some()
    });
    assert_eq!(state(&agent, "slow"), "locked");
    assert!(!can_login(&cluster, "slow"));
    sql(&cluster, "postgres", "tenants", "DROP TABLE s");
    wait_until("slow unlocked", Duration::from_secs(12), || {
        can_login(&cluster, "slow")
    });
    assert_eq!(
        audit(&cluster, "slow"),
        [
            "hard:grace:logged",
            "locked:lock:applied",
            "ok:unlock:applied"
        ]
    );
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn storage_restart_pg15() {
    if require_root("storage_restart_pg15") {
        restart(PgVersion::Pg15);
    }
}

#[test]
fn storage_restart_pg18() {
    if require_root("storage_restart_pg18") {
        restart(PgVersion::Pg18);
    }
}
