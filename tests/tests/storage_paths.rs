//! Privileged tests of the ways around a storage quota (issue 27) on PostgreSQL 15 and 18,
//! the real agent connected as `pgmon`:
//! - large objects: `lo_from_bytea` bytes are charged to the object's owner (8 MiB, counted
//!   exactly as pages of `pg_largeobject` × 2 KB), and lock the role past its hard limit;
//! - lock first, then terminate: four clients reconnecting in a loop have no session left
//!   once the lock is applied, and none gets back in;
//! - near the hard limit the usage TTL does not apply: in `shared_hosting` (TTL 15 s), a
//!   role at 90 % of its limit that writes past it is counted, and locked, at once; and so
//!   is a role at 0 that creates a table, then fills it past the limit in a separate
//!   statement (the notification carries the table's size).

mod storage_util;

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, free_port, require_root,
};
use storage_util::*;

const ROLES: &str = concat!(
    "    - {match: lob, soft_limit: 4MB, hard_limit: 6MB}\n",
    "    - {match: churn, soft_limit: 1MB, hard_limit: 2MB}\n",
    "    - {match: near, soft_limit: 20MB, hard_limit: 30MB}\n",
    "    - {match: bulk, soft_limit: 20MB, hard_limit: 30MB}\n",
    "    - {match: 'late*', soft_limit: 20MB, hard_limit: 30MB}\n",
);

fn start_agent(cluster: &Cluster, yaml: impl FnOnce(String) -> String) -> Agent {
    let port = free_port();
    Agent::start(
        &agent_binary().expect("binary"),
        &yaml(config(cluster, port, ROLES)),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent")
}

fn usage(agent: &Agent, role: &str) -> Option<u64> {
    storage_role(agent, role).and_then(|r| r["usage_bytes"].as_u64())
}

/// Large objects belong to the superuser's `pg_largeobject`, but are charged to their owner.
fn large_objects(cluster: &Cluster, agent: &Agent) {
    wait_until("lob counted", Duration::from_secs(10), || {
        usage(agent, "lob") == Some(0)
    });
    let oid = sql(
        cluster,
        "lob",
        "tenants",
        "SELECT lo_from_bytea(0, decode(repeat('ab', 8 * 1024 * 1024), 'hex'))",
    );
    let server: u64 = sql(
        cluster,
        "postgres",
        "tenants",
        "SELECT count(*) * 2048 FROM pg_largeobject l JOIN pg_largeobject_metadata m \
         ON m.oid = l.loid WHERE m.lomowner = 'lob'::regrole",
    )
    .trim()
    .parse()
    .expect("bytes");
    assert_eq!(server, 8 * 1024 * 1024, "large object {}", oid.trim());
    // No trigger fires on a catalog: the periodic recount (2 s here) sees it.
    wait_until("the large object charged", Duration::from_secs(10), || {
        usage(agent, "lob") == Some(server)
    });
    wait_until("lob locked", Duration::from_secs(15), || {
        state(agent, "lob") == "locked"
    });
    assert!(!can_login(cluster, "lob"));
    eprintln!("large objects: {server} bytes charged to lob, locked");
}

/// Four clients that reconnect as soon as they are thrown out get nothing once the role is
/// locked: NOLOGIN commits before the first session is ended. Each client proves its login
/// by printing `1` before it sleeps, so a session that got in and was ended a moment later
/// still counts; no login may start after the first session of the role was ended.
fn reconnect_loop(cluster: &Cluster, agent: &Agent) {
    let stop = AtomicBool::new(false);
    // (started, ended) of every session that logged in.
    let sessions_seen: Mutex<Vec<(Instant, Instant)>> = Mutex::new(Vec::new());
    let refused = AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let started = Instant::now();
                    let out = cluster
                        .psql_cmd("churn", "tenants", Transport::Tcp)
                        .args(["-c", "SELECT 1", "-c", "SELECT pg_sleep(30)"])
                        .output()
                        .expect("psql");
                    let ended = Instant::now();
                    if String::from_utf8_lossy(&out.stdout).lines().next() == Some("1") {
                        sessions_seen.lock().expect("lock").push((started, ended));
                    } else {
                        refused.fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            });
        }
        wait_until("4 churn sessions", Duration::from_secs(10), || {
            sessions(cluster, "churn") == 4
        });
        sql(
            cluster,
            "churn",
            "tenants",
            "CREATE TABLE fill AS SELECT repeat('z', 1000) AS v FROM generate_series(1, 4000)",
        );
        wait_until("churn locked", Duration::from_secs(15), || {
            audit(cluster, "churn")
                .iter()
                .any(|a| a.contains(":lock:applied"))
        });
        let result = sql(
            cluster,
            "postgres",
            "postgres",
            "SELECT result FROM pgmon.audit WHERE role = 'churn' AND action = 'lock'",
        );
        assert!(
            result.contains("4 session(s) terminated"),
            "all 4 sessions ended in batches of 3: {result}"
        );
        // From the first sweep on, nobody is in, and nobody gets in for 3 s of retries.
        let mut seen = Vec::new();
        for _ in 0..15 {
            seen.push(sessions(cluster, "churn"));
            std::thread::sleep(Duration::from_millis(200));
        }
        stop.store(true, Ordering::Relaxed);
        assert!(
            seen.iter().all(|&n| n == 0),
            "churn sessions after the lock: {seen:?}"
        );
    });
    let all = sessions_seen.into_inner().expect("lock");
    let first_end = all.iter().map(|(_, e)| *e).min().expect("sessions");
    let late: Vec<_> = all.iter().filter(|(s, _)| *s > first_end).collect();
    assert!(
        late.is_empty(),
        "{} login(s) after the first session was ended: the lock was not in place first",
        late.len()
    );
    assert_eq!(state(agent, "churn"), "locked");
    assert!(!can_login(cluster, "churn"));
    eprintln!(
        "reconnect loop: {} sessions, all before the lock; {} refused logins after it",
        all.len(),
        refused.load(Ordering::Relaxed)
    );
}

/// In `shared_hosting` a role is recounted at most every 15 s after notifications, unless
/// it is within `near_limit_margin` (20 %) of its hard limit.
fn near_limit(version: PgVersion) {
    let cluster = slow_tenant_cluster(version);
    role(&cluster, "near", "");
    role(&cluster, "bulk", "");
    let agent = start_agent(&cluster, |y| {
        y.replace(
            "mode: enterprise_db\n  usage_ttl_seconds: 0.2\n",
            "mode: shared_hosting\n  usage_ttl_seconds: 15\n",
        )
        .replace(
            "recount_interval_seconds: 2",
            "recount_interval_seconds: 600",
        )
        .replace(
            "refresh_interval_seconds: 1",
            "refresh_interval_seconds: 600",
        )
        .replace("hard_grace_period: 3", "hard_grace_period: 0")
    });
    wait_until("near counted", Duration::from_secs(10), || {
        usage(&agent, "near") == Some(0)
    });
    // 27 MB: 90 % of the hard limit, counted on its notification (the first one is not
    // throttled), then a separate load past the limit.
    sql(
        &cluster,
        "near",
        "tenants",
        "CREATE TABLE a AS SELECT repeat('n', 1000) AS v FROM generate_series(1, 24000)",
    );
    wait_until("27 MB counted", Duration::from_secs(5), || {
        usage(&agent, "near").is_some_and(|b| b > 25_000_000)
    });
    let committed = Instant::now();
    sql(
        &cluster,
        "near",
        "tenants",
        "INSERT INTO a SELECT repeat('m', 1000) FROM generate_series(1, 6000)",
    );
    wait_until(
        "near locked well inside the TTL",
        Duration::from_secs(5),
        || state(&agent, "near") == "locked",
    );
    eprintln!(
        "{version:?}: near limit, locked {:?} after the load's commit (usage TTL 15 s)",
        committed.elapsed()
    );
    // From 0: CREATE TABLE (notified and counted: 0), then one INSERT of ~35 MB.
    wait_until("bulk counted", Duration::from_secs(10), || {
        usage(&agent, "bulk") == Some(0)
    });
    sql(&cluster, "bulk", "tenants", "CREATE TABLE b (v text)");
    std::thread::sleep(Duration::from_millis(500));
    let committed = Instant::now();
    sql(
        &cluster,
        "bulk",
        "tenants",
        "INSERT INTO b SELECT repeat('b', 1000) FROM generate_series(1, 30000)",
    );
    wait_until(
        "bulk locked well inside the TTL",
        Duration::from_secs(5),
        || state(&agent, "bulk") == "locked",
    );
    let hard = 30u64 << 20;
    let bytes = usage(&agent, "bulk").unwrap_or(0);
    eprintln!(
        "{version:?}: CREATE TABLE then a {bytes}-byte load: locked {:?} after its commit, \
         {} bytes past the hard limit",
        committed.elapsed(),
        bytes.saturating_sub(hard)
    );
    // A tenant created after the agent started (the catalog refresh 10 minutes away): its
    // table and a 35 MB load at once. New roles are listed every second.
    role(&cluster, "late_tenant", "");
    sql(
        &cluster,
        "late_tenant",
        "tenants",
        "CREATE TABLE l (v text)",
    );
    let committed = Instant::now();
    // Counted from its files, the load may be caught (and its session ended) before it
    // commits.
    let _ = cluster.psql(
        "late_tenant",
        "tenants",
        Transport::Unix,
        "INSERT INTO l SELECT repeat('l', 1000) FROM generate_series(1, 30000)",
    );
    wait_until("the new role locked", Duration::from_secs(4), || {
        state(&agent, "late_tenant") == "locked"
    });
    eprintln!(
        "{version:?}: a role created after start, locked {:?} after its load's commit",
        committed.elapsed()
    );
}

fn all(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL);
    for r in ["lob", "churn"] {
        role(&cluster, r, "");
    }
    database(&cluster, "tenants");
    install(&cluster, "tenants", &pgmon_tests::STORAGE_TENANT_SQL);
    // A batch smaller than the 4 reconnecting sessions: the lock's sweep takes two.
    let agent = start_agent(&cluster, |y| {
        y.replace(
            "  enabled: true\n",
            "  enabled: true\n  termination_batch: 3\n",
        )
    });
    large_objects(&cluster, &agent);
    reconnect_loop(&cluster, &agent);
    drop(agent);
    near_limit(version);
}

#[test]
fn storage_paths_pg15() {
    if require_root("storage_paths_pg15") {
        all(PgVersion::Pg15);
    }
}

#[test]
fn storage_paths_pg18() {
    if require_root("storage_paths_pg18") {
        all(PgVersion::Pg18);
    }
}
