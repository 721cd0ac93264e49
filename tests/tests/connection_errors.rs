//! Privileged test of connection-level errors (issue 19): psql asks for a database that does
//! not exist (FATAL 3D000), logs in with a wrong password (FATAL 28P01), and an idle session
//! is terminated (FATAL 57P01 outside a statement); beside them a statement fails (22012).
//! `pgmon_connection_errors_total{role,sqlstate_class}` counts the three by class, and the
//! role's statement errors stay within its statements. psql's `\gdesc` of a typo (a Parse
//! the server refuses) is counted in `pgmon_prepare_errors_total`, not as a statement error. Real kernel, agent and clusters.

use std::{
    process::{Command, Stdio},
    time::Duration,
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, PSQL, PgVersion, SUPERUSER_MONITOR, Transport, agent_binary,
    free_port, require_root, tail,
};

fn config(cluster: &Cluster, port: u16) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"host={} port={} user=postgres dbname=postgres\"\n\
         capture:\n  hooks: auto\nmetrics:\n  listen: 127.0.0.1:{port}\nhealth:\n  enabled: false\n{SUPERUSER_MONITOR}",
        cluster.data_dir().display(),
        cluster.socket_dir().display(),
        cluster.port()
    )
}

/// psql with `conninfo`, never prompting; returns its stderr (it is expected to fail).
fn psql_fails(conninfo: &str) -> String {
    let out = Command::new(PSQL)
        .args(["-X", "-w", "-At", "-c", "SELECT 1", "-d", conninfo])
        .env_remove("PGPASSWORD")
        .env_remove("PGSERVICE")
        .stdin(Stdio::null())
        .output()
        .expect("psql");
    assert!(!out.status.success(), "psql {conninfo} succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn connection_errors_are_counted_apart(version: PgVersion) {
    let cluster = Cluster::start(version, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("tenant").expect("role");
    cluster
        .psql_admin("ALTER ROLE tenant PASSWORD 'right-password'")
        .expect("password");
    // Password authentication for tenant over TCP; everything else stays `trust`.
    let hba = cluster.data_dir().join("pg_hba.conf");
    let text = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!("host all tenant 127.0.0.1/32 scram-sha-256\n{text}"),
    )
    .expect("pg_hba.conf");
    cluster
        .psql_admin("SELECT pg_reload_conf()")
        .expect("reload");
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");

    // Two statements, one of them failing.
    let mut held = cluster
        .hold_session("tenant", "tenant", Transport::Unix)
        .expect("session");
    held.run("SELECT 1 AS fine").expect("select");
    let _ = held.run("SELECT 1/0 AS boom");
    let stderr = held.stderr_text();
    assert!(stderr.contains("division by zero"), "{stderr}");
    // A prepare the server refuses: psql's \gdesc sends Parse, Describe, Sync.
    let _ = held.run("SELEC 1 AS typo\n\\gdesc");
    let stderr = held.stderr_text();
    assert!(stderr.contains("syntax error"), "{stderr}");

    // FATAL 3D000.
    let sock = cluster.socket_dir();
    let e = psql_fails(&format!(
        "host={} port={} user=tenant dbname=no_such_database",
        sock.display(),
        cluster.port()
    ));
    assert!(e.contains("does not exist"), "{e}");
    // FATAL 28P01.
    let e = psql_fails(&format!(
        "host=127.0.0.1 port={} user=tenant dbname=tenant password=wrong-password sslmode=disable gssencmode=disable",
        cluster.port()
    ));
    assert!(e.contains("password authentication failed"), "{e}");
    // FATAL 57P01 while idle.
    let killed = cluster
        .psql_admin(&format!(
            "SELECT pg_terminate_backend({})",
            held.backend_pid()
        ))
        .expect("terminate");
    assert_eq!(killed.trim(), "t");

    let within = Duration::from_secs(15);
    for class in ["3D", "28", "57"] {
        let n = agent.wait_metric(
            "pgmon_connection_errors_total",
            &[("role", "tenant"), ("sqlstate_class", class)],
            within,
            |v| v >= 1.0,
        );
        assert_eq!(
            n,
            1.0,
            "class {class}; agent log:\n{}",
            tail(&agent.log(), 20)
        );
    }
    let statement_errors = agent.metric(
        "pgmon_query_errors_total",
        &[("role", "tenant"), ("sqlstate_class", "22")],
    );
    assert_eq!(statement_errors, 1.0, "the division by zero");
    for class in ["3D", "28", "57"] {
        assert_eq!(
            agent.metric(
                "pgmon_query_errors_total",
                &[("role", "tenant"), ("sqlstate_class", class)]
            ),
            0.0,
            "class {class} is no statement error"
        );
    }
    let failed_prepares = agent.wait_metric(
        "pgmon_prepare_errors_total",
        &[("role", "tenant"), ("sqlstate_class", "42")],
        within,
        |v| v >= 1.0,
    );
    assert_eq!(failed_prepares, 1.0, "the \\gdesc of a typo");
    assert_eq!(
        agent.metric(
            "pgmon_query_errors_total",
            &[("role", "tenant"), ("sqlstate_class", "42")]
        ),
        0.0,
        "a failed prepare is no statement error"
    );
    let all_errors = agent.metric("pgmon_query_errors_total", &[("role", "tenant")]);
    let queries = agent.metric("pgmon_queries_total", &[("role", "tenant")]);
    let status = agent.status_json().expect("status");
    let role = status["roles"]
        .as_array()
        .expect("roles")
        .iter()
        .find(|r| r["role"] == "tenant")
        .expect("tenant in status")
        .clone();
    eprintln!(
        "{version:?}: tenant: {queries} statements, {all_errors} statement errors, \
         connection errors {} {}",
        role["connection_errors"], role["connection_errors_by_class"]
    );
    assert!(
        all_errors <= queries,
        "{all_errors} errors > {queries} statements"
    );
    assert_eq!(role["connection_errors"], 3);
    assert_eq!(role["prepare_errors"], 1);
    assert_eq!(
        role["connection_errors_by_class"],
        serde_json::json!({"3D": 1, "28": 1, "57": 1})
    );
    assert!(role["errors"].as_u64() <= role["queries"].as_u64());
}

#[test]
fn connection_errors_pg15() {
    if require_root("connection_errors_pg15") {
        connection_errors_are_counted_apart(PgVersion::Pg15);
    }
}

#[test]
fn connection_errors_pg18() {
    if require_root("connection_errors_pg18") {
        connection_errors_are_counted_apart(PgVersion::Pg18);
    }
}
