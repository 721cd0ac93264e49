//! Privileged tests of issue 23: the storage-metadata workload
//! (`sql/workloads/storage_metadata/`, nine weighted pgbench scripts) as role `meta` with
//! the agent attached — 60 seconds on PostgreSQL 15 over TCP with the simple protocol, 30 on
//! PostgreSQL 18 over the unix socket with `-M extended` (each statement an unnamed
//! Parse/Bind/Execute, its constants sent as parameters). For every statement of the
//! scripts, the calls pgmon charged to `meta` equal `pg_stat_statements.calls` of `meta`'s
//! rows, joined on libpg_query's fingerprint; `/api/v1/top-queries` joins them the same way;
//! the capture lost nothing (no protocol desynchronisation, no unattributed statement).
//!
//! Then the health side on the same database: the audit log's monthly partitions are
//! inventoried (`/api/v1/partitions`, `pgmon_partitions`, the time horizon), the GIN indexes
//! on the JSONB metadata and the search vector are listed with their access method and the
//! scans the mix made (`/api/v1/storage`, `pgmon_index_size_bytes{access_method="gin"}`), and
//! their pending lists are read through pgstattuple (`/api/v1/autovacuum`,
//! `pgmon_gin_pending_list_bytes`).
//!
//! `BEGIN` and `COMMIT` (record_object.sql and record_version.sql are explicit
//! transactions) are compared like the rest: pgbench sends each as its own message, pgmon
//! counts it as a statement, and `pg_stat_statements` tracks it as a utility statement
//! (`track_utility` is on by default). Counting `meta`'s rows only keeps other sessions'
//! transactions (the agent's own) out of the server's side.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol, SUPERUSER_MONITOR, Transport,
    agent_binary, fingerprint, free_port, metrics, require_root, storage_metadata_run,
    storage_metadata_statements, tail,
};
use serde_json::Value;

const ROLE: &str = "meta";

/// The agent connected as `postgres` (a superuser), so with the read-only check off.
fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\n\
         capture:\n  hooks: auto\nmetrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
    )
}

fn start_agent(cluster: &Cluster) -> Agent {
    let binary = agent_binary().expect("agent binary (cargo build --release -p pgmon-agent)");
    let port = free_port();
    Agent::start(&binary, &config(cluster, port), format!("127.0.0.1:{port}"))
        .expect("agent starts")
}

/// `meta`'s `pg_stat_statements` calls by fingerprint, with one of its texts.
fn pss_by_fingerprint(cluster: &Cluster) -> BTreeMap<String, (u64, String)> {
    let mut out: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for (query, calls) in cluster.pss_calls(ROLE, "%").expect("pg_stat_statements") {
        let e = out
            .entry(fingerprint(&query))
            .or_insert_with(|| (0, query.clone()));
        e.0 += calls;
    }
    out
}

/// `meta`'s fingerprints in the agent's status: calls, errors, normalized text.
fn pgmon_by_fingerprint(agent: &Agent) -> BTreeMap<String, (u64, u64, String)> {
    let status = agent.status_json().expect("status");
    status["roles"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["role"] == ROLE)
        .flat_map(|r| r["fingerprints"].as_array().cloned().unwrap_or_default())
        .map(|f| {
            (
                f["fingerprint"].as_str().unwrap_or_default().to_string(),
                (
                    f["calls"].as_u64().unwrap_or(0),
                    f["errors"].as_u64().unwrap_or(0),
                    f["normalized"].as_str().unwrap_or_default().to_string(),
                ),
            )
        })
        .collect()
}

fn one_line(s: &str, max: usize) -> String {
    let s = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if s.chars().count() > max {
        format!("{}…", s.chars().take(max - 1).collect::<String>())
    } else {
        s
    }
}

#[test]
fn workload_meta_pg15() {
    workload_meta(PgVersion::Pg15, Transport::Tcp, Protocol::Simple, 60);
}

#[test]
fn workload_meta_pg18_extended() {
    workload_meta(PgVersion::Pg18, Transport::Unix, Protocol::Extended, 30);
}

fn workload_meta(version: PgVersion, transport: Transport, protocol: Protocol, seconds: u64) {
    let test = format!("workload_meta_pg{}_{}", version.major(), protocol.as_arg());
    if !require_root(&test) {
        return;
    }
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    let t = Instant::now();
    cluster
        .load_storage_metadata(ROLE, ROLE)
        .unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "schema and seed loaded in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    // pgstattuple, for the GIN pending lists (a superuser installs it).
    cluster
        .psql(
            "postgres",
            ROLE,
            Transport::Unix,
            "CREATE EXTENSION pgstattuple",
        )
        .expect("CREATE EXTENSION pgstattuple");

    let statements = storage_metadata_statements().expect("scripts");
    let expected: BTreeMap<String, (String, String)> = statements
        .iter()
        .map(|(sql, script)| (fingerprint(sql), (sql.clone(), script.clone())))
        .collect();
    assert_eq!(
        expected.len(),
        statements.len(),
        "two statements of the scripts share a fingerprint: {statements:#?}"
    );

    let agent = start_agent(&cluster);
    cluster.pg_stat_statements_reset().expect("reset");

    let run = PgbenchRun {
        protocol,
        ..storage_metadata_run(ROLE, ROLE, transport, 4, 2, seconds)
    };
    let result = cluster.pgbench(&run).unwrap_or_else(|e| panic!("{e:#}"));
    eprintln!(
        "pgbench: {} transactions, {:.1} tps, {} failed",
        result.transactions_processed, result.tps, result.failed
    );
    assert_eq!(result.failed, 0, "{}", result.output);

    // The server's side is final once pgbench has its answers; pgmon's drains within
    // milliseconds: wait until it reaches the server's counts (or 15 s), then read again
    // 500 ms later so that a late overcount shows.
    let pss = pss_by_fingerprint(&cluster);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pgmon = pgmon_by_fingerprint(&agent);
        let caught_up = pss
            .iter()
            .all(|(fp, (calls, _))| pgmon.get(fp).map_or(0, |p| p.0) >= *calls);
        if caught_up || Instant::now() > deadline {
            break;
        }
        thread::sleep(Duration::from_millis(100));
    }
    thread::sleep(Duration::from_millis(500));
    let pgmon = pgmon_by_fingerprint(&agent);
    let top = agent
        .get("/api/v1/top-queries?limit=1000")
        .expect("top-queries");
    assert_eq!(top.0, 200, "{}", top.1);
    let top: Value = serde_json::from_str(&top.1).expect("JSON");
    let api = |fp: &str| {
        top["data"]["statements"]
            .as_array()
            .and_then(|v| v.iter().find(|s| s["fingerprint"] == fp))
            .cloned()
    };

    // The table, then the checks.
    let mut failures = Vec::new();
    println!(
        "\n{:<16}  {:>8}  {:>8}  {:>8}  {:>8}  {:<22}  statement",
        "fingerprint", "pgmon", "pss", "api pgm", "api pss", "script"
    );
    for (fp, (sql, script)) in &expected {
        let p = pgmon.get(fp).map_or(0, |p| p.0);
        let s = pss.get(fp).map_or(0, |s| s.0);
        let a = api(fp);
        let a_pgmon = a.as_ref().and_then(|a| a["pgmon"]["calls"].as_u64());
        let a_pss = a
            .as_ref()
            .and_then(|a| a["pg_stat_statements"]["calls"].as_u64());
        let text = pgmon.get(fp).map_or(sql.as_str(), |p| p.2.as_str());
        println!(
            "{fp:<16}  {p:>8}  {s:>8}  {:>8}  {:>8}  {script:<22}  {}",
            a_pgmon.map_or("-".into(), |v| v.to_string()),
            a_pss.map_or("-".into(), |v| v.to_string()),
            one_line(text, 90)
        );
        if p != s {
            failures.push(format!(
                "{script}: pgmon {p} ≠ pg_stat_statements {s}: {sql}"
            ));
        }
        if s == 0 {
            failures.push(format!("{script}: never ran in {seconds} s: {sql}"));
        }
        if let Some(errors) = pgmon.get(fp).map(|p| p.1).filter(|e| *e > 0) {
            failures.push(format!("{script}: pgmon saw {errors} errors: {sql}"));
        }
        // The API's join: pgmon's side is all roles' (only meta runs these); the server's
        // side too, which the agent's own transactions add to for BEGIN and COMMIT.
        if a_pgmon != Some(p) {
            failures.push(format!(
                "{script}: top-queries pgmon {a_pgmon:?} ≠ {p}: {sql}"
            ));
        }
        let shared = matches!(sql.as_str(), "BEGIN" | "COMMIT");
        if !shared && a_pss != Some(s) {
            failures.push(format!("{script}: top-queries pss {a_pss:?} ≠ {s}: {sql}"));
        }
    }
    let total: u64 = expected
        .keys()
        .map(|fp| pgmon.get(fp).map_or(0, |p| p.0))
        .sum();
    println!(
        "{} statements of the scripts, {total} calls in all\n",
        expected.len()
    );

    // Nothing else ran as meta, on either side.
    for (fp, (calls, _, text)) in &pgmon {
        if !expected.contains_key(fp) {
            failures.push(format!(
                "pgmon: meta ran {calls} × {fp} outside the scripts: {text}"
            ));
        }
    }
    for (fp, (calls, text)) in &pss {
        if !expected.contains_key(fp) {
            failures.push(format!(
                "pg_stat_statements: meta ran {calls} × {fp} outside the scripts: {text}"
            ));
        }
    }

    // Capture health: no desynchronisation, nothing unattributed, nothing dropped.
    let capture = agent.status_json().expect("status")["capture"].clone();
    eprintln!("capture: {capture}");
    for key in [
        "desyncs_frontend",
        "desyncs_backend",
        "unattributed_queries",
        "dropped",
    ] {
        let v = capture[key].as_u64().unwrap_or(u64::MAX);
        if v != 0 {
            failures.push(format!("capture.{key} = {v}, expected 0"));
        }
    }
    let samples = agent.metrics().expect("metrics");
    for name in [
        "pgmon_wire_desyncs_total",
        "pgmon_unattributed_queries_total",
    ] {
        let v = metrics::sum(&samples, name, &[]);
        if v != 0.0 {
            failures.push(format!("{name} = {v}, expected 0"));
        }
    }
    let text = agent.metrics_text().expect("metrics");
    assert!(
        text.contains("pgmon_unattributed_queries_total"),
        "no pgmon_unattributed_queries_total in /metrics"
    );

    failures.extend(health_of_meta(&agent));

    if !failures.is_empty() {
        panic!(
            "{} failure(s):\n{}\nagent log tail:\n{}",
            failures.len(),
            failures.join("\n"),
            tail(&agent.log(), 40)
        );
    }
}

/// What the health side shows of `meta` once the mix has run: failures, one line each.
fn health_of_meta(agent: &Agent) -> Vec<String> {
    let mut failures = Vec::new();
    let get = |path: &str| -> Value {
        let (code, body) = agent.get(path).expect(path);
        assert_eq!(code, 200, "{path}: {body}");
        serde_json::from_str(&body).expect("JSON")
    };

    // The audit log's partitions: the seed makes the current month, two before it and the
    // next one.
    let parts = get("/api/v1/partitions?database=meta");
    let audit = parts["data"]["partitioned_tables"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["parent"] == "public.audit_log"))
        .cloned()
        .unwrap_or_default();
    println!(
        "audit_log: {} partitions, key {}",
        audit["partitions"], audit["partition_key"]
    );
    if audit["partitions"].as_f64() != Some(4.0) {
        failures.push(format!("audit_log's partitions: {audit}"));
    }
    let horizon = parts["data"]["time_ranges"]
        .as_array()
        .and_then(|t| t.iter().find(|t| t["relation"] == "public.audit_log"))
        .and_then(|t| t["horizon_seconds"].as_f64());
    if !horizon.is_some_and(|h| h > 0.0) {
        failures.push(format!("audit_log's time horizon: {horizon:?}"));
    }

    // The GIN indexes with their access method, and the scans the mix made of them.
    let storage = get("/api/v1/storage?database=meta&limit=50");
    let indexes = storage["data"]["indexes"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let gin: Vec<&Value> = indexes
        .iter()
        .filter(|i| i["access_method"] == "gin")
        .collect();
    for i in &gin {
        println!(
            "{}: gin, {} bytes, {} scans, {} entries read",
            i["index"], i["bytes"], i["scans"], i["tuples_read"]
        );
    }
    let names: Vec<&str> = gin.iter().filter_map(|i| i["index"].as_str()).collect();
    for want in ["public.objects_metadata", "public.objects_search"] {
        if !names.contains(&want) {
            failures.push(format!(
                "/api/v1/storage lists no gin index {want}: {names:?}"
            ));
        }
    }
    // find_by_metadata.sql's containment has no other index to use.
    let metadata_scans = gin
        .iter()
        .find(|i| i["index"] == "public.objects_metadata")
        .and_then(|i| i["scans"].as_f64());
    if !metadata_scans.is_some_and(|n| n > 0.0) {
        failures.push(format!("objects_metadata's scans: {metadata_scans:?}"));
    }
    if !storage["sql"]
        .as_array()
        .is_some_and(|s| s.iter().any(|q| q["name"] == "index_usage"))
    {
        failures.push("/api/v1/storage does not show its index_usage SQL".into());
    }

    // Their pending lists, live and in the hourly loop's metrics (its first run is at the
    // agent's start).
    let vacuum = get("/api/v1/autovacuum?database=meta");
    let pending: Vec<&str> = vacuum["data"]["gin_pending_lists"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|g| g["index"].as_str())
        .collect();
    if !(pending.contains(&"public.objects_metadata") && pending.contains(&"public.objects_search"))
    {
        failures.push(format!(
            "/api/v1/autovacuum's gin_pending_lists: {}",
            vacuum["data"]["gin_pending_lists"]
        ));
    }
    let samples = agent.metrics().expect("metrics");
    for (name, labels) in [
        (
            "pgmon_index_size_bytes",
            [("datname", "meta"), ("index", "public.objects_search")],
        ),
        (
            "pgmon_gin_pending_list_bytes",
            [("datname", "meta"), ("index", "public.objects_search")],
        ),
    ] {
        let found = metrics::find(&samples, name, &labels);
        if found.is_empty() {
            failures.push(format!("no {name} for {labels:?} in /metrics"));
        }
    }
    if metrics::find(
        &samples,
        "pgmon_index_size_bytes",
        &[("datname", "meta"), ("access_method", "gin")],
    )
    .len()
        < 2
    {
        failures.push("pgmon_index_size_bytes has no access_method=\"gin\" series for meta".into());
    }
    failures
}
