//! Privileged tests of the cost worker against real clusters (PostgreSQL 15 and 18), with
//! the agent attached through its kernel probes:
//! - the pgbench statements and a TPC-H-like set (typed literals, an ambiguous parameter)
//!   are costed, and each cached cost equals the server's own generic plan;
//! - a utility statement, alone or inside a multi-statement `Q`, never reaches EXPLAIN
//!   (the server's statement log proves it);
//! - a table the role may not read is not costed (the worker plans as that role);
//! - DDL on a table (a new index) makes the worker forget and redo its estimate
//!   (`sql/003_ddl_notify.sql`'s event trigger and LISTEN).

use std::{
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, Transport, agent_binary, budget::agent_config,
    fingerprint, free_port, metrics, require_root,
};

const ROLE: &str = "tenant";

/// A statement as the tenant sends it, and its generic form: the agent's normalized text
/// with typed literals written as casts, which the server can plan as-is.
struct Case {
    sql: &'static str,
    generic: &'static str,
    params: usize,
}

const CASES: &[Case] = &[
    // pgbench's TPC-B-like script (`pgbench --show-script=tpcb-like`).
    Case {
        sql: "SELECT abalance FROM pgbench_accounts WHERE aid = 4242",
        generic: "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
        params: 1,
    },
    Case {
        sql: "UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid = 4242",
        generic: "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
        params: 2,
    },
    Case {
        sql: "UPDATE pgbench_tellers SET tbalance = tbalance + 7 WHERE tid = 3",
        generic: "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
        params: 2,
    },
    Case {
        sql: "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
              VALUES (3, 1, 4242, 7, CURRENT_TIMESTAMP)",
        generic: "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) \
                  VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
        params: 4,
    },
    // TPC-H-like: Q1 (date and interval literals).
    Case {
        sql: "SELECT l_returnflag, l_linestatus, sum(l_quantity), \
              sum(l_extendedprice * (1 - l_discount)), avg(l_discount), count(*) \
              FROM lineitem WHERE l_shipdate <= date '1998-12-01' - interval '90' day \
              GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
        generic: "SELECT l_returnflag, l_linestatus, sum(l_quantity), \
                  sum(l_extendedprice * ($1 - l_discount)), avg(l_discount), count(*) \
                  FROM lineitem WHERE l_shipdate <= $2::date - $3::interval \
                  GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
        params: 3,
    },
    // Q3: a three-way join with a LIMIT.
    Case {
        sql: "SELECT o_orderkey, sum(l_extendedprice * (1 - l_discount)) AS revenue, o_orderdate \
              FROM customer, orders, lineitem WHERE c_mktsegment = 'BUILDING' \
              AND c_custkey = o_custkey AND l_orderkey = o_orderkey \
              AND o_orderdate < date '1995-03-15' AND l_shipdate > date '1995-03-15' \
              GROUP BY o_orderkey, o_orderdate ORDER BY revenue DESC, o_orderdate LIMIT 10",
        generic: "SELECT o_orderkey, sum(l_extendedprice * ($1 - l_discount)) AS revenue, \
                  o_orderdate FROM customer, orders, lineitem WHERE c_mktsegment = $2 \
                  AND c_custkey = o_custkey AND l_orderkey = o_orderkey \
                  AND o_orderdate < $3::date AND l_shipdate > $4::date \
                  GROUP BY o_orderkey, o_orderdate ORDER BY revenue DESC, o_orderdate LIMIT $5",
        params: 5,
    },
    // Q5: five tables, a date range built with an interval.
    Case {
        sql: "SELECT n_name, sum(l_extendedprice * (1 - l_discount)) AS revenue \
              FROM customer, orders, lineitem, nation, region \
              WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
              AND c_nationkey = n_nationkey AND n_regionkey = r_regionkey AND r_name = 'ASIA' \
              AND o_orderdate >= date '1994-01-01' \
              AND o_orderdate < date '1994-01-01' + interval '1' year \
              GROUP BY n_name ORDER BY revenue DESC",
        generic: "SELECT n_name, sum(l_extendedprice * ($1 - l_discount)) AS revenue \
                  FROM customer, orders, lineitem, nation, region \
                  WHERE c_custkey = o_custkey AND l_orderkey = o_orderkey \
                  AND c_nationkey = n_nationkey AND n_regionkey = r_regionkey AND r_name = $2 \
                  AND o_orderdate >= $3::date AND o_orderdate < $4::date + $5::interval \
                  GROUP BY n_name ORDER BY revenue DESC",
        params: 5,
    },
    // Q6: ranges and BETWEEN.
    Case {
        sql: "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
              WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1995-01-01' \
              AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
        generic: "SELECT sum(l_extendedprice * l_discount) AS revenue FROM lineitem \
                  WHERE l_shipdate >= $1::date AND l_shipdate < $2::date \
                  AND l_discount BETWEEN $3 AND $4 AND l_quantity < $5",
        params: 5,
    },
    // An ambiguous parameter: `SELECT $1` has no type until declared `text`.
    Case {
        sql: "SELECT 'hello'",
        generic: "SELECT $1::text",
        params: 1,
    },
];

/// A small TPC-H-like schema (TPC-H specification 2.18, section 1.4), filled by
/// generate_series, with primary keys and fresh statistics.
const TPCH: &str = "
CREATE TABLE region (r_regionkey int PRIMARY KEY, r_name text);
CREATE TABLE nation (n_nationkey int PRIMARY KEY, n_name text, n_regionkey int);
CREATE TABLE customer (c_custkey int PRIMARY KEY, c_name text, c_nationkey int,
                       c_mktsegment text, c_acctbal numeric);
CREATE TABLE orders (o_orderkey int PRIMARY KEY, o_custkey int, o_orderdate date,
                     o_totalprice numeric, o_shippriority int);
CREATE TABLE lineitem (l_orderkey int, l_linenumber int, l_quantity numeric,
                       l_extendedprice numeric, l_discount numeric, l_tax numeric,
                       l_returnflag char(1), l_linestatus char(1), l_shipdate date,
                       PRIMARY KEY (l_orderkey, l_linenumber));
INSERT INTO region SELECT g, (ARRAY['AFRICA','AMERICA','ASIA','EUROPE','MIDDLE EAST'])[g + 1]
  FROM generate_series(0, 4) g;
INSERT INTO nation SELECT g, 'NATION' || g, g % 5 FROM generate_series(0, 24) g;
INSERT INTO customer SELECT g, 'Customer#' || g, g % 25,
  (ARRAY['AUTOMOBILE','BUILDING','FURNITURE','HOUSEHOLD','MACHINERY'])[g % 5 + 1], g % 10000
  FROM generate_series(1, 3000) g;
INSERT INTO orders SELECT g, g % 3000 + 1, date '1992-01-01' + (g % 2400), g * 1.5, 0
  FROM generate_series(1, 30000) g;
INSERT INTO lineitem SELECT o, n, n * 3, n * 1000.5, (n % 10) / 100.0, 0.02,
  (ARRAY['A','N','R'])[o % 3 + 1], (ARRAY['F','O'])[n % 2 + 1], date '1992-01-02' + (o % 2500)
  FROM generate_series(1, 30000) o, generate_series(1, 4) n;
ANALYZE;
";

fn install_sql(cluster: &Cluster, db: &str, files: &[&str]) {
    for file in files {
        cluster
            .run_sql_file(db, file)
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
}

fn config(cluster: &Cluster, port: u16) -> String {
    agent_config(
        cluster,
        port,
        &format!(
            "budgets:\n  enabled: true\n  mode: observe\n\
             \x20 tiers:\n    big: {{budget: 1.0e15, window_seconds: 60}}\n\
             \x20 roles:\n    - {{match: {ROLE}, tier: big}}\n"
        ),
    )
}

/// The agent's view of one of the tenant's fingerprints, once it is no longer pending.
fn settled(agent: &Agent, sql: &str) -> serde_json::Value {
    let fp = fingerprint(sql);
    let t = Instant::now();
    loop {
        if let Ok(s) = agent.status_json()
            && let Some(f) = s["roles"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|r| r["role"] == ROLE)
                .flat_map(|r| r["fingerprints"].as_array().into_iter().flatten())
                .find(|f| f["fingerprint"] == fp.as_str())
            && f["cost_state"] != "pending"
        {
            return f.clone();
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "{sql}: no settled cost after 15 s; agent log:\n{}",
            agent.log()
        );
        thread::sleep(Duration::from_millis(100));
    }
}

/// Runs `sql` as the tenant; errors (a permission test) are the caller's to expect.
fn run(cluster: &Cluster, sql: &str) -> anyhow::Result<String> {
    cluster.psql(ROLE, ROLE, Transport::Unix, sql)
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-9 * a.abs().max(1.0)
}

/// The server log's statements sent by the cost worker (`application_name = pgmon`), one
/// entry per statement with its continuation lines.
fn worker_statements(cluster: &Cluster) -> Vec<String> {
    let mut entries: Vec<String> = Vec::new();
    for line in cluster.log().lines() {
        if line.starts_with("20") {
            entries.push(line.to_owned());
        } else if let Some(e) = entries.last_mut() {
            e.push('\n');
            e.push_str(line);
        }
    }
    // pgmon's sessions all say app=pgmon; the health loops' canary (a tiny EXPLAIN ANALYZE
    // of pg_database) is theirs, not the cost worker's.
    entries.retain(|e| {
        e.contains(" app=pgmon ")
            && e.contains("statement: ")
            && !e.ends_with(&format!("statement: {CANARY_EXPLAIN}"))
    });
    entries
}

/// The health loops' canary statement (pgmon-agent/src/health/fast.rs).
const CANARY_EXPLAIN: &str =
    "EXPLAIN (ANALYZE, BUFFERS) SELECT count(*) FROM pg_catalog.pg_database";

fn costs(version: PgVersion) {
    let options = ClusterOptions {
        settings: vec![
            ("autovacuum".into(), "off".into()),
            ("log_statement".into(), "'all'".into()),
            ("log_line_prefix".into(), "'%m [%p] app=%a '".into()),
        ],
        ..ClusterOptions::default()
    };
    let cluster = Cluster::start(version, options).expect("cluster");
    install_sql(
        &cluster,
        "postgres",
        &["sql/001_roles.sql", "sql/002_enforcement.sql"],
    );
    cluster.create_role_with_db(ROLE).expect("role");
    // Twice: the files are idempotent.
    for _ in 0..2 {
        install_sql(
            &cluster,
            ROLE,
            &["sql/002_enforcement.sql", "sql/003_ddl_notify.sql"],
        );
    }
    cluster.pgbench_init(ROLE, ROLE, 1).expect("pgbench -i");
    run(&cluster, TPCH).expect("TPC-H-like schema");
    cluster
        .psql(
            "postgres",
            ROLE,
            Transport::Unix,
            "CREATE TABLE secret (id int PRIMARY KEY, v text); \
             INSERT INTO secret SELECT g, 'x' FROM generate_series(1, 1000) g; ANALYZE secret",
        )
        .expect("secret");
    run(
        &cluster,
        "CREATE TABLE items AS SELECT g AS k, md5(g::text) AS v FROM generate_series(1, 50000) g; \
         ANALYZE items",
    )
    .expect("items");

    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // Every case costed, and equal to the server's generic plan, asked as the tenant right
    // after the worker (nothing writes in between; autovacuum is off).
    for case in CASES {
        run(&cluster, case.sql).unwrap_or_else(|e| panic!("{}: {e:#}", case.sql));
        let f = settled(&agent, case.sql);
        assert_eq!(f["cost_state"], "costed", "{}: {f}", case.sql);
        let got = f["plan_cost"].as_f64().expect("plan_cost");
        let want = cluster
            .generic_plan_cost(ROLE, ROLE, case.generic, case.params)
            .expect("server's generic plan");
        assert!(close(got, want), "{}: agent {got}, server {want}", case.sql);
    }

    // A utility statement alone and inside a multi-statement Q: the SELECT beside it is
    // costed on its own; ANALYZE is refused and never reaches the server from the worker.
    let select = "SELECT count(*) FROM region WHERE r_regionkey > 1";
    run(&cluster, &format!("{select}; ANALYZE region")).expect("multi-statement Q");
    run(&cluster, "ANALYZE nation").expect("utility");
    assert_eq!(settled(&agent, select)["cost_state"], "costed");
    assert_eq!(
        settled(&agent, "ANALYZE region")["cost_state"],
        "not_costable"
    );
    assert_eq!(
        settled(&agent, "ANALYZE nation")["cost_state"],
        "not_costable"
    );

    // A table the tenant may not read: the worker plans as the tenant, so it is refused too.
    let secret = "SELECT v FROM secret WHERE id = 1";
    assert!(run(&cluster, secret).is_err(), "tenant read secret");
    let f = settled(&agent, secret);
    assert_eq!(f["cost_state"], "not_costable", "{f}");
    let superuser_cost = cluster
        .generic_plan_cost("postgres", ROLE, "SELECT v FROM secret WHERE id = $1", 1)
        .expect("superuser plan");
    assert!(superuser_cost > 0.0);

    // DDL: an index on items changes the plan; the notification forgets the estimate and
    // the next execution is costed again with the index.
    let lookup = "SELECT v FROM items WHERE k = 77";
    let generic = "SELECT v FROM items WHERE k = $1";
    run(&cluster, lookup).expect("lookup");
    let before = settled(&agent, lookup)["plan_cost"].as_f64().expect("cost");
    assert!(close(
        before,
        cluster.generic_plan_cost(ROLE, ROLE, generic, 1).unwrap()
    ));
    run(&cluster, "CREATE INDEX items_k ON items (k)").expect("index");
    let after_index = cluster.generic_plan_cost(ROLE, ROLE, generic, 1).unwrap();
    assert!(after_index < before / 10.0, "{after_index} vs {before}");
    let t = Instant::now();
    loop {
        run(&cluster, lookup).expect("lookup");
        let f = settled(&agent, lookup);
        if f["plan_cost"]
            .as_f64()
            .is_some_and(|c| close(c, after_index))
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(15),
            "estimate still {f} after CREATE INDEX (server says {after_index})"
        );
        thread::sleep(Duration::from_millis(200));
    }

    let samples = agent.metrics().expect("metrics");
    let reason =
        |r: &str| metrics::sum(&samples, "pgmon_cost_cache_errors_total", &[("reason", r)]);
    assert!(reason("utility_statement") >= 2.0, "utility refusals");
    assert!(reason("permission_denied") >= 1.0, "permission refusal");
    assert!(metrics::sum(&samples, "pgmon_cost_cache_invalidations_total", &[]) >= 1.0);

    // The worker sent EXPLAINs (the log is on) and never a utility statement.
    let sent = worker_statements(&cluster);
    assert!(
        sent.iter().any(|s| s.contains("EXPLAIN")),
        "no EXPLAIN from the worker in the server log"
    );
    for s in &sent {
        assert!(
            !s.contains("ANALYZE"),
            "the worker sent a utility statement: {s}"
        );
    }
    let log = agent.log();
    assert!(!log.contains("panicked"), "{log}");
    assert!(
        !log.contains("003_ddl_notify.sql is not installed"),
        "{log}"
    );

    // Uninstalling takes the event triggers with the schema.
    install_sql(&cluster, ROLE, &["sql/uninstall.sql"]);
    let left = cluster
        .query_value(
            "postgres",
            ROLE,
            "SELECT count(*) FROM pg_event_trigger WHERE evtname LIKE 'pgmon%'",
        )
        .expect("pg_event_trigger");
    assert_eq!(left, "0");
    run(&cluster, "CREATE INDEX items_v ON items (v)").expect("DDL after uninstall");
}

#[test]
fn costs_pg15() {
    if require_root("costs_pg15") {
        costs(PgVersion::Pg15);
    }
}

#[test]
fn costs_pg18() {
    if require_root("costs_pg18") {
        costs(PgVersion::Pg18);
    }
}
