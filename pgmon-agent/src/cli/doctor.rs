//! `pgmon-agent doctor`: checks a host end to end and says what is wrong in plain words:
//! the policy file, the capabilities, the kernel (BTF, tracefs, the tracepoints pgmon
//! uses), the postmaster, which hook family loads (by loading and attaching it for a
//! moment, exactly as `run` does), the monitor connection and its role's grants (and that it
//! cannot write outside schema pgmon: `security.read_only_enforce`), and
//! pgmon's SQL in each database the policy's features need. Exit code 0 when nothing
//! failed (warnings allowed), 1 otherwise.

use std::path::Path;

use crate::{capture::Capture, config::Config};

/// How a check went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

/// One line of the report.
#[derive(Debug)]
pub struct Finding {
    pub level: Level,
    /// What was checked, e.g. `kernel: BTF`.
    pub what: String,
    /// What was found, and for a problem, what to do.
    pub detail: String,
}

#[derive(Default)]
struct Report(Vec<Finding>);

impl Report {
    fn add(&mut self, level: Level, what: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Finding {
            level,
            what: what.into(),
            detail: detail.into(),
        });
    }
    fn ok(&mut self, what: &str, detail: impl Into<String>) {
        self.add(Level::Ok, what, detail);
    }
    fn warn(&mut self, what: &str, detail: impl Into<String>) {
        self.add(Level::Warn, what, detail);
    }
    fn fail(&mut self, what: &str, detail: impl Into<String>) {
        self.add(Level::Fail, what, detail);
    }
}

/// Runs every check, prints the report, and returns whether nothing failed.
pub fn doctor(config_path: &Path) -> anyhow::Result<bool> {
    let findings = run_checks(config_path);
    for f in &findings {
        let tag = match f.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {:<28} {}", f.what, f.detail);
    }
    let failed = findings.iter().filter(|f| f.level == Level::Fail).count();
    let warned = findings.iter().filter(|f| f.level == Level::Warn).count();
    println!(
        "\n{}",
        match (failed, warned) {
            (0, 0) => "everything pgmon needs is in place".to_owned(),
            (0, w) => format!("{w} warning(s); pgmon can run"),
            (f, _) => format!("{f} problem(s) to fix before pgmon can run"),
        }
    );
    Ok(failed == 0)
}

/// Every check, in order; later checks that depend on a failed one are skipped.
pub fn run_checks(config_path: &Path) -> Vec<Finding> {
    let mut r = Report::default();
    let config = match Config::load(config_path) {
        Ok(c) => {
            r.ok("policy", format!("{} is valid", config_path.display()));
            Some(c)
        }
        Err(e) => {
            r.fail("policy", e.to_string());
            None
        }
    };
    let missing = crate::daemon::missing_capabilities();
    if missing.is_empty() {
        r.ok(
            "capabilities",
            "CAP_BPF, CAP_PERFMON and CAP_DAC_READ_SEARCH (or their equivalents) are effective",
        );
    } else {
        for n in &missing {
            r.fail(
                "capabilities",
                format!("{} is missing: needed to {}", n.cap, n.why),
            );
        }
    }
    kernel(&mut r);
    let Some(config) = config else {
        return r.0;
    };
    match crate::capture::cluster::postmaster_pid(&config.cluster.data_directory) {
        Ok(pid) => r.ok("postmaster", format!("pid {pid} from postmaster.pid")),
        Err(e @ crate::capture::cluster::ClusterError::Denied { .. }) => {
            r.fail("postmaster", e.to_string())
        }
        Err(e) => r.fail(
            "postmaster",
            format!(
                "{}; check cluster.data_directory and that the cluster runs",
                crate::util::error_chain(&e)
            ),
        ),
    }
    if missing.is_empty() {
        match Capture::attach(&config.capture, &config.cluster.data_directory) {
            Ok(c) => {
                let refused: Vec<String> = c
                    .refused()
                    .iter()
                    .map(|(f, _)| f.name().to_owned())
                    .collect();
                r.ok(
                    "hooks",
                    format!(
                        "{} loads and attaches (cost rank {}){}",
                        c.hook().name(),
                        c.hook().cost_rank(),
                        if refused.is_empty() {
                            String::new()
                        } else {
                            format!("; the kernel refused the cheaper {}", refused.join(", "))
                        }
                    ),
                );
                match c.tls() {
                    crate::capture::tls::TlsCapture::On { library, functions } => r.ok(
                        "tls",
                        format!(
                            "TLS plaintext read by entry probes on {} in {library}",
                            functions.join(", ")
                        ),
                    ),
                    crate::capture::tls::TlsCapture::Off { reason } => r.warn(
                        "tls",
                        format!(
                            "TLS capture off ({reason}): TLS sessions' statements are not \
                             seen; their backends are charged by CPU time"
                        ),
                    ),
                }
            }
            Err(e) => r.fail("hooks", crate::util::error_chain(&e)),
        }
    }
    database(&mut r, &config);
    r.0
}

fn kernel(r: &mut Report) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    r.ok("kernel", format!("Linux {}", release.trim()));
    if Path::new("/sys/kernel/btf/vmlinux").exists() {
        r.ok(
            "kernel: BTF",
            "/sys/kernel/btf/vmlinux present (tp_btf and fexit hooks can load)",
        );
    } else {
        r.warn(
            "kernel: BTF",
            "/sys/kernel/btf/vmlinux is missing: only the tracepoint families can load (slower)",
        );
    }
    let tracefs = Path::new(crate::capture::cluster::TRACEFS);
    let events = std::fs::metadata(tracefs.join("events"));
    if events
        .as_ref()
        .is_err_and(|e| e.kind() == std::io::ErrorKind::PermissionDenied)
    {
        r.fail(
            "kernel: tracefs",
            format!(
                "{} is not readable: reading the tracepoint ids needs CAP_DAC_READ_SEARCH (or root)",
                tracefs.display()
            ),
        );
    } else if events.is_ok_and(|m| m.is_dir()) {
        r.ok(
            "kernel: tracefs",
            format!("mounted at {}", tracefs.display()),
        );
        for tp in [
            "sched/sched_process_fork",
            "sched/sched_process_exit",
            "syscalls/sys_enter_recvfrom",
        ] {
            if !tracefs.join("events").join(tp).is_dir() {
                r.warn(
                    "kernel: tracepoints",
                    format!("{tp} is missing from tracefs (kernel built without it?)"),
                );
            }
        }
    } else {
        r.warn(
            "kernel: tracefs",
            format!(
                "not mounted at {} (or not readable): the agent mounts it when it may \
                 (mount -t tracefs tracefs {0})",
                tracefs.display()
            ),
        );
    }
}

fn database(r: &mut Report, config: &Config) {
    let monitor = match config.cluster.monitor() {
        Ok(m) => m,
        Err(e) => {
            r.fail("database", format!("cluster.connection: {e}"));
            return;
        }
    };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        r.fail("database", "cannot start a runtime");
        return;
    };
    rt.block_on(async {
        let client = match crate::db::connect(&monitor).await {
            Ok(c) => c,
            Err(e) => {
                r.fail(
                    "database",
                    format!(
                        "cannot connect with cluster.connection: {}; check the DSN, \
                         pg_hba.conf, and that `pgmon-agent install-sql` created the role",
                        crate::util::error_chain(&e)
                    ),
                );
                return;
            }
        };
        let q = "SELECT current_user::text, \
                        pg_has_role(current_user, 'pg_monitor', 'MEMBER'), \
                        current_database()::text, \
                        current_setting('server_version'), \
                        to_regclass('pgmon.schema_version') IS NOT NULL";
        let row = match client.query_one(q, &[]).await {
            Ok(row) => row,
            Err(e) => {
                r.fail("database", e.to_string());
                return;
            }
        };
        let (user, monitor_role, db, version, has_schema): (String, bool, String, String, bool) =
            (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
        r.ok(
            "database",
            format!("connected to {db:?} as {user:?} (PostgreSQL {version})"),
        );
        if monitor_role {
            r.ok(
                "database: grants",
                format!("{user:?} is a member of pg_monitor"),
            );
        } else {
            r.fail(
                "database: grants",
                format!(
                    "{user:?} is not a member of pg_monitor: it cannot see other roles' \
                     sessions (GRANT pg_monitor TO {user}; install-sql does it for pgmon)"
                ),
            );
        }
        read_only(r, &client, config.security.read_only_enforce).await;
        let needed = [
            (config.budgets.enabled, 2, "budgets"),
            (config.storage.enabled, 4, "storage"),
            (config.cleanup.enabled, 5, "cleanup"),
        ];
        let version: i32 = if has_schema {
            client
                .query_one(
                    "SELECT coalesce(max(version), 0) FROM pgmon.schema_version",
                    &[],
                )
                .await
                .map(|r| r.get(0))
                .unwrap_or(0)
        } else {
            0
        };
        for (enabled, at_least, feature) in needed {
            if enabled && version < at_least {
                r.fail(
                    "database: pgmon schema",
                    format!(
                        "{feature} is enabled but {db:?} has pgmon schema version {version} \
                         (needs {at_least}): run `pgmon-agent install-sql --dsn …`"
                    ),
                );
            }
        }
        if config.storage.enabled && version >= 4 {
            storage_trigger(r, &client, &db).await;
        }
        if version >= crate::cli::install_sql::SCHEMA_VERSION {
            r.ok(
                "database: pgmon schema",
                format!("version {version} in {db:?}"),
            );
        } else if needed.iter().all(|(enabled, ..)| !enabled) {
            r.warn(
                "database: pgmon schema",
                format!(
                    "version {version} in {db:?}: capture and health work; budgets, storage \
                     and cleanup need `pgmon-agent install-sql`"
                ),
            );
        }
    });
}

/// `security.read_only_enforce`'s check ([`crate::privileges`]): the monitor role may write
/// only in schema `pgmon`. A role that can write elsewhere fails when the check is on (`run`
/// refuses to start) and warns when it is off.
async fn read_only(r: &mut Report, client: &tokio_postgres::Client, enforce: bool) {
    const WHAT: &str = "database: read-only";
    match crate::privileges::check(client).await {
        Ok(p) if p.read_only() => r.ok(
            WHAT,
            format!("{:?} cannot write outside schema pgmon", p.role),
        ),
        Ok(p) if enforce => r.fail(
            WHAT,
            format!(
                "the monitor role {:?} {}: `pgmon-agent run` refuses to start \
                 (security.read_only_enforce); {}",
                p.role,
                p.summary(),
                crate::privileges::REMEDY
            ),
        ),
        Ok(p) => r.warn(
            WHAT,
            format!(
                "the monitor role {:?} {} (allowed: security.read_only_enforce is off)",
                p.role,
                p.summary()
            ),
        ),
        Err(e) => r.fail(WHAT, crate::util::error_chain(&e)),
    }
}

/// Which `pgmon.storage_notify()` the monitor database has: the C one
/// (`sql/native/pgmon_storage.c`) or the PL/pgSQL fallback, which costs tenants' writes
/// far more (sql/004_storage.sql, bench/STORAGE.md).
async fn storage_trigger(r: &mut Report, client: &tokio_postgres::Client, db: &str) {
    let q = "SELECT l.lanname::text FROM pg_catalog.pg_proc p \
             JOIN pg_catalog.pg_language l ON l.oid = p.prolang \
             WHERE p.oid = to_regprocedure('pgmon.storage_notify()')";
    match client.query_opt(q, &[]).await {
        Ok(Some(row)) if row.get::<_, String>(0) == "c" => r.ok(
            "database: storage trigger",
            format!("C ($libdir/pgmon_storage) in {db:?}"),
        ),
        Ok(Some(row)) => r.warn(
            "database: storage trigger",
            format!(
                "{} in {db:?}: it works, but costs every write statement on a limited \
                 role's table several times what the C version does; build that one with \
                 `make -f /usr/share/pgmon/native/Makefile VPATH=/usr/share/pgmon/native \
                 PG_CONFIG=<this server's pg_config> install` (needs its server headers, \
                 e.g. postgresql-server-dev-NN) in a scratch directory, then run \
                 `pgmon-agent install-sql` again",
                row.get::<_, String>(0)
            ),
        ),
        Ok(None) => r.fail(
            "database: storage trigger",
            format!("pgmon.storage_notify() is missing in {db:?}: run `pgmon-agent install-sql`"),
        ),
        Err(e) => r.fail("database: storage trigger", e.to_string()),
    }
}
