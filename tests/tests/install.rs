//! Privileged tests of pgmon as an installed service (issue 6), against a PostgreSQL 15
//! cluster:
//!
//! - the agent runs as an unprivileged uid with exactly the unit's capabilities (its
//!   `CapabilityBoundingSet=` line, through `setpriv`), attaches and captures; with any
//!   one of them removed it exits with a message naming it;
//! - every system call the agent makes while it starts, captures pgbench, polls health,
//!   reloads and stops is allowed by the unit's `SystemCallFilter=` (strace);
//! - the `.deb` (`PGMON_DEB`, built by `cargo xtask test`) installs with `dpkg -i`, its
//!   files are where the unit expects them, `systemd-analyze verify` accepts the unit and
//!   `systemd-analyze security` rates it, `install-sql` and `doctor` run from the installed
//!   path, and `dpkg -r` / `--purge` remove it cleanly.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use pgmon_tests::{
    Agent, AgentOptions, Cluster, ClusterOptions, PgVersion, PgbenchRun, Protocol,
    SUPERUSER_MONITOR, Transport, agent_binary, free_port, metrics, require_root,
};

const UNIT: &str = include_str!("../../systemd/pgmon-agent.service");

/// The values of `key=` in the unit, split on whitespace.
fn unit_values(key: &str) -> Vec<String> {
    let line = UNIT
        .lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap_or_else(|| panic!("{key}= missing from the unit"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

/// `CAP_BPF` → `bpf` (setpriv's spelling).
fn setpriv_name(cap: &str) -> String {
    cap.trim_start_matches("CAP_").to_lowercase()
}

fn setpriv(caps: &[String]) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|c| format!(",+{}", setpriv_name(c)))
        .collect();
    vec![
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--".into(),
    ]
}

fn config(cluster: &Cluster, port: u16, extra: &str) -> String {
    format!(
        "cluster:\n  data_directory: {}\n  connection: \"{}\"\nmetrics:\n  listen: 127.0.0.1:{port}\n{SUPERUSER_MONITOR}{extra}",
        cluster.data_dir().display(),
        cluster.conninfo("postgres", "postgres", Transport::Tcp),
    )
}

fn start_cluster() -> Cluster {
    let cluster = Cluster::start(PgVersion::Pg15, ClusterOptions::default()).expect("cluster");
    cluster.create_role_with_db("app").expect("role");
    cluster
}

#[test]
fn the_units_capabilities_are_enough_and_each_is_needed() {
    if !require_root("the_units_capabilities_are_enough_and_each_is_needed") {
        return;
    }
    let caps = unit_values("CapabilityBoundingSet");
    assert_eq!(caps, unit_values("AmbientCapabilities"));
    let cluster = start_cluster();
    let binary = agent_binary().expect("binary");
    let port = free_port();
    let yaml = config(&cluster, port, "health: {enabled: false}\n");

    let agent = Agent::start_with(
        &binary,
        &yaml,
        format!("127.0.0.1:{port}"),
        AgentOptions {
            wrapper: setpriv(&caps),
            ..AgentOptions::default()
        },
    )
    .expect("the agent starts as uid 65534 with the unit's capabilities");
    let status = std::fs::read_to_string(format!("/proc/{}/status", agent.pid())).expect("status");
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("65534")),
        "not running as 65534:\n{status}"
    );
    for i in 0..20 {
        cluster
            .psql("app", "app", Transport::Tcp, &format!("SELECT {i}"))
            .expect("query");
    }
    let t = Instant::now();
    let mut seen = 0.0;
    while t.elapsed() < Duration::from_secs(10) && seen < 20.0 {
        seen = metrics::sum(
            &agent.metrics().expect("metrics"),
            "pgmon_queries_total",
            &[("role", "app")],
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(seen >= 20.0, "captured {seen} of 20 queries as uid 65534");
    drop(agent);

    // Started as the unit would, less one capability: the start fails; the error (with
    // the agent's log tail) is returned.
    let refused = |kept: &[String], env: Vec<(String, String)>| -> String {
        match Agent::start_with(
            &binary,
            &yaml,
            format!("127.0.0.1:{port}"),
            AgentOptions {
                wrapper: setpriv(kept),
                env,
                ..AgentOptions::default()
            },
        ) {
            Ok(_) => String::new(),
            Err(e) => format!("{e:#}"),
        }
    };
    for removed in &caps {
        let kept: Vec<String> = caps.iter().filter(|c| *c != removed).cloned().collect();
        let out = refused(&kept, Vec::new());
        assert!(!out.is_empty(), "the agent ran without {removed}");
        assert!(
            out.contains(removed.as_str()),
            "without {removed} the error does not name it:\n{out}"
        );
        println!("without {removed}: {}", out.lines().last().unwrap_or(""));
        // Past the agent's own check, the kernel (or the file system) refuses too: the
        // capability is truly needed, not only asked for.
        let out = refused(
            &kept,
            vec![("PGMON_SKIP_CAPABILITY_CHECK".into(), "1".into())],
        );
        assert!(!out.is_empty(), "the agent ran without {removed}");
        println!(
            "without {removed}, unchecked: {}",
            out.lines().last().unwrap_or("")
        );
    }
}

/// Runs `cmd`; (exited successfully, stdout + stderr). Killed after `timeout`.
fn run_with_timeout(cmd: &mut Command, timeout: Duration) -> (bool, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("out");
    let f = std::fs::File::create(&log).expect("log");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(f.try_clone().expect("dup"))
        .stderr(f)
        .spawn()
        .expect("spawn");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break Some(s);
        }
        if t.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    (status.is_some_and(|s| s.success()), text)
}

/// The system calls a `SystemCallFilter=` line allows: groups expanded (recursively)
/// with `systemd-analyze syscall-filter`, names kept as they are.
fn allowed_syscalls(filter: &[String]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut todo: Vec<String> = filter.to_vec();
    let mut expanded = BTreeSet::new();
    while let Some(item) = todo.pop() {
        if !item.starts_with('@') {
            out.insert(item);
            continue;
        }
        if !expanded.insert(item.clone()) {
            continue;
        }
        let text = Command::new("systemd-analyze")
            .args(["syscall-filter", &item])
            .output()
            .expect("systemd-analyze (apt package systemd)");
        assert!(
            text.status.success(),
            "systemd-analyze syscall-filter {item}"
        );
        for line in String::from_utf8_lossy(&text.stdout).lines().skip(1) {
            let l = line.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            todo.push(l.to_owned());
        }
    }
    out
}

#[test]
fn every_system_call_is_allowed_by_the_units_filter() {
    if !require_root("every_system_call_is_allowed_by_the_units_filter") {
        return;
    }
    let allowed = allowed_syscalls(&unit_values("SystemCallFilter"));
    assert!(allowed.contains("read") && allowed.contains("bpf"));
    let cluster = start_cluster();
    cluster.pgbench_init("app", "app", 1).expect("pgbench init");
    let binary = agent_binary().expect("binary");
    let port = free_port();
    let trace_dir = tempfile::tempdir().expect("tempdir");
    let trace = trace_dir.path().join("strace.out");
    let yaml = config(
        &cluster,
        port,
        "health:\n  loops:\n    fast: {interval_seconds: 1, budget_seconds: 1}\n    \
         medium: {interval_seconds: 1, budget_seconds: 1}\n    slow: {interval_seconds: 2, budget_seconds: 2}\n    \
         hourly: {interval_seconds: 2, budget_seconds: 2}\n",
    );
    let mut agent = Agent::start_with(
        &binary,
        &yaml,
        format!("127.0.0.1:{port}"),
        AgentOptions {
            wrapper: vec![
                "strace".into(),
                "-f".into(),
                "-qq".into(),
                "-o".into(),
                trace.display().to_string(),
                "--".into(),
            ],
            ready_timeout: Duration::from_secs(60),
            ..AgentOptions::default()
        },
    )
    .expect("agent under strace");
    let pid = child_of(agent.pid());
    cluster
        .pgbench(&PgbenchRun {
            clients: 2,
            jobs: 2,
            transactions: None,
            duration_s: Some(3),
            protocol: Protocol::Extended,
            ..PgbenchRun::new("app", "app")
        })
        .expect("pgbench");
    let _ = agent.metrics_text().expect("scrape");
    let _ = agent.status_json().expect("status");
    // The reload's system calls must be in the trace: wait until it has been applied.
    let reloads = agent.metric("pgmon_config_reloads_total", &[("result", "applied")]);
    // SAFETY: kill(2) on the agent we started (strace's child).
    unsafe { libc::kill(pid as i32, libc::SIGHUP) };
    agent.wait_metric(
        "pgmon_config_reloads_total",
        &[("result", "applied")],
        Duration::from_secs(30),
        |v| v > reloads,
    );
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let exit = agent
        .wait_exit(Duration::from_secs(20))
        .expect("wait")
        .expect("strace exits with the agent");
    assert!(
        exit.success(),
        "agent under strace: {exit}\n{}",
        agent.log()
    );

    let text = std::fs::read_to_string(&trace).expect("strace output");
    let mut used = BTreeSet::new();
    for line in text.lines() {
        // "1234 name(args…" or "1234 <... name resumed>…"
        let rest = line.split_once(' ').map_or("", |(_, r)| r).trim_start();
        let rest = rest.strip_prefix("<... ").unwrap_or(rest);
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty()
            && (rest[name.len()..].starts_with('(') || rest[name.len()..].starts_with(" resumed"))
        {
            used.insert(name);
        }
    }
    assert!(
        used.contains("bpf") && used.contains("perf_event_open"),
        "{used:?}"
    );
    let denied: Vec<&String> = used.iter().filter(|s| !allowed.contains(*s)).collect();
    println!(
        "{} distinct system calls, all allowed: {used:?}",
        used.len()
    );
    assert!(
        denied.is_empty(),
        "system calls the unit's filter would refuse: {denied:?}"
    );
}

/// The only child of `parent` (the agent under strace).
fn child_of(parent: u32) -> u32 {
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(10) {
        let children = std::fs::read_to_string(format!("/proc/{parent}/task/{parent}/children"))
            .unwrap_or_default();
        if let Some(pid) = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
        {
            return pid;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("no child of {parent}");
}

fn sh(cmd: &str) -> (bool, String) {
    run_with_timeout(
        Command::new("sh").args(["-c", cmd]),
        Duration::from_secs(120),
    )
}

fn deb() -> PathBuf {
    match std::env::var_os("PGMON_DEB") {
        Some(p) => PathBuf::from(p),
        None => {
            let p = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../target/debian/pgmon_0.1.0_amd64.deb");
            assert!(
                p.exists(),
                "no package: set PGMON_DEB or run `cargo xtask package` (cargo xtask test does)"
            );
            p
        }
    }
}

#[test]
fn the_package_installs_verifies_runs_and_removes() {
    if !require_root("the_package_installs_verifies_runs_and_removes") {
        return;
    }
    let deb = deb();
    let _ = sh("dpkg --purge pgmon");
    let (ok, out) = sh(&format!("dpkg -i {}", deb.display()));
    assert!(ok, "dpkg -i:\n{out}");
    assert!(
        out.contains("nothing started"),
        "postinst says what to do next:\n{out}"
    );

    let exec = unit_values("ExecStart");
    let installed_bin = Path::new(&exec[0]);
    assert_eq!(installed_bin, Path::new("/usr/bin/pgmon-agent"));
    for path in [
        "/usr/bin/pgmon-agent",
        "/lib/systemd/system/pgmon-agent.service",
        "/etc/pgmon/pgmon.yaml",
        "/etc/default/pgmon-agent",
        "/usr/share/pgmon/sql/001_roles.sql",
        "/usr/share/pgmon/sql/005_sessions.sql",
        "/usr/share/pgmon/sql/uninstall.sql",
        "/usr/share/pgmon/native/Makefile",
        "/usr/share/pgmon/native/pgmon_storage.c",
        "/usr/share/pgmon/alerts/pgmon-rules.yml",
        "/usr/share/doc/pgmon/README.md",
    ] {
        assert!(Path::new(path).exists(), "{path} not installed");
    }
    let (ok, passwd) = sh("getent passwd pgmon");
    assert!(ok, "user pgmon not created");
    println!("user: {}", passwd.trim());
    let (_, owner) = sh("stat -c %U /var/lib/pgmon");
    assert_eq!(owner.trim(), "pgmon", "/var/lib/pgmon owner");
    let (ok, out) = sh("/usr/bin/pgmon-agent check-config /etc/pgmon/pgmon.yaml");
    assert!(ok, "the shipped default policy is invalid:\n{out}");

    let (ok, out) = sh("systemd-analyze verify /lib/systemd/system/pgmon-agent.service");
    assert!(ok, "systemd-analyze verify:\n{out}");
    let (_, out) =
        sh("systemd-analyze security --offline=true /lib/systemd/system/pgmon-agent.service");
    let exposure: f64 = out
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for pgmon-agent.service: ")
                .nth(1)
        })
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{out}"));
    println!("systemd-analyze security: exposure {exposure}");
    assert!(
        exposure <= 3.0,
        "exposure {exposure} (> 3.0: a hardening option went missing)"
    );

    // The C storage trigger, built from the package's source as the README says, out of
    // tree (the shipped directory stays as installed).
    let build = tempfile::tempdir().expect("tempdir");
    let (ok, out) = sh(&format!(
        "cd {} && make -f /usr/share/pgmon/native/Makefile VPATH=/usr/share/pgmon/native \
         PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config install",
        build.path().display()
    ));
    assert!(ok, "building the C storage trigger:\n{out}");
    assert!(Path::new("/usr/lib/postgresql/15/lib/pgmon_storage.so").exists());

    let cluster = start_cluster();
    let dsn = cluster.conninfo("postgres", "postgres", Transport::Tcp);
    for _ in 0..2 {
        let (ok, out) = sh(&format!("/usr/bin/pgmon-agent install-sql --dsn '{dsn}'"));
        assert!(ok, "install-sql:\n{out}");
        assert!(
            out.contains("app: 002-005 applied, schema version 5"),
            "{out}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let policy = dir.path().join("pgmon.yaml");
    std::fs::write(
        &policy,
        format!(
            "cluster:\n  data_directory: {}\n  connection: \"{}\"\nbudgets:\n  enabled: true\n\
             storage:\n  enabled: true\n",
            cluster.data_dir().display(),
            cluster.conninfo("pgmon", "postgres", Transport::Tcp)
        ),
    )
    .expect("policy");
    let (ok, out) = sh(&format!(
        "/usr/bin/pgmon-agent doctor --config {}",
        policy.display()
    ));
    println!("{out}");
    assert!(ok, "doctor found problems:\n{out}");
    assert!(out.contains("everything pgmon needs is in place"), "{out}");
    assert!(out.contains("loads and attaches"), "{out}");
    assert!(
        out.contains("C ($libdir/pgmon_storage)"),
        "doctor names the C storage trigger:\n{out}"
    );

    let (ok, out) = sh("dpkg -r pgmon");
    assert!(ok, "dpkg -r:\n{out}");
    assert!(!Path::new("/usr/bin/pgmon-agent").exists());
    assert!(!Path::new("/lib/systemd/system/pgmon-agent.service").exists());
    assert!(
        Path::new("/etc/pgmon/pgmon.yaml").exists(),
        "conffiles stay until purge"
    );
    let (ok, out) = sh("dpkg --purge pgmon");
    assert!(ok, "dpkg --purge:\n{out}");
    assert!(
        !Path::new("/etc/pgmon").exists(),
        "/etc/pgmon left after purge"
    );
    assert!(
        !Path::new("/var/lib/pgmon").exists(),
        "/var/lib/pgmon left after purge"
    );
    let (_, status) = sh("dpkg -s pgmon 2>&1");
    assert!(!status.contains("Status: install ok"), "{status}");
}
