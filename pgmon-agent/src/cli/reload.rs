//! SIGHUP: reload the policy file without losing state.
//!
//! The file is read and validated whole first; a file that does not parse or validate is
//! refused with the same `file:line:column: field: error` message `check-config` prints,
//! and the policy in force stays. A valid file is applied section by section:
//!
//! - `budgets`: tiers, limits, exemptions, mode and ladder (ledgers and steps are kept;
//!   see [`crate::budget::Budgets::set_policy`]);
//! - `storage`: limits, exemptions, mode presets, dry run (state and grace timers are
//!   kept; every role is re-judged against its new limits);
//! - `cleanup`: thresholds, per-role overrides, exemptions, mode, interval;
//! - `alerts`: thresholds, `for` durations and `repeat_seconds` (alerts in flight keep
//!   their state; see [`crate::alerts::Engine::reconfigure`]);
//!
//! and every other section (the cluster, capture, query, metrics, cost, health) takes
//! effect at the next restart, which is logged per section, as do the alert notifiers,
//! delivery settings and evaluation interval. Turning `budgets`, `storage`, `cleanup` or
//! `alerts` on or off also needs a restart.

use std::{path::PathBuf, sync::Arc};

use crate::{config::Config, metrics::Metrics, metrics::ReloadLabels};

/// Where each reloadable section goes.
pub struct Reloader {
    pub path: PathBuf,
    /// The policy the agent started with (sections that need a restart are compared
    /// with it, so a pending change is reported at every reload until the restart).
    pub started: Config,
    /// The policy in force.
    pub current: Config,
    /// To the capture thread, when budgets run.
    pub budgets: Option<std::sync::mpsc::Sender<crate::budget::policy::Compiled>>,
    /// The storage coordinator, when storage quotas run.
    pub storage: Option<crate::storage::StorageHandle>,
    /// The cleanup task, when it runs.
    pub cleanup: Option<tokio::sync::watch::Sender<crate::cleanup::Policy>>,
    /// The alert engine, when it runs.
    pub alerts: Option<tokio::sync::watch::Sender<crate::alerts::AlertsConfig>>,
    pub metrics: Arc<Metrics>,
}

/// What a reload did.
#[derive(Debug, Default, PartialEq)]
pub struct Outcome {
    /// Sections applied now.
    pub applied: Vec<&'static str>,
    /// Sections that changed but wait for a restart.
    pub at_restart: Vec<&'static str>,
}

impl Reloader {
    /// Reads, validates and applies the policy file; on error nothing changes and the
    /// error (file, line, field) is returned.
    pub fn reload(&mut self) -> anyhow::Result<Outcome> {
        crate::daemon::notify_reloading();
        let result = self.try_reload();
        let label = if result.is_ok() { "applied" } else { "refused" };
        self.metrics
            .reloads
            .get_or_create(&ReloadLabels { result: label })
            .inc();
        self.metrics
            .last_reload_successful
            .set(i64::from(result.is_ok()));
        crate::daemon::notify_ready(match &result {
            Ok(_) => "policy reloaded",
            Err(_) => "policy reload refused; the previous policy is in force",
        });
        result
    }

    fn try_reload(&mut self) -> anyhow::Result<Outcome> {
        let new = Config::load(&self.path)?;
        // Config::load validated each section; compiling again cannot fail on the same
        // text, but an error still refuses the reload rather than panicking.
        let path = self.path.display().to_string();
        let err =
            |(field, message): (String, String)| anyhow::anyhow!("{path}: {field}: {message}");
        let budgets = new.budgets.compile().map_err(err)?;
        let storage = new.storage.compile().map_err(err)?;
        let cleanup = new.cleanup.compile().map_err(err)?;

        let (started, old) = (&self.started, &self.current);
        let differs =
            |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") != format!("{b:?}");
        let mut out = Outcome::default();
        for (name, changed) in [
            ("cluster", differs(&started.cluster, &new.cluster)),
            ("capture", differs(&started.capture, &new.capture)),
            ("query", differs(&started.query, &new.query)),
            ("metrics", differs(&started.metrics, &new.metrics)),
            ("security", differs(&started.security, &new.security)),
            ("cost", differs(&started.cost, &new.cost)),
            ("health", differs(&started.health, &new.health)),
            (
                "alerts.enabled",
                started.alerts.enabled != new.alerts.enabled,
            ),
            (
                "alerts.notifiers",
                differs(&started.alerts.notifiers, &new.alerts.notifiers),
            ),
            (
                "alerts.delivery",
                differs(&started.alerts.delivery, &new.alerts.delivery),
            ),
            (
                "alerts.evaluation_interval_seconds",
                started.alerts.evaluation_interval_seconds
                    != new.alerts.evaluation_interval_seconds,
            ),
            (
                "budgets.enabled",
                started.budgets.enabled != new.budgets.enabled,
            ),
            (
                "storage.enabled",
                started.storage.enabled != new.storage.enabled,
            ),
            (
                "cleanup.enabled",
                started.cleanup.enabled != new.cleanup.enabled,
            ),
        ] {
            if changed {
                out.at_restart.push(name);
            }
        }
        if differs(&old.budgets, &new.budgets)
            && let Some(tx) = &self.budgets
        {
            let _ = tx.send(budgets);
            out.applied.push("budgets");
        }
        if differs(&old.storage, &new.storage)
            && let Some(handle) = &self.storage
            && handle.reload(storage)
        {
            out.applied.push("storage");
        }
        if differs(&old.cleanup, &new.cleanup)
            && let Some(tx) = &self.cleanup
        {
            let _ = tx.send(cleanup);
            out.applied.push("cleanup");
        }
        if differs(&old.alerts, &new.alerts)
            && let Some(tx) = &self.alerts
        {
            let _ = tx.send(new.alerts.clone());
            out.applied.push("alerts");
        }
        self.current = new;
        Ok(out)
    }

    /// [`Reloader::reload`], logged: one line for the outcome, one warning per section
    /// that waits for a restart.
    pub fn reload_and_log(&mut self) {
        match self.reload() {
            Ok(o) => {
                for section in &o.at_restart {
                    tracing::warn!(
                        section,
                        "policy reload: this section changed; it takes effect at the next restart"
                    );
                }
                tracing::info!(path = %self.path.display(), applied = ?o.applied, "SIGHUP: policy reloaded");
            }
            Err(e) => tracing::error!(
                path = %self.path.display(),
                error = %format!("{e:#}"),
                "SIGHUP: policy reload refused; the policy in force is unchanged"
            ),
        }
    }
}
