//! Privileged tests of query-cost budgets: the cost worker's estimate equals the server's
//! generic plan, a heavy role climbs the ladder (audit rows prove each step) while a light
//! role beside it is untouched, and once the window passes every step is undone and the
//! role's original LOGIN and connection limit are back. Real kernel, agent and clusters.

use std::{
    path::Path,
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, free_port, require_root,
};

const HEAVY_SQL: &str = "SELECT count(*) FROM big WHERE g > 5";

fn install_sql(cluster: &Cluster) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for file in ["sql/001_roles.sql", "sql/002_enforcement.sql"] {
        let mut cmd = cluster.psql_cmd("postgres", "postgres", Transport::Unix);
        let out = cmd.arg("-f").arg(root.join(file)).output().expect("psql");
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn config(cluster: &Cluster, port: u16, mode: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         metrics:\n  listen: 127.0.0.1:{port}\n\
         budgets:\n  enabled: true\n  mode: {mode}\n\
         \x20 tiers:\n    free: {{budget: 20000, window_seconds: 20}}\n\
         \x20 roles:\n    - {{match: 'heavy*', tier: free}}\n    - {{match: light, tier: free}}\n\
         \x20 exempt: [boss]\n\
         \x20 ladder:\n    - {{at: 0.5, action: warn}}\n    - {{at: 1.0, action: connection_limit, limit: 2}}\n\
         \x20   - {{at: 2.0, action: lock}}\n",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// The generic-plan cost of [`HEAVY_SQL`] as the server computes it, asked as `heavy`.
fn server_generic_cost(cluster: &Cluster, version: PgVersion) -> f64 {
    let normalized = HEAVY_SQL.replace('5', "$1");
    let sql = if version == PgVersion::Pg15 {
        format!(
            "SET plan_cache_mode = force_generic_plan; PREPARE p AS {normalized}; \
             EXPLAIN (FORMAT JSON) EXECUTE p(NULL)"
        )
    } else {
        format!("EXPLAIN (GENERIC_PLAN, FORMAT JSON) {normalized}")
    };
    let json = cluster
        .psql("heavy", "heavy", Transport::Unix, &sql)
        .expect("explain");
    let v: serde_json::Value = serde_json::from_str(json.trim()).expect("json");
    v[0]["Plan"]["Total Cost"].as_f64().expect("Total Cost")
}

fn budget(agent: &Agent, role: &str) -> Option<serde_json::Value> {
    let s = agent.status_json().ok()?;
    s["budgets"]
        .as_array()?
        .iter()
        .find(|b| b["role"] == role)
        .cloned()
}

fn wait_until(what: &str, within: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while t.elapsed() < within {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out after {within:?} waiting for {what}");
}

fn audit(cluster: &Cluster, role: &str) -> Vec<String> {
    cluster
        .psql_admin(&format!(
            "SELECT action || ':' || split_part(result, ':', 1) FROM pgmon.audit \
             WHERE role = '{role}' ORDER BY id"
        ))
        .expect("audit")
        .lines()
        .map(str::to_owned)
        .collect()
}

fn role_flags(cluster: &Cluster, role: &str) -> String {
    cluster
        .query_value(
            "postgres",
            "postgres",
            &format!(
                "SELECT rolcanlogin || ',' || rolconnlimit FROM pg_roles WHERE rolname = '{role}'"
            ),
        )
        .expect("pg_roles")
}

fn ladder(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    for role in ["heavy", "light"] {
        cluster.create_role_with_db(role).expect("role");
    }
    cluster
        .psql(
            "heavy",
            "heavy",
            Transport::Unix,
            "CREATE TABLE big AS SELECT generate_series(1, 100000) AS g; ANALYZE big",
        )
        .expect("table");
    cluster
        .psql_admin("ALTER ROLE heavy CONNECTION LIMIT 7")
        .expect("limit");
    let expected = server_generic_cost(&cluster, version);
    assert!(expected > 1000.0, "seq scan cost {expected}");

    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "enforce"),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // One execution: charged the default, then corrected to the server's estimate.
    cluster
        .psql("heavy", "heavy", Transport::Unix, HEAVY_SQL)
        .expect("query");
    wait_until("the estimate", Duration::from_secs(10), || {
        budget(&agent, "heavy")
            .is_some_and(|b| (b["spend"].as_f64().unwrap_or(0.0) - expected).abs() < 1e-6)
    });
    cluster
        .psql("light", "light", Transport::Unix, "SELECT 1")
        .expect("light");

    // Keep running until the role is locked (its sessions are refused).
    let started = Instant::now();
    loop {
        let r = cluster.psql("heavy", "heavy", Transport::Unix, HEAVY_SQL);
        if r.is_err() && role_flags(&cluster, "heavy").starts_with("false") {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never locked: {:?}",
            audit(&cluster, "heavy")
        );
    }
    assert_eq!(
        audit(&cluster, "heavy"),
        ["warn:logged", "connection_limit:applied", "lock:applied"],
        "one audit row per step, in order"
    );
    assert!(audit(&cluster, "light").is_empty());
    assert_eq!(role_flags(&cluster, "light"), "true,-1");
    let st = budget(&agent, "heavy").expect("heavy budget");
    assert_eq!(st["step"], "lock", "{st}");

    // The window (20 s) passes: the lock is undone and the original settings are back.
    wait_until("the restore", Duration::from_secs(40), || {
        role_flags(&cluster, "heavy") == "true,7"
    });
    let rows = audit(&cluster, "heavy");
    assert_eq!(
        rows.last().map(String::as_str),
        Some("restore:applied"),
        "{rows:?}"
    );
    let n = cluster
        .query_value(
            "postgres",
            "postgres",
            "SELECT count(*) FROM pgmon.role_original",
        )
        .expect("originals");
    assert_eq!(n, "0", "nothing left to restore");
    let log = agent.log();
    assert!(log.contains("budget step"), "{log}");
    assert!(!log.contains("panicked"), "{log}");
}

#[test]
fn budgets_pg15() {
    if require_root("budgets_pg15") {
        ladder(PgVersion::Pg15);
    }
}

#[test]
fn budgets_pg18() {
    if require_root("budgets_pg18") {
        ladder(PgVersion::Pg18);
    }
}
