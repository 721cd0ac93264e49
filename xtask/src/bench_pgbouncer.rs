//! PgBouncer in front of the bench cluster: the proxy reference of the overhead rounds
//! (issue 24: what a proxy-based monitor costs, measured in the same rounds as pgmon).
//!
//! Debian's `pgbouncer` (installed by set-up) runs as the cluster's OS user (it refuses to
//! run as root) from a private directory holding its configuration, log and Unix socket,
//! in transaction pooling, the mode multi-tenant hosts run it in. Clients reach it over the
//! run's transport, and it reaches the server over the same transport.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use pgmon_tests::{Cluster, Transport, free_port, postgres_user};

/// Debian's binary (package `pgbouncer`).
pub const PGBOUNCER: &str = "/usr/sbin/pgbouncer";

/// A running PgBouncer for one database; stopped (SIGTERM, then waited for) and its
/// directory removed on drop.
pub struct PgBouncer {
    child: Child,
    dir: PathBuf,
    port: u16,
    transport: Transport,
}

impl PgBouncer {
    /// Starts PgBouncer in front of `cluster`'s database `db`, logging in as `user` (the
    /// server trusts it like every bench client), listening on 127.0.0.1 and on a Unix
    /// socket in its own directory, both on one free port; waits until it accepts (≤ 10 s).
    ///
    /// Errors: the binary is missing (set-up not run), the cluster's OS user is unknown,
    /// PgBouncer exits or does not listen within 10 s (its log is in the error).
    pub fn start(
        cluster: &Cluster,
        transport: Transport,
        db: &str,
        user: &str,
    ) -> Result<PgBouncer> {
        if !std::path::Path::new(PGBOUNCER).exists() {
            bail!("{PGBOUNCER} is missing: run `cargo xtask setup` (apt package pgbouncer)");
        }
        let os_user = postgres_user().context("the cluster's OS user")?;
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("pgmon-pgbouncer-{port}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(os_user.uid), Some(os_user.gid))?;
        // pgbouncer.ini(5): `auth_type = any` ignores the client's user name and logs in as
        // the database entry's `user`; `ignore_startup_parameters` lets pgbench's
        // extra_float_digits through.
        let ini = format!(
            "[databases]\n{db} = host={host} port={server_port} dbname={db} user={user}\n\n\
             [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir = {dir}\n\
             auth_type = any\npool_mode = transaction\nmax_client_conn = 200\ndefault_pool_size = 8\n\
             ignore_startup_parameters = extra_float_digits\nlogfile = {dir}/pgbouncer.log\n",
            host = cluster.host(transport),
            server_port = cluster.port(),
            dir = dir.display(),
        );
        let ini_path = dir.join("pgbouncer.ini");
        std::fs::write(&ini_path, ini)?;
        let child = Command::new(PGBOUNCER)
            .arg(&ini_path)
            .uid(os_user.uid)
            .gid(os_user.gid)
            .env("HOME", &os_user.home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {PGBOUNCER}"))?;
        let mut bouncer = PgBouncer {
            child,
            dir,
            port,
            transport,
        };
        let socket = bouncer.dir.join(format!(".s.PGSQL.{port}"));
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() && socket.exists() {
                return Ok(bouncer);
            }
            if let Some(status) = bouncer.child.try_wait()? {
                bail!("pgbouncer exited ({status}): {}", bouncer.log());
            }
            if Instant::now() > deadline {
                bail!("pgbouncer did not listen within 10 s: {}", bouncer.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// pgbench arguments that point a client at PgBouncer (`-h HOST -p PORT`; pgbench takes
    /// the last `-h`/`-p` given, so they override the cluster's).
    pub fn client_args(&self) -> Vec<String> {
        let host = match self.transport {
            Transport::Tcp => "127.0.0.1".to_owned(),
            Transport::Unix => self.dir.display().to_string(),
        };
        vec!["-h".into(), host, "-p".into(), self.port.to_string()]
    }

    /// PgBouncer's process id (its CPU is read from /proc by the caller).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The last 2 KiB of PgBouncer's log.
    fn log(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("pgbouncer.log")).unwrap_or_default();
        let mut start = text.len().saturating_sub(2048);
        while !text.is_char_boundary(start) {
            start += 1;
        }
        text[start..].to_owned()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
