//! Privileged tests of what capture must get right at its edges: a lost monitor connection
//! (retried, state resynced), a configured byte cap (truncation counted, stream kept), a
//! full ring buffer (drops counted, the backends that lost records resynchronised), and
//! encrypted sessions (counted, never parsed). Real kernel, real agent, real clusters.

use std::{process::Command, thread, time::Duration};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, SUPERUSER_MONITOR, Transport, agent_binary,
    fingerprint, free_port, require_root, tail,
};

/// The agent's config; the health loops are off so that the attribution session is its
/// only one (the monitor-connection test cuts exactly that session).
fn config(cluster: &Cluster, port: u16, capture: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         capture:\n  hooks: auto\n{capture}metrics:\n  listen: 127.0.0.1:{port}\nhealth:\n  enabled: false\n{SUPERUSER_MONITOR}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

fn calls(agent: &Agent, role: &str, fp: &str) -> u64 {
    agent.fingerprint_calls(role, fp).expect("status")
}

fn wait_calls(agent: &Agent, role: &str, fp: &str, target: u64, within: Duration) -> u64 {
    agent
        .wait_fingerprint_calls(role, fp, target, within)
        .expect("status")
}

fn capture_counter(agent: &Agent, key: &str) -> u64 {
    agent.capture_counter(key).expect("status")
}

/// A lost monitor connection is reopened (with backoff) and a lookup asked while it was
/// down is answered: the pre-existing session is attributed, not lost.
fn monitor_connection_is_reopened(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("carol").expect("role");
    cluster.create_role_with_db("dave").expect("role");
    let mut carol = cluster
        .hold_session("carol", "carol", Transport::Unix)
        .expect("session");
    let mut dave = cluster
        .hold_session("dave", "dave", Transport::Tcp)
        .expect("session");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, ""),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // Carol's first query makes the agent open its monitor connection.
    let sql_c = "SELECT 'carol' AS who";
    for _ in 0..3 {
        carol.run(sql_c).expect("carol");
    }
    let fp_c = fingerprint(sql_c);
    assert_eq!(
        wait_calls(&agent, "carol", &fp_c, 3, Duration::from_secs(15)),
        3,
        "carol before the cut"
    );

    // Cut the agent's monitor connection, then make it look dave up.
    let killed = cluster
        .psql_admin("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = 'pgmon'")
        .expect("terminate");
    assert_eq!(killed.trim(), "1", "the agent had one monitor connection");
    let sql_d = "SELECT 'dave' AS who";
    for _ in 0..3 {
        dave.run(sql_d).expect("dave");
    }
    let fp_d = fingerprint(sql_d);
    let seen = wait_calls(&agent, "dave", &fp_d, 3, Duration::from_secs(30));
    assert_eq!(
        seen,
        3,
        "dave after the monitor connection was cut; agent log:\n{}",
        tail(&agent.log(), 20)
    );
    assert_eq!(capture_counter(&agent, "late_attributions"), 2);
    assert_eq!(capture_counter(&agent, "unattributed_queries"), 0);
}

/// A per-call cap smaller than a reply is counted as truncation; the skipped bytes lie in
/// DataRows, so the stream stays in step and every query is still counted.
fn byte_cap_is_counted(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("erin").expect("role");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "  max_bytes_per_call: 1024\n"),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let big = "SELECT repeat('x', 200000) AS big";
    let small = "SELECT 1 AS after_the_big_one";
    for _ in 0..3 {
        cluster
            .psql("erin", "erin", Transport::Unix, big)
            .expect("big");
        cluster
            .psql("erin", "erin", Transport::Unix, small)
            .expect("small");
    }
    assert_eq!(
        wait_calls(
            &agent,
            "erin",
            &fingerprint(big),
            3,
            Duration::from_secs(15)
        ),
        3
    );
    assert_eq!(
        wait_calls(
            &agent,
            "erin",
            &fingerprint(small),
            3,
            Duration::from_secs(15)
        ),
        3
    );
    let truncated = capture_counter(&agent, "truncated");
    assert!(truncated >= 3, "truncated = {truncated}");
    // 200 kB per reply, sent in 8 KiB calls of which 1 KiB each is kept.
    assert!(capture_counter(&agent, "truncated_bytes") >= 3 * 150_000);
    assert_eq!(
        capture_counter(&agent, "desyncs_backend"),
        0,
        "log:\n{}",
        tail(&agent.log(), 20)
    );
    let metrics = agent.metrics_text().expect("metrics");
    assert!(
        metrics.contains("pgmon_capture_truncated_total "),
        "{metrics}"
    );
}

/// With `capture.tls: off`, TLS sessions are counted as encrypted and unreadable and never
/// parsed; plain sessions still are. (`tls.rs` tests the sessions read through libssl.)
fn encrypted_sessions_are_counted(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("frank").expect("role");
    cluster.enable_ssl().expect("ssl = on");

    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "  tls: off\n"),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let run = |sslmode: &str, sql: &str| {
        let out = Command::new(pgmon_tests::PSQL)
            .args(["-X", "-At", "-c", sql])
            .arg(format!(
                "host=127.0.0.1 port={} user=frank dbname=frank sslmode={sslmode}",
                cluster.port()
            ))
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql sslmode={sslmode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let secret = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()";
    assert_eq!(run("require", secret), "t", "the session really used TLS");
    let plain = "SELECT 'plain' AS session";
    assert_eq!(run("disable", plain), "plain");
    assert_eq!(
        wait_calls(
            &agent,
            "frank",
            &fingerprint(plain),
            1,
            Duration::from_secs(15)
        ),
        1
    );
    assert_eq!(
        calls(&agent, "frank", &fingerprint(secret)),
        0,
        "a TLS session's query was parsed"
    );
    let m = agent.metrics_text().expect("metrics");
    assert!(
        m.contains("pgmon_encrypted_sessions_opened_total{readable=\"false\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("pgmon_tls_capture_info{state=\"off\",library=\"\"} 1"),
        "{m}"
    );
    // The TLS session has ended: the gauge is back to 0, and nothing was misparsed.
    assert_eq!(capture_counter(&agent, "encrypted_sessions"), 0);
    assert_eq!(capture_counter(&agent, "desyncs_frontend"), 0);
    assert_eq!(capture_counter(&agent, "normalize_errors"), 0);
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Every hook family, pinned in the config, counts pgbench exactly and says which hook it
/// is; a family the kernel refuses makes the agent exit with the kernel's reason.
fn every_hook_family_counts_exactly(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("gina").expect("role");
    cluster.pgbench_init("gina", "gina", 1).expect("pgbench -i");
    let fp = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    let mut refused = Vec::new();
    for hook in [
        "fexit",
        "tp_btf_sock",
        "tp_btf",
        "tracepoint",
        "raw_tracepoint",
    ] {
        let port = free_port();
        let yaml = config(&cluster, port, "").replace("hooks: auto", &format!("hooks: {hook}"));
        let agent = match Agent::start(
            &agent_binary().expect("binary"),
            &yaml,
            format!("127.0.0.1:{port}"),
        ) {
            Ok(a) => a,
            Err(e) => {
                let text = format!("{e:#}");
                assert!(
                    text.contains("no hook family could be attached"),
                    "{hook}: {text}"
                );
                // Not a skip: the kernel's verdict is what the agent must report. Every
                // kernel the README promises (5.8+) takes the tracepoint families, so a
                // refusal of those fails below.
                eprintln!(
                    "{version:?} hook {hook}: refused by this kernel, as the agent says: {}",
                    text.lines().last().unwrap_or("")
                );
                refused.push(hook);
                continue;
            }
        };
        let status = agent.status_json().expect("status");
        assert_eq!(status["capture"]["hook"], hook);
        let before = calls(&agent, "gina", &fp);
        let run = pgmon_tests::PgbenchRun {
            clients: 2,
            jobs: 2,
            transactions: Some(300),
            select_only: true,
            no_vacuum: true,
            ..pgmon_tests::PgbenchRun::new("gina", "gina")
        };
        let tx = cluster
            .pgbench(&run)
            .expect("pgbench")
            .transactions_processed;
        let seen = wait_calls(&agent, "gina", &fp, before + tx, Duration::from_secs(15)) - before;
        eprintln!("{version:?} hook {hook}: pgbench {tx}, pgmon {seen}");
        assert_eq!(seen, tx, "{version:?} hook {hook}");
        assert_eq!(capture_counter(&agent, "dropped"), 0);
    }
    for always in ["tracepoint", "raw_tracepoint"] {
        assert!(
            !refused.contains(&always),
            "{version:?}: the kernel refused {always}, which every supported kernel takes"
        );
    }
}

/// `capture.probe_stats`: the kernel times pgmon's programs, and the agent exports each
/// one's runs and run time (metrics and status).
fn probe_stats_are_exported(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("hugo").expect("role");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "  probe_stats: true\n"),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    for i in 0..20 {
        cluster
            .psql("hugo", "hugo", Transport::Unix, &format!("SELECT {i}"))
            .expect("query");
    }
    let recv = |status: &serde_json::Value| -> Option<(u64, u64)> {
        status["capture"]["probes"]
            .as_array()?
            .iter()
            .find_map(|p| {
                let name = p["name"].as_str()?;
                name.contains("recv").then(|| {
                    (
                        p["runs"].as_u64().unwrap_or(0),
                        p["run_ns"].as_u64().unwrap_or(0),
                    )
                })
            })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let (runs, ns) = loop {
        let status = agent.status_json().expect("status");
        match recv(&status) {
            Some((runs, ns)) if runs >= 20 => break (runs, ns),
            _ if std::time::Instant::now() > deadline => {
                panic!("no receive-program statistics: {}", status["capture"])
            }
            _ => thread::sleep(Duration::from_millis(200)),
        }
    };
    eprintln!(
        "{version:?}: receive program {runs} runs, {} ns/run",
        ns / runs.max(1)
    );
    assert!(ns > 0, "{runs} runs took 0 ns");
    let metrics = agent.metrics_text().expect("metrics");
    for family in [
        "pgmon_probe_runs_total{program=",
        "pgmon_probe_run_seconds_total{program=",
    ] {
        assert!(metrics.contains(family), "{family} missing:\n{metrics}");
    }
    let out = Command::new(agent_binary().expect("binary"))
        .args(["status", "--addr", agent.addr()])
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("kernel time: "), "{text}");
}

/// A full ring buffer: records the kernel cannot place are counted as dropped, the backend
/// that lost some is marked (its pid-state byte) until its next record tells the agent,
/// which resynchronises that connection and goes on counting it exactly.
fn full_ring_is_counted_and_resynced(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("ivan").expect("role");
    cluster.pgbench_init("ivan", "ivan", 1).expect("pgbench -i");
    let mut ivan = cluster
        .hold_session("ivan", "ivan", Transport::Unix)
        .expect("session");
    let port = free_port();
    // The smallest ring, drained once a second: a stopped agent lets it fill in well
    // under the pgbench run below.
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(
            &cluster,
            port,
            "  ring_buffer_bytes: 1048576\n  drain_interval_ms: 1000\n",
        ),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let sql = |tag: &str| format!("SELECT '{tag}' AS ring_phase");
    let fp = fingerprint(&sql("x"));
    for _ in 0..3 {
        ivan.run(&sql("before")).expect("query");
    }
    assert_eq!(
        wait_calls(&agent, "ivan", &fp, 3, Duration::from_secs(10)),
        3
    );

    // SIGSTOP: the agent cannot drain; pgbench fills the ring, then ivan's queries find
    // it full.
    // SAFETY: kill(2) on the agent we started.
    let signal = |sig| unsafe { libc::kill(agent.pid() as i32, sig) };
    assert_eq!(signal(libc::SIGSTOP), 0);
    let run = pgmon_tests::PgbenchRun {
        clients: 2,
        jobs: 2,
        transactions: Some(10_000),
        select_only: true,
        no_vacuum: true,
        ..pgmon_tests::PgbenchRun::new("ivan", "ivan")
    };
    let pgbench = cluster.pgbench(&run);
    for _ in 0..4 {
        ivan.run(&sql("during")).expect("query");
    }
    assert_eq!(signal(libc::SIGCONT), 0);
    let tx = pgbench.expect("pgbench").transactions_processed;
    let dropped = agent.wait_metric(
        "pgmon_capture_dropped_total",
        &[],
        Duration::from_secs(10),
        |v| v > 0.0,
    );

    // Ivan's next record carries the loss: the agent resynchronises that connection at
    // the reply's ReadyForQuery, so it counts that one query as unseen and every later one.
    for _ in 0..5 {
        ivan.run(&sql("after")).expect("query");
    }
    let lost = agent.wait_metric(
        "pgmon_wire_desyncs_total",
        &[("reason", "lost")],
        Duration::from_secs(10),
        |v| v >= 1.0,
    );
    let seen = wait_calls(&agent, "ivan", &fp, 3 + 4, Duration::from_secs(10));
    // A barrier on the same connection: once this later query is counted, every earlier
    // record of ivan's has been handled, so a late count would show by now. (It differs in
    // structure, not only in its alias, which a fingerprint ignores.)
    let barrier = "SELECT pg_backend_pid() > 0 AS ring_barrier";
    ivan.run(barrier).expect("barrier query");
    assert_eq!(
        wait_calls(
            &agent,
            "ivan",
            &fingerprint(barrier),
            1,
            Duration::from_secs(10)
        ),
        1,
        "the barrier query"
    );
    let seen = seen.max(calls(&agent, "ivan", &fp));
    eprintln!(
        "{version:?}: pgbench {tx} transactions with the agent stopped; dropped {dropped} \
         records, {lost} streams resynchronised; ivan's statement counted {seen} \
         (3 before, 4 during the stop, 5 after)"
    );
    assert_eq!(
        seen,
        3 + 4,
        "none of the stopped period, the 4 after the one that resynchronised"
    );
    // What the agent did see of the stopped period is counted, never more than was sent.
    let pgbench_fp = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = $1");
    assert!(
        calls(&agent, "ivan", &pgbench_fp) < tx,
        "drops lose pgbench statements"
    );
}

fn all(version: PgVersion) {
    probe_stats_are_exported(version);
    every_hook_family_counts_exactly(version);
    monitor_connection_is_reopened(version);
    byte_cap_is_counted(version);
    full_ring_is_counted_and_resynced(version);
    encrypted_sessions_are_counted(version);
}

#[test]
fn capture_edges_pg15() {
    if require_root("capture_edges_pg15") {
        all(PgVersion::Pg15);
    }
}

#[test]
fn capture_edges_pg18() {
    if require_root("capture_edges_pg18") {
        all(PgVersion::Pg18);
    }
}
