//! Privileged tests of the in-agent alert engine on PostgreSQL 15 and 18. Each chaos
//! scenario is driven for real, and each asserts the metric the health loops export AND the
//! alert delivered to a webhook receiver the test runs on loopback: a WAL burst after a
//! quiet baseline (and its resolution), a forced temp spill, a long transaction (and its
//! resolution), an idle-in-transaction session (and its resolution), a blocking chain, and
//! `max_connections` nearly exhausted. Around them:
//! - a Slack-format sink whose receiver answers 500 three times gets every message anyway
//!   (retries with backoff);
//! - a webhook that never answers delays nothing: the other sinks get their alerts and the
//!   fast loop's metrics keep moving;
//! - email reaches a loopback SMTP server (aiosmtpd, from Debian's python3-aiosmtpd);
//! - `/api/v1/alerts` and `pgmon_alerts_firing` show the firing alert with its expression;
//! - with `metrics.external_url` set, the webhook JSON (`url`), the Slack text and the email
//!   body link to the UI's panel for the alert.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, Cluster, ClusterOptions, FAST_HEALTH_LOOPS, PgVersion, Receiver, SUPERUSER_MONITOR,
    Transport, agent_binary, free_port, require_root,
};
use serde_json::Value;

const APP: &str = "app";
/// How long a notification may take to arrive (the scenarios' `for` is 0–1 s).
const DELIVERY: Duration = Duration::from_secs(30);

/// A loopback SMTP server (`python3 -m aiosmtpd`) writing what it receives to a Maildir;
/// killed on drop.
struct Smtp {
    child: Child,
    port: u16,
    maildir: PathBuf,
    _dir: tempfile::TempDir,
}

impl Smtp {
    fn start() -> Smtp {
        let python = Path::new("/usr/bin/python3");
        let has = Command::new(python)
            .args(["-c", "import aiosmtpd"])
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            has,
            "Debian's python3-aiosmtpd is missing: `cargo xtask setup` installs it"
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // Maildir creates its tmp/new/cur only in a directory it makes itself.
        let maildir = dir.path().join("mail");
        let port = free_port();
        let child = Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l"])
            .arg(format!("127.0.0.1:{port}"))
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m aiosmtpd");
        let t = Instant::now();
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(15),
                "aiosmtpd not listening"
            );
            thread::sleep(Duration::from_millis(100));
        }
        Smtp {
            child,
            port,
            maildir,
            _dir: dir,
        }
    }

    /// The messages received so far, raw.
    fn messages(&self) -> Vec<String> {
        std::fs::read_dir(self.maildir.join("new"))
            .map(|d| {
                d.flatten()
                    .filter_map(|e| std::fs::read_to_string(e.path()).ok())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Smtp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The receivers of one agent.
struct Sinks {
    webhook: Receiver,
    slack: Receiver,
    dead: Receiver,
    smtp: Smtp,
}

fn config(cluster: &Cluster, port: u16, s: &Sinks) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n  external_url: 'https://db1.example.com:8181/'\n\
         {SUPERUSER_MONITOR}{FAST_HEALTH_LOOPS}alerts:\n  evaluation_interval_seconds: 1\n  repeat_seconds: 0\n  notifiers:\n    \
         - webhook: {{url: '{}'}}\n    - slack: {{url: '{}'}}\n    - webhook: {{url: '{}', name: dead}}\n    \
         - email: {{host: 127.0.0.1, port: {}, security: none, from: 'pgmon <pgmon@localhost>', to: [dba@localhost]}}\n  \
         delivery: {{timeout_ms: 1500, retries: 3, queue: 4, max_per_minute: 100}}\n  \
         connection_saturation: {{warn: 0.6, crit: 0.97, for_seconds: 1}}\n  \
         long_transaction_seconds: {{warn: 4, crit: 10000, for_seconds: 1}}\n  \
         idle_in_transaction_seconds: {{warn: 3, crit: 10000, for_seconds: 1}}\n  \
         lock_wait_seconds: {{warn: 2, crit: 10000}}\n  \
         wal_surge: {{window_seconds: 3, baseline_seconds: 600, min_samples: 5, floor_bytes_per_second: 1000000, for_seconds: 0}}\n  \
         temp_surge: {{window_seconds: 3, baseline_seconds: 600, min_samples: 5, floor_bytes_per_second: 200000, for_seconds: 0}}\n",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Unix),
        s.webhook.url("/hook"),
        s.slack.url("/slack"),
        s.dead.url("/dead"),
        s.smtp.port,
    )
}

/// The notification of `alertname` with `status` (`firing`, `resolved`), among those
/// received after the first `since`.
fn delivered(r: &Receiver, since: usize, alertname: &str, status: &str) -> Value {
    r.wait_for_since(since, &format!("{alertname} {status}"), DELIVERY, |b| {
        b["alertname"] == alertname && b["status"] == status
    })
}

fn alerts(version: PgVersion) {
    let cluster = Cluster::start(
        version,
        ClusterOptions {
            max_connections: 30,
            ..ClusterOptions::default()
        },
    )
    .expect("cluster");
    cluster.create_role_with_db(APP).expect("role");
    let sql = |s: &str| cluster.psql(APP, APP, Transport::Unix, s).expect(s);
    sql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 100000) g");
    // Nothing left for autovacuum to write while the baseline forms.
    sql("VACUUM ANALYZE t");
    cluster.psql_admin("CHECKPOINT").expect("checkpoint");

    let sinks = Sinks {
        webhook: Receiver::start(),
        slack: Receiver::start(),
        dead: Receiver::start(),
        smtp: Smtp::start(),
    };
    sinks.slack.fail_next(3);
    sinks.dead.hang(true);
    let port = free_port();
    let agent = Agent::start(
        &agent_binary().expect("binary"),
        &config(&cluster, port, &sinks),
        format!("127.0.0.1:{port}"),
    )
    .expect("agent");
    for l in ["fast", "medium"] {
        agent.wait_metric("pgmon_last_scrape_success", &[("loop", l)], DELIVERY, |v| {
            v == 1.0
        });
    }
    // A quiet baseline: wait until the API shows at least min_samples (5) rates of WAL and
    // of every database's temp bytes, then nothing may have fired.
    let armed = |alertname: &str| -> bool {
        let Ok((_, body)) = agent.get("/api/v1/alerts") else {
            return false;
        };
        let v: Value = serde_json::from_str(&body).expect("alerts json");
        v["data"]["rules"].as_array().is_some_and(|rules| {
            rules.iter().any(|r| {
                r["alertname"] == alertname
                    && r["baselines"]
                        .as_array()
                        .is_some_and(|b| !b.is_empty() && b.iter().all(|b| b["armed"] == true))
            })
        })
    };
    let t = Instant::now();
    while !(armed("PostgresWalSurge") && armed("PostgresTempSurge")) {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "the surge baselines never formed: {}",
            agent
                .get("/api/v1/alerts")
                .map(|(_, b)| b)
                .unwrap_or_default()
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert!(
        sinks.webhook.bodies().is_empty(),
        "a quiet cluster fires nothing: {:?}",
        sinks.webhook.bodies()
    );

    // A WAL burst; once it is over, the alert resolves. (work_mem large enough that
    // generate_series's tuplestore does not spill: no temp files here.)
    let mark = sinks.webhook.bodies().len();
    let before = agent.metric("pgmon_wal_position_bytes_total", &[]);
    sql(
        "SET work_mem = '64MB'; INSERT INTO t SELECT g, md5(g::text) FROM generate_series(1, 200000) g",
    );
    agent.wait_metric("pgmon_wal_position_bytes_total", &[], DELIVERY, |v| {
        v >= before + 10.0e6
    });
    let wal = delivered(&sinks.webhook, mark, "PostgresWalSurge", "firing");
    assert_eq!(wal["severity"], "warning", "{wal}");
    assert!(
        wal["message"].as_str().unwrap().starts_with("WAL at "),
        "{wal}"
    );
    assert!(
        wal["expression"]
            .as_str()
            .unwrap()
            .starts_with("rate(pgmon_wal_position_bytes_total[3s]) > mean + 3σ"),
        "{wal}"
    );
    let resolved = delivered(&sinks.webhook, mark, "PostgresWalSurge", "resolved");
    assert!(resolved["ends_at"].is_string(), "{resolved}");

    // A forced temp spill.
    let mark = sinks.webhook.bodies().len();
    let before = agent.metric("pg_stat_database_temp_bytes_total", &[("datname", APP)]);
    sql(
        "SET work_mem = '64kB'; SELECT count(*) FROM (SELECT g, v FROM t ORDER BY g DESC, v OFFSET 1) s",
    );
    agent.wait_metric(
        "pg_stat_database_temp_bytes_total",
        &[("datname", APP)],
        DELIVERY,
        |v| v >= before + 2.0e6,
    );
    let temp = delivered(&sinks.webhook, mark, "PostgresTempSurge", "firing");
    assert_eq!(temp["labels"]["datname"], APP, "{temp}");
    assert_eq!(
        temp["dedupe_key"], "PostgresTempSurge{datname=\"app\"}",
        "{temp}"
    );

    // A long (active) transaction; resolved when it commits. It lasts well past the
    // threshold (4 s), so the loops of a loaded machine still see it for a while.
    let mark = sinks.webhook.bodies().len();
    let mut long = cluster.psql_background(APP, APP, "BEGIN; SELECT pg_sleep(12); COMMIT");
    agent.wait_metric("pgmon_oldest_xact_age_seconds", &[], DELIVERY, |v| v >= 4.0);
    let lt = delivered(&sinks.webhook, mark, "PostgresLongTransaction", "firing");
    assert!(lt["value"].as_f64().unwrap() >= 4.0, "{lt}");
    assert!(
        lt["message"].as_str().unwrap().contains("(database app)"),
        "{lt}"
    );
    // metrics.external_url: the notification links to the UI's panel for it.
    assert_eq!(lt["url"], "https://db1.example.com:8181/#/overview", "{lt}");
    assert!(long.wait().expect("psql").success());
    delivered(&sinks.webhook, mark, "PostgresLongTransaction", "resolved");

    // Idle in transaction, then a blocking chain behind it.
    let mark = sinks.webhook.bodies().len();
    let mut idle = cluster
        .hold_session(APP, APP, Transport::Unix)
        .expect("session");
    idle.run("BEGIN; SELECT txid_current()").expect("begin");
    agent.wait_metric(
        "pgmon_idle_in_transaction_max_seconds",
        &[],
        DELIVERY,
        |v| v >= 3.0,
    );
    let it = delivered(&sinks.webhook, mark, "PostgresIdleInTransaction", "firing");
    assert_eq!(it["severity"], "warning", "{it}");
    // The API and the metric show it, with its expression.
    let (code, body) = agent.get("/api/v1/alerts").expect("GET /api/v1/alerts");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(api["endpoint"], "/api/v1/alerts", "{body}");
    assert!(
        api["sql"]
            .as_array()
            .expect("sql")
            .iter()
            .any(|q| q["name"] == "ages" && q["by"] == "health loop fast"),
        "{body}"
    );
    let api = &api["data"];
    let firing = api["firing"]
        .as_array()
        .expect("firing")
        .iter()
        .find(|a| a["alertname"] == "PostgresIdleInTransaction")
        .unwrap_or_else(|| panic!("not firing in {body}"));
    assert_eq!(
        firing["expression"],
        "pgmon_idle_in_transaction_max_seconds >= 3 (critical: >= 10000)"
    );
    assert!(
        api["history"].as_array().is_some_and(|h| !h.is_empty()),
        "{body}"
    );
    assert!(
        api["rules"].as_array().is_some_and(|r| r.len() >= 17),
        "{body}"
    );
    assert_eq!(
        agent.metric(
            "pgmon_alerts_firing",
            &[
                ("alertname", "PostgresIdleInTransaction"),
                ("severity", "warning")
            ]
        ),
        1.0
    );
    idle.run("LOCK TABLE t IN ACCESS EXCLUSIVE MODE")
        .expect("lock");
    let mut waiters = vec![
        cluster.psql_background(APP, APP, "SELECT count(*) FROM t"),
        cluster.psql_background(APP, APP, "SELECT count(*) FROM t"),
    ];
    agent.wait_metric("pgmon_blocked_backends", &[], DELIVERY, |v| v == 2.0);
    agent.wait_metric("pgmon_lock_wait_max_seconds", &[], DELIVERY, |v| v >= 2.0);
    let bl = delivered(&sinks.webhook, mark, "PostgresBlockingLocks", "firing");
    assert!(
        bl["message"].as_str().unwrap().contains("(2 blocked"),
        "{bl}"
    );
    // The fast loop keeps moving while the dead sink holds requests unanswered.
    assert!(sinks.dead.requests() > 0, "the dead sink was tried");
    let a = agent.metric("pgmon_idle_in_transaction_max_seconds", &[]);
    thread::sleep(Duration::from_millis(2500));
    let b = agent.metric("pgmon_idle_in_transaction_max_seconds", &[]);
    assert!(b >= a + 1.0, "fast loop stalled: {a} then {b}");
    assert!(sinks.dead.bodies().is_empty());
    idle.run("ROLLBACK").expect("rollback");
    for w in &mut waiters {
        assert!(w.wait().expect("waiter").success());
    }
    delivered(
        &sinks.webhook,
        mark,
        "PostgresIdleInTransaction",
        "resolved",
    );
    delivered(&sinks.webhook, mark, "PostgresBlockingLocks", "resolved");
    drop(idle);

    // max_connections nearly exhausted: 20 more sessions of 30.
    let mark = sinks.webhook.bodies().len();
    let held: Vec<_> = (0..20)
        .map(|_| {
            cluster
                .hold_session(APP, APP, Transport::Unix)
                .expect("session")
        })
        .collect();
    let ratio = agent.wait_metric("pgmon_connections_used_ratio", &[], DELIVERY, |v| v >= 0.7);
    let cs = delivered(
        &sinks.webhook,
        mark,
        "PostgresConnectionSaturation",
        "firing",
    );
    assert!(cs["value"].as_f64().unwrap() >= 0.6, "{cs} ({ratio})");
    assert!(
        cs["message"]
            .as_str()
            .unwrap()
            .contains("of max_connections"),
        "{cs}"
    );
    drop(held);
    delivered(
        &sinks.webhook,
        mark,
        "PostgresConnectionSaturation",
        "resolved",
    );

    // Slack: three 500s, then every message anyway.
    let sl = sinks.slack.wait_for("Slack WAL surge", DELIVERY, |b| {
        b["text"]
            .as_str()
            .is_some_and(|t| t.starts_with("[FIRING warning] PostgresWalSurge"))
    });
    assert_eq!(
        sl.as_object().map(|o| o.len()),
        Some(1),
        "Slack's payload: {sl}"
    );
    assert!(
        sl["text"]
            .as_str()
            .is_some_and(|t| t.ends_with("<https://db1.example.com:8181/#/overview|open in pgmon>")),
        "Slack's link: {sl}"
    );
    assert!(sinks.slack.requests() >= sinks.slack.bodies().len() + 3);
    agent.wait_metric(
        "pgmon_alert_notifications_total",
        &[("sink", "slack"), ("result", "sent")],
        DELIVERY,
        |v| v >= 1.0,
    );
    assert!(agent.log().contains("notification failed"));

    // Email.
    let t = Instant::now();
    let mail = loop {
        if let Some(m) = sinks
            .smtp
            .messages()
            .into_iter()
            .find(|m| m.contains("Subject: [FIRING warning] PostgresWalSurge"))
        {
            break m;
        }
        assert!(
            t.elapsed() < DELIVERY,
            "no WAL surge email: {:?}",
            sinks.smtp.messages()
        );
        thread::sleep(Duration::from_millis(200));
    };
    assert!(mail.contains("To: dba@localhost"), "{mail}");
    assert!(
        mail.contains("Open in pgmon: https://db1.example.com:8181/#/overview"),
        "{mail}"
    );
    assert!(
        mail.contains("expression: rate(pgmon_wal_position_bytes_total[3s])"),
        "{mail}"
    );

    // The dead sink: given up on or dropped, counted.
    agent.wait_metric(
        "pgmon_alert_notifications_total",
        &[("sink", "dead")],
        DELIVERY,
        |v| v >= 1.0,
    );
    let sent_dead = agent.metric(
        "pgmon_alert_notifications_total",
        &[("sink", "dead"), ("result", "sent")],
    );
    assert_eq!(sent_dead, 0.0);
    let (code, body) = agent.get("/healthz").expect("healthz");
    assert_eq!(code, 200, "{body}");
    assert!(!agent.log().contains("panicked"));
}

#[test]
fn alerts_pg15() {
    if require_root("alerts_pg15") {
        alerts(PgVersion::Pg15);
    }
}

#[test]
fn alerts_pg18() {
    if require_root("alerts_pg18") {
        alerts(PgVersion::Pg18);
    }
}
