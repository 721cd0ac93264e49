//! A restarted agent keeps what took time to learn (issue 19), on a real cluster with the
//! agent attached through its probes:
//! - cost estimates: ten statements costed, the agent SIGKILLed, an index created on one
//!   of their tables while it is down, the agent started again: the nine untouched
//!   estimates are restored, the changed one discarded; after the ten run again with three
//!   new ones, the worker has sent EXPLAIN for the three new and the changed one only (the
//!   server's statement log and `pgmon_cost_estimates_total` agree);
//! - an alert's `for` timer: an idle-in-transaction session makes
//!   `PostgresIdleInTransaction` pending; across the kill and restart it stays pending
//!   from the same instant and fires `for` after it, not `for` after the restart;
//! - `pgmon-agent cost forget` forgets in the cache and in `pgmon.cost_estimates`, with an
//!   audit row.

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, Transport, agent_binary,
    budget::{agent_config, wait_until},
    fingerprint, free_port, require_root,
};

const ROLE: &str = "tenant";
/// The alert's `for`, seconds.
const FOR_SECONDS: u64 = 25;

fn config(cluster: &Cluster, port: u16) -> String {
    agent_config(
        cluster,
        port,
        &format!(
            "budgets:\n  enabled: true\n  mode: observe\n\
             \x20 tiers:\n    big: {{budget: 1.0e15, window_seconds: 60}}\n\
             \x20 roles:\n    - {{match: {ROLE}, tier: big}}\n\
             {FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  \
             idle_in_transaction_seconds: {{warn: 1, crit: 100000, for_seconds: {FOR_SECONDS}}}\n"
        ),
    )
}

/// Table `n`'s name: letters, since libpg_query's fingerprint ignores a relation name's
/// trailing digits from two on (`t10` and `t11` are one statement).
fn table(n: usize) -> String {
    format!("t_{}", (b'a' + n as u8) as char)
}

fn lookup(n: usize) -> String {
    format!("SELECT v FROM {} WHERE k = 7", table(n))
}

/// EXPLAINs the cost worker sent, by the server's statement log (pgmon's sessions all say
/// app=pgmon; the health loops' canary, an EXPLAIN ANALYZE of pg_database, is not the
/// worker's).
fn worker_explains(log: &str) -> usize {
    log.lines()
        .filter(|l| {
            l.contains(" app=pgmon ")
                && (l.contains("statement: EXPLAIN") || l.contains("statement: PREPARE pgmon_cost"))
                && !l.contains("SELECT count(*) FROM pg_catalog.pg_database")
        })
        .count()
}

/// The agent's idle-in-transaction alert as `/api/v1/alerts` shows it, if any.
fn idle_alert(agent: &Agent) -> Option<serde_json::Value> {
    let (_, body) = agent.get("/api/v1/alerts").ok()?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    ["pending", "firing"].iter().find_map(|state| {
        v["data"][state]
            .as_array()?
            .iter()
            .find(|a| a["alertname"] == "PostgresIdleInTransaction")
            .cloned()
    })
}

fn rfc3339_ms(v: &serde_json::Value) -> i64 {
    let s = v.as_str().expect("a timestamp");
    let out = std::process::Command::new("date")
        .args(["-d", s, "+%s%3N"])
        .output()
        .expect("date");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("ms")
}

fn all_costed(agent: &Agent, sqls: &[String]) -> bool {
    let Ok(s) = agent.status_json() else {
        return false;
    };
    let fps: Vec<serde_json::Value> = s["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["role"] == ROLE)
        .flat_map(|r| r["fingerprints"].as_array().cloned().unwrap_or_default())
        .collect();
    sqls.iter().all(|sql| {
        let fp = fingerprint(sql);
        fps.iter()
            .any(|f| f["fingerprint"] == fp.as_str() && f["cost_state"] == "costed")
    })
}

#[test]
fn estimates_and_alert_timers_survive_a_kill() {
    if !require_root("estimates_and_alert_timers_survive_a_kill") {
        return;
    }
    let options = ClusterOptions {
        settings: vec![
            ("autovacuum".into(), "off".into()),
            ("log_statement".into(), "'all'".into()),
            ("log_line_prefix".into(), "'%m [%p] app=%a '".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(PgVersion::Pg15, options).expect("cluster");
    for f in ["sql/001_roles.sql", "sql/002_enforcement.sql"] {
        cluster.run_sql_file("postgres", f).expect(f);
    }
    cluster.create_role_with_db(ROLE).expect("role");
    for f in ["sql/002_enforcement.sql", "sql/003_ddl_notify.sql"] {
        cluster.run_sql_file(ROLE, f).expect(f);
    }
    let run = |sql: &str| cluster.psql(ROLE, ROLE, Transport::Unix, sql).expect(sql);
    for n in 1..=13 {
        let t = table(n);
        run(&format!(
            "CREATE TABLE {t} AS SELECT g AS k, md5(g::text) AS v FROM generate_series(1, 2000) g; \
             ANALYZE {t}"
        ));
    }
    let admin = |sql: &str| {
        cluster
            .psql("postgres", "postgres", Transport::Unix, sql)
            .expect(sql)
            .trim()
            .to_owned()
    };

    let port = free_port();
    let yaml = config(&cluster, port);
    let mut agent = Agent::start(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let first: Vec<String> = (1..=10).map(lookup).collect();
    for sql in &first {
        run(sql);
    }
    wait_until("ten estimates", Duration::from_secs(20), || {
        all_costed(&agent, &first)
    });
    wait_until("ten persisted estimates", Duration::from_secs(10), || {
        admin("SELECT count(*) FROM pgmon.cost_estimates") == "10"
    });

    // An idle-in-transaction session: the alert goes pending.
    let mut idle = cluster
        .hold_session(ROLE, ROLE, Transport::Unix)
        .expect("session");
    idle.run("BEGIN; SELECT 1").expect("begin");
    wait_until("the alert pending", Duration::from_secs(15), || {
        idle_alert(&agent).is_some_and(|a| a["state"] == "pending")
    });
    let active_since = rfc3339_ms(&idle_alert(&agent).expect("alert")["active_since"]);
    wait_until("the alert persisted", Duration::from_secs(10), || {
        admin(
            "SELECT count(*) FROM pgmon.alert_state WHERE dedupe_key LIKE 'PostgresIdleInTransaction%'",
        ) == "1"
    });
    let now_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    // Well into the timer before the kill.
    while now_ms() - active_since < 9_000 {
        thread::sleep(Duration::from_millis(100));
    }

    // Killed; DDL on table 1 while it is down. (The persisted rows are the ten and what the
    // held session itself sent, e.g. `SELECT pg_backend_pid()`.)
    agent.kill().expect("kill");
    let persisted: f64 = admin("SELECT count(*) FROM pgmon.cost_estimates")
        .parse()
        .expect("count");
    run(&format!("CREATE INDEX ON {} (k)", table(1)));
    let log_mark = cluster.log().len();
    let restart_ms = now_ms();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &yaml,
        format!("127.0.0.1:{port}"),
    )
    .expect("agent again");
    let restored =
        |result: &str| agent.metric("pgmon_cost_estimates_restored_total", &[("result", result)]);
    wait_until("estimates restored", Duration::from_secs(20), || {
        restored("kept") + restored("ddl") >= 10.0
    });
    assert_eq!(
        (restored("kept"), restored("ddl")),
        (persisted - 1.0, 1.0),
        "all kept but table 1's, discarded (its index is new); log:\n{}",
        agent.log()
    );

    // The alert is back, pending since the same instant.
    wait_until("the alert restored", Duration::from_secs(10), || {
        idle_alert(&agent).is_some()
    });
    let again = idle_alert(&agent).expect("alert restored");
    assert_eq!(again["state"], "pending", "{again}");
    assert_eq!(rfc3339_ms(&again["active_since"]), active_since);
    assert!(
        restart_ms - active_since >= 8_000,
        "the restart came {} ms into the timer",
        restart_ms - active_since
    );

    // The ten again and three new ones: EXPLAIN for table 1 and the three new only.
    let new: Vec<String> = (11..=13).map(lookup).collect();
    let every: Vec<String> = first.iter().chain(&new).cloned().collect();
    let t = Instant::now();
    for sql in &every {
        run(sql);
    }
    wait_until("thirteen estimates", Duration::from_secs(20), || {
        all_costed(&agent, &every)
    });
    let estimated = agent.metric("pgmon_cost_estimates_total", &[]);
    let explains = worker_explains(&cluster.log()[log_mark..]);
    eprintln!(
        "after the restart: {estimated} estimates, {explains} EXPLAINs for 13 statements ({} new, 1 changed), settled in {:?}",
        new.len(),
        t.elapsed()
    );
    assert_eq!(
        estimated,
        4.0,
        "table 1 (changed) and the three new; status: {}\nlog:\n{}",
        agent
            .status_json()
            .map(|s| s["roles"].to_string())
            .unwrap_or_default(),
        agent.log()
    );
    assert_eq!(explains, 4, "no EXPLAIN storm");

    // The alert fires `for` after it started, not `for` after the restart.
    wait_until(
        "the alert firing",
        Duration::from_secs(FOR_SECONDS + 10),
        || idle_alert(&agent).is_some_and(|a| a["state"] == "firing"),
    );
    let fired = idle_alert(&agent).expect("alert");
    let firing_since = rfc3339_ms(&fired["firing_since"]);
    let held = firing_since - active_since;
    eprintln!(
        "alert: pending at {active_since}, restart at +{} ms, firing at +{held} ms (for {FOR_SECONDS} s)",
        restart_ms - active_since
    );
    assert!(
        (FOR_SECONDS as i64 * 1000..FOR_SECONDS as i64 * 1000 + 3000).contains(&held),
        "fired {held} ms after it started pending"
    );
    idle.close();

    // cost forget: cache and table, with an audit row.
    let fp = fingerprint(&lookup(2));
    let out = std::process::Command::new(agent_binary().expect("binary"))
        .args([
            "cost",
            "forget",
            "--fingerprint",
            &fp,
            "--addr",
            agent.addr(),
        ])
        .output()
        .expect("cost forget");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{said} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("1 estimate(s) forgotten in the cache, 1 persisted row(s) deleted"),
        "{said}"
    );
    assert_eq!(
        admin(&format!(
            "SELECT count(*) FROM pgmon.cost_estimates WHERE fingerprint = x'{fp}'::bigint"
        )),
        "0"
    );
    assert_eq!(
        admin(
            "SELECT count(*) FROM pgmon.audit WHERE source = 'cost' AND action LIKE 'cost forget: fingerprint%'"
        ),
        "1"
    );
    let bad = std::process::Command::new(agent_binary().expect("binary"))
        .args([
            "cost",
            "forget",
            "--fingerprint",
            "nothex",
            "--addr",
            agent.addr(),
        ])
        .output()
        .expect("cost forget");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("16 hex digits"));
}
