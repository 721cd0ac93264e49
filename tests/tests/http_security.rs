//! Privileged test of the HTTP listener's security (`metrics.tls`,
//! `metrics.basic_auth_users`), with the real agent on PostgreSQL 15, spoken to with curl
//! over TLS (a self-signed certificate made with `openssl req`):
//!
//! - without credentials, or with a wrong password, every path — the UI, `/api/v1/status`,
//!   `/metrics`, `/healthz` — is 401 with `WWW-Authenticate: Basic`, and no data;
//! - with them, 200 and the data; `/metrics` scraped so passes `promtool check metrics`;
//! - plain HTTP on the TLS port gets no answer;
//! - `pgmon-agent status` and `unlock` reach the agent with `--https --ca-file` and
//!   `--user` (password from PGMON_HTTP_PASSWORD); without them they fail saying what is
//!   missing;
//! - with `security.redact_sql_text`, a statement's text appears nowhere the agent shows it
//!   (`/api/v1/status`, `/api/v1/top-queries` on both sides, `/metrics`), its counts do.

use std::process::Command;

use pgmon_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, PROMTOOL, PgVersion, SUPERUSER_MONITOR,
    Transport, agent_binary,
    budget::{agent_config, install_sql},
    free_port, require_root,
};

/// `curl` of `url` with `extra` arguments: (HTTP status, headers, body); status 0 when
/// curl got no HTTP answer.
fn curl(url: &str, extra: &[&str]) -> (u16, String, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let headers = dir.path().join("headers");
    let out = Command::new("curl")
        .args(["-sk", "--max-time", "20", "-o", "-", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(extra)
        .arg(url)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (
        code.trim().parse().unwrap_or(0),
        std::fs::read_to_string(&headers).unwrap_or_default(),
        body.to_owned(),
    )
}

#[test]
fn tls_and_basic_auth_pg15() {
    if !require_root("tls_and_basic_auth_pg15") {
        return;
    }
    let cluster = Cluster::start(
        PgVersion::Pg15,
        ClusterOptions {
            pg_stat_statements: true,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    install_sql(&cluster);
    let dir = cluster.base_dir();
    let (crt, key) = (dir.join("agent.crt"), dir.join("agent.key"));
    pgmon_tests::tls::self_signed_certificate(&crt, &key).expect("certificate");
    let hash = bcrypt::hash("s3cret pass", 10).expect("bcrypt");
    let port = free_port();
    let security = format!(
        "  tls: {{cert_file: {}, key_file: {}}}\n  basic_auth_users:\n    dba: '{hash}'\n",
        crt.display(),
        key.display()
    );
    let config = agent_config(&cluster, port, "").replacen(
        &format!("  listen: 127.0.0.1:{port}\n"),
        &format!("  listen: 127.0.0.1:{port}\n{security}"),
        1,
    );
    // agent_config's `security:` section (the monitor role is postgres) takes the key too.
    let config = config.replacen(
        SUPERUSER_MONITOR,
        &format!("{SUPERUSER_MONITOR}  redact_sql_text: true\n"),
        1,
    );
    assert!(config.contains("redact_sql_text: true"), "{config}");
    assert!(config.contains("basic_auth_users"), "{config}");
    let agent = Agent::start_with(
        &agent_binary().expect("binary"),
        &config,
        format!("127.0.0.1:{port}"),
        AgentOptions {
            no_ready_check: true,
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    let base = format!("https://127.0.0.1:{port}");
    // The harness waits for /healthz over plain HTTP: here it cannot, so wait for a 401.
    let started = std::time::Instant::now();
    while curl(&format!("{base}/healthz"), &[]).0 != 401 {
        assert!(started.elapsed().as_secs() < 30, "no TLS listener");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for path in [
        "/",
        "/ui/app.js",
        "/api/v1/status",
        "/api/v1/history",
        "/metrics",
        "/healthz",
    ] {
        for creds in [None, Some("dba:wrong"), Some("nobody:s3cret pass")] {
            let args: Vec<&str> = creds.map(|c| vec!["-u", c]).unwrap_or_default();
            let (code, headers, body) = curl(&format!("{base}{path}"), &args);
            assert_eq!(code, 401, "{path} with {creds:?}: {headers}{body}");
            assert!(
                headers
                    .to_ascii_lowercase()
                    .contains("www-authenticate: basic"),
                "{path}: {headers}"
            );
            assert!(
                !body.contains("pgmon_") && !body.contains("\"capture\""),
                "{body}"
            );
        }
        let (code, _, body) = curl(&format!("{base}{path}"), &["-u", "dba:s3cret pass"]);
        assert_eq!(code, 200, "{path} with the password: {body}");
    }
    let (_, _, status) = curl(&format!("{base}/api/v1/status"), &["-u", "dba:s3cret pass"]);
    assert!(status.contains("\"capture\""), "{status}");
    let (_, _, metrics) = curl(&format!("{base}/metrics"), &["-u", "dba:s3cret pass"]);
    assert!(metrics.contains("pgmon_"), "{metrics}");
    let mut promtool = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    use std::io::Write as _;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let out = promtool.wait_with_output().unwrap();
    // promtool exits 1 for lint warnings (e.g. counters without _total in histograms'
    // helpers); exit 3 or a parse error means the scrape was not an exposition.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !said.contains("error while linting") && !said.contains("parse"),
        "promtool check metrics: {said}"
    );
    // Redaction: the statement is counted, its text is shown nowhere.
    let marker = "SELECT 4242 AS secret_marker";
    for _ in 0..3 {
        cluster
            .psql("postgres", "postgres", Transport::Unix, marker)
            .expect("psql");
    }
    let auth = ["-u", "dba:s3cret pass"];
    let started = std::time::Instant::now();
    loop {
        let (_, _, status) = curl(&format!("{base}/api/v1/status"), &auth);
        let v: serde_json::Value = serde_json::from_str(&status).expect("status JSON");
        let redacted = v["roles"].as_array().into_iter().flatten().any(|r| {
            r["fingerprints"].as_array().into_iter().flatten().any(|f| {
                f["calls"].as_u64() >= Some(3)
                    && f["normalized"] == "(redacted: security.redact_sql_text)"
            })
        });
        if redacted {
            break;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "no redacted fingerprint: {status}"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    for path in ["/api/v1/status", "/api/v1/top-queries", "/metrics"] {
        let (code, _, body) = curl(&format!("{base}{path}"), &auth);
        assert_eq!(code, 200, "{path}: {body}");
        assert!(
            !body.contains("secret_marker"),
            "{path} shows the text: {body}"
        );
    }
    let (_, _, top) = curl(&format!("{base}/api/v1/top-queries"), &auth);
    assert!(
        top.contains("\"query\": \"(redacted: security.redact_sql_text)\""),
        "pg_stat_statements' side redacted: {top}"
    );
    // Plain HTTP on the TLS port: no HTTP answer.
    let (code, _, _) = curl(
        &format!("http://127.0.0.1:{port}/metrics"),
        &["-u", "dba:s3cret pass"],
    );
    assert_ne!(code, 200, "plain HTTP must not be served on a TLS listener");

    // The commands that talk to the agent: HTTPS trusting its certificate, the password
    // from the environment.
    let cli = |args: &[&str], password: Option<&str>| {
        let mut c = Command::new(agent_binary().expect("binary"));
        c.args(args).args(["--addr", &format!("127.0.0.1:{port}")]);
        c.env_remove("PGMON_HTTP_PASSWORD");
        if let Some(p) = password {
            c.env("PGMON_HTTP_PASSWORD", p);
        }
        let out = c.output().expect("pgmon-agent");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let ca = crt.to_str().expect("path");
    let tls = ["--https", "--ca-file", ca];
    let (ok, out, err) = cli(
        &[&["status"][..], &tls, &["--user", "dba"]].concat(),
        Some("s3cret pass"),
    );
    assert!(ok && out.contains("hook"), "status over HTTPS: {out}{err}");
    let (ok, _, err) = cli(&["status"], None);
    assert!(!ok && err.contains("--https"), "plain HTTP: {err}");
    let (ok, _, err) = cli(&[&["status"][..], &tls].concat(), None);
    assert!(
        !ok && err.contains("401") && err.contains("PGMON_HTTP_PASSWORD"),
        "no credentials: {err}"
    );
    let (ok, _, err) = cli(
        &[&["status"][..], &tls, &["--user", "dba"]].concat(),
        Some("wrong"),
    );
    assert!(!ok && err.contains("refused"), "a wrong password: {err}");
    let (ok, _, err) = cli(&["status", "--https", "--user", "dba"], Some("s3cret pass"));
    assert!(
        !ok && err.to_lowercase().contains("certificate"),
        "a self-signed certificate against the system's roots: {err}"
    );
    // A lever (POST) through the same door: budgets are off here, so the agent's own
    // refusal (404) comes back, not a 401.
    let (ok, _, err) = cli(
        &[
            &["unlock", "--budget", "postgres"][..],
            &tls,
            &["--user", "dba"],
        ]
        .concat(),
        Some("s3cret pass"),
    );
    assert!(!ok && err.contains("budgets are off"), "{err}");
    drop(agent);
}
