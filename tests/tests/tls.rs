//! TLS sessions (issue 18): the real libssl probes in the real kernel, clusters with
//! `ssl = on` and a self-signed certificate, real psql and pgbench over TCP with
//! `sslmode=require`.
//!
//! - pgbench `-S` over TLS, every protocol and `-C`: pgmon's count for the role equals
//!   pgbench's transactions and `pg_stat_statements.calls`, with no desync;
//! - psycopg 3 from PyPI (a driver not written here, its own libpq) in pipeline mode over
//!   TLS, and from PostgreSQL 17 on with `sslnegotiation=direct` (no SSLRequest: the first
//!   bytes are a TLS ClientHello), counted exactly;
//! - a TLS role and a plain role at once; a TLS session opened before the agent;
//! - a budget: the tenant that moves from plaintext to `sslmode=require` is charged the same
//!   per statement and steps up the ladder at the same statement as arithmetic on the
//!   plaintext charge says;
//! - `capture.tls: off`: the TLS session counts as unreadable and its backend's CPU time is
//!   charged to its role, in its budget too (`tier.cpu_second_cost` per CPU second);
//! - attaching and detaching the agent 20 times under `pgbench -c 4` over TLS kills no
//!   backend.

use std::time::{Duration, Instant};

use pgmon_tests::budget::{
    HEAVY_SQL, audit, budget, create_big_table, install_sql, role_flags, wait_until,
};
use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PSYCOPG_PYTHON, PgVersion, PgbenchRun, Protocol,
    SUPERUSER_MONITOR, Transport, agent_binary, fingerprint, free_port, metrics, require_root,
};

/// pgbench's `-S` statement as pg_stat_statements normalizes it.
const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";

/// libpq's environment for a TLS session (the agent's own monitor connection uses the
/// unix socket).
const REQUIRE_TLS: &[(&str, &str)] = &[("PGSSLMODE", "require")];

/// The agent's config: `capture` lines go under `capture:`, `rest` (whole sections, e.g.
/// `budgets:`) at the end.
fn agent_config(cluster: &Cluster, port: u16, capture: &str, rest: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         capture:\n  hooks: auto\n{capture}metrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}{rest}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

fn start_agent_with(cluster: &Cluster, capture: &str, rest: &str) -> Agent {
    let port = free_port();
    Agent::start(
        &agent_binary().expect("agent binary"),
        &agent_config(cluster, port, capture, rest),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent starts")
}

fn start_agent(cluster: &Cluster, capture: &str) -> Agent {
    start_agent_with(cluster, capture, "")
}

fn capture_value(agent: &Agent, key: &str) -> serde_json::Value {
    match agent.status_json() {
        Ok(s) => s["capture"][key].clone(),
        Err(e) => {
            let bt = std::process::Command::new("gdb")
                .args([
                    "-p",
                    &agent.pid().to_string(),
                    "-batch",
                    "-ex",
                    "thread apply all bt 12",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            panic!("status: {e:#}\nagent log:\n{}\n{bt}", agent.log())
        }
    }
}

fn wait_calls(agent: &Agent, role: &str, fp: &str, target: u64) -> u64 {
    agent
        .wait_fingerprint_calls(role, fp, target, Duration::from_secs(15))
        .expect("status")
}

fn tls_cluster(version: PgVersion, roles: &[&str]) -> Cluster {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    for role in roles {
        cluster.create_role_with_db(role).expect("role");
        cluster.pgbench_init(role, role, 1).expect("pgbench -i");
    }
    cluster.enable_ssl().expect("ssl = on");
    cluster
}

/// pgbench over TLS, each protocol and -C, counted exactly; a plain role alongside; a TLS
/// session older than the agent.
fn counts_tls_sessions_exactly(version: PgVersion) {
    let cluster = tls_cluster(version, &["tina", "paul", "olga"]);
    let mut held = cluster
        .hold_session("olga", "olga", Transport::Tcp)
        .expect("held session");
    assert_eq!(
        held.run("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .expect("held")
            .trim(),
        "t",
        "the held session uses TLS (sslmode=prefer)"
    );
    let agent = start_agent(&cluster, "");
    let tls = capture_value(&agent, "tls");
    assert_eq!(tls["state"], "on", "TLS capture: {tls}");
    let library = tls["library"].as_str().unwrap_or_default().to_owned();
    assert!(library.contains("libssl.so"), "{tls}");
    let m = agent.metrics_text().expect("metrics");
    assert!(
        m.contains(&format!(
            "pgmon_tls_capture_info{{state=\"on\",library=\"{library}\"}} 1"
        )),
        "{m}"
    );
    let fp = fingerprint(PGBENCH_SELECT);

    let runs = Protocol::ALL
        .iter()
        .map(|&p| (p, false))
        .chain([(Protocol::Simple, true), (Protocol::Prepared, true)]);
    for (protocol, connect_per_tx) in runs {
        let label = format!(
            "{version:?} TLS -M {}{}",
            protocol.as_arg(),
            if connect_per_tx { " -C" } else { "" }
        );
        cluster.pg_stat_statements_reset().expect("pss reset");
        let before = agent.fingerprint_calls("tina", &fp).expect("status");
        let run = PgbenchRun {
            transport: Transport::Tcp,
            clients: 2,
            jobs: 2,
            transactions: Some(if connect_per_tx { 100 } else { 500 }),
            protocol,
            select_only: true,
            connect_per_tx,
            ..PgbenchRun::new("tina", "tina")
        };
        let result = cluster.pgbench_env(&run, REQUIRE_TLS).expect("pgbench");
        let expected = result.transactions_processed;
        let seen = wait_calls(&agent, "tina", &fp, before + expected) - before;
        let pss: u64 = cluster
            .pss_calls("tina", "%pgbench_accounts%")
            .expect("pss")
            .iter()
            .filter(|(q, _)| fingerprint(q) == fp)
            .map(|(_, c)| c)
            .sum();
        eprintln!("{label}: pgbench {expected} tx, pgmon {seen}, pg_stat_statements {pss}");
        assert!(expected > 0, "{label}: pgbench processed nothing");
        assert_eq!(seen, expected, "{label}: pgmon vs pgbench");
        assert_eq!(pss, expected, "{label}: pg_stat_statements vs pgbench");
    }
    psycopg_over_tls(&cluster, &agent, &fp);

    let m = agent.metrics().expect("metrics");
    let opened = metrics::sum(
        &m,
        "pgmon_encrypted_sessions_opened_total",
        &[("readable", "true")],
    );
    assert!(
        opened >= 2.0 * 3.0 + 200.0,
        "readable TLS sessions opened: {opened}"
    );
    assert_eq!(
        metrics::sum(
            &m,
            "pgmon_encrypted_sessions_opened_total",
            &[("readable", "false")]
        ),
        0.0
    );

    // A TLS role and a plain one at once.
    let (t0, p0) = (
        agent.fingerprint_calls("tina", &fp).expect("status"),
        agent.fingerprint_calls("paul", &fp).expect("status"),
    );
    let tls_run = PgbenchRun {
        transport: Transport::Tcp,
        clients: 2,
        jobs: 1,
        transactions: Some(400),
        select_only: true,
        ..PgbenchRun::new("tina", "tina")
    };
    let plain_run = PgbenchRun {
        transport: Transport::Tcp,
        clients: 2,
        jobs: 1,
        transactions: Some(300),
        select_only: true,
        ..PgbenchRun::new("paul", "paul")
    };
    let (tls_tx, plain_tx) = std::thread::scope(|s| {
        let a = s.spawn(|| cluster.pgbench_env(&tls_run, REQUIRE_TLS));
        let b = s.spawn(|| cluster.pgbench_env(&plain_run, &[("PGSSLMODE", "disable")]));
        (
            a.join().expect("thread").expect("pgbench tls"),
            b.join().expect("thread").expect("pgbench plain"),
        )
    });
    let tina = wait_calls(&agent, "tina", &fp, t0 + tls_tx.transactions_processed) - t0;
    let paul = wait_calls(&agent, "paul", &fp, p0 + plain_tx.transactions_processed) - p0;
    assert_eq!(tina, tls_tx.transactions_processed, "the TLS role");
    assert_eq!(paul, plain_tx.transactions_processed, "the plain role");

    // The TLS session opened before the agent: attributed through pg_stat_activity.
    let older = "SELECT count(*) FROM pgbench_branches WHERE bid > 0";
    for _ in 0..5 {
        held.run(older).expect("held query");
    }
    let seen = wait_calls(&agent, "olga", &fingerprint(older), 5);
    assert_eq!(seen, 5, "a TLS session older than the agent");

    for key in [
        "desyncs_frontend",
        "desyncs_backend",
        "dropped",
        "unattributed_queries",
    ] {
        assert_eq!(capture_value(&agent, key), 0, "{key}");
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// psycopg 3: `argv[1]` a conninfo, `argv[2]` a count. Runs pgbench's `-S` statement that
/// many times in one pipeline (psycopg prepares it from the 5th execution on: Parse, Bind,
/// Execute of a named statement, one Sync per statement), then prints what the session was:
/// libpq's version, whether pg_stat_ssl says TLS, and the `sslnegotiation` in use.
const PSYCOPG_PIPELINE: &str = r#"
import json, sys, psycopg
conninfo, n = sys.argv[1], int(sys.argv[2])
with psycopg.connect(conninfo, autocommit=True) as conn:
    with conn.pipeline():
        with conn.cursor() as cur:
            for i in range(n):
                cur.execute("SELECT abalance FROM pgbench_accounts WHERE aid = %s", (i % 1000 + 1,))
    with conn.cursor() as cur:
        cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ssl = cur.fetchone()[0]
    print(json.dumps({"libpq": psycopg.pq.version(), "ssl": ssl,
                      "negotiation": conn.info.get_parameters().get("sslnegotiation", "")}))
"#;

/// psycopg over TLS, pipeline mode; from PostgreSQL 17 on, also with direct TLS.
fn psycopg_over_tls(cluster: &Cluster, agent: &Agent, fp: &str) {
    let version = cluster.version();
    let mut modes = vec![("pipeline", "sslmode=require")];
    if version.major() >= 17 {
        modes.push((
            "pipeline, direct TLS",
            "sslmode=require sslnegotiation=direct",
        ));
    }
    for (label, extra) in modes {
        let label = format!("{version:?} psycopg {label}");
        let n = 300;
        cluster.pg_stat_statements_reset().expect("pss reset");
        let before = agent.fingerprint_calls("tina", fp).expect("status");
        let conninfo = format!(
            "{} {extra}",
            cluster.conninfo("tina", "tina", Transport::Tcp)
        );
        let out = std::process::Command::new(PSYCOPG_PYTHON)
            .args(["-c", PSYCOPG_PIPELINE, &conninfo, &n.to_string()])
            .output()
            .unwrap_or_else(|e| panic!("{PSYCOPG_PYTHON}: {e} (`cargo xtask setup` installs it)"));
        assert!(
            out.status.success(),
            "{label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let said: serde_json::Value =
            serde_json::from_slice(&out.stdout).expect("psycopg's JSON line");
        assert_eq!(said["ssl"], true, "{label}: the session is TLS: {said}");
        if extra.contains("direct") {
            assert!(
                said["libpq"].as_u64().unwrap_or(0) >= 170_000,
                "{label}: psycopg's libpq predates direct TLS: {said}"
            );
        }
        let seen = wait_calls(agent, "tina", fp, before + n) - before;
        let pss: u64 = cluster
            .pss_calls("tina", "%pgbench_accounts%")
            .expect("pss")
            .iter()
            .filter(|(q, _)| fingerprint(q) == fp)
            .map(|(_, c)| c)
            .sum();
        eprintln!("{label}: {n} statements, pgmon {seen}, pg_stat_statements {pss} ({said})");
        assert_eq!(seen, n, "{label}: pgmon vs the statements sent");
        assert_eq!(pss, n, "{label}: pg_stat_statements vs the statements sent");
    }
}

/// With `capture.tls: off` a TLS session is unreadable: counted as such, and its backend's
/// CPU time is charged to its role.
fn unreadable_sessions_are_charged_by_cpu(version: PgVersion) {
    let cluster = tls_cluster(version, &["gary"]);
    install_sql(&cluster);
    let agent = start_agent_with(
        &cluster,
        "  tls: off\n",
        "budgets:\n  enabled: true\n  mode: observe\n\
         \x20 tiers:\n    cpu: {budget: 1000000000, window_seconds: 600}\n\
         \x20 roles:\n    - {match: gary, tier: cpu}\n",
    );
    let tls = capture_value(&agent, "tls");
    assert_eq!(tls["state"], "off", "{tls}");
    assert_eq!(tls["reason"], "capture.tls: off");
    let mut held = cluster
        .hold_session("gary", "gary", Transport::Tcp)
        .expect("held session");
    // A few hundred milliseconds of CPU in the backend.
    held.run("SELECT count(*) FROM generate_series(1, 3000000) a, LATERAL (SELECT md5(a::text)) m")
        .expect("busy query");
    let used = backend_cpu_seconds(held.backend_pid());
    assert!(used >= 0.1, "the busy query used {used} s of CPU");
    let deadline = Instant::now() + Duration::from_secs(10);
    let charged = loop {
        let m = agent.metrics().expect("metrics");
        let cpu = metrics::sum(
            &m,
            "pgmon_unreadable_cpu_seconds_total",
            &[("role", "gary")],
        );
        if cpu >= 0.9 * used || Instant::now() > deadline {
            break cpu;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "{version:?}: the unreadable backend used {used:.2} s of CPU, {charged:.2} s charged"
    );
    assert!(
        charged >= 0.9 * used && charged <= used + 0.05,
        "CPU seconds charged to gary: {charged}, the backend used {used}"
    );
    let status = agent.status_json().expect("status");
    assert_eq!(status["capture"]["encrypted_sessions"], 1, "{status}");
    assert_eq!(status["capture"]["encrypted_sessions_readable"], 0);
    let gary = status["roles"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["role"] == "gary").cloned())
        .expect("gary in status");
    assert_eq!(
        gary["queries"], 0,
        "nothing of the session was read: {gary}"
    );
    // The budget is charged the same CPU seconds at the tier's default 150 000 per second.
    let m = agent.metrics().expect("metrics");
    let charged = metrics::sum(
        &m,
        "pgmon_unreadable_cpu_seconds_total",
        &[("role", "gary")],
    );
    let spend = budget(&agent, "gary").expect("gary's budget")["spend"]
        .as_f64()
        .unwrap_or(0.0);
    eprintln!("{version:?}: gary's budget spend {spend:.0} for {charged:.2} CPU s");
    assert!(
        (spend - charged * 150_000.0).abs() <= 1.0,
        "spend {spend} for {charged} CPU seconds at 150000 each"
    );
    held.close();
}

/// `HEAVY_SQL` as `heavy` in one psql session over TCP with `sslmode`, which must be what
/// the session uses (pg_stat_ssl says so).
fn heavy_over_tcp(cluster: &Cluster, sslmode: &str) -> bool {
    let out = std::process::Command::new(pgmon_tests::PSQL)
        .args(["-X", "-At", "-v", "ON_ERROR_STOP=1"])
        .args([
            "-c",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .args(["-c", HEAVY_SQL])
        .arg(format!(
            "{} sslmode={sslmode}",
            cluster.conninfo("heavy", "heavy", Transport::Tcp)
        ))
        .output()
        .expect("psql");
    if !out.status.success() {
        return false;
    }
    let ssl = String::from_utf8_lossy(&out.stdout).lines().next() == Some("t");
    assert_eq!(
        ssl,
        sslmode == "require",
        "sslmode={sslmode}: pg_stat_ssl says ssl = {ssl}"
    );
    true
}

/// A tenant that moves to TLS is charged per statement as in plaintext and steps up the
/// ladder at the statement the arithmetic says: budget 20 statements' cost, warn at 0.5
/// (the 10th), connection limit at 1.0 (the 20th), lock at 2.0 (the 40th).
fn budget_follows_the_tenant_into_tls(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    cluster.create_role_with_db("heavy").expect("role");
    create_big_table(&cluster, "heavy");
    cluster.enable_ssl().expect("ssl = on");
    // The statement's cost as the agent charges it: one run with a budget large enough.
    let probe = start_agent_with(
        &cluster,
        "",
        "budgets:\n  enabled: true\n  mode: observe\n\
         \x20 tiers:\n    big: {budget: 1000000000, window_seconds: 600}\n\
         \x20 roles:\n    - {match: heavy, tier: big}\n",
    );
    assert!(heavy_over_tcp(&cluster, "disable"));
    let spend =
        |agent: &Agent| budget(agent, "heavy").map_or(0.0, |b| b["spend"].as_f64().unwrap_or(0.0));
    // The first execution is charged the default, then corrected to the generic plan's
    // cost once EXPLAIN answers: wait for the value to settle.
    let mut cost = 0.0;
    wait_until("the estimate", Duration::from_secs(10), || {
        let now = spend(&probe);
        let settled = now > 1000.0 && now == cost;
        cost = now;
        std::thread::sleep(Duration::from_millis(300));
        settled
    });
    drop(probe);
    // The probe agent saved heavy's ledger in pgmon.budget_ledgers, and the next agent would
    // restore it: start the enforcing agent from an empty window.
    cluster
        .psql_admin("DELETE FROM pgmon.budget_ledgers WHERE role = 'heavy'")
        .expect("clear the ledger");

    let agent = start_agent_with(
        &cluster,
        "",
        &format!(
            "budgets:\n  enabled: true\n  mode: enforce\n\
             \x20 tiers:\n    free: {{budget: {}, window_seconds: 600}}\n\
             \x20 roles:\n    - {{match: heavy, tier: free}}\n\
             \x20 ladder:\n    - {{at: 0.5, action: warn}}\n    - {{at: 1.0, action: connection_limit, limit: 2}}\n\
             \x20   - {{at: 2.0, action: lock}}\n",
            20.0 * cost
        ),
    );
    let step = |agent: &Agent| budget(agent, "heavy").map(|b| b["step"].clone());
    for k in 1..=40u32 {
        let sslmode = if k <= 5 { "disable" } else { "require" };
        assert!(
            heavy_over_tcp(&cluster, sslmode),
            "statement {k} ({sslmode}) failed"
        );
        let want = f64::from(k) * cost;
        let mut seen = 0.0;
        let charged = (0..100).any(|_| {
            seen = spend(&agent);
            let ok = (seen - want).abs() <= 1e-6 * want;
            if !ok {
                std::thread::sleep(Duration::from_millis(100));
            }
            ok
        });
        assert!(
            charged,
            "statement {k} ({sslmode}): spend {seen}, want {want} = {k} x {cost}"
        );
        let expected = match k {
            0..=9 => serde_json::Value::Null,
            10..=19 => "warn".into(),
            20..=39 => "connection_limit".into(),
            _ => "lock".into(),
        };
        if expected != serde_json::Value::Null {
            wait_until(
                &format!("step {expected} after statement {k}"),
                Duration::from_secs(5),
                || step(&agent) == Some(expected.clone()),
            );
        } else {
            assert_eq!(step(&agent), Some(expected), "after statement {k}");
        }
    }
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged", "connection_limit:applied", "lock:applied"]
    );
    assert!(role_flags(&cluster, "heavy").starts_with("false"));
    assert!(
        !heavy_over_tcp(&cluster, "require"),
        "a locked role cannot log in over TLS"
    );
    eprintln!(
        "{version:?}: heavy charged {cost} per statement, 5 plaintext + 35 TLS sessions; \
         warn at 10, connection_limit at 20, lock at 40"
    );
    for key in [
        "desyncs_frontend",
        "desyncs_backend",
        "unattributed_queries",
    ] {
        assert_eq!(capture_value(&agent, key), 0, "{key}");
    }
}

/// utime + stime of `pid` so far, seconds (proc(5); 100 clock ticks per second on Linux).
fn backend_cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("backend stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<u64> = after
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    (f[11] + f[12]) as f64 / 100.0
}

/// Attaching and detaching the agent while pgbench runs over TLS never hurts a backend.
fn attach_detach_is_safe(version: PgVersion) {
    let cluster = tls_cluster(version, &["sam"]);
    let run = PgbenchRun {
        transport: Transport::Tcp,
        clients: 4,
        jobs: 2,
        transactions: None,
        duration_s: Some(40),
        select_only: true,
        ..PgbenchRun::new("sam", "sam")
    };
    let started = Instant::now();
    let result = std::thread::scope(|s| {
        let bench = s.spawn(|| cluster.pgbench_env(&run, REQUIRE_TLS));
        for i in 0..20 {
            let agent = start_agent(&cluster, "");
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                agent
                    .fingerprint_calls("sam", &fingerprint(PGBENCH_SELECT))
                    .is_ok(),
                "attach {i}"
            );
            drop(agent);
        }
        bench.join().expect("thread").expect("pgbench")
    });
    eprintln!(
        "{version:?}: 20 attach/detach cycles in {:?}; pgbench {} tx, {} failed",
        started.elapsed(),
        result.transactions_processed,
        result.failed
    );
    assert_eq!(result.failed, 0, "{}", result.output);
    let log = cluster.log();
    for bad in [
        "terminated by signal",
        "was terminated",
        "server process (PID",
    ] {
        assert!(!log.contains(bad), "the server log says `{bad}`:\n{log}");
    }
}

fn all(version: PgVersion) {
    counts_tls_sessions_exactly(version);
    unreadable_sessions_are_charged_by_cpu(version);
    budget_follows_the_tenant_into_tls(version);
    attach_detach_is_safe(version);
}

#[test]
fn tls_pg15() {
    if require_root("tls_pg15") {
        all(PgVersion::Pg15);
    }
}

#[test]
fn tls_pg18() {
    if require_root("tls_pg18") {
        all(PgVersion::Pg18);
    }
}
