//! Privileged tests of the read API (issue 5) on PostgreSQL 15 and 18: real objects are
//! made (a partitioned table with a default partition, a table with dead tuples that
//! autovacuum may not touch, a physical replication slot, pgbench traffic) and each
//! endpoint's content is asserted, with the SQL every answer must carry; an unknown
//! database is a 404, a bad limit a 400, a stopped cluster a 503. Then, with storage quotas
//! on and the agent connected as `pgmon` (not a superuser): `/storage` shows the storage
//! coordinator's usage, limits and state, and every endpoint answers with that role's
//! privileges.

mod storage_util;

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root,
};
use serde_json::Value;

const APP: &str = "app";

/// pgbench's TPC-B update of `pgbench_accounts`, as `pg_stat_statements` normalizes it.
const PGBENCH_UPDATE: &str = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n\
         {SUPERUSER_MONITOR}health:\n  top_n: 7\n  loops:\n    fast: {{interval_seconds: 1, budget_seconds: 1}}\n    \
         medium: {{interval_seconds: 1, budget_seconds: 1}}\n    slow: {{interval_seconds: 5, budget_seconds: 5}}\n    \
         hourly: {{interval_seconds: 5, budget_seconds: 5}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

/// `GET path` → (status, JSON body).
fn get(agent: &Agent, path: &str) -> (u16, Value) {
    let (code, body) = agent
        .get(path)
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
    let v = serde_json::from_str(&body)
        .unwrap_or_else(|e| panic!("GET {path}: HTTP {code}, not JSON ({e}): {body}"));
    (code, v)
}

/// `GET path`, which must answer 200 with the envelope: `sql` names every statement with
/// its text, `data` is an object.
fn ok(agent: &Agent, path: &str) -> Value {
    let (code, v) = get(agent, path);
    assert_eq!(code, 200, "GET {path}: {v:#}");
    assert_eq!(v["endpoint"], path.split('?').next().unwrap(), "{v:#}");
    let sql = v["sql"]
        .as_array()
        .unwrap_or_else(|| panic!("no sql: {v:#}"));
    assert!(!sql.is_empty(), "GET {path}: empty sql");
    for s in sql {
        assert!(
            s["name"].as_str().is_some_and(|n| !n.is_empty())
                && s["by"].as_str().is_some()
                // Reads only: SELECT, or the canary's EXPLAIN ANALYZE of a SELECT.
                && s["text"].as_str().is_some_and(|t| {
                    let t = t.trim_start();
                    t.starts_with("SELECT") || t.starts_with("EXPLAIN (ANALYZE, BUFFERS) SELECT")
                }),
            "GET {path}: bad sql entry {s:#}"
        );
    }
    assert!(v["data"].is_object(), "GET {path}: {v:#}");
    assert!(v["generated_at"].as_str().is_some_and(|t| t.ends_with('Z')));
    v
}

fn sql_names(v: &Value) -> Vec<&str> {
    v["sql"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect()
}

fn find<'a>(list: &'a Value, key: &str, value: &str) -> Option<&'a Value> {
    list.as_array()?.iter().find(|x| x[key] == value)
}

/// Polls `path` until `check` finds what it wants (statistics reach the views within a
/// second or so); returns that answer.
fn wait_for(agent: &Agent, path: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    let t = Instant::now();
    loop {
        let v = ok(agent, path);
        if check(&v) {
            return v;
        }
        if t.elapsed() > Duration::from_secs(20) {
            panic!("{what}: not in GET {path} after 20 s: {v:#}");
        }
        thread::sleep(Duration::from_millis(300));
    }
}

fn prepare(cluster: &Cluster) {
    cluster.create_role_with_db(APP).expect("role");
    cluster
        .psql(
            APP,
            APP,
            Transport::Unix,
            "CREATE TABLE m (d date NOT NULL, v int) PARTITION BY RANGE (d); \
             CREATE TABLE m_2024 PARTITION OF m FOR VALUES FROM ('2024-01-01') TO ('2025-01-01'); \
             CREATE TABLE m_2025 PARTITION OF m FOR VALUES FROM ('2025-01-01') TO ('2026-01-01'); \
             CREATE TABLE m_2026 PARTITION OF m FOR VALUES FROM ('2026-01-01') TO ('2027-01-01'); \
             CREATE TABLE m_other PARTITION OF m DEFAULT; \
             INSERT INTO m SELECT date '2024-01-01' + g % 1000, g FROM generate_series(1, 3000) g; \
             CREATE TABLE dead (id int PRIMARY KEY, v text) WITH (autovacuum_enabled = false); \
             INSERT INTO dead SELECT g, md5(g::text) FROM generate_series(1, 10000) g; \
             DELETE FROM dead WHERE id % 2 = 0",
        )
        .expect("objects");
    cluster.pgbench_init(APP, APP, 1).expect("pgbench -i");
    cluster
        .psql_admin("SELECT pg_create_physical_replication_slot('api_test', true)")
        .expect("slot");
}

fn api(version: PgVersion) {
    let mut cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    prepare(&cluster);
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    let run = PgbenchRun {
        clients: 2,
        transactions: Some(200),
        ..PgbenchRun::new(APP, APP)
    };
    let tx = cluster
        .pgbench(&run)
        .expect("pgbench")
        .transactions_processed;
    assert_eq!(tx, 400);

    // Overview: the cluster's settings, the app database's transactions, the loops.
    let v = wait_for(&agent, "/api/v1/overview", "loops and transactions", |v| {
        v["data"]["health_loops"]["medium"]["success"] == true
            && find(&v["data"]["databases"], "datname", APP)
                .is_some_and(|d| d["transactions_per_second"].is_number())
    });
    let d = &v["data"];
    assert_eq!(
        d["connections"]["settings"]["max_connections"], 200.0,
        "{d:#}"
    );
    assert!(d["connections"]["client_backends"].as_f64().unwrap() >= 1.0);
    assert_eq!(
        d["server_version_num"].as_u64().unwrap() / 10_000,
        u64::from(version.major())
    );
    let app = find(&d["databases"], "datname", APP).unwrap();
    assert!(app["xact_commit"].as_f64().unwrap() >= 400.0, "{app}");
    assert_eq!(d["wal"]["in_recovery"], false);
    assert_eq!(d["locks"]["blocked_sessions"], 0);
    for name in ["activity", "settings", "checkpoints", "transactions", "wal"] {
        assert!(sql_names(&v).contains(&name), "{name}: {:?}", sql_names(&v));
    }
    assert!(v.get("database").is_none(), "cluster-wide: no database");
    let tps = find(&v["sql"], "name", "transactions_per_second").unwrap();
    assert_eq!(tps["by"], "health loop medium");
    let v = ok(&agent, "/api/v1/overview?limit=1");
    assert_eq!(v["data"]["databases"].as_array().unwrap().len(), 1);
    assert_eq!(
        v["data"]["databases_total"], 4,
        "postgres, app, template0, template1"
    );

    // Autovacuum in app: the table whose dead tuples autovacuum may not remove.
    let v = wait_for(
        &agent,
        "/api/v1/autovacuum?database=app",
        "dead tuples",
        |v| {
            find(&v["data"]["tables"], "relation", "public.dead")
                .is_some_and(|t| t["n_dead_tup"] == 5000)
        },
    );
    assert_eq!(v["database"], APP);
    let t = find(&v["data"]["tables"], "relation", "public.dead").unwrap();
    assert_eq!(t["n_live_tup"], 5000, "{t}");
    assert!(
        (t["dead_ratio"].as_f64().unwrap() - 0.5).abs() < 1e-9,
        "{t}"
    );
    assert!(
        t["reloptions"]
            .as_array()
            .unwrap()
            .contains(&"autovacuum_enabled=false".into()),
        "{t}"
    );
    assert!(t["autovacuum_threshold"].as_f64().unwrap() >= 50.0, "{t}");
    assert!(find(&v["data"]["settings"], "name", "autovacuum").is_some());
    assert!(v["data"]["freshness"]["never_analyzed_tables"].is_number());
    let tables_sql = find(&v["sql"], "name", "tables").unwrap();
    assert_eq!(tables_sql["database"], APP);
    // Without ?database: the monitor connection's (postgres), where no such table is.
    let v = ok(&agent, "/api/v1/autovacuum?limit=3");
    assert_eq!(v["database"], "postgres");
    assert!(find(&v["data"]["tables"], "relation", "public.dead").is_none());
    assert!(v["data"]["tables"].as_array().unwrap().len() <= 3);

    // Partitions.
    let v = ok(&agent, "/api/v1/partitions?database=app");
    let m = find(&v["data"]["partitioned_tables"], "parent", "public.m")
        .unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(m["partitions"], 4.0, "{m:#}");
    assert_eq!(m["has_default"], true, "{m:#}");
    assert_eq!(m["partition_key"], "RANGE (d)", "{m:#}");
    assert!(m["total_bytes"].as_f64().unwrap() > 0.0, "{m:#}");
    let children = m["children"].as_array().unwrap();
    assert_eq!(children.len(), 4);
    let y2025 = find(&m["children"], "partition", "public.m_2025").unwrap();
    assert_eq!(
        y2025["bound"],
        "FOR VALUES FROM ('2025-01-01') TO ('2026-01-01')"
    );
    assert_eq!(
        find(&m["children"], "partition", "public.m_other").unwrap()["bound"],
        "DEFAULT"
    );
    let v = ok(&agent, "/api/v1/partitions?database=app&limit=2");
    let m = find(&v["data"]["partitioned_tables"], "parent", "public.m").unwrap();
    assert_eq!(
        (m["partitions"].as_f64(), m["listed"].as_u64()),
        (Some(4.0), Some(2))
    );

    // Top queries: pgbench's update seen by both sides, 400 times each.
    let fp = pgmon_tests::fingerprint(PGBENCH_UPDATE);
    // (pgbench -i's COPY and ALTER TABLE may take more time than the updates: look at 50.)
    let v = wait_for(
        &agent,
        "/api/v1/top-queries?limit=50",
        "pgbench update",
        |v| {
            find(&v["data"]["statements"], "fingerprint", &fp)
                .is_some_and(|s| s["pgmon"]["calls"] == 400)
        },
    );
    let s = find(&v["data"]["statements"], "fingerprint", &fp).unwrap();
    assert_eq!(s["seen_by"], "both", "{s:#}");
    assert_eq!(s["pg_stat_statements"]["calls"], 400, "{s:#}");
    assert_eq!(s["pg_stat_statements"]["query"], PGBENCH_UPDATE);
    assert_eq!(s["pgmon"]["normalized"], PGBENCH_UPDATE);
    assert!(s["pgmon"]["mean_ms"].as_f64().unwrap() > 0.0);
    assert!(s["pg_stat_statements"]["mean_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(s["pgmon"]["roles"], serde_json::json!([APP]));
    assert_eq!(v["data"]["pg_stat_statements"]["available"], true);
    assert_eq!(v["data"]["pgmon"]["available"], true);
    assert!(
        find(&v["data"]["statements"], "seen_by", "pg_stat_statements").is_some(),
        "pgmon's own statements are in pg_stat_statements only: {v:#}"
    );
    assert!(sql_names(&v).contains(&"statements"));
    let v = ok(&agent, "/api/v1/top-queries");
    assert_eq!(
        v["data"]["statements"].as_array().unwrap().len(),
        7,
        "health.top_n is the default limit"
    );
    let v = ok(&agent, "/api/v1/top-queries?limit=2");
    assert_eq!(v["data"]["statements"].as_array().unwrap().len(), 2);

    // Storage (quotas off): the live per-role count, database sizes, app's relations.
    let v = ok(&agent, "/api/v1/storage?database=app");
    assert_eq!(v["data"]["source"], "live");
    let role = find(&v["data"]["roles"], "role", APP).unwrap_or_else(|| panic!("{v:#}"));
    assert!(role["usage_bytes"].as_u64().unwrap() > 10_000_000, "{role}");
    assert!(find(&v["data"]["databases"], "datname", APP).is_some());
    let accounts = find(
        &v["data"]["relations"],
        "relation",
        "public.pgbench_accounts",
    )
    .unwrap_or_else(|| panic!("{v:#}"));
    assert!(accounts["bytes"].as_f64().unwrap() > 10.0e6);
    assert!(sql_names(&v).contains(&"usage_by_owner"));

    // Replication: a primary, no standby, the slot.
    let v = ok(&agent, "/api/v1/replication");
    assert_eq!(v["data"]["wal"]["in_recovery"], false);
    assert_eq!(v["data"]["standbys"], serde_json::json!([]));
    let slot =
        find(&v["data"]["slots"], "slot_name", "api_test").unwrap_or_else(|| panic!("{v:#}"));
    assert_eq!(slot["slot_type"], "physical");
    assert_eq!(slot["active"], false);
    assert!(
        slot["retained_wal_bytes"].as_f64().unwrap() >= 0.0,
        "{slot}"
    );

    // Errors: unknown database (404), bad limit and unknown parameter (400).
    let (code, v) = get(&agent, "/api/v1/partitions?database=nope");
    assert_eq!(code, 404, "{v:#}");
    assert!(v["error"].as_str().unwrap().contains("\"nope\""), "{v:#}");
    let (code, v) = get(&agent, "/api/v1/autovacuum?database=template0");
    assert_eq!(code, 404, "template0 refuses connections: {v:#}");
    let (code, v) = get(&agent, "/api/v1/top-queries?limit=0");
    assert_eq!(code, 400, "{v:#}");
    let (code, _) = get(&agent, "/api/v1/overview?databse=app");
    assert_eq!(code, 400);

    // The cluster gone: 503 with the error; back: answers again (a new session).
    cluster.stop().expect("stop");
    let (code, v) = get(&agent, "/api/v1/overview");
    assert_eq!(code, 503, "{v:#}");
    assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v:#}");
    cluster.restart().expect("restart");
    wait_for(
        &agent,
        "/api/v1/replication",
        "answers after a restart",
        |_| true,
    );
    assert!(!agent.log().contains("panicked"));
}

/// Storage quotas on, the agent as `pgmon`.
fn as_pgmon_with_quotas(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    storage_util::install(&cluster, "postgres", &pgmon_tests::STORAGE_MONITOR_SQL);
    storage_util::role(&cluster, "tenant", "");
    storage_util::database(&cluster, "tenants");
    storage_util::sql(
        &cluster,
        "tenant",
        "tenants",
        "CREATE TABLE t (id int PRIMARY KEY, v text) PARTITION BY RANGE (id); \
         CREATE TABLE t1 PARTITION OF t FOR VALUES FROM (0) TO (100000); \
         INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    );
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &storage_util::config(
            &cluster,
            port,
            "    - {match: tenant, soft_limit: 1MB, hard_limit: 1GB}\n",
        ),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    // Counted, and judged: a role's state moves only once the first full recount is done
    // (its usage can show a moment before).
    let v = wait_for(
        &agent,
        "/api/v1/storage",
        "tenant counted and judged",
        |v| {
            find(&v["data"]["roles"], "role", "tenant")
                .is_some_and(|r| r["usage_bytes"].is_u64() && r["state"] == "soft")
        },
    );
    assert_eq!(v["data"]["source"], "storage coordinator");
    let t = find(&v["data"]["roles"], "role", "tenant").unwrap();
    let server = storage_util::server_usage(&cluster, "tenants", "tenant");
    assert_eq!(t["usage_bytes"], server, "{t:#}");
    assert_eq!(t["soft_limit_bytes"], 1 << 20, "{t:#}");
    assert_eq!(t["hard_limit_bytes"], 1u64 << 30, "{t:#}");
    assert_eq!(t["state"], "soft", "{t:#}");
    assert!(v["data"]["quotas"]["databases"].is_array(), "{v:#}");
    let usage = find(&v["sql"], "name", "usage_by_owner").unwrap();
    assert_eq!(usage["by"], "storage coordinator");
    // Everything else answers with pgmon's privileges.
    for path in [
        "/api/v1/overview",
        "/api/v1/autovacuum?database=tenants",
        "/api/v1/top-queries",
        "/api/v1/replication",
    ] {
        ok(&agent, path);
    }
    let v = ok(&agent, "/api/v1/partitions?database=tenants");
    let t = find(&v["data"]["partitioned_tables"], "parent", "public.t").unwrap();
    assert!(t["total_bytes"].as_f64().unwrap() > 1.0e6, "{t:#}");
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn api_quotas_pg15() {
    if require_root("api_quotas_pg15") {
        as_pgmon_with_quotas(PgVersion::Pg15);
    }
}

#[test]
fn api_quotas_pg18() {
    if require_root("api_quotas_pg18") {
        as_pgmon_with_quotas(PgVersion::Pg18);
    }
}

#[test]
fn api_pg15() {
    if require_root("api_pg15") {
        api(PgVersion::Pg15);
    }
}

#[test]
fn api_pg18() {
    if require_root("api_pg18") {
        api(PgVersion::Pg18);
    }
}
