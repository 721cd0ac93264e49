//! The pgmon agent as a child process: `pgmon-agent run --config FILE`, its log, and its
//! HTTP endpoints (`/healthz`, `/metrics`, `/api/v1/*`).

use std::fmt::Display;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::{proc, tail};

/// Finds the agent binary: `$PGMON_AGENT_BIN`, else `$CARGO_TARGET_DIR/release/pgmon-agent`,
/// else `<workspace>/target/release/pgmon-agent`. Fails if the file does not exist.
pub fn agent_binary() -> Result<PathBuf> {
    let path = if let Some(p) = std::env::var_os("PGMON_AGENT_BIN") {
        PathBuf::from(p)
    } else if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        PathBuf::from(t).join("release/pgmon-agent")
    } else {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/pgmon-agent")
    };
    if !path.is_file() {
        bail!(
            "agent binary {} not found (build it with `cargo build --release`, or set PGMON_AGENT_BIN)",
            path.display()
        );
    }
    Ok(path)
}

/// The fingerprint (16 hex digits) that the agent `binary` gives the single statement
/// `sql`, from `pgmon-agent fingerprint`: for callers built without this crate's
/// `fingerprint` feature (xtask, which must build before libclang is installed).
///
/// # Errors
/// The binary does not run, fails, or prints no line for `sql`.
pub fn agent_fingerprint(binary: &Path, sql: &str) -> Result<String> {
    let out = Command::new(binary)
        .args(["fingerprint", sql])
        .output()
        .with_context(|| format!("running {} fingerprint", binary.display()))?;
    if !out.status.success() {
        bail!(
            "{} fingerprint {sql:?}: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .split_whitespace()
        .next()
        .map(str::to_string)
        .with_context(|| format!("{} fingerprint {sql:?} printed nothing", binary.display()))
}

/// How to start the agent beyond the defaults of [`Agent::start`].
#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// Arguments appended after `run --config FILE`.
    pub extra_args: Vec<String>,
    /// Environment variables set for the agent (it inherits the rest; `RUST_BACKTRACE=1` is
    /// added unless set).
    pub env: Vec<(String, String)>,
    /// How long to wait for `GET /healthz` to answer 200 (default 30 s).
    pub ready_timeout: Duration,
    /// A command the agent runs under (`setpriv …`, `strace …`): the agent's command line
    /// is appended to it. When set, the temp directory and the config file are made
    /// readable by every user, so an agent under a dropped uid can read its policy, and
    /// [`Agent::pid`] is the wrapper's pid.
    pub wrapper: Vec<String>,
    /// Skip the wait for `GET /healthz` over plain HTTP (a listener behind TLS or basic
    /// authentication cannot answer it); the caller checks readiness its own way.
    pub no_ready_check: bool,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            extra_args: Vec::new(),
            env: Vec::new(),
            ready_timeout: Duration::from_secs(30),
            wrapper: Vec::new(),
            no_ready_check: false,
        }
    }
}

/// A running agent. Stopped with SIGTERM (then SIGKILL after 10 s) by [`Agent::stop`] or on
/// drop. Its config file and log live in a temp directory removed on drop.
pub struct Agent {
    child: Child,
    exit: Option<ExitStatus>,
    addr: String,
    dir: tempfile::TempDir,
    http: ureq::Agent,
}

impl Agent {
    /// Writes `config_yaml` to a temp file, spawns `<binary> run --config FILE` (stdout and
    /// stderr to [`Agent::log_path`]) and waits until `GET http://<metrics_addr>/healthz`
    /// answers 200. `metrics_addr` must match the config's `metrics.listen`. Fails with the
    /// log's tail if the agent exits or does not become healthy within 30 s.
    pub fn start(binary: &Path, config_yaml: &str, metrics_addr: impl Display) -> Result<Agent> {
        Agent::start_with(binary, config_yaml, metrics_addr, AgentOptions::default())
    }

    /// [`Agent::start`] with extra arguments, environment and readiness timeout.
    pub fn start_with(
        binary: &Path,
        config_yaml: &str,
        metrics_addr: impl Display,
        opts: AgentOptions,
    ) -> Result<Agent> {
        let dir = tempfile::Builder::new()
            .prefix("pgmon-agent-")
            .tempdir_in("/tmp")?;
        let config = dir.path().join("pgmon.yaml");
        std::fs::write(&config, config_yaml)?;
        let log = File::create(dir.path().join("agent.log"))?;
        let mut cmd = match opts.wrapper.split_first() {
            None => Command::new(binary),
            Some((program, args)) => {
                use std::os::unix::fs::PermissionsExt as _;
                std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
                std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644))?;
                let mut c = Command::new(program);
                c.args(args).arg(binary);
                c
            }
        };
        cmd.arg("run")
            .arg("--config")
            .arg(&config)
            .args(&opts.extra_args);
        if std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        cmd.envs(opts.env.iter().map(|(k, v)| (k, v)));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot spawn {}", binary.display()))?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(10)))
            .build()
            .into();
        let mut agent = Agent {
            child,
            exit: None,
            addr: metrics_addr.to_string(),
            dir,
            http,
        };
        if !opts.no_ready_check {
            agent.wait_healthy(opts.ready_timeout)?;
        }
        Ok(agent)
    }

    fn wait_healthy(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exit = Some(status);
                bail!(
                    "agent exited ({status}) before /healthz answered; log tail:\n{}",
                    tail(&self.log(), 40)
                );
            }
            let last = match self.get("/healthz") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => format!("HTTP {code}: {}", body.trim()),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "agent not healthy at http://{}/healthz after {timeout:?} (last: {last}); log tail:\n{}",
                    self.addr,
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `GET http://<addr><path>` → (status code, body). Non-2xx codes are not errors.
    pub fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("http://{}{}", self.addr, path);
        let mut resp = self
            .http
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let code = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .with_context(|| format!("GET {url}: body"))?;
        Ok((code, body))
    }

    fn get_ok(&self, path: &str) -> Result<String> {
        let (code, body) = self.get(path)?;
        if code != 200 {
            bail!(
                "GET http://{}{path}: HTTP {code}: {}",
                self.addr,
                body.trim()
            );
        }
        Ok(body)
    }

    /// The alert named `alertname` that the agent's engine fires now (`/api/v1/alerts`),
    /// if any.
    pub fn firing(&self, alertname: &str) -> Option<serde_json::Value> {
        self.firing_where(alertname, |_| true)
    }

    /// [`Agent::firing`] for the alert whose label `label` is `value` (one table's, one
    /// setting's).
    pub fn firing_for(
        &self,
        alertname: &str,
        label: &str,
        value: &str,
    ) -> Option<serde_json::Value> {
        self.firing_where(alertname, |a| a["labels"][label] == value)
    }

    fn firing_where(
        &self,
        alertname: &str,
        also: impl Fn(&serde_json::Value) -> bool,
    ) -> Option<serde_json::Value> {
        let (_, body) = self.get("/api/v1/alerts").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        v["data"]["firing"]
            .as_array()?
            .iter()
            .find(|a| a["alertname"] == alertname && also(a))
            .cloned()
    }

    /// `GET /api/v1/status` parsed as JSON.
    pub fn status_json(&self) -> Result<serde_json::Value> {
        let body = self.get_ok("/api/v1/status")?;
        serde_json::from_str(&body).with_context(|| format!("/api/v1/status is not JSON: {body}"))
    }

    /// `GET /metrics` (Prometheus text format; see [`crate::metrics`]).
    pub fn metrics_text(&self) -> Result<String> {
        self.get_ok("/metrics")
    }

    /// `GET /metrics`, parsed.
    pub fn metrics(&self) -> Result<Vec<crate::metrics::Sample>> {
        Ok(crate::metrics::parse(&self.metrics_text()?))
    }

    /// The sum of `name{labels}` in `GET /metrics` now (0 when absent). Panics when the
    /// scrape fails.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let m = self.metrics().expect("GET /metrics");
        crate::metrics::sum(&m, name, labels)
    }

    /// Polls `GET /metrics` every 200 ms until `name{labels}` is present and its sum
    /// satisfies `ok`, and returns that sum; panics after `within` with the last value.
    pub fn wait_metric(
        &self,
        name: &str,
        labels: &[(&str, &str)],
        within: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> f64 {
        let t = Instant::now();
        let mut last = f64::NAN;
        while t.elapsed() < within {
            if let Ok(m) = self.metrics()
                && !crate::metrics::find(&m, name, labels).is_empty()
            {
                last = crate::metrics::sum(&m, name, labels);
                if ok(last) {
                    return last;
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("{name}{labels:?} is {last} after {within:?}");
    }

    /// The agent's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The `host:port` its HTTP server listens on.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The config file it was started with.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("pgmon.yaml")
    }

    /// The file receiving its stdout and stderr.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the agent has logged so far (empty if unreadable).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        if self.exit.is_some() {
            return false;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                false
            }
            Ok(None) => true,
            Err(_) => false,
        }
    }

    /// Sends SIGTERM and waits for exit; SIGKILL after 10 s. Returns the exit status
    /// (idempotent: later calls return the same status).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        let pid = self.child.id() as i32;
        if self.child.try_wait()?.is_none() {
            proc::signal(pid, libc::SIGTERM);
        }
        let status = match self.wait_exit(Duration::from_secs(10))? {
            Some(status) => status,
            None => {
                self.child.kill()?;
                self.child.wait()?
            }
        };
        self.exit = Some(status);
        Ok(status)
    }

    /// Kills the process with SIGKILL (no chance to clean up, as after an OOM kill) and
    /// reaps it. Returns the exit status; idempotent like [`Agent::stop`], which (and drop)
    /// then only return that status.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.exit {
            return Ok(status);
        }
        // Child::kill sends SIGKILL on Unix.
        self.child.kill()?;
        let status = self.child.wait()?;
        self.exit = Some(status);
        Ok(status)
    }

    /// Waits up to `timeout` for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                self.exit = Some(status);
                return Ok(Some(status));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Reading what the agent counted, from `/api/v1/status`.
impl Agent {
    /// Calls of fingerprint `fp` (16 hex digits, see [`crate::fingerprint`]) charged to
    /// `role`; 0 when the role or the fingerprint is absent.
    pub fn fingerprint_calls(&self, role: &str, fp: &str) -> Result<u64> {
        let status = self.status_json()?;
        Ok(status["roles"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["role"] == role))
            .and_then(|r| {
                r["fingerprints"]
                    .as_array()?
                    .iter()
                    .find(|f| f["fingerprint"] == fp)
                    .cloned()
            })
            .and_then(|f| f["calls"].as_u64())
            .unwrap_or(0))
    }

    /// Polls [`Agent::fingerprint_calls`] every 100 ms until it reaches `target` or `within`
    /// passes, then reads it once more 200 ms later, so a late straggler shows as an
    /// overcount rather than hiding; returns that last value.
    pub fn wait_fingerprint_calls(
        &self,
        role: &str,
        fp: &str,
        target: u64,
        within: Duration,
    ) -> Result<u64> {
        let deadline = Instant::now() + within;
        while self.fingerprint_calls(role, fp)? < target && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        std::thread::sleep(Duration::from_millis(200));
        self.fingerprint_calls(role, fp)
    }

    /// The capture-health counter `key` of the status (`dropped`, `desyncs_backend`, …).
    pub fn capture_counter(&self, key: &str) -> Result<u64> {
        let status = self.status_json()?;
        status["capture"][key]
            .as_u64()
            .with_context(|| format!("status has no capture.{key}: {}", status["capture"]))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("pgmon-tests: stopping agent {}: {e:#}", self.child.id());
        }
        if std::env::var_os("PGMON_KEEP_AGENT_LOG").is_some_and(|v| v == "1") {
            let kept = std::env::temp_dir().join(format!("pgmon-agent-{}.log", self.child.id()));
            if std::fs::copy(self.log_path(), &kept).is_ok() {
                eprintln!("pgmon-tests: agent log kept at {}", kept.display());
            }
        }
    }
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("pid", &self.child.id())
            .field("addr", &self.addr)
            .field("exit", &self.exit)
            .finish()
    }
}
