//! Tests of the harness itself: real clusters (PostgreSQL 15 and 18) run as `postgres`,
//! pgbench over both transports with every protocol, pg_stat_statements as the ground truth,
//! a held session, and the agent helper against a stand-in agent.

use std::time::{Duration, Instant};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol, Transport, metrics, pid_alive,
    require_root,
};

/// Normalized text of pgbench's `-S` statement, as pg_stat_statements shows it.
const SELECT_ONLY_LIKE: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1%";

fn exercise(version: PgVersion) {
    let t0 = Instant::now();
    let mut cluster = Cluster::start(version, ClusterOptions::default())
        .unwrap_or_else(|e| panic!("{version}: {e:#}"));
    let pid = cluster.postmaster_pid();
    assert!(pid > 1, "postmaster pid {pid}");
    assert!(cluster.data_dir().join("PG_VERSION").exists());
    let server_version = cluster.psql_admin("SHOW server_version_num").unwrap();
    assert!(
        server_version
            .trim()
            .starts_with(&version.major().to_string()),
        "{version}: server_version_num {server_version}"
    );
    assert_eq!(
        cluster
            .psql_admin("SHOW pg_stat_statements.track")
            .unwrap()
            .trim(),
        "top"
    );
    println!(
        "{version}: started in {:?} (postmaster {pid}, port {})",
        t0.elapsed(),
        cluster.port()
    );

    cluster.create_role_with_db("bench").unwrap();
    cluster.pgbench_init("bench", "bench", 1).unwrap();

    // A connection opened before the measured runs, kept open through them.
    let mut held = cluster
        .hold_session("bench", "bench", Transport::Tcp)
        .unwrap();
    assert!(held.backend_pid() > 0);
    let seen = cluster
        .psql_admin(&format!(
            "SELECT usename FROM pg_stat_activity WHERE pid = {}",
            held.backend_pid()
        ))
        .unwrap();
    assert_eq!(seen.trim(), "bench");
    assert_eq!(
        held.run("SELECT count(*) FROM pgbench_branches")
            .unwrap()
            .trim(),
        "1"
    );
    let err = held.run("SELECT 1/0").unwrap_err().to_string();
    assert!(err.contains("division by zero"), "{err}");
    assert_eq!(held.run("SELECT 40 + 2; SELECT 'x'").unwrap(), "42\nx\n");
    assert_eq!(
        held.run("SELECT 7 -- no semicolon, trailing comment")
            .unwrap()
            .trim(),
        "7"
    );

    for transport in Transport::ALL {
        for protocol in Protocol::ALL {
            for connect_per_tx in [false, true] {
                cluster.pg_stat_statements_reset().unwrap();
                let run = PgbenchRun {
                    transport,
                    clients: 2,
                    jobs: 2,
                    transactions: Some(200),
                    protocol,
                    select_only: true,
                    connect_per_tx,
                    ..PgbenchRun::new("bench", "bench")
                };
                let r = cluster.pgbench(&run).unwrap_or_else(|e| {
                    panic!("{version} {transport:?} {protocol:?} -C={connect_per_tx}: {e:#}")
                });
                assert_eq!(r.transactions_processed, 400);
                assert_eq!(r.failed, 0);
                assert!(r.tps > 0.0);
                let calls = cluster.pss_calls("bench", SELECT_ONLY_LIKE).unwrap();
                let total: u64 = calls.iter().map(|(_, c)| c).sum();
                assert_eq!(
                    total, 400,
                    "{version} {transport:?} {protocol:?} -C={connect_per_tx}: pss {calls:?}"
                );
                println!(
                    "{version}: {transport:?} {protocol:?} -C={connect_per_tx}: {} tx, {:.0} tps, pss calls {total}",
                    r.transactions_processed, r.tps
                );
            }
        }
    }

    // The held session survived all of it.
    assert_eq!(
        held.run("SELECT sum(bbalance) IS NOT NULL FROM pgbench_branches")
            .unwrap()
            .trim(),
        "t"
    );
    drop(held);

    // Restart keeps the port, changes the postmaster.
    cluster.restart().unwrap();
    assert_ne!(cluster.postmaster_pid(), pid);
    assert_eq!(
        cluster
            .psql("bench", "bench", Transport::Tcp, "SELECT 1")
            .unwrap()
            .trim(),
        "1"
    );

    let base = cluster.base_dir().to_path_buf();
    let pid = cluster.postmaster_pid();
    cluster.stop().unwrap();
    assert!(!pid_alive(pid as i32), "postmaster {pid} still runs");
    drop(cluster);
    assert!(!base.exists(), "{} not removed", base.display());
    println!("{version}: whole exercise {:?}", t0.elapsed());
}

#[test]
fn clusters_pgbench_and_pg_stat_statements() {
    if !require_root("clusters_pgbench_and_pg_stat_statements") {
        return;
    }
    for version in PgVersion::ALL {
        exercise(version);
    }
}

#[test]
fn two_clusters_side_by_side_and_drop_cleans_up() {
    if !require_root("two_clusters_side_by_side_and_drop_cleans_up") {
        return;
    }
    let a = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).unwrap();
    let b = Cluster::start(PgVersion::Pg18, ClusterOptions::default()).unwrap();
    assert_ne!(a.port(), b.port());
    for (c, v) in [(&a, "15"), (&b, "18")] {
        for t in Transport::ALL {
            let out = c
                .psql("postgres", "postgres", t, "SHOW server_version")
                .unwrap();
            assert!(out.starts_with(v), "{out}");
        }
    }
    let conninfo = a.conninfo("postgres", "postgres", Transport::Unix);
    assert!(conninfo.starts_with(&format!(
        "host={} port={}",
        a.socket_dir().display(),
        a.port()
    )));
    let (pa, pb) = (a.postmaster_pid(), b.postmaster_pid());
    let (da, db) = (a.base_dir().to_path_buf(), b.base_dir().to_path_buf());
    drop(a);
    drop(b);
    for (pid, dir) in [(pa, da), (pb, db)] {
        assert!(!pid_alive(pid as i32), "postmaster {pid} survived drop");
        assert!(!dir.exists(), "{} survived drop", dir.display());
    }
}

/// A stand-in for the agent: serves /healthz, /metrics and /api/v1/status on the address of
/// its config's `listen:` line and exits 0 on SIGTERM.
const FAKE_AGENT: &str = r#"#!/usr/bin/env python3
import http.server, signal, sys
assert sys.argv[1:3] == ["run", "--config"], sys.argv
listen = [l.split("listen:")[1].strip() for l in open(sys.argv[3]) if "listen:" in l][0]
host, port = listen.rsplit(":", 1)
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = {"/healthz": b"ok\n",
                "/metrics": b'# TYPE pgmon_queries_total counter\npgmon_queries_total{role="shop"} 3\n',
                "/api/v1/status": b'{"capture": {"hooks": "raw_tracepoint"}}'}.get(self.path)
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body or b"not found")
    def log_message(self, *a):
        sys.stderr.write("fake agent: %s\n" % (a[0] % a[1:]))
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
print("fake agent listening on", listen, flush=True)
http.server.HTTPServer((host, int(port)), H).serve_forever()
"#;

fn on_path(name: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
}

#[test]
fn agent_helper_against_a_stand_in() {
    if !on_path("python3") {
        pgmon_tests::skip("agent_helper_against_a_stand_in", "no python3 on PATH");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("fake-agent");
    std::fs::write(&bin, FAKE_AGENT).unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();

    let addr = format!("127.0.0.1:{}", pgmon_tests::free_port());
    let config = format!("metrics:\n  listen: {addr}\n");
    let t0 = Instant::now();
    let mut agent = Agent::start(&bin, &config, &addr).unwrap();
    println!("stand-in agent healthy after {:?}", t0.elapsed());
    assert!(agent.is_running());
    assert_eq!(
        agent.status_json().unwrap()["capture"]["hooks"],
        "raw_tracepoint"
    );
    let samples = agent.metrics().unwrap();
    assert_eq!(
        metrics::sum(&samples, "pgmon_queries_total", &[("role", "shop")]),
        3.0
    );
    assert_eq!(agent.get("/nope").unwrap().0, 404);
    assert!(
        agent
            .metrics_text()
            .unwrap()
            .contains("pgmon_queries_total")
    );
    assert_eq!(
        std::fs::read_to_string(agent.config_path()).unwrap(),
        config
    );
    let status = agent.stop().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        agent.log().contains("fake agent listening"),
        "{}",
        agent.log()
    );
    assert!(!agent.is_running());

    // An agent that dies at once: the error quotes its log.
    let dead = dir.path().join("dead-agent");
    std::fs::write(
        &dead,
        "#!/bin/sh\necho 'config error: no cluster' >&2\nexit 2\n",
    )
    .unwrap();
    std::fs::set_permissions(&dead, std::fs::Permissions::from_mode(0o755)).unwrap();
    let err = Agent::start(&dead, "", &addr).unwrap_err().to_string();
    assert!(err.contains("config error: no cluster"), "{err}");

    // One that never becomes healthy: the timeout fires.
    let mute = dir.path().join("mute-agent");
    std::fs::write(&mute, "#!/bin/sh\nexec sleep 60\n").unwrap();
    std::fs::set_permissions(&mute, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = pgmon_tests::AgentOptions {
        ready_timeout: Duration::from_millis(500),
        ..Default::default()
    };
    let t0 = Instant::now();
    let err = Agent::start_with(&mute, "", &addr, opts)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not healthy"), "{err}");
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "stop of a hung agent took {:?}",
        t0.elapsed()
    );
}

#[test]
fn failed_start_reports_the_log_and_leaves_nothing() {
    if !require_root("failed_start_reports_the_log_and_leaves_nothing") {
        return;
    }
    let before = pgmon_dirs();
    let opts = ClusterOptions {
        settings: vec![("no_such_setting".into(), "1".into())],
        ..ClusterOptions::default()
    };
    let err = format!("{:#}", Cluster::start(PgVersion::Pg15, opts).unwrap_err());
    assert!(err.contains("no_such_setting"), "{err}");
    assert_eq!(pgmon_dirs(), before, "a temp dir was left behind");
}

fn pgmon_dirs() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/tmp")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("pgmon-pg"))
        .collect();
    v.sort();
    v
}

#[test]
fn stop_after_the_postmaster_died() {
    if !require_root("stop_after_the_postmaster_died") {
        return;
    }
    let mut cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).unwrap();
    let pid = cluster.postmaster_pid() as i32;
    // SAFETY: plain kill(2) of the postmaster this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + Duration::from_secs(5);
    while pid_alive(pid) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    cluster.stop().unwrap();
    assert!(!cluster.is_running());
    let base = cluster.base_dir().to_path_buf();
    drop(cluster);
    assert!(!base.exists());
}
