//! `pgmon-agent emergency` and SIGUSR1: terminate every non-essential client backend through
//! `pgmon.emergency_terminate` (`sql/005_sessions.sql`), which spares superusers,
//! replication roles, pgmon's own roles and `pgmon.exempt_roles`, touches no background
//! process (autovacuum, walsenders), and writes an audit row per backend.

use std::path::Path;

use anyhow::Context as _;

use crate::config::Config;

/// What became of one backend: (pid, role, result).
pub type Outcome = (i32, String, String);

/// Calls `pgmon.emergency_terminate(reason)` on a new session of `monitor`.
pub async fn terminate(
    monitor: &crate::db::DbConfig,
    reason: &str,
) -> anyhow::Result<Vec<Outcome>> {
    let client = crate::db::connect(monitor).await?;
    let rows = client
        .query(
            "SELECT pid, rolname::text, result FROM pgmon.emergency_terminate($1)",
            &[&reason],
        )
        .await
        .context("pgmon.emergency_terminate (is sql/005_sessions.sql installed?)")?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect())
}

/// How many of `outcomes` were terminated (the others were spared or already gone).
fn terminated(outcomes: &[Outcome]) -> usize {
    outcomes.iter().filter(|o| o.2 == "terminated").count()
}

fn log(outcomes: &[Outcome], trigger: &str) {
    let ended = terminated(outcomes);
    for (pid, role, result) in outcomes {
        tracing::warn!(target: "pgmon::enforcement", pid, role = %role, result = %result, trigger, "emergency");
    }
    tracing::warn!(
        terminated = ended,
        spared = outcomes.len() - ended,
        trigger,
        "emergency done"
    );
}

/// The CLI: confirms, terminates, prints one line per backend.
pub fn emergency(path: &Path, yes: bool) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    if !yes {
        super::confirm(&format!(
            "Terminate every non-essential session of the cluster at {}?",
            config.cluster.data_directory.display()
        ))?;
    }
    let monitor = config.cluster.monitor()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let outcomes = rt.block_on(terminate(&monitor, "emergency: pgmon-agent emergency"))?;
    for (pid, role, result) in &outcomes {
        println!("{pid:>8}  {role:<24} {result}");
    }
    let ended = terminated(&outcomes);
    println!(
        "{ended} terminated, {} spared (audited in pgmon.audit)",
        outcomes.len() - ended
    );
    Ok(())
}

/// In the agent: SIGUSR1 runs the emergency.
pub async fn on_sigusr1(monitor: crate::db::DbConfig) {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        tracing::warn!("cannot install the SIGUSR1 handler: no emergency by signal");
        return;
    };
    while usr1.recv().await.is_some() {
        tracing::warn!("SIGUSR1: emergency: terminating every non-essential session");
        match terminate(&monitor, "emergency: SIGUSR1").await {
            Ok(o) => log(&o, "SIGUSR1"),
            Err(e) => tracing::error!(error = %format!("{e:#}"), "emergency failed"),
        }
    }
}
