//! [`HeldSession`]: one long-lived psql connection, e.g. "a connection opened before the
//! agent started".

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::cluster::{Cluster, Transport};
use crate::tail;

static NEXT_MARKER: AtomicU64 = AtomicU64::new(1);

/// A psql process (`psql -X -q -At`, stdin piped) holding one backend connection open.
/// Statements are sent with [`HeldSession::run`]; each call waits for psql to `\echo` a
/// unique marker after them, so it returns only once the statements completed. Dropping the
/// session ends psql (EOF on stdin, then kill after 5 s).
pub struct HeldSession {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    stderr: Arc<Mutex<String>>,
    backend_pid: u32,
    /// How long [`HeldSession::run`] waits for completion (default 60 s).
    pub timeout: Duration,
}

impl Cluster {
    /// Opens a session as `user` in `db` over `transport` and keeps it open until the returned
    /// value is dropped. Fails if psql cannot connect.
    pub fn hold_session(&self, user: &str, db: &str, transport: Transport) -> Result<HeldSession> {
        let mut cmd = self.psql_cmd(user, db, transport);
        // psql_cmd sets ON_ERROR_STOP=1; a held session must survive failing statements.
        cmd.args(["-v", "ON_ERROR_STOP=0"]);
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot spawn psql")?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().context("psql stdout")?;
        let mut stderr_pipe = child.stderr.take().context("psql stderr")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr_pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        let mut session = HeldSession {
            child,
            stdin,
            lines,
            stderr,
            backend_pid: 0,
            timeout: Duration::from_secs(60),
        };
        let pid = session
            .run("SELECT pg_backend_pid()")
            .with_context(|| format!("cannot open a session as {user} in {db} ({transport:?})"))?;
        session.backend_pid = pid
            .trim()
            .parse()
            .context("pg_backend_pid() is not a number")?;
        Ok(session)
    }
}

impl HeldSession {
    /// Sends `sql` (one or more `;`-terminated statements or psql meta-commands; a missing
    /// final `;` is added) and waits until psql has finished it. Returns the output lines
    /// (unaligned, tuples only). Fails with psql's stderr if the last statement failed; the
    /// session stays usable.
    pub fn run(&mut self, sql: &str) -> Result<String> {
        let marker = format!(
            "__pgmon_session_{}_{}__",
            std::process::id(),
            NEXT_MARKER.fetch_add(1, Ordering::Relaxed)
        );
        let err_start = self.stderr_text().len();
        let mut script = sql.trim_end().to_string();
        if !script.ends_with(';')
            && !script
                .lines()
                .last()
                .unwrap_or("")
                .trim_start()
                .starts_with('\\')
        {
            script.push_str("\n;");
        }
        script.push_str(&format!(
            "\n\\if :ERROR\n\\echo {marker} ERR\n\\else\n\\echo {marker} OK\n\\endif\n"
        ));
        let stdin = self.stdin.as_mut().context("session is closed")?;
        stdin
            .write_all(script.as_bytes())
            .and_then(|_| stdin.flush())
            .map_err(|e| anyhow!("psql is gone ({e}); stderr:\n{}", self.stderr_text()))?;

        let deadline = Instant::now() + self.timeout;
        let mut out = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(status) = line.strip_prefix(&marker) {
                        if status.trim() == "OK" {
                            return Ok(out);
                        }
                        // Give the stderr reader a moment to catch up with the error text.
                        std::thread::sleep(Duration::from_millis(20));
                        let err = self.stderr_text();
                        bail!(
                            "statement failed in held session: {}\n{}",
                            sql.trim(),
                            err.get(err_start..).unwrap_or(&err).trim()
                        );
                    }
                    out.push_str(&line);
                    out.push('\n');
                }
                Err(RecvTimeoutError::Timeout) => {
                    bail!(
                        "held session: no completion after {:?} for: {}",
                        self.timeout,
                        sql.trim()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50));
                    bail!(
                        "psql exited during: {}\nstderr:\n{}",
                        sql.trim(),
                        tail(&self.stderr_text(), 20)
                    )
                }
            }
        }
    }

    /// The pid of the backend serving this session (`pg_backend_pid()`).
    pub fn backend_pid(&self) -> u32 {
        self.backend_pid
    }

    /// Everything psql wrote to stderr so far.
    pub fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// True while the psql process runs.
    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Ends the session: `\q` and EOF, waits up to 5 s, then kills psql.
    pub fn close(&mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = stdin.write_all(b"\\q\n");
            drop(stdin);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if !matches!(self.child.try_wait(), Ok(None)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for HeldSession {
    fn drop(&mut self) {
        self.close();
    }
}

impl std::fmt::Debug for HeldSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldSession")
            .field("psql_pid", &self.child.id())
            .field("backend_pid", &self.backend_pid)
            .finish()
    }
}
