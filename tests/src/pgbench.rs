//! Debian's `pgbench` against a [`Cluster`]: initialisation, runs, and parsing of its report.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use crate::PGBENCH;
use crate::cluster::{Cluster, Transport};
use crate::proc::{clean_pg_env, describe, run_ok};

/// pgbench's `-M` query protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// `-M simple`: Query ('Q') messages.
    Simple,
    /// `-M extended`: unnamed Parse/Bind/Execute per statement.
    Extended,
    /// `-M prepared`: named statements prepared once per connection.
    Prepared,
}

impl Protocol {
    /// All three, in pgbench's order.
    pub const ALL: [Protocol; 3] = [Protocol::Simple, Protocol::Extended, Protocol::Prepared];

    /// The `-M` argument.
    pub fn as_arg(self) -> &'static str {
        match self {
            Protocol::Simple => "simple",
            Protocol::Extended => "extended",
            Protocol::Prepared => "prepared",
        }
    }
}

/// One pgbench run. Build with [`PgbenchRun::new`] and struct-update syntax:
/// `PgbenchRun { clients: 2, jobs: 2, select_only: true, ..PgbenchRun::new("shop", "shop") }`.
#[derive(Clone, Debug)]
pub struct PgbenchRun {
    /// Role to connect as (`-U`).
    pub user: String,
    /// Database to connect to.
    pub db: String,
    /// TCP (`-h 127.0.0.1`) or the unix socket (`-h <socket dir>`).
    pub transport: Transport,
    /// `-c`.
    pub clients: u32,
    /// `-j`.
    pub jobs: u32,
    /// `-t` (transactions per client). Exclusive with `duration_s`.
    pub transactions: Option<u64>,
    /// `-T` (seconds). Exclusive with `transactions`.
    pub duration_s: Option<u64>,
    /// `-M`.
    pub protocol: Protocol,
    /// `-S` (built-in select-only script) instead of TPC-B (sort of).
    pub select_only: bool,
    /// `-C`: a new connection per transaction.
    pub connect_per_tx: bool,
    /// `-n`: skip the vacuum of pgbench's tables before the run (needed when they do not
    /// exist, e.g. with a custom `-f` script in `extra_args`). Implied by `scripts`.
    pub no_vacuum: bool,
    /// Custom scripts, each `-f <path>@<weight>` (pgbench picks one per transaction with
    /// probability weight ÷ total); not empty implies `-n`. Empty (the default): the
    /// built-in TPC-B or, with `select_only`, `-S`.
    pub scripts: Vec<(PathBuf, u32)>,
    /// Further arguments, placed before the database name (e.g. `-f`, `script.sql`, `-P`, `1`).
    pub extra_args: Vec<String>,
}

impl PgbenchRun {
    /// Defaults: unix socket, 1 client, 1 job, 100 transactions, simple protocol, TPC-B,
    /// one connection per client, vacuum on.
    pub fn new(user: &str, db: &str) -> PgbenchRun {
        PgbenchRun {
            user: user.into(),
            db: db.into(),
            transport: Transport::Unix,
            clients: 1,
            jobs: 1,
            transactions: Some(100),
            duration_s: None,
            protocol: Protocol::Simple,
            select_only: false,
            connect_per_tx: false,
            no_vacuum: false,
            scripts: Vec::new(),
            extra_args: Vec::new(),
        }
    }

    /// Total transactions this run asks for (`clients × transactions`), if counted.
    pub fn expected_transactions(&self) -> Option<u64> {
        self.transactions.map(|t| t * u64::from(self.clients))
    }
}

/// `-n` and the `-f <path>@<weight>` pairs of `run` (`-n` when asked or when there are
/// custom scripts). Fails when custom scripts meet `select_only` or a path is not UTF-8.
fn script_args(run: &PgbenchRun) -> Result<Vec<String>> {
    if run.select_only && !run.scripts.is_empty() {
        bail!("pgbench: select_only (-S) and custom scripts do not mix here");
    }
    let mut args = Vec::new();
    if run.no_vacuum || !run.scripts.is_empty() {
        args.push("-n".to_string());
    }
    for (path, weight) in &run.scripts {
        let path = path
            .to_str()
            .with_context(|| format!("pgbench script path is not UTF-8: {}", path.display()))?;
        args.push("-f".to_string());
        args.push(format!("{path}@{weight}"));
    }
    Ok(args)
}

/// What pgbench reported.
#[derive(Clone, Debug, PartialEq)]
pub struct PgbenchResult {
    /// `number of transactions actually processed: N[/M]` → N.
    pub transactions_processed: u64,
    /// `tps = X (without initial connection time)` (or `(including reconnection times)` with
    /// `-C`) → X.
    pub tps: f64,
    /// `number of failed transactions: F (…)` → F (0 when the line is absent).
    pub failed: u64,
    /// `latency average = X ms` → X, if reported.
    pub latency_avg_ms: Option<f64>,
    /// pgbench's complete stdout and stderr.
    pub output: String,
}

impl Cluster {
    fn pgbench_cmd(&self, user: &str, transport: Transport) -> Command {
        let mut cmd = Command::new(PGBENCH);
        clean_pg_env(&mut cmd)
            .arg("-h")
            .arg(self.host(transport))
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-U")
            .arg(user);
        cmd
    }

    /// `pgbench -i -s <scale> -q` as `user` in `db` (over the unix socket): creates and fills
    /// pgbench_accounts (100 000 rows per scale unit), _branches, _tellers, _history.
    pub fn pgbench_init(&self, user: &str, db: &str, scale: u32) -> Result<()> {
        let mut cmd = self.pgbench_cmd(user, Transport::Unix);
        cmd.args(["-i", "-q", "-s", &scale.to_string(), db]);
        run_ok(&mut cmd)?;
        Ok(())
    }

    /// The pgbench command line for `run` (not started), e.g. to run it in the background.
    pub fn pgbench_command(&self, run: &PgbenchRun) -> Result<Command> {
        if run.transactions.is_some() && run.duration_s.is_some() {
            bail!("pgbench: set at most one of transactions (-t) and duration_s (-T)");
        }
        let mut cmd = self.pgbench_cmd(&run.user, run.transport);
        cmd.args(["-c", &run.clients.to_string(), "-j", &run.jobs.to_string()]);
        cmd.args(["-M", run.protocol.as_arg()]);
        if let Some(t) = run.transactions {
            cmd.args(["-t", &t.to_string()]);
        }
        if let Some(d) = run.duration_s {
            cmd.args(["-T", &d.to_string()]);
        }
        if run.select_only {
            cmd.arg("-S");
        }
        if run.connect_per_tx {
            cmd.arg("-C");
        }
        cmd.args(script_args(run)?);
        cmd.args(&run.extra_args).arg(&run.db);
        Ok(cmd)
    }

    /// Runs pgbench to completion and parses its report. Fails, quoting the whole output,
    /// when pgbench exits non-zero (e.g. an aborted client) or the report is not parseable.
    pub fn pgbench(&self, run: &PgbenchRun) -> Result<PgbenchResult> {
        self.pgbench_env(run, &[])
    }

    /// [`Cluster::pgbench`] with libpq environment variables set (e.g. `PGSSLMODE`,
    /// `require`: TLS over TCP).
    pub fn pgbench_env(&self, run: &PgbenchRun, env: &[(&str, &str)]) -> Result<PgbenchResult> {
        let mut cmd = self.pgbench_command(run)?;
        cmd.envs(env.iter().copied());
        let out = run_ok(&mut cmd)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        parse_pgbench_output(&text).with_context(|| format!("`{}`", describe(&cmd)))
    }
}

/// Parses pgbench's (v15 client) report: the `number of transactions actually processed`,
/// `number of failed transactions`, `latency average` and `tps` lines. Fails with the full
/// text when the processed count or tps is missing (e.g. `Run was aborted`).
pub fn parse_pgbench_output(text: &str) -> Result<PgbenchResult> {
    let mut processed = None;
    let mut tps = None;
    let mut failed = 0;
    let mut latency = None;
    for line in text.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("number of transactions actually processed:") {
            let n = rest.trim().split('/').next().unwrap_or("");
            processed = n.trim().parse::<u64>().ok();
        } else if let Some(rest) = line.strip_prefix("number of failed transactions:") {
            failed = first_word(rest).parse().unwrap_or(0);
        } else if let Some(rest) = line.strip_prefix("latency average =") {
            latency = first_word(rest).parse().ok();
        } else if let Some(rest) = line.strip_prefix("tps =") {
            // The first tps line; pgbench ≤13 printed two (including/excluding connections).
            if tps.is_none() {
                tps = first_word(rest).parse::<f64>().ok();
            }
        }
    }
    match (processed, tps) {
        (Some(transactions_processed), Some(tps)) if !text.contains("Run was aborted") => {
            Ok(PgbenchResult {
                transactions_processed,
                tps,
                failed,
                latency_avg_ms: latency,
                output: text.to_string(),
            })
        }
        _ => bail!("cannot parse pgbench's report (processed={processed:?}, tps={tps:?}):\n{text}"),
    }
}

fn first_word(s: &str) -> &str {
    s.split_whitespace().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from Debian's pgbench 15.20 against PostgreSQL 15 on this machine.
    const SELECT_T: &str = include_str!("fixtures/select_only_t.out");
    const SELECT_T_CONNECT: &str = include_str!("fixtures/select_only_T_connect_prepared.out");
    const TPCB: &str = include_str!("fixtures/tpcb_extended.out");
    const ABORTED: &str = include_str!("fixtures/abort.out");
    const NO_DB: &str = include_str!("fixtures/fail.out");

    #[test]
    fn parses_select_only_with_t() {
        let r = parse_pgbench_output(SELECT_T).unwrap();
        assert_eq!(r.transactions_processed, 400);
        assert_eq!(r.failed, 0);
        assert!((r.tps - 14019.838071).abs() < 1e-6);
        assert_eq!(r.latency_avg_ms, Some(0.143));
    }

    #[test]
    fn parses_duration_run_with_reconnects() {
        let r = parse_pgbench_output(SELECT_T_CONNECT).unwrap();
        assert_eq!(r.transactions_processed, 768);
        assert!((r.tps - 383.789683).abs() < 1e-6);
    }

    #[test]
    fn parses_tpcb_extended() {
        let r = parse_pgbench_output(TPCB).unwrap();
        assert_eq!(r.transactions_processed, 100);
        assert!((r.tps - 2929.372821).abs() < 1e-6);
    }

    #[test]
    fn rejects_aborted_and_failed_runs() {
        let e = parse_pgbench_output(ABORTED).unwrap_err().to_string();
        assert!(e.contains("division by zero"), "{e}");
        let e = parse_pgbench_output(NO_DB).unwrap_err().to_string();
        assert!(e.contains("nosuchdb"), "{e}");
        assert!(parse_pgbench_output("").is_err());
    }

    #[test]
    fn counts_failures() {
        let text = "number of transactions actually processed: 90/100\n\
                    number of failed transactions: 10 (10.000%)\n\
                    tps = 12.5 (without initial connection time)\n";
        let r = parse_pgbench_output(text).unwrap();
        assert_eq!((r.transactions_processed, r.failed), (90, 10));
    }

    #[test]
    fn expected_transactions() {
        let run = PgbenchRun {
            clients: 4,
            transactions: Some(25),
            ..PgbenchRun::new("shop", "shop")
        };
        assert_eq!(run.expected_transactions(), Some(100));
        let timed = PgbenchRun {
            transactions: None,
            duration_s: Some(5),
            ..run
        };
        assert_eq!(timed.expected_transactions(), None);
        assert_eq!(Protocol::Prepared.as_arg(), "prepared");
    }

    #[test]
    fn custom_scripts_are_weighted_and_imply_no_vacuum() {
        let run = PgbenchRun {
            scripts: vec![("a.sql".into(), 3), ("b.sql".into(), 1)],
            ..PgbenchRun::new("meta", "meta")
        };
        assert_eq!(
            script_args(&run).unwrap(),
            ["-n", "-f", "a.sql@3", "-f", "b.sql@1"]
        );
        assert!(script_args(&PgbenchRun::new("x", "x")).unwrap().is_empty());
        let both = PgbenchRun {
            select_only: true,
            ..run
        };
        assert!(script_args(&both).is_err());
    }
}
