//! `pgmon-agent cleanup --once [--json] [--dry-run]`: the seed's one-shot cleanup. Runs the
//! `cleanup:` rules of the policy file once, without a running agent (from cron, or by
//! hand while the agent is stopped), and reports what it did ([`crate::cleanup::once`]).
//!
//! The rules (`idle_in_transaction_seconds`, `statement_seconds`, `statement_seconds_by_role`,
//! `lock_wait_seconds`, `exempt`) are the policy file's; `cleanup.enabled`, `mode` and
//! `interval_seconds` govern the agent's loop and are not read here: a command run by hand
//! acts, unless `--dry-run`. Every action is a log line under `pgmon::enforcement` (on
//! standard error) and an audit row (`source = 'cleanup'`), as in the agent.

use std::{path::Path, process::ExitCode};

use anyhow::{Context as _, bail};

use crate::{
    cleanup::once::{Report, once, render},
    config::Config,
};

/// Exit code when the round could not run at all.
const CANNOT_RUN: u8 = 2;

/// The CLI: runs the round and prints the report (text, or JSON with `json`); returns the
/// exit code documented on [`crate::cli::Command::Cleanup`].
pub fn cleanup(
    path: &Path,
    json: bool,
    dry_run: bool,
    log_format: crate::daemon::LogFormat,
) -> ExitCode {
    crate::daemon::init_logging(log_format);
    match round(path, dry_run) {
        Ok(report) => {
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).unwrap_or_default()
                );
            } else {
                print!("{}", render(&report));
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            if json {
                println!("{}", serde_json::json!({ "error": format!("{e:#}") }));
            }
            eprintln!("pgmon-agent cleanup: {e:#}");
            ExitCode::from(CANNOT_RUN)
        }
    }
}

fn round(path: &Path, dry_run: bool) -> anyhow::Result<Report> {
    let config = Config::load(path)?;
    let policy = config
        .cleanup
        .compile()
        .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
    if !policy.has_rules() {
        bail!(
            "no cleanup rule has a limit in {} (cleanup.idle_in_transaction_seconds, statement_seconds, statement_seconds_by_role, lock_wait_seconds): nothing to judge sessions by",
            path.display()
        );
    }
    let monitor = config.cluster.monitor()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = tokio::time::timeout(
            std::time::Duration::from_secs(10),
            crate::db::connect(&monitor),
        )
        .await
        .context("the database did not answer within 10 s")??;
        let installed: bool = client
            .query_one(
                "SELECT to_regprocedure('pgmon.end_session(int, timestamptz, timestamptz)') IS NOT NULL \
                    AND to_regclass('pgmon.audit') IS NOT NULL",
                &[],
            )
            .await?
            .get(0);
        if !installed {
            bail!("pgmon.end_session or pgmon.audit is missing: install sql/002_enforcement.sql and sql/005_sessions.sql");
        }
        Ok(once(&client, &policy, dry_run).await?)
    })
}
