//! Privileged tests of the agent as a `Type=notify` daemon (issue 6), PostgreSQL 15 and 18:
//! it tells systemd READY only once attached and connected, pings the watchdog, and on
//! SIGHUP reloads its policy without losing state. A role in the middle of its storage
//! grace period keeps its timer across a reload that changes the policy (it is locked
//! when the grace that began before the reload ends); a broken policy is refused with
//! its file, line and field, and the old one stays in force; a reload that leaves the
//! role's limits alone keeps the lock, and one that raises its hard limit lets it go.
//! The agent logs JSON (`--log-format json`); the lock is one structured line.

mod storage_util;

use std::{
    os::unix::net::UnixDatagram,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use pgmon_tests::{Agent, AgentOptions, PgVersion, agent_binary, free_port, metrics, require_root};
use storage_util::*;

/// What the agent sent to `NOTIFY_SOCKET`: (when, datagram).
type Notes = Arc<Mutex<Vec<(Instant, String)>>>;

fn listen(path: &std::path::Path) -> Notes {
    let sock = UnixDatagram::bind(path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .expect("timeout");
    let notes: Notes = Arc::default();
    let out = notes.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match sock.recv(&mut buf) {
                Ok(n) => out.lock().expect("notes").push((
                    Instant::now(),
                    String::from_utf8_lossy(&buf[..n]).into_owned(),
                )),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return,
            }
            if Arc::strong_count(&out) == 1 {
                return;
            }
        }
    });
    notes
}

fn count(notes: &Notes, what: &str) -> usize {
    notes
        .lock()
        .expect("notes")
        .iter()
        .filter(|(_, n)| n.lines().any(|l| l == what))
        .count()
}

fn hup(agent: &Agent) {
    // SAFETY: kill(2) on the agent we started.
    assert_eq!(unsafe { libc::kill(agent.pid() as i32, libc::SIGHUP) }, 0);
}

fn reloads(agent: &Agent, result: &str) -> f64 {
    metrics::sum(
        &agent.metrics().expect("metrics"),
        "pgmon_config_reloads_total",
        &[("result", result)],
    )
}

fn scenario(version: PgVersion) {
    let cluster = slow_tenant_cluster(version);
    let port = free_port();
    let yaml = |soft: &str, hard: &str| {
        config(
            &cluster,
            port,
            &format!(
                "    - {{match: slow, soft_limit: {soft}, hard_limit: {hard}, hard_grace_period: 8}}\n"
            ),
        )
        .replace("unlock_grace_period: 3", "unlock_grace_period: 2")
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("notify.sock");
    let notes = listen(&socket);
    let started = Instant::now();
    let agent = Agent::start_with(
        &agent_binary().expect("binary"),
        &yaml("1MB", "2MB"),
        format!("127.0.0.1:{port}"),
        AgentOptions {
            extra_args: vec!["--log-format".into(), "json".into()],
            env: vec![
                ("NOTIFY_SOCKET".into(), socket.display().to_string()),
                ("WATCHDOG_USEC".into(), "1000000".into()),
            ],
            ..AgentOptions::default()
        },
    )
    .expect("agent");
    wait_until("READY=1", Duration::from_secs(10), || {
        count(&notes, "READY=1") == 1
    });
    let ready_at = notes.lock().expect("notes")[0].0;
    println!("{version}: READY=1 {:?} after spawn", ready_at - started);
    let log = agent.log();
    let attached = log.find("capture attached").expect("attach logged");
    let ready_line = log.find("ready: probes attached").expect("ready logged");
    assert!(
        attached < ready_line,
        "READY before the probes were attached"
    );
    wait_until("watchdog pings", Duration::from_secs(5), || {
        count(&notes, "WATCHDOG=1") >= 3
    });

    // Into the hard grace.
    wait_until("slow counted", Duration::from_secs(10), || {
        storage_role(&agent, "slow").is_some_and(|r| r["usage_bytes"].is_u64())
    });
    sql(
        &cluster,
        "slow",
        "tenants",
        "CREATE TABLE s AS SELECT repeat('x', 1000) AS v FROM generate_series(1, 3000)",
    );
    wait_until("slow hard", Duration::from_secs(3), || {
        state(&agent, "slow") == "hard"
    });
    let crossed = Instant::now();
    std::thread::sleep(Duration::from_secs(2));

    // A changed policy mid-grace: the soft limit moves, the grace timer does not; an
    // alert threshold moves too.
    let long_tx = |agent: &Agent| -> String {
        let (_, body) = agent.get("/api/v1/alerts").expect("alerts");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        v["data"]["rules"]
            .as_array()
            .expect("rules")
            .iter()
            .find(|r| r["alertname"] == "PostgresLongTransaction")
            .map(|r| r["expression"].as_str().unwrap_or("").to_owned())
            .expect("the long transaction rule")
    };
    assert!(long_tx(&agent).contains(">= 300 "), "{}", long_tx(&agent));
    std::fs::write(
        agent.config_path(),
        format!(
            "{}alerts:\n  long_transaction_seconds: {{warn: 120, crit: 600}}\n",
            yaml("1536kB", "2MB")
        ),
    )
    .expect("policy");
    hup(&agent);
    wait_until("reload applied", Duration::from_secs(5), || {
        reloads(&agent, "applied") == 1.0
    });
    // The datagram goes out before the reload, but the listener thread may not have taken
    // it yet on a busy machine.
    wait_until("RELOADING=1", Duration::from_secs(3), || {
        count(&notes, "RELOADING=1") >= 1
    });
    wait_until("new soft limit", Duration::from_secs(5), || {
        storage_role(&agent, "slow")
            .is_some_and(|r| r["soft_limit_bytes"].as_u64() == Some(1536 * 1024))
    });
    wait_until("new alert threshold", Duration::from_secs(8), || {
        long_tx(&agent).contains(">= 120 (critical: >= 600)")
    });
    let r = storage_role(&agent, "slow").expect("slow");
    assert_eq!(r["state"], "hard", "{r}");
    let left = r["time_left_seconds"].as_f64().expect("grace time left");
    assert!(
        left < 6.5,
        "the grace restarted at the reload: {left} s left of 8"
    );

    // A broken policy is refused; the one in force stays.
    std::fs::write(
        agent.config_path(),
        yaml("1536kB", "2MB").replace("hard_grace_period: 8", "hard_grace_perod: 8"),
    )
    .expect("policy");
    hup(&agent);
    wait_until("reload refused", Duration::from_secs(5), || {
        reloads(&agent, "refused") == 1.0
    });
    let m = agent.metrics().expect("metrics");
    assert_eq!(
        metrics::sum(&m, "pgmon_config_last_reload_successful", &[]),
        0.0
    );
    let log = agent.log();
    let refusal = log
        .lines()
        .find(|l| l.contains("policy reload refused"))
        .expect("refusal logged");
    assert!(
        refusal.contains("hard_grace_perod") && refusal.contains("pgmon.yaml:"),
        "the refusal names the file, line and field: {refusal}"
    );

    wait_until("slow locked", Duration::from_secs(10), || {
        !can_login(&cluster, "slow")
    });
    let elapsed = crossed.elapsed().as_secs_f64();
    assert!(
        elapsed < 10.5,
        "locked {elapsed} s after crossing (grace 8 s, reloads did not restart it)"
    );

    // Limits unchanged: the lock stays past the unlock grace.
    std::fs::write(agent.config_path(), yaml("1MB", "2MB")).expect("policy");
    hup(&agent);
    wait_until("second reload applied", Duration::from_secs(5), || {
        reloads(&agent, "applied") == 2.0
    });
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(state(&agent, "slow"), "locked");
    assert!(!can_login(&cluster, "slow"), "a reload let the lock go");

    // A hard limit above its usage: unlocked after the unlock grace.
    std::fs::write(agent.config_path(), yaml("5MB", "10MB")).expect("policy");
    hup(&agent);
    wait_until("slow unlocked", Duration::from_secs(10), || {
        can_login(&cluster, "slow")
    });
    assert_eq!(
        audit(&cluster, "slow"),
        [
            "hard:grace:logged",
            "locked:lock:applied",
            "ok:unlock:applied"
        ]
    );

    let log = agent.log();
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
    }
    let lock = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).expect("json"))
        .find(|v| v["target"] == "pgmon::enforcement" && v["fields"]["action"] == "lock")
        .expect("the lock as one structured line");
    assert_eq!(lock["fields"]["role"], "slow", "{lock}");
    assert!(!log.contains("panicked"));
}

#[test]
fn reload_keeps_timers_and_locks_pg15() {
    if require_root("reload_keeps_timers_and_locks_pg15") {
        scenario(PgVersion::Pg15);
    }
}

#[test]
fn reload_keeps_timers_and_locks_pg18() {
    if require_root("reload_keeps_timers_and_locks_pg18") {
        scenario(PgVersion::Pg18);
    }
}
