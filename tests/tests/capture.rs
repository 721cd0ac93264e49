//! Privileged end-to-end tests of capture and attribution: the real kernel programs, the
//! real agent binary, real clusters of every PostgreSQL major from 13 to 18, real psql and
//! pgbench (Debian's, version 15, as the client of every server).
//!
//! Each test runs every scenario against one cluster and one agent, collects failures and
//! panics at the end with all of them (and the agent's log tail), so one run shows the
//! whole picture. They need root and skip with a reason otherwise.

use std::{thread, time::Duration};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol, SUPERUSER_MONITOR, Transport,
    agent_binary, fingerprint, free_port, require_root, tail,
};

/// pgbench's `-S` statement as pg_stat_statements normalizes it.
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// The hook family the agent is given: `auto`, unless `PGMON_TEST_HOOKS` names one.
/// `cargo xtask kernels` runs this suite in QEMU guests of other kernels once per family
/// the kernel accepts (issue 25), so these assertions are the kernel matrix's too.
fn hooks() -> String {
    std::env::var("PGMON_TEST_HOOKS").unwrap_or_else(|_| "auto".to_owned())
}

fn agent_config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         capture:\n  hooks: {}\nmetrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port(),
        hooks()
    )
}

/// Calls of `fp` charged to `role` (the status is exact as of the agent's last drain).
fn calls(agent: &Agent, role: &str, fp: &str) -> u64 {
    agent.fingerprint_calls(role, fp).expect("status")
}

/// Waits up to 15 s for `role`'s calls of `fp` to reach `target` (the pipeline drains
/// every 5 ms); returns the last value, read again 200 ms later to catch overcounts.
fn wait_calls(agent: &Agent, role: &str, fp: &str, target: u64) -> u64 {
    agent
        .wait_fingerprint_calls(role, fp, target, Duration::from_secs(15))
        .expect("status")
}

struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let msg = what();
            eprintln!("FAIL: {msg}");
            self.0.push(msg);
        }
    }
}

fn suite(version: PgVersion) {
    let name = format!("capture_{version:?}").to_lowercase();
    if !require_root(&name) {
        return;
    }
    let binary = agent_binary().expect("agent binary (build with cargo build --release)");
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    for role in ["alice", "bob", "carol"] {
        cluster.create_role_with_db(role).expect("role");
    }
    cluster
        .pgbench_init("alice", "alice", 1)
        .expect("pgbench -i alice");
    cluster
        .pgbench_init("bob", "bob", 1)
        .expect("pgbench -i bob");

    // A connection opened before the agent starts: its StartupMessage is never seen.
    let mut held = cluster
        .hold_session("carol", "carol", Transport::Tcp)
        .expect("held session");
    held.run("SELECT 1").expect("held session works");

    let port = free_port();
    let mut agent = Agent::start(
        &binary,
        &agent_config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent starts");
    let mut f = Failures(Vec::new());
    let fp_select = fingerprint(PGBENCH_SELECT);

    // 1. pgbench -S, every protocol, -C, both transports: exact counts per role.
    for transport in Transport::ALL {
        let runs = Protocol::ALL
            .iter()
            .map(|&p| (p, false))
            .chain([(Protocol::Simple, true), (Protocol::Prepared, true)]);
        for (protocol, connect_per_tx) in runs {
            let label = format!(
                "{version:?} {transport:?} -M {} {}",
                protocol.as_arg(),
                if connect_per_tx { "-C" } else { "" }
            );
            cluster.pg_stat_statements_reset().expect("pss reset");
            let before = calls(&agent, "alice", &fp_select);
            let run = PgbenchRun {
                transport,
                clients: 2,
                jobs: 2,
                transactions: Some(if connect_per_tx { 100 } else { 500 }),
                protocol,
                select_only: true,
                connect_per_tx,
                ..PgbenchRun::new("alice", "alice")
            };
            let result = cluster.pgbench(&run).expect("pgbench");
            let expected = result.transactions_processed;
            let seen = wait_calls(&agent, "alice", &fp_select, before + expected) - before;
            let pss: u64 = cluster
                .pss_calls("alice", "%pgbench_accounts%")
                .expect("pss")
                .iter()
                .filter(|(q, _)| fingerprint(q) == fp_select)
                .map(|(_, c)| c)
                .sum();
            eprintln!("{label}: pgbench {expected} tx, pgmon {seen}, pg_stat_statements {pss}");
            f.check(expected > 0, || {
                format!("{label}: pgbench processed nothing")
            });
            f.check(seen == expected, || {
                format!("{label}: pgmon counted {seen}, pgbench {expected}")
            });
            f.check(pss == expected, || {
                format!("{label}: pg_stat_statements {pss}, pgbench {expected}")
            });
        }
    }

    // 2. Two roles at once, over different transports.
    {
        let (a0, b0) = (
            calls(&agent, "alice", &fp_select),
            calls(&agent, "bob", &fp_select),
        );
        let run = |user: &str, transport| PgbenchRun {
            transport,
            clients: 2,
            jobs: 1,
            transactions: Some(400),
            select_only: true,
            ..PgbenchRun::new(user, user)
        };
        let (ra, rb) = thread::scope(|s| {
            let a = s.spawn(|| cluster.pgbench(&run("alice", Transport::Tcp)));
            let b = s.spawn(|| cluster.pgbench(&run("bob", Transport::Unix)));
            (a.join().expect("thread"), b.join().expect("thread"))
        });
        let (ea, eb) = (
            ra.expect("pgbench alice").transactions_processed,
            rb.expect("pgbench bob").transactions_processed,
        );
        let sa = wait_calls(&agent, "alice", &fp_select, a0 + ea) - a0;
        let sb = wait_calls(&agent, "bob", &fp_select, b0 + eb) - b0;
        eprintln!("{version:?} two roles: alice {sa}/{ea}, bob {sb}/{eb}");
        f.check(sa == ea && sb == eb, || {
            format!("{version:?} two roles at once: alice {sa}/{ea}, bob {sb}/{eb}")
        });
    }

    // 3. The connection opened before the agent: attributed via pg_stat_activity.
    {
        let sql = "SELECT 42 AS answer, 'held' AS tag";
        for _ in 0..5 {
            held.run(sql).expect("held session query");
        }
        let fp = fingerprint(sql);
        let seen = wait_calls(&agent, "carol", &fp, 5);
        f.check(seen == 5, || format!("{version:?} pre-existing connection: carol's query counted {seen} times, expected 5"));
        let status = agent.status_json().expect("status");
        let late = status["capture"]["late_attributions"].as_u64().unwrap_or(0);
        f.check(late >= 1, || {
            format!("{version:?} pre-existing connection: late_attributions = {late}")
        });
    }

    // 4. A 100 KiB query is captured whole: the agent saw every byte of it (its recorded
    //    length), and the alias after the literal, which makes its fingerprint unique.
    {
        let sql = format!(
            "SELECT length('{}') AS pgmon_hundred_kib_query",
            "x".repeat(100 * 1024)
        );
        cluster
            .psql("alice", "alice", Transport::Unix, &sql)
            .expect("long query");
        let fp = fingerprint(&sql);
        let seen = wait_calls(&agent, "alice", &fp, 1);
        f.check(seen == 1, || {
            format!("{version:?} 100 KiB query: fingerprint {fp} counted {seen} times")
        });
        let status = agent.status_json().expect("status");
        let bytes = status["roles"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["role"] == "alice"))
            .and_then(|r| {
                r["fingerprints"]
                    .as_array()?
                    .iter()
                    .find(|x| x["fingerprint"] == fp.as_str())
                    .cloned()
            })
            .and_then(|x| x["text_bytes"].as_u64())
            .unwrap_or(0);
        f.check(bytes == sql.len() as u64, || {
            format!(
                "{version:?} 100 KiB query: agent saw {bytes} bytes of {}",
                sql.len()
            )
        });
    }

    // 5. Another cluster on the same host is not captured.
    {
        let other = Cluster::start(version, ClusterOptions::default()).expect("second cluster");
        other.create_role_with_db("alice").expect("role");
        other.pgbench_init("alice", "alice", 1).expect("pgbench -i");
        let before = calls(&agent, "alice", &fp_select);
        let status0 = agent.status_json().expect("status");
        let total0: u64 = status0["roles"].as_array().map_or(0, |r| {
            r.iter().map(|r| r["queries"].as_u64().unwrap_or(0)).sum()
        });
        let run = PgbenchRun {
            transactions: Some(300),
            select_only: true,
            ..PgbenchRun::new("alice", "alice")
        };
        other.pgbench(&run).expect("pgbench on the other cluster");
        // A barrier, not a sleep: the agent handles records in the order the kernel wrote
        // them, so once a query run on the watched cluster after the other cluster's is
        // counted, anything the other cluster's run could have caused has been counted too.
        let barrier = "SELECT pg_backend_pid() > 0 AS pgmon_barrier";
        cluster
            .psql("alice", "alice", Transport::Unix, barrier)
            .expect("barrier query");
        let fp_barrier = fingerprint(barrier);
        let seen = wait_calls(&agent, "alice", &fp_barrier, 1);
        f.check(seen == 1, || {
            format!("{version:?} other cluster: the barrier query counted {seen} times")
        });
        let after = calls(&agent, "alice", &fp_select);
        f.check(after == before, || {
            format!("{version:?} other cluster: alice's count moved {before} → {after}")
        });
        let status1 = agent.status_json().expect("status");
        let total1: u64 = status1["roles"].as_array().map_or(0, |r| {
            r.iter().map(|r| r["queries"].as_u64().unwrap_or(0)).sum()
        });
        // Only the barrier moves the total (status polls are HTTP, not SQL).
        f.check(total1 == total0 + 1, || {
            format!(
                "{version:?} other cluster: total queries moved {total0} → {total1}, \
                 the barrier alone should add 1"
            )
        });
    }

    // 6. Capture health after all of it: nothing lost, nothing misparsed.
    let status = agent.status_json().expect("status");
    let c = &status["capture"];
    eprintln!("{version:?} capture: {c}");
    let wanted = hooks();
    let used = c["hook"].as_str().unwrap_or_default();
    eprintln!("{version:?} hook family asked: {wanted}, in use: {used}");
    f.check(wanted == "auto" || used == wanted, || {
        format!("{version:?} hook family {wanted} asked, {used} in use")
    });
    for key in [
        "dropped",
        "probe_errors",
        "desyncs_frontend",
        "desyncs_backend",
        "unattributed_queries",
    ] {
        let v = c[key].as_u64().unwrap_or(u64::MAX);
        f.check(v == 0, || {
            format!("{version:?} capture.{key} = {v}, expected 0")
        });
    }
    let metrics = agent.metrics_text().expect("metrics");
    // Why the stream was lost, if it was (e.g. `unknown_type`).
    for line in pgmon_tests::metrics::filter_lines(&metrics, "pgmon_wire_desyncs_total{", 10) {
        eprintln!("{version:?} {line}");
    }
    for needle in [
        "pgmon_queries_total{role=\"alice\"",
        "pgmon_probe_info{hook=",
        "pgmon_query_duration_seconds_bucket",
    ] {
        f.check(metrics.contains(needle), || {
            format!("{version:?} /metrics lacks {needle}")
        });
    }

    // 7. SIGTERM detaches and exits 0.
    held.close();
    let exit = agent.stop().expect("agent stops");
    f.check(exit.success(), || {
        format!("{version:?} agent exit status {exit}")
    });

    if !f.0.is_empty() {
        panic!(
            "{} failure(s):\n{}\nagent log tail:\n{}",
            f.0.len(),
            f.0.join("\n"),
            tail(&agent.log(), 30)
        );
    }
}

#[test]
fn capture_pg13() {
    suite(PgVersion::Pg13);
}

#[test]
fn capture_pg14() {
    suite(PgVersion::Pg14);
}

#[test]
fn capture_pg15() {
    suite(PgVersion::Pg15);
}

#[test]
fn capture_pg16() {
    suite(PgVersion::Pg16);
}

#[test]
fn capture_pg17() {
    suite(PgVersion::Pg17);
}

#[test]
fn capture_pg18() {
    suite(PgVersion::Pg18);
}
