//! Privileged tests of `security.read_only_enforce` (on by default): the agent refuses to
//! start, naming the privilege, when its monitor role can write outside schema `pgmon`, and
//! starts as `pgmon`, whose enforcement still works through pgmon's SECURITY DEFINER
//! functions. Real kernel, agent and clusters:
//!
//! - PostgreSQL 15: `postgres` (a superuser), `writer` (pg_monitor and INSERT on
//!   `public.t`) and `creator` (CREATE on schema `public`) are each refused, with a non-zero
//!   exit and the privilege in the log; `doctor` fails the same check for `postgres` and
//!   passes it for `pgmon`;
//! - PostgreSQL 15: as `pgmon` (`pgmon-agent install-sql`) with cleanup in `enforce` mode
//!   the agent starts and terminates an idle-in-transaction session through
//!   `pgmon.end_session`; as `postgres` with `read_only_enforce: false` it starts;
//! - PostgreSQL 15: a monitor role that does not exist yet (the database refuses the
//!   connection at start-up) is checked once it can log in: created a superuser, the agent
//!   exits then;
//! - PostgreSQL 13, which grants CREATE on schema `public` to PUBLIC: `pgmon` is refused
//!   naming it, and starts after `REVOKE CREATE ON SCHEMA public FROM PUBLIC`.
//!
//! They need root and skip with a reason otherwise.

use std::{
    process::{Command, ExitStatus},
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, PgVersion, SUPERUSER_MONITOR, Transport,
    agent_binary, free_port, require_root, tail,
};

/// How long a refused agent may take to exit, and an enforcement to show.
const WAIT: Duration = Duration::from_secs(40);

/// A policy whose monitor connection logs in as `user`; `rest` (whole sections) at the end.
fn config(cluster: &Cluster, port: u16, user: &str, rest: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n{rest}",
        cluster.data_dir().display(),
        cluster.conninfo(user, "postgres", Transport::Unix),
    )
}

/// Starts the agent without waiting for readiness.
fn spawn(cluster: &Cluster, user: &str, rest: &str) -> Agent {
    let port = free_port();
    Agent::start_with(
        &agent_binary().expect("agent binary (cargo build --release -p pgmon-agent)"),
        &config(cluster, port, user, rest),
        format!("127.0.0.1:{port}"),
        AgentOptions {
            no_ready_check: true,
            ..AgentOptions::default()
        },
    )
    .expect("agent spawns")
}

/// Starts the agent as `user` and waits for it to exit; returns its status and log.
fn refused(cluster: &Cluster, user: &str) -> (ExitStatus, String) {
    let mut agent = spawn(cluster, user, "");
    let status = agent.wait_exit(WAIT).expect("wait").unwrap_or_else(|| {
        panic!(
            "the agent as {user} still runs:\n{}",
            tail(&agent.log(), 30)
        )
    });
    (status, agent.log())
}

/// Asserts that the agent as `user` exits non-zero naming each of `needles`.
fn assert_refused(cluster: &Cluster, user: &str, needles: &[&str]) {
    let (status, log) = refused(cluster, user);
    assert!(
        !status.success(),
        "the agent as {user} exited {status}:\n{log}"
    );
    for needle in ["refusing to start", "security.read_only_enforce"]
        .iter()
        .chain(needles)
    {
        assert!(log.contains(needle), "as {user}: no {needle:?} in:\n{log}");
    }
    assert!(
        !log.contains("capture attached"),
        "a refused agent attached its probes:\n{log}"
    );
}

fn sql(cluster: &Cluster, sql: &str) {
    cluster
        .psql_admin(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:#}"));
}

fn install_sql(cluster: &Cluster) {
    let out = Command::new(agent_binary().expect("binary"))
        .args(["install-sql", "--dsn"])
        .arg(cluster.conninfo("postgres", "postgres", Transport::Unix))
        .output()
        .expect("pgmon-agent install-sql");
    assert!(
        out.status.success(),
        "install-sql: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `pgmon-agent doctor` with the agent's policy for `user`: (exit success, output).
fn doctor(cluster: &Cluster, user: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("pgmon.yaml");
    std::fs::write(&policy, config(cluster, free_port(), user, "")).expect("policy");
    let out = Command::new(agent_binary().expect("binary"))
        .arg("doctor")
        .arg("--config")
        .arg(&policy)
        .output()
        .expect("pgmon-agent doctor");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// The line of `doctor`'s report for the read-only check.
fn read_only_line(out: &str) -> &str {
    out.lines()
        .find(|l| l.contains("database: read-only"))
        .unwrap_or_else(|| panic!("no read-only check in doctor's report:\n{out}"))
}

#[test]
fn roles_that_can_write_are_refused() {
    if !require_root("roles_that_can_write_are_refused") {
        return;
    }
    let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).expect("cluster");
    sql(
        &cluster,
        "CREATE ROLE writer LOGIN; GRANT pg_monitor TO writer; \
         CREATE TABLE public.t (a int); GRANT INSERT ON public.t TO writer; \
         CREATE ROLE creator LOGIN; GRANT pg_monitor TO creator; \
         GRANT CREATE ON SCHEMA public TO creator",
    );

    assert_refused(&cluster, "postgres", &["\"postgres\" is a superuser"]);
    assert_refused(&cluster, "writer", &["INSERT on table public.t"]);
    assert_refused(&cluster, "creator", &["CREATE on schema public"]);

    install_sql(&cluster);
    let (ok, out) = doctor(&cluster, "postgres");
    let line = read_only_line(&out);
    assert!(
        !ok && line.starts_with("FAIL") && line.contains("is a superuser"),
        "{out}"
    );
    let (_, out) = doctor(&cluster, "pgmon");
    let line = read_only_line(&out);
    assert!(
        line.starts_with("ok") && line.contains("cannot write outside schema pgmon"),
        "{out}"
    );
}

#[test]
fn pgmon_starts_and_enforces_through_its_functions() {
    if !require_root("pgmon_starts_and_enforces_through_its_functions") {
        return;
    }
    let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    cluster.create_role("idler").expect("role");
    let port = free_port();
    let mut agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(
            &cluster,
            port,
            "pgmon",
            "cleanup:\n  enabled: true\n  mode: enforce\n  interval_seconds: 1\n  \
             idle_in_transaction_seconds: 2\n",
        ),
        format!("127.0.0.1:{port}"),
    )
    .expect("the agent starts as pgmon");
    assert!(
        agent
            .log()
            .contains("monitor role pgmon: read-only outside schema pgmon"),
        "{}",
        agent.log()
    );

    let mut idler = cluster
        .hold_session("idler", "postgres", Transport::Unix)
        .expect("session");
    idler.run("BEGIN; SELECT 1").expect("BEGIN");
    let idlers = || {
        cluster
            .query_value(
                "postgres",
                "postgres",
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'idler'",
            )
            .expect("pg_stat_activity")
    };
    let t = Instant::now();
    while idlers() != "0" {
        assert!(
            t.elapsed() < WAIT,
            "idler's idle transaction was not ended:\n{}",
            tail(&agent.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let audit = cluster
        .psql_admin(
            "SELECT action || '|' || result FROM pgmon.audit \
             WHERE source = 'cleanup' AND role = 'idler'",
        )
        .expect("audit");
    assert!(!audit.trim().is_empty(), "no cleanup audit row for idler");
    assert!(agent.is_running(), "{}", agent.log());
    assert!(agent.stop().expect("stop").success(), "{}", agent.log());

    // The superuser, with the check turned off.
    let port = free_port();
    let mut agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "postgres", SUPERUSER_MONITOR),
        format!("127.0.0.1:{port}"),
    )
    .expect("the agent starts as postgres with read_only_enforce: false");
    assert!(
        agent.log().contains("security.read_only_enforce is off"),
        "{}",
        agent.log()
    );
    assert!(agent.stop().expect("stop").success(), "{}", agent.log());
}

#[test]
fn a_role_that_logs_in_late_is_checked_then() {
    if !require_root("a_role_that_logs_in_late_is_checked_then") {
        return;
    }
    let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).expect("cluster");
    let mut agent = spawn(&cluster, "late", "health:\n  enabled: false\n");
    let t = Instant::now();
    while !agent.log().contains("database unreachable at start-up") {
        assert!(
            agent.is_running() && t.elapsed() < WAIT,
            "{}",
            tail(&agent.log(), 30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    assert!(agent.is_running(), "{}", tail(&agent.log(), 30));
    sql(&cluster, "CREATE ROLE late LOGIN SUPERUSER");
    let status = agent
        .wait_exit(WAIT)
        .expect("wait")
        .unwrap_or_else(|| panic!("still running:\n{}", tail(&agent.log(), 30)));
    let log = agent.log();
    assert!(!status.success(), "exited {status}:\n{log}");
    assert!(log.contains("\"late\" is a superuser"), "{log}");
}

#[test]
fn postgresql_13_needs_create_on_public_revoked() {
    if !require_root("postgresql_13_needs_create_on_public_revoked") {
        return;
    }
    let cluster = Cluster::start(PgVersion::Pg13, ClusterOptions::default()).expect("cluster");
    install_sql(&cluster);
    assert_refused(
        &cluster,
        "pgmon",
        &[
            "CREATE on schema public",
            "REVOKE CREATE ON SCHEMA public FROM PUBLIC",
        ],
    );
    sql(&cluster, "REVOKE CREATE ON SCHEMA public FROM PUBLIC");
    let port = free_port();
    let mut agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, "pgmon", ""),
        format!("127.0.0.1:{port}"),
    )
    .expect("the agent starts as pgmon once PUBLIC cannot create in public");
    assert!(agent.stop().expect("stop").success(), "{}", agent.log());
}
