//! `pgmon-agent release-all [--yes]`: take pgmon's hands off everything now
//! ([`crate::release`]). In order:
//!
//! 1. find the agent by the socket it listens on (`metrics.listen`) and the roles pgmon's
//!    tables say it changed, and print that plan;
//! 2. ask for confirmation on a terminal (`YES`), unless `--yes` (required without one);
//! 3. stop the agent first, so nothing re-applies a step while the roles are given back:
//!    `systemctl stop UNIT` when it is a systemd unit's main process (it stays stopped:
//!    a stop is not a failure for `Restart=on-failure`), SIGTERM otherwise, SIGKILL after
//!    15 s. Enforcement stays off until the agent is started again;
//! 4. give every role back, one audit row and one `pgmon::enforcement` line each.
//!
//! Every step is attempted even when one before failed (a stuck agent is killed, an
//! unreachable database still gets its agent stopped); the command then fails, saying what
//! is left. Run it again, or `sql/uninstall.sql`, to finish.

use std::{path::Path, time::Duration};

use anyhow::{Context as _, bail};

use crate::{
    config::Config,
    release::{changed_roles, process, release},
};

/// The CLI (see the module doc).
pub fn release_all(
    path: &Path,
    yes: bool,
    log_format: crate::daemon::LogFormat,
) -> anyhow::Result<()> {
    crate::daemon::init_logging(log_format);
    let config = Config::load(path)?;
    let listen = config.metrics.listen;
    let agent = process::find(listen).with_context(|| format!("finding the agent on {listen}"))?;
    let monitor = config.cluster.monitor()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let db = rt.block_on(async {
        let client = tokio::time::timeout(Duration::from_secs(10), crate::db::connect(&monitor))
            .await
            .context("the database did not answer within 10 s")??;
        let roles = changed_roles(&client)
            .await
            .context("reading pgmon's tables (is sql/002_enforcement.sql installed?)")?;
        anyhow::Ok((client, roles))
    });

    match &agent {
        Some(a) => println!(
            "agent: pid {}{}, listening on {listen}",
            a.pid,
            a.unit
                .as_ref()
                .map(|u| format!(" (systemd unit {u})"))
                .unwrap_or_default()
        ),
        None => println!("agent: none listening on {listen}"),
    }
    match &db {
        Ok((_, roles)) if roles.is_empty() => println!("roles pgmon changed: none"),
        Ok((_, roles)) => println!("roles pgmon changed: {}", roles.join(", ")),
        Err(e) => println!("roles pgmon changed: unknown ({e:#})"),
    }
    if !yes {
        confirm(&config)?;
    }

    let mut problems = Vec::new();
    if let Some(a) = &agent {
        match process::stop(a) {
            Ok(how) => {
                tracing::warn!(target: "pgmon::enforcement", pid = a.pid, how = %how, "release-all: agent stopped");
                println!("agent stopped: {how}");
            }
            Err(e) => {
                println!("agent NOT stopped: {e}");
                problems.push(format!("the agent: {e}"));
            }
        }
    }
    match db {
        Err(e) => problems.push(format!("no role released: {e:#}")),
        Ok((client, roles)) => rt.block_on(async {
            let mut given_back = 0;
            for role in &roles {
                match release(&client, role).await {
                    Ok(r) => {
                        println!("{:<24} {}", r.role, r.result());
                        if r.ok {
                            given_back += 1;
                        } else {
                            problems.push(format!("{role}: {}", r.result()));
                        }
                    }
                    Err(e) => {
                        println!("{role:<24} NOT released: {e}");
                        problems.push(format!("{role}: {e}"));
                    }
                }
            }
            println!(
                "{given_back} of {} role(s) given back (audited in pgmon.audit, source release-all)",
                roles.len()
            );
        }),
    }
    if !problems.is_empty() {
        bail!(
            "not everything was released: {}; run release-all again, or sql/uninstall.sql",
            problems.join("; ")
        );
    }
    println!(
        "enforcement is off until the agent starts again (systemctl start pgmon-agent); it \
         then judges every role afresh"
    );
    Ok(())
}

fn confirm(config: &Config) -> anyhow::Result<()> {
    super::confirm(&format!(
        "Stop the agent and give back every role pgmon changed in the cluster at {}?",
        config.cluster.data_directory.display()
    ))
}
