//! The shipped Prometheus alerting rules (`alerts/pgmon-rules.yml`) pass `promtool check
//! rules`; a live scrape of the agent (health loops, budgets and storage on, after a
//! policy reload, PostgreSQL 15 and 18) passes `promtool check metrics`, and every metric
//! a rule uses, and every metric a panel or variable of the Grafana dashboard
//! (`dashboards/pgmon.json`) queries, is in it.

use std::{
    collections::BTreeSet,
    io::Write as _,
    path::PathBuf,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PROMTOOL, PgVersion, Transport, agent_binary,
    budget::{agent_config, install_sql},
    free_port, require_root,
};

fn rules_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../alerts/pgmon-rules.yml")
}

fn promtool(args: &[&str], stdin: Option<&str>) -> (bool, String) {
    let mut child = Command::new(PROMTOOL)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{PROMTOOL}: {e} (run `cargo xtask setup`)"));
    if let Some(text) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(text.as_bytes())
            .expect("write");
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().expect("promtool");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// Every `pg_…` / `pgmon_…` name in the rules file.
fn metrics_in_rules() -> BTreeSet<String> {
    let text = std::fs::read_to_string(rules_file()).expect("rules file");
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("pg_") || t.starts_with("pgmon_"))
        .map(str::to_owned)
        .collect()
}

fn dashboard_file() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../dashboards/pgmon.json")
}

/// Every metric name in the dashboard's queries (panel targets' `expr`, variables'
/// `query` and `definition`).
fn metrics_in_dashboard() -> BTreeSet<String> {
    fn walk(v: &serde_json::Value, out: &mut BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    if let (true, Some(q)) = (
                        ["expr", "query", "definition"].contains(&k.as_str()),
                        v.as_str(),
                    ) {
                        out.extend(
                            q.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                                .filter(|t| {
                                    t.starts_with("pg_")
                                        || t.starts_with("pgmon_")
                                        || t.starts_with("process_")
                                })
                                .map(str::to_owned),
                        );
                    }
                    walk(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let text = std::fs::read_to_string(dashboard_file()).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    let mut out = BTreeSet::new();
    walk(&json, &mut out);
    out
}

#[test]
fn promtool_accepts_the_rules() {
    let path = rules_file();
    let (ok, out) = promtool(&["check", "rules", path.to_str().expect("utf-8")], None);
    assert!(ok, "{out}");
    assert!(out.contains("SUCCESS"), "{out}");
    assert!(metrics_in_rules().len() > 15, "{:?}", metrics_in_rules());
}

fn live_scrape(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    cluster.create_role_with_db("tenant").expect("role");
    let port = free_port();
    let config = agent_config(
        &cluster,
        port,
        "budgets:\n  enabled: true\n  mode: observe\n  tiers:\n    t: {budget: 1000, window_seconds: 60}\n  \
         default_tier: t\nhealth:\n  loops:\n    fast: {interval_seconds: 1, budget_seconds: 1}\n    \
         medium: {interval_seconds: 1, budget_seconds: 1}\n    slow: {interval_seconds: 1, budget_seconds: 1}\n    \
         hourly: {interval_seconds: 1, budget_seconds: 1}\n\
         storage:\n  enabled: true\n  dry_run: true\n  recount_interval_seconds: 1\n  \
         default_limits: {soft_limit: 8kB, hard_limit: 16kB}\n  hard_grace_period: 1\n",
    );
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    cluster
        .psql(
            "tenant",
            "tenant",
            Transport::Unix,
            "CREATE TABLE t AS SELECT generate_series(1, 10000) AS g",
        )
        .expect("query");
    // An error, so the error family has a series.
    assert!(
        cluster
            .psql("tenant", "tenant", Transport::Unix, "SELECT 1/0")
            .is_err()
    );
    // A reload, so its counters are in the scrape too.
    // SAFETY: kill(2) on the agent we started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
    let t = Instant::now();
    let scrape = loop {
        let (_, text) = agent.get("/metrics").expect("scrape");
        let ready = ["fast", "medium", "slow", "hourly"]
            .iter()
            .all(|l| text.contains(&format!("pgmon_last_scrape_success{{loop=\"{l}\"}} 1")))
            && text.contains("pgmon_role_budget_utilisation{")
            && text.contains("pgmon_role_storage_state{")
            && text.contains("pgmon_storage_actions_total{")
            && text.contains("pgmon_enforcement_actions_total{")
            && text.contains("pgmon_config_reloads_total{")
            && text.contains("pgmon_query_errors_total{");
        if ready {
            break text;
        }
        assert!(t.elapsed() < Duration::from_secs(20), "{text}");
        thread::sleep(Duration::from_millis(200));
    };
    let (ok, out) = promtool(&["check", "metrics"], Some(&scrape));
    assert!(ok, "promtool check metrics:\n{out}");
    let missing: Vec<String> = metrics_in_rules()
        .into_iter()
        .filter(|m| !scrape.contains(&format!("# TYPE {m} ")))
        .collect();
    assert!(
        missing.is_empty(),
        "used by alerts/pgmon-rules.yml, absent from a live scrape: {missing:?}"
    );
    let in_dashboard = metrics_in_dashboard();
    assert!(in_dashboard.len() > 40, "{in_dashboard:?}");
    let missing: Vec<&String> = in_dashboard
        .iter()
        .filter(|m| {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| m.strip_suffix(s))
                .unwrap_or(m);
            !scrape.contains(&format!("# TYPE {m} "))
                && !scrape.contains(&format!("# TYPE {base} histogram"))
        })
        .collect();
    assert!(
        missing.is_empty(),
        "queried by dashboards/pgmon.json, absent from a live scrape: {missing:?}"
    );
}

#[test]
fn live_scrape_pg15() {
    if require_root("live_scrape_pg15") {
        live_scrape(PgVersion::Pg15);
    }
}

#[test]
fn live_scrape_pg18() {
    if require_root("live_scrape_pg18") {
        live_scrape(PgVersion::Pg18);
    }
}
