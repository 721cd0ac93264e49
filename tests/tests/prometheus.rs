//! The shipped alert rules proven in a real Prometheus, not only by `promtool check`:
//! Debian's `prometheus` (unpacked by `cargo xtask setup` beside promtool), on loopback with
//! a temporary data directory, scraping the agent every second and evaluating
//! `alerts/pgmon-rules.yml` every second, against the real agent on PostgreSQL 15.
//!
//! Chaos, driven for real: a long transaction left idle in transaction while it holds a
//! lock, a session blocked behind it, and WAL archiving failing (`archive_command =
//! 'false'`). Both engines get the same, smaller thresholds for these rules (the rules
//! file's numbers replaced, its `for` dropped; the agent's policy set alike): the same
//! alerts fire in Prometheus (`/api/v1/alerts`) as in the agent's engine, with the same
//! severities (the long transaction passes its critical threshold too), and nothing else
//! fires in either. The canary's threshold is one any round trip passes: it fires in both
//! from the start. Not covered here: replica lag (tests/standby.rs fires it on bytes,
//! which the rules file leaves to the policy) and storage locks (tests/storage.rs).

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

/// Debian's Prometheus server, unpacked with promtool.
const PROMETHEUS: &str = "/opt/pgmon-test/promtool/usr/bin/prometheus";

/// The rules both engines evaluate with smaller numbers: (alertname, the policy's field,
/// warning, critical).
const SCALED: &[(&str, &str, f64, f64)] = &[
    (
        "PostgresLongTransaction",
        "long_transaction_seconds",
        2.0,
        5.0,
    ),
    (
        "PostgresIdleInTransaction",
        "idle_in_transaction_seconds",
        2.0,
        100_000.0,
    ),
    ("PostgresBlockingLocks", "lock_wait_seconds", 2.0, 100_000.0),
    (
        "PostgresWalArchivingBehind",
        "archive_pending_seconds",
        1.0,
        100_000.0,
    ),
    // Any round trip passes this one: it fires from the start, in both.
    ("PostgresCanarySlow", "canary_seconds", 1e-9, 100_000.0),
];

/// Alerts only the rules file has (no counterpart in the engine).
const PROMETHEUS_ONLY: &[&str] = &["PgmonHealthLoopDegraded", "PgmonCaptureDrops"];

const WAIT: Duration = Duration::from_secs(60);

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The shipped rules with [`SCALED`]'s numbers, as JSON (which Prometheus reads as YAML).
fn scaled_rules() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../alerts/pgmon-rules.yml");
    let mut v: Value =
        yaml_serde::from_str(&std::fs::read_to_string(path).expect("rules")).expect("YAML");
    let mut scaled = 0;
    for group in v["groups"].as_array_mut().expect("groups") {
        for rule in group["rules"].as_array_mut().expect("rules") {
            let Some(&(_, _, warn, crit)) = SCALED.iter().find(|s| rule["alert"] == s.0) else {
                continue;
            };
            let n = if rule["labels"]["severity"] == "critical" {
                crit
            } else {
                warn
            };
            let expr = rule["expr"].as_str().expect("expr").to_owned();
            let (lhs, _) = expr.split_once(" >= ").expect("a >= comparison");
            rule["expr"] = Value::String(format!("{lhs} >= {n}"));
            rule.as_object_mut().expect("rule").remove("for");
            scaled += 1;
        }
    }
    assert_eq!(
        scaled,
        SCALED.len() * 2,
        "a warning and a critical rule each"
    );
    serde_json::to_string_pretty(&v).expect("JSON")
}

/// (alertname, severity) of what `agent`'s engine fires.
fn agent_firing(agent: &Agent) -> BTreeSet<(String, String)> {
    let Ok((_, body)) = agent.get("/api/v1/alerts") else {
        return BTreeSet::new();
    };
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    v["data"]["firing"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["alertname"].as_str().unwrap_or_default().to_owned(),
                a["severity"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

/// (alertname, severity) of what Prometheus fires, [`PROMETHEUS_ONLY`] left out. Where a
/// warning and a critical rule of one alert both fire (the critical threshold passed
/// implies the warning one; Alertmanager's inhibition usually hides the lesser), only the
/// critical one, as the engine reports one severity per alert.
fn prometheus_firing(port: u16) -> BTreeSet<(String, String)> {
    let Ok(mut resp) = ureq::get(&format!("http://127.0.0.1:{port}/api/v1/alerts")).call() else {
        return BTreeSet::new();
    };
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    let v: Value = serde_json::from_str(&text).unwrap_or_default();
    v["data"]["alerts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|a| a["state"] == "firing")
        .map(|a| {
            (
                a["labels"]["alertname"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                a["labels"]["severity"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            )
        })
        .filter(|(name, _)| !PROMETHEUS_ONLY.contains(&name.as_str()))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .fold(BTreeSet::new(), |mut out, (name, severity)| {
            if severity == "critical" {
                out.remove(&(name.clone(), "warning".to_owned()));
                out.insert((name, severity));
            } else if !out.contains(&(name.clone(), "critical".to_owned())) {
                out.insert((name, severity));
            }
            out
        })
}

#[test]
fn the_same_alerts_fire_in_prometheus_pg15() {
    if !require_root("the_same_alerts_fire_in_prometheus_pg15") {
        return;
    }
    assert!(
        std::path::Path::new(PROMETHEUS).exists(),
        "{PROMETHEUS} is missing (run `cargo xtask setup`)"
    );
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            settings: vec![
                ("archive_mode".into(), "on".into()),
                ("archive_command".into(), "'false'".into()),
            ],
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    cluster
        .psql_admin("CREATE TABLE t AS SELECT generate_series(1, 1000) AS g")
        .expect("table");
    let port = free_port();
    let thresholds: String = SCALED
        .iter()
        .map(|(_, field, w, c)| format!("  {field}: {{warn: {w}, crit: {c}, for_seconds: 0}}\n"))
        .collect();
    let config = format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n{thresholds}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    );
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    let dir = tempfile::tempdir().expect("temp dir");
    let rules = dir.path().join("rules.json");
    std::fs::write(&rules, scaled_rules()).expect("rules");
    let prom_config = dir.path().join("prometheus.yml");
    std::fs::write(
        &prom_config,
        format!(
            "global: {{scrape_interval: 1s, evaluation_interval: 1s}}\n\
             rule_files: ['{}']\n\
             scrape_configs:\n  - job_name: pgmon\n    static_configs: [{{targets: ['127.0.0.1:{port}']}}]\n",
            rules.display()
        ),
    )
    .expect("prometheus.yml");
    let prom_port = free_port();
    let _prometheus = Killed(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", prom_config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus"),
    );

    let started = Instant::now();
    while ureq::get(&format!("http://127.0.0.1:{prom_port}/-/ready"))
        .call()
        .is_err()
    {
        assert!(started.elapsed() < WAIT, "Prometheus never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    // Quiet: only the canary, whose threshold any round trip passes.
    let quiet: BTreeSet<(String, String)> =
        [("PostgresCanarySlow".to_owned(), "warning".to_owned())].into();
    let started = Instant::now();
    loop {
        let (a, p) = (agent_firing(&agent), prometheus_firing(prom_port));
        if a == quiet && p == quiet {
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "quiet: want {quiet:?}\nthe agent fires {a:?}\nPrometheus fires {p:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    // Chaos: a transaction idle while it holds a lock, a session blocked behind it, and a
    // WAL segment that archive_command cannot archive.
    let mut holder = Killed(
        cluster
            .psql_cmd("postgres", "postgres", Transport::Unix)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("psql"),
    );
    holder
        .0
        .stdin
        .as_mut()
        .expect("stdin")
        .write_all(b"BEGIN;\nSELECT txid_current();\nLOCK TABLE t IN ACCESS EXCLUSIVE MODE;\n")
        .expect("write");
    let started = Instant::now();
    while cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pg_locks WHERE relation = 't'::regclass \
             AND mode = 'AccessExclusiveLock' AND granted",
        )
        .expect("pg_locks")
        != "1"
    {
        assert!(started.elapsed() < WAIT, "the lock was never taken");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _blocked =
        Killed(cluster.psql_background("postgres", "postgres", "SELECT count(*) FROM t"));
    cluster
        .psql_admin(
            "CREATE TABLE w AS SELECT generate_series(1, 10000) AS g; SELECT pg_switch_wal()",
        )
        .expect("switch WAL");

    // The long transaction passes its critical threshold (5 s) too.
    let want: BTreeSet<(String, String)> = SCALED
        .iter()
        .map(|(name, ..)| {
            let severity = if *name == "PostgresLongTransaction" {
                "critical"
            } else {
                "warning"
            };
            ((*name).to_owned(), severity.to_owned())
        })
        .collect();
    let started = Instant::now();
    loop {
        let (a, p) = (agent_firing(&agent), prometheus_firing(prom_port));
        if a == want && p == want {
            println!("both fire {want:?} after {:?}", started.elapsed());
            break;
        }
        assert!(
            started.elapsed() < WAIT,
            "want {want:?}\nthe agent fires {a:?}\nPrometheus fires {p:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    drop(holder);
    assert!(!agent.log().contains("panicked"));
}
