//! Privileged test of how the agent reaches the cluster (PostgreSQL 15 with `ssl = on`, a
//! self-signed certificate for `localhost`, and `pg_hba.conf` letting the monitor role
//! `watcher` in only over TLS with a SCRAM password):
//!
//! - `pgmon-agent check` (which opens the same monitor session as the agent) succeeds with
//!   `sslmode=require` and `verify-full` against the server's certificate; `disable` is
//!   refused by the server (so the others did speak TLS), `verify-full` against another
//!   CA is refused by the agent, and so is `verify-full` for a certificate naming another
//!   host, which `verify-ca` accepts;
//! - the password comes from `cluster.password_file`, or from libpq's password file named
//!   by `PGPASSFILE` (ignored when others may read it, as libpq does); a wrong one fails;
//! - `PGMON_CLUSTER_CONNECTION` and `PGMON_CLUSTER_PASSWORD_FILE` replace the policy's
//!   values; a bad `sslmode` is a configuration error naming `cluster.connection`;
//! - the running agent with `verify-full`: every session it opens (`application_name`
//!   `pgmon`) is encrypted (`pg_stat_ssl`).

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use pgmon_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, agent_binary,
    free_port, require_root,
};
use serde_json::Value;

const PASSWORD: &str = "w@tch:er";

/// A self-signed certificate and key for `name` only (no `localhost`, no IP address).
fn certificate_for(name: &str, dir: &Path) -> (PathBuf, PathBuf) {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", &format!("/CN={name}")])
        .args(["-addext", &format!("subjectAltName=DNS:{name}")])
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (crt, key)
}

struct Setup {
    cluster: Cluster,
    dir: tempfile::TempDir,
    password_file: PathBuf,
}

impl Setup {
    fn new() -> Setup {
        let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).expect("cluster");
        cluster.enable_ssl().expect("ssl = on");
        cluster
            .psql_admin(&format!(
                "CREATE ROLE watcher LOGIN PASSWORD '{PASSWORD}' IN ROLE pg_monitor"
            ))
            .expect("role");
        // watcher: TLS and SCRAM only, first match wins.
        let hba = cluster.data_dir().join("pg_hba.conf");
        let rest = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        std::fs::write(
            &hba,
            format!(
                "hostssl all watcher 127.0.0.1/32 scram-sha-256\n\
                 hostssl all watcher ::1/128 scram-sha-256\n\
                 host all watcher all reject\nlocal all watcher reject\n{rest}"
            ),
        )
        .expect("pg_hba.conf");
        cluster
            .psql_admin("SELECT pg_reload_conf()")
            .expect("reload");
        let dir = tempfile::tempdir().expect("temp dir");
        let password_file = dir.path().join("password");
        std::fs::write(&password_file, format!("{PASSWORD}\n")).expect("password file");
        Setup {
            cluster,
            dir,
            password_file,
        }
    }

    fn server_crt(&self) -> PathBuf {
        self.cluster.base_dir().join("server.crt")
    }

    /// `host=HOST port=… user=watcher dbname=postgres EXTRA`.
    fn dsn(&self, host: &str, extra: &str) -> String {
        format!(
            "host={host} port={} user=watcher dbname=postgres {extra}",
            self.cluster.port()
        )
    }

    /// A policy with `connection` (YAML-quoted) and `more` YAML lines under `cluster:`.
    fn policy(&self, name: &str, connection: &str, more: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.yaml"));
        std::fs::write(
            &path,
            format!(
                "cluster:\n  data_directory: {}\n  connection: {}\n{more}",
                self.cluster.data_dir().display(),
                serde_json::to_string(connection).expect("quote"),
            ),
        )
        .expect("policy");
        path
    }

    /// `pgmon-agent check --config policy` with `env`: its exit code and report.
    fn check(&self, policy: &Path, env: &[(&str, &str)]) -> (Option<i32>, Value) {
        let out = Command::new(agent_binary().expect("binary"))
            .args(["check", "--config"])
            .arg(policy)
            .env_remove("PGPASSFILE")
            .envs(env.iter().copied())
            .output()
            .expect("pgmon-agent check");
        let report: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            Value::String(format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        });
        (out.status.code(), report)
    }

    fn connects(&self, what: &str, policy: &Path, env: &[(&str, &str)]) {
        let (code, report) = self.check(policy, env);
        assert!(
            code != Some(3) && report["error"].is_null(),
            "{what}: check could not read the cluster: {code:?} {report:#}"
        );
    }

    fn refused(&self, what: &str, policy: &Path, env: &[(&str, &str)], needle: &str) {
        let (code, report) = self.check(policy, env);
        println!("{what}: {}", report["error"]);
        let error = report["error"].as_str().unwrap_or_default().to_lowercase();
        assert_eq!(code, Some(3), "{what}: {report:#}");
        assert!(
            error.contains(&needle.to_lowercase()),
            "{what}: the error does not say {needle:?}: {report:#}"
        );
    }
}

#[test]
fn tls_passwords_and_environment_overrides() {
    if !require_root("tls_passwords_and_environment_overrides") {
        return;
    }
    let s = Setup::new();
    let pw = format!("  password_file: {}\n", s.password_file.display());
    let crt = s.server_crt().display().to_string();

    // TLS modes.
    s.connects(
        "require",
        &s.policy("require", &s.dsn("127.0.0.1", "sslmode=require"), &pw),
        &[],
    );
    s.refused(
        "disable (the server wants TLS)",
        &s.policy("disable", &s.dsn("127.0.0.1", "sslmode=disable"), &pw),
        &[],
        "pg_hba.conf",
    );
    let full = s.dsn(
        "localhost",
        &format!("sslmode=verify-full sslrootcert='{crt}'"),
    );
    s.connects("verify-full", &s.policy("full", &full, &pw), &[]);
    let (other_crt, _) = certificate_for("other.invalid", s.dir.path());
    s.refused(
        "verify-full against another CA",
        &s.policy(
            "other-ca",
            &s.dsn(
                "localhost",
                &format!("sslmode=verify-full sslrootcert={}", other_crt.display()),
            ),
            &pw,
        ),
        &[],
        "certificate",
    );

    // Passwords.
    let wrong = s.dir.path().join("wrong");
    std::fs::write(&wrong, "nope\n").expect("file");
    s.refused(
        "a wrong cluster.password_file",
        &s.policy(
            "wrong",
            &full,
            &format!("  password_file: {}\n", wrong.display()),
        ),
        &[],
        "password authentication failed",
    );
    let pgpass = s.dir.path().join("pgpass");
    std::fs::write(
        &pgpass,
        format!(
            "# host:port:database:user:password\nelsewhere:*:*:*:nope\nlocalhost:{}:*:watcher:{}\n",
            s.cluster.port(),
            PASSWORD.replace(':', "\\:")
        ),
    )
    .expect("pgpass");
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let no_password = s.policy("pgpass", &full, "");
    let env = [("PGPASSFILE", pgpass.to_str().expect("utf-8"))];
    s.connects("PGPASSFILE", &no_password, &env);
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    s.refused(
        "a world-readable PGPASSFILE (ignored)",
        &no_password,
        &env,
        "password",
    );

    // Environment overrides and a bad sslmode.
    let bogus = s.policy("bogus", "host=127.0.0.1 port=1 user=nobody", "");
    s.connects(
        "PGMON_CLUSTER_CONNECTION + PGMON_CLUSTER_PASSWORD_FILE",
        &bogus,
        &[
            ("PGMON_CLUSTER_CONNECTION", full.as_str()),
            (
                "PGMON_CLUSTER_PASSWORD_FILE",
                s.password_file.to_str().expect("utf-8"),
            ),
        ],
    );
    s.refused(
        "sslmode=sometimes",
        &s.policy("bad-mode", &s.dsn("localhost", "sslmode=sometimes"), &pw),
        &[],
        "cluster.connection",
    );

    // The running agent: every session it opens is encrypted.
    let port = free_port();
    let policy = std::fs::read_to_string(s.policy("full", &full, &pw)).expect("policy");
    let agent = Agent::start_with(
        &agent_binary().expect("binary"),
        &format!("{policy}metrics:\n  listen: 127.0.0.1:{port}\n{FAST_HEALTH_LOOPS}"),
        format!("127.0.0.1:{port}"),
        AgentOptions {
            env: vec![("PGPASSFILE".into(), "/nonexistent".into())],
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    let sessions = || {
        s.cluster
            .query_value(
                "postgres",
                "postgres",
                "SELECT count(*) FILTER (WHERE s.ssl) || '/' || count(*) \
                 FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) \
                 WHERE a.application_name = 'pgmon'",
            )
            .expect("pg_stat_ssl")
    };
    pgmon_tests::budget::wait_until("the agent's sessions", Duration::from_secs(30), || {
        sessions().split('/').next_back().is_some_and(|n| n != "0")
    });
    let (encrypted, all) = {
        let v = sessions();
        let (a, b) = v.split_once('/').expect("a/b");
        (a.to_owned(), b.to_owned())
    };
    println!("agent sessions encrypted: {encrypted} of {all}");
    assert_eq!(encrypted, all, "an agent session without TLS");
    let (code, body) = agent.get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    drop(agent);

    // verify-ca checks the chain only: a certificate naming another host passes it and
    // fails verify-full.
    let (crt2, key2) = certificate_for("elsewhere.invalid", s.cluster.base_dir());
    let pg = pgmon_tests::postgres_user().expect("postgres user");
    for f in [&crt2, &key2] {
        std::os::unix::fs::chown(f, Some(pg.uid), Some(pg.gid)).expect("chown");
    }
    std::fs::set_permissions(&key2, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    for sql in [
        format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt2.display()),
        format!("ALTER SYSTEM SET ssl_key_file = '{}'", key2.display()),
        "SELECT pg_reload_conf()".to_owned(),
    ] {
        s.cluster.psql_admin(&sql).expect("new certificate");
    }
    std::thread::sleep(Duration::from_secs(1));
    let with_root = |mode: &str| {
        s.dsn(
            "localhost",
            &format!("sslmode={mode} sslrootcert={}", crt2.display()),
        )
    };
    s.connects(
        "verify-ca, certificate for elsewhere.invalid",
        &s.policy("ca", &with_root("verify-ca"), &pw),
        &[],
    );
    s.refused(
        "verify-full, certificate for elsewhere.invalid",
        &s.policy("full2", &with_root("verify-full"), &pw),
        &[],
        "not valid for name",
    );
}
