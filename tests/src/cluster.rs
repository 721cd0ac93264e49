//! A throw-away PostgreSQL cluster run as the OS user `postgres` in a fresh directory under
//! `/tmp`, stopped and removed on drop.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::proc::{self, PostgresUser, as_user, postgres_user, run_checked};
use crate::{PgVersion, free_port, tail};

/// How a client reaches the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Transport {
    /// TCP to `127.0.0.1:<port>`.
    Tcp,
    /// The unix-domain socket in [`Cluster::socket_dir`].
    Unix,
}

impl Transport {
    /// Both transports, TCP first.
    pub const ALL: [Transport; 2] = [Transport::Tcp, Transport::Unix];
}

/// Settings of a new cluster. `ClusterOptions::default()` is what tests normally want.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// `max_connections` (default 200).
    pub max_connections: u32,
    /// `shared_buffers` (default `64MB`).
    pub shared_buffers: String,
    /// When false (the default), `fsync`, `synchronous_commit` and `full_page_writes` are off:
    /// faster tests, and nothing here needs crash safety. Benchmarks may want `true`.
    pub durable: bool,
    /// Load `pg_stat_statements` (`shared_preload_libraries`, `track = top`) and
    /// `CREATE EXTENSION pg_stat_statements` in database `postgres` (default true).
    pub pg_stat_statements: bool,
    /// Extra `postgresql.conf` lines as (name, value); the value is written verbatim, so
    /// quote strings yourself: `("log_statement".into(), "'all'".into())`.
    pub settings: Vec<(String, String)>,
    /// Keep the directory (data, socket, server log) after drop, for debugging. Also enabled
    /// by the environment variable `PGMON_KEEP_CLUSTER=1`.
    pub keep_dir: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            max_connections: 200,
            shared_buffers: "64MB".into(),
            durable: false,
            pg_stat_statements: true,
            settings: Vec::new(),
            keep_dir: false,
        }
    }
}

/// A running PostgreSQL cluster owned by this process.
///
/// Layout: `<base>/data` (data directory), `<base>/sock` (unix socket directory),
/// `<base>/server.log` (pg_ctl's log), where `<base>` is a fresh `/tmp/pgmon-pgNN-*`
/// directory of mode 0755 owned by `postgres`. Dropping the value stops the cluster
/// (`pg_ctl stop -m fast`, then signals to the postmaster) and removes `<base>`; it never
/// panics.
#[derive(Debug)]
pub struct Cluster {
    pub(crate) version: PgVersion,
    pub(crate) port: u16,
    pub(crate) base: PathBuf,
    pub(crate) user: PostgresUser,
    postmaster_pid: u32,
    running: bool,
    keep_dir: bool,
}

impl Cluster {
    /// Creates (`initdb --auth=trust -U postgres`), configures and starts a new cluster of
    /// `version`, listening on 127.0.0.1 at a free port and on a unix socket in its own
    /// directory. Fails with the server log's tail if the server does not come up.
    pub fn start(version: PgVersion, opts: ClusterOptions) -> Result<Cluster> {
        let initdb = version.bin("initdb");
        if !initdb.exists() {
            bail!(
                "{version}: {} is missing (run `cargo xtask setup`)",
                initdb.display()
            );
        }
        let user = postgres_user()?;
        let base = tempfile::Builder::new()
            .prefix(&format!("pgmon-pg{}-", version.major()))
            .tempdir_in("/tmp")
            .context("cannot create a temp dir under /tmp")?
            .keep();
        let keep_dir =
            opts.keep_dir || std::env::var_os("PGMON_KEEP_CLUSTER").is_some_and(|v| v == "1");
        // From here on, Drop cleans up whatever exists.
        let mut cluster = Cluster {
            version,
            port: 0,
            base,
            user,
            postmaster_pid: 0,
            running: false,
            keep_dir,
        };
        cluster.init(&opts)?;
        cluster.start_server()?;
        if opts.pg_stat_statements {
            cluster.psql(
                "postgres",
                "postgres",
                Transport::Unix,
                "CREATE EXTENSION IF NOT EXISTS pg_stat_statements",
            )?;
        }
        Ok(cluster)
    }

    /// A streaming standby of this cluster on the same host, reporting itself as
    /// `application_name` `name`: `pg_basebackup -R -X stream` over this cluster's unix
    /// socket (initdb's `trust` lets `postgres` replicate) where the version ships it
    /// (Debian's 15); else, for the npm builds, which ship only `initdb`, `pg_ctl` and
    /// `postgres`, the low-level backup API (PostgreSQL docs, section 25.3.4:
    /// `pg_backup_start`, a copy of the data directory, `pg_backup_stop`'s label written
    /// as `backup_label`, then `standby.signal` and `primary_conninfo`; 15+). Started on
    /// its own port and socket with `wal_receiver_status_interval = 1s`, so its replay
    /// position reaches the primary's `pg_stat_replication` within a second. Stopped and
    /// removed when dropped, like any [`Cluster`].
    pub fn start_standby(&self, name: &str) -> Result<Cluster> {
        let base = tempfile::Builder::new()
            .prefix(&format!("pgmon-pg{}-standby-", self.version.major()))
            .tempdir_in("/tmp")
            .context("cannot create a temp dir under /tmp")?
            .keep();
        let mut standby = Cluster {
            version: self.version,
            port: 0,
            base,
            user: postgres_user()?,
            postmaster_pid: 0,
            running: false,
            keep_dir: self.keep_dir,
        };
        standby.make_dirs()?;
        if self.version.bin("pg_basebackup").exists() {
            run_checked(
                standby
                    .server_cmd("pg_basebackup")
                    .arg("-D")
                    .arg(standby.data_dir())
                    .args(["-R", "-X", "stream", "--no-sync", "-U", "postgres", "-h"])
                    .arg(self.socket_dir())
                    .args(["-p", &self.port.to_string()])
                    .arg(format!("--dbname=application_name={name}")),
            )
            .with_context(|| format!("pg_basebackup of {}", self.version))?;
        } else {
            self.copy_for_standby(&standby, name)?;
        }
        let path = standby.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&format!(
            "\n# --- pgmon-tests standby ---\nunix_socket_directories = '{}'\n\
             wal_receiver_status_interval = 1\nhot_standby = on\n",
            standby.socket_dir().display()
        ));
        std::fs::write(&path, text)?;
        standby.start_server()?;
        Ok(standby)
    }

    /// The low-level backup of [`Cluster::start_standby`] into `standby`'s data directory.
    fn copy_for_standby(&self, standby: &Cluster, name: &str) -> Result<()> {
        let (src, dst) = (self.data_dir(), standby.data_dir());
        let label = dst.join("backup_label");
        std::fs::create_dir(&dst)?;
        std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o700))?;
        std::os::unix::fs::chown(&dst, Some(standby.user.uid), Some(standby.user.gid))?;
        let script = format!(
            "SELECT pg_backup_start('pgmon-tests standby', true);\n\
             \\! cp -a {src}/. {dst}/ && rm -f {dst}/postmaster.pid {dst}/postmaster.opts\n\
             SELECT labelfile FROM pg_backup_stop(false) \\gset\n\
             \\o {label}\n\\qecho -n :labelfile\n\\o\n",
            src = src.display(),
            dst = dst.display(),
            label = label.display(),
        );
        let mut file = tempfile::Builder::new()
            .prefix("pgmon-standby-")
            .suffix(".sql")
            .tempfile()?;
        std::io::Write::write_all(&mut file, script.as_bytes())?;
        run_checked(
            self.psql_cmd("postgres", "postgres", Transport::Unix)
                .arg("-f")
                .arg(file.path()),
        )
        .with_context(|| format!("low-level backup of {}", self.version))?;
        std::fs::write(dst.join("standby.signal"), "")?;
        let auto = dst.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
        text.push_str(&format!(
            "primary_conninfo = 'host={} port={} user=postgres application_name={name}'\n",
            self.socket_dir().display(),
            self.port
        ));
        std::fs::write(&auto, text)?;
        for f in [label, dst.join("standby.signal"), auto] {
            std::os::unix::fs::chown(&f, Some(standby.user.uid), Some(standby.user.gid))
                .with_context(|| format!("chown postgres {}", f.display()))?;
        }
        Ok(())
    }

    /// `<base>` and its socket directory, owned by `postgres`.
    fn make_dirs(&self) -> Result<()> {
        std::fs::set_permissions(&self.base, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&self.base, Some(self.user.uid), Some(self.user.gid))
            .with_context(|| format!("chown postgres {}", self.base.display()))?;
        let sock = self.socket_dir();
        std::fs::create_dir(&sock)?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o755))?;
        std::os::unix::fs::chown(&sock, Some(self.user.uid), Some(self.user.gid))?;
        Ok(())
    }

    fn init(&mut self, opts: &ClusterOptions) -> Result<()> {
        self.make_dirs()?;
        let sock = self.socket_dir();

        run_checked(
            self.server_cmd("initdb")
                .arg("-D")
                .arg(self.data_dir())
                .args([
                    "--auth=trust",
                    "-U",
                    "postgres",
                    "-E",
                    "UTF8",
                    "--locale=C",
                    "--no-sync",
                ]),
        )
        .with_context(|| format!("initdb of {} failed", self.version))?;

        let mut conf = String::from("\n# --- pgmon-tests ---\n");
        let mut set = |k: &str, v: &str| conf.push_str(&format!("{k} = {v}\n"));
        set("listen_addresses", "'127.0.0.1'");
        set("unix_socket_directories", &format!("'{}'", sock.display()));
        set("max_connections", &opts.max_connections.to_string());
        set("shared_buffers", &format!("'{}'", opts.shared_buffers));
        if opts.pg_stat_statements {
            set("shared_preload_libraries", "'pg_stat_statements'");
            set("pg_stat_statements.track", "'top'");
        }
        if !opts.durable {
            set("fsync", "off");
            set("synchronous_commit", "off");
            set("full_page_writes", "off");
        }
        for (k, v) in &opts.settings {
            set(k, v);
        }
        set("include_if_exists", "'pgmon-port.conf'");
        let path = self.data_dir().join("postgresql.conf");
        let mut text = std::fs::read_to_string(&path)?;
        text.push_str(&conf);
        std::fs::write(&path, text)?;
        Ok(())
    }

    /// Picks a free port (kept across restarts), writes it to `pgmon-port.conf` (included by
    /// `postgresql.conf`) and starts the server with `pg_ctl -w start`; retries when another
    /// process took the port in between.
    fn start_server(&mut self) -> Result<()> {
        let mut last_err = None;
        for _ in 0..3 {
            let port = if self.port == 0 {
                free_port()
            } else {
                self.port
            };
            let conf = self.data_dir().join("pgmon-port.conf");
            std::fs::write(&conf, format!("port = {port}\n"))?;
            self.port = port;
            let res = run_checked(
                self.server_cmd("pg_ctl")
                    .arg("-D")
                    .arg(self.data_dir())
                    .arg("-l")
                    .arg(self.log_file())
                    .args(["-w", "-t", "60", "start"]),
            );
            match res {
                Ok(_) => {
                    self.running = true;
                    self.postmaster_pid = self.read_postmaster_pid()?;
                    return Ok(());
                }
                Err(e) => {
                    let log = self.log();
                    let port_race = log.contains("could not bind") || log.contains("in use");
                    // pg_ctl may time out while the server still starts: stop it.
                    if let Ok(pid) = self.read_postmaster_pid() {
                        self.postmaster_pid = pid;
                        self.running = true;
                        let _ = self.stop();
                    }
                    last_err = Some(e.context(format!(
                        "{} did not start on port {port}; server log tail:\n{}",
                        self.version,
                        tail(&log, 30)
                    )));
                    if !port_race {
                        break;
                    }
                    self.port = 0;
                }
            }
        }
        Err(last_err.expect("at least one attempt"))
    }

    /// A command for one of this version's server binaries, run as `postgres` in `<base>`.
    fn server_cmd(&self, bin: &str) -> Command {
        let mut cmd = Command::new(self.version.bin(bin));
        as_user(&mut cmd, &self.user).current_dir(&self.base);
        cmd
    }

    fn read_postmaster_pid(&self) -> Result<u32> {
        let path = self.data_dir().join("postmaster.pid");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        text.lines()
            .next()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("no pid in the first line of {}", path.display()))
    }

    /// Stops the cluster: `pg_ctl stop -m fast`; if that fails or the postmaster lingers,
    /// SIGQUIT then SIGKILL to the postmaster it started. Idempotent; Ok if the postmaster
    /// is already gone. The directory stays until drop.
    pub fn stop(&mut self) -> Result<()> {
        if !self.running {
            return Ok(());
        }
        self.running = false;
        let pid = self.postmaster_pid as i32;
        if !proc::pid_alive(pid) {
            // Already gone (crashed, or killed by the test): nothing to stop.
            return Ok(());
        }
        let res = run_checked(
            self.server_cmd("pg_ctl")
                .arg("-D")
                .arg(self.data_dir())
                .args(["-m", "fast", "-w", "-t", "30", "stop"]),
        );
        if res.is_ok() && wait_gone(pid, Duration::from_secs(5)) {
            return Ok(());
        }
        for sig in [libc::SIGQUIT, libc::SIGKILL] {
            if !proc::pid_alive(pid) {
                break;
            }
            proc::signal(pid, sig);
            wait_gone(pid, Duration::from_secs(5));
        }
        match res {
            Ok(_) if !proc::pid_alive(pid) => Ok(()),
            Ok(_) => bail!("postmaster {pid} survived SIGKILL"),
            Err(e) => Err(e.context("pg_ctl stop failed; the postmaster was signalled")),
        }
    }

    /// Stops and starts the server again on the same port (the postmaster pid changes).
    pub fn restart(&mut self) -> Result<()> {
        self.stop()?;
        self.start_server()
    }

    /// True between a successful start and [`Cluster::stop`].
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// The server version this cluster runs.
    pub fn version(&self) -> PgVersion {
        self.version
    }

    /// The temp directory holding data, socket and log.
    pub fn base_dir(&self) -> &Path {
        &self.base
    }

    /// The data directory (`PGDATA`).
    pub fn data_dir(&self) -> PathBuf {
        self.base.join("data")
    }

    /// The directory of the unix-domain socket (`unix_socket_directories`).
    pub fn socket_dir(&self) -> PathBuf {
        self.base.join("sock")
    }

    /// The server log written by `pg_ctl -l`.
    pub fn log_file(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// The server log's contents (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_file()).unwrap_or_default()
    }

    /// The TCP port on 127.0.0.1 (also the number in the socket's name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The postmaster's pid: the first line of `postmaster.pid`, or the pid recorded at
    /// start if the file is gone.
    pub fn postmaster_pid(&self) -> u32 {
        self.read_postmaster_pid().unwrap_or(self.postmaster_pid)
    }

    /// A libpq keyword/value connection string for `user` and `db`:
    /// `host=127.0.0.1 port=… user=… dbname=…` or `host=<socket dir> port=… user=… dbname=…`.
    pub fn conninfo(&self, user: &str, db: &str, transport: Transport) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            conninfo_value(&self.host(transport)),
            self.port,
            conninfo_value(user),
            conninfo_value(db)
        )
    }

    /// The `host` a client uses for `transport`: `127.0.0.1` or the socket directory.
    pub fn host(&self, transport: Transport) -> String {
        match transport {
            Transport::Tcp => "127.0.0.1".into(),
            Transport::Unix => self.socket_dir().display().to_string(),
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!(
                "pgmon-tests: stopping {} at {}: {e:#}",
                self.version,
                self.base.display()
            );
        }
        if self.keep_dir {
            eprintln!("pgmon-tests: kept {}", self.base.display());
        } else if let Err(e) = std::fs::remove_dir_all(&self.base) {
            eprintln!("pgmon-tests: removing {}: {e}", self.base.display());
        }
    }
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while proc::pid_alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// Quotes a libpq connection-string value when needed (`'…'` with `\'` and `\\`).
pub(crate) fn conninfo_value(v: &str) -> String {
    if !v.is_empty()
        && !v.contains(|c: char| c.is_whitespace() || c == '\'' || c == '\\' || c == '=')
    {
        return v.to_string();
    }
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conninfo_quoting() {
        assert_eq!(conninfo_value("shop"), "shop");
        assert_eq!(conninfo_value("a b"), "'a b'");
        assert_eq!(conninfo_value("it's"), "'it\\'s'");
        assert_eq!(conninfo_value(""), "''");
    }
}
