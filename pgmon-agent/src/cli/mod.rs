//! The command line (clap). One file per subcommand; `main.rs` only dispatches.

pub mod check;
pub mod check_config;
pub mod cleanup;
pub mod client;
pub mod cost;
pub mod doctor;
pub mod emergency;
pub mod fingerprint;
pub mod install_sql;
pub mod record;
pub mod release_all;
pub mod reload;
pub mod replay;
pub mod run;
pub mod status;
mod table;
pub mod unlock;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// pgmon: watches every query a PostgreSQL cluster's backends receive, through eBPF probes
/// on their client sockets, and attributes it to its role.
#[derive(Debug, Parser)]
#[command(name = "pgmon-agent", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log lines as `text` (default) or `json` (one object per line; for the journal's
    /// and log shippers' parsers).
    #[arg(long, global = true, value_enum, default_value_t)]
    pub log_format: crate::daemon::LogFormat,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach to the cluster named in the policy file and run until SIGTERM (needs root).
    Run {
        /// The YAML policy file.
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
    },
    /// Show what a running agent sees: capture health and per-role traffic.
    Status {
        #[command(flatten)]
        agent: client::AgentArgs,
        /// Print the raw JSON document of /api/v1/status.
        #[arg(long)]
        json: bool,
        /// Show one role's fingerprints, most called first.
        #[arg(long)]
        role: Option<String>,
    },
    /// Print each statement's fingerprint (16 hex digits, the `fingerprint` label of
    /// /metrics) and normalized text, as the agent computes them.
    Fingerprint {
        /// The SQL text (one or more statements); `-` reads standard input.
        sql: String,
    },
    /// Record raw capture records to a file for `replay` (benchmarks; needs root).
    #[command(hide = true)]
    Record {
        #[arg(long, short)]
        config: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
    },
    /// Replay a recorded capture through the pipeline on one core and print its throughput.
    #[command(hide = true)]
    Replay {
        file: PathBuf,
        #[arg(long, default_value_t = 5)]
        passes: u32,
        /// Empty statement cache on every pass (every distinct statement misses).
        #[arg(long)]
        cold: bool,
    },
    /// One-shot health report of the cluster as JSON, without a running agent; exit code 0
    /// OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (Nagios plugin convention).
    Check {
        /// The YAML policy file (cluster.connection and the `alerts:` thresholds).
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
    },
    /// Terminate every non-essential client backend now (never superusers, replication
    /// roles, pgmon's own or exempt roles; never autovacuum or walsenders). Asks for
    /// confirmation on a terminal; `--yes` skips it (required without a terminal).
    /// SIGUSR1 to a running agent does the same.
    Emergency {
        /// The YAML policy file (cluster.connection).
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Run the `cleanup:` rules once, without a running agent, and report what was done.
    ///
    /// Sessions idle in transaction too long and lock-wait blockers are terminated,
    /// statements running too long cancelled, each with a log line (target
    /// pgmon::enforcement, on standard error) and an audit row (source cleanup). The rules
    /// are the policy file's; `cleanup.enabled`, `mode` and `interval_seconds` (the
    /// agent's loop) are not read: it acts unless `--dry-run`.
    ///
    /// Exit codes: 0 nothing to do, or every action applied (or observed with --dry-run);
    /// 1 some action refused or failed (the report says which); 2 it could not run (policy
    /// file, no rule with a limit, database unreachable, sql/005_sessions.sql missing).
    Cleanup {
        /// The YAML policy file (cluster.connection and the `cleanup:` rules).
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
        /// One round (required: the periodic cleanup is the agent's, `cleanup.enabled`).
        #[arg(long, required = true)]
        once: bool,
        /// Print the report as one JSON document (actions with pid, role, rule, outcome and
        /// result; counts by outcome).
        #[arg(long)]
        json: bool,
        /// Decide, audit and log; signal nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Unlock a role the storage quota locked (the way out of `manual_unlock: true`), or
    /// with `--budget` give a role its query-cost budget back: its ledger is emptied, its
    /// ladder step cleared, and the connection limit or NOLOGIN the step set is undone.
    /// Asks the running agent (POST /api/v1/storage/unlock or /api/v1/budget/unlock,
    /// accepted from this host only), so its state machines, the audit and the
    /// notifications follow.
    Unlock {
        /// The role to unlock.
        role: String,
        /// Reset the role's budget (ledger and ladder step) instead of its storage lock.
        #[arg(long)]
        budget: bool,
        #[command(flatten)]
        agent: client::AgentArgs,
    },
    /// Take pgmon's hands off everything now, for when the monitor itself is the problem.
    ///
    /// Stops the running agent (found by its metrics.listen socket): `systemctl stop UNIT`
    /// when it is a systemd unit's main process, SIGTERM otherwise (SIGKILL after 15 s).
    /// Then gives back every role pgmon changed (storage and budget locks taken off, the
    /// saved connection limit and LOGIN restored, ladder steps, ledgers and quota states
    /// forgotten), with an audit row (source release-all) and a log line
    /// (pgmon::enforcement) per role. Enforcement stays off until the agent is started
    /// again, which judges every role afresh. Sessions already ended stay ended. Asks for
    /// confirmation on a terminal; `--yes` skips it (required without a terminal). Exit
    /// code 1 when anything was left undone (it says what; run it again).
    ReleaseAll {
        /// The YAML policy file (cluster.connection, metrics.listen).
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
        /// Do not ask.
        #[arg(long)]
        yes: bool,
    },
    /// Apply pgmon's SQL (the role, its grants, the pgmon schema) to a cluster, as a
    /// superuser: idempotent, every database that allows connections unless `--database`.
    InstallSql {
        /// libpq connection string of a superuser session, e.g.
        /// "host=/var/run/postgresql user=postgres".
        #[arg(long)]
        dsn: String,
        /// Only these databases (repeatable).
        #[arg(long = "database")]
        databases: Vec<String>,
        /// Run sql/uninstall.sql instead (restores every role pgmon changed, drops schema
        /// pgmon; the role pgmon stays).
        #[arg(long)]
        uninstall: bool,
    },
    /// Check this host end to end (policy, capabilities, kernel, hooks, postmaster,
    /// database role, grants and schema) and say what is wrong; exit 1 on a problem.
    Doctor {
        /// The YAML policy file.
        #[arg(long, short, default_value = "/etc/pgmon/pgmon.yaml")]
        config: PathBuf,
    },
    /// Forget cost estimates by hand (see `pgmon-agent cost forget --help`).
    Cost {
        #[command(subcommand)]
        command: CostCommand,
    },
    /// Check a policy file and exit 0 if it is usable, or print file:line:column: field: error.
    CheckConfig {
        /// The YAML policy file.
        file: PathBuf,
    },
}

/// Asks `question` on the terminal and returns when the operator types `YES`; an error
/// without a terminal (pass `--yes`) or for any other answer (nothing is done).
pub fn confirm(question: &str) -> anyhow::Result<()> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("refusing without a terminal to confirm on: pass --yes");
    }
    print!("{question} Type YES: ");
    std::io::stdout().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    if answer.trim() != "YES" {
        anyhow::bail!("not confirmed; nothing done");
    }
    Ok(())
}

/// `pgmon-agent cost …`.
#[derive(Debug, Subcommand)]
pub enum CostCommand {
    /// Forget estimates in the running agent's cache and in pgmon.cost_estimates (POST
    /// /api/v1/cost/forget, accepted from this host only), with an audit row: the next
    /// execution of each statement is planned again. For an estimate you believe wrong
    /// (statistics changed, a setting changed) that DDL did not invalidate.
    Forget {
        #[command(flatten)]
        target: cost::Target,
        /// With --relation: only the estimates made in this database.
        #[arg(long)]
        database: Option<String>,
        #[command(flatten)]
        agent: client::AgentArgs,
    },
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory as _, Parser as _};

    use super::{Cli, Command};

    #[test]
    fn the_command_line_is_consistent_and_parses_the_manual_levers() {
        Cli::command().debug_assert();
        let parse = |args: &[&str]| Cli::try_parse_from([&["pgmon-agent"], args].concat());
        match parse(&["unlock", "--budget", "heavy"]).unwrap().command {
            Command::Unlock { role, budget, .. } => {
                assert_eq!((role.as_str(), budget), ("heavy", true))
            }
            other => panic!("{other:?}"),
        }
        match parse(&["unlock", "heavy"]).unwrap().command {
            Command::Unlock { budget, .. } => assert!(!budget, "storage by default"),
            other => panic!("{other:?}"),
        }
        match parse(&["cleanup", "--once", "--json"]).unwrap().command {
            Command::Cleanup {
                once,
                json,
                dry_run,
                ..
            } => assert_eq!((once, json, dry_run), (true, true, false)),
            other => panic!("{other:?}"),
        }
        assert!(parse(&["cleanup"]).is_err(), "--once is required");
        match parse(&["release-all", "--yes"]).unwrap().command {
            Command::ReleaseAll { yes, .. } => assert!(yes),
            other => panic!("{other:?}"),
        }
    }
}
