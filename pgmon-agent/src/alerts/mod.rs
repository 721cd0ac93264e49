//! The in-agent alert engine (issue 5): every `alerts.evaluation_interval_seconds` it
//! evaluates the whole catalog ([`rules`], evaluated in [`eval`]) against what the health
//! loops last published on the [`Board`] and the storage quota states, runs each alert
//! through the state machine of [`state`] (pending → firing → resolved, `for` durations,
//! repeats), and hands what is to be notified to the shared notifier ([`crate::notify`]):
//! Slack, JSON webhooks and email, each with its own bounded queue and task, so a dead
//! notifier never stalls this loop, the health loops or enforcement.
//!
//! Exported: `pgmon_alerts_firing{alertname,severity}` (firing alerts now, one series per
//! rule and severity it can have) and `pgmon_alert_notifications_total{sink,result}`;
//! `GET /api/v1/alerts` shows the firing and pending alerts, the recent transitions and
//! every rule with its expression, in the read API's envelope ([`crate::api::Envelope`])
//! whose `sql` lists the health loops' statements the rules read ([`sql`]).

pub mod config;
mod eval;
pub mod locks;
mod notice;
pub mod persist;
pub mod rules;
pub mod series;
pub mod sql;
pub mod state;

#[cfg(test)]
mod tests;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::Counter, family::Family, gauge::ConstGauge},
    registry::Registry,
};
use serde::Serialize;

pub use config::{AlertsConfig, Threshold};
pub use eval::Inputs;

use crate::{
    health::Board,
    notify::{self, SinkLabels},
};
use rules::Rule;
use state::{Alert, Notice, Phase, Severity, Tracker};

/// The catalog and the state of every alert; pure: time comes in as an argument.
pub struct Engine {
    rules: Vec<Rule>,
    tracker: Tracker,
    interval_seconds: u64,
}

impl Engine {
    /// The catalog with the policy's numbers, no alert active.
    pub fn new(c: &AlertsConfig) -> Self {
        Self {
            rules: rules::catalog(c),
            tracker: Tracker::new(c.repeat_seconds.saturating_mul(1000), c.history),
            interval_seconds: c.evaluation_interval_seconds,
        }
    }

    /// Applies a reloaded policy's thresholds and `for` durations (SIGHUP). Alerts pending
    /// or firing keep their state and timers (the tracker is kept, keyed by dedupe key);
    /// the rules are rebuilt, so the WAL and temp surge baselines and the windows of
    /// autovacuum starvation and checkpoint thrash start over.
    pub fn reconfigure(&mut self, c: &AlertsConfig) {
        self.rules = rules::catalog(c);
        self.tracker
            .set_repeat(c.repeat_seconds.saturating_mul(1000));
    }

    /// Evaluates every rule at `now_ms` (ms since the UNIX epoch); returns what to notify.
    pub fn tick(&mut self, now_ms: u64, inputs: &Inputs) -> Vec<Notice> {
        let mut out = Vec::new();
        for rule in &mut self.rules {
            let result = rule.evaluate(now_ms, inputs);
            out.extend(self.tracker.observe(now_ms, &rule.meta, result));
        }
        out
    }

    /// What `GET /api/v1/alerts` shows.
    pub fn view(&self, now_ms: u64, notifiers: Vec<String>) -> View {
        let (firing, pending): (Vec<Alert>, Vec<Alert>) = self
            .tracker
            .alerts()
            .cloned()
            .partition(|a| a.state == Phase::Firing);
        View {
            enabled: true,
            evaluated_at: Some(crate::util::rfc3339(now_ms)),
            evaluation_interval_seconds: self.interval_seconds,
            notifiers,
            firing,
            pending,
            history: self.tracker.history().rev().cloned().collect(),
            rules: self
                .rules
                .iter()
                .map(|r| RuleView {
                    alertname: r.meta.name,
                    expression: r.meta.expression.clone(),
                    for_seconds: r.meta.for_ms / 1000,
                    severities: r.severities,
                    sql: sql::sources(r.meta.name).iter().map(|s| s.0).collect(),
                    baselines: r.baselines(),
                })
                .collect(),
        }
    }
}

/// `GET /api/v1/alerts`.
#[derive(Clone, Debug, Default, Serialize)]
pub struct View {
    /// False when `alerts.enabled` is off (or the agent runs without health loops).
    pub enabled: bool,
    /// The last evaluation, RFC 3339.
    pub evaluated_at: Option<String>,
    /// Seconds between evaluations.
    pub evaluation_interval_seconds: u64,
    /// The notifiers' names (the `sink` label).
    pub notifiers: Vec<String>,
    /// Alerts firing now, by dedupe key.
    pub firing: Vec<Alert>,
    /// Alerts whose condition holds, for less than their rule's `for` yet.
    pub pending: Vec<Alert>,
    /// The last transitions (firing, resolved), newest first, at most `alerts.history`.
    pub history: Vec<Notice>,
    /// The catalog.
    pub rules: Vec<RuleView>,
}

/// One rule of the catalog as the API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RuleView {
    pub alertname: &'static str,
    /// The expression with the policy's numbers.
    pub expression: String,
    /// How long the condition must hold before the alert fires.
    pub for_seconds: u64,
    /// The severities its alerts can have.
    pub severities: &'static [Severity],
    /// The names of the statements (in the envelope's `sql`) whose rows it reads.
    pub sql: Vec<&'static str>,
    /// A surge rule's baselines, one per entity it has seen (absent for other rules).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub baselines: Vec<BaselineView>,
}

/// How far a surge rule's baseline has formed for one entity: the rule cannot fire for it
/// before `samples` reaches `min_samples` (one observation per evaluation at most,
/// [`series::Baseline`]).
#[derive(Clone, Debug, Serialize)]
pub struct BaselineView {
    /// The database (`PostgresTempSurge`), or empty for the cluster (`PostgresWalSurge`).
    pub entity: String,
    /// Observations in the baseline.
    pub samples: usize,
    /// Observations needed before it can fire (`min_samples` of the rule's config).
    pub min_samples: usize,
    /// `samples >= min_samples`.
    pub armed: bool,
    /// Mean rate of the observations, bytes per second.
    pub mean_bytes_per_second: f64,
}

/// What the HTTP endpoint and the registry share with the engine's task: the last view
/// and the notification counters.
#[derive(Clone, Debug)]
pub struct AlertBook {
    view: Arc<Mutex<View>>,
    notifications: Family<SinkLabels, Counter>,
}

impl AlertBook {
    /// Registers `pgmon_alerts_firing` and `pgmon_alert_notifications_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let book = Self {
            view: Arc::default(),
            notifications: Family::default(),
        };
        registry.register(
            "pgmon_alert_notifications",
            "Alert notifications by sink and result (sent, failed after every retry, dropped on a full queue, deduplicated, rate_limited)",
            book.notifications.clone(),
        );
        registry.register_collector(Box::new(FiringCollector(book.view.clone())));
        book
    }

    /// The counter the notifier calls.
    pub fn count(&self) -> notify::Count {
        let family = self.notifications.clone();
        Arc::new(move |sink, result| {
            family
                .get_or_create(&SinkLabels {
                    sink: sink.to_owned(),
                    result,
                })
                .inc();
        })
    }

    /// Replaces the view.
    pub fn publish(&self, view: View) {
        if let Ok(mut v) = self.view.lock() {
            *v = view;
        }
    }

    /// The last view published.
    pub fn view(&self) -> View {
        self.view.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

#[derive(Debug)]
struct FiringCollector(Arc<Mutex<View>>);

impl Collector for FiringCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(v) = self.0.lock() else {
            return Ok(());
        };
        if !v.enabled {
            return Ok(());
        }
        let mut m = e.encode_descriptor(
            "pgmon_alerts_firing",
            "Alerts of the in-agent engine firing now, by rule and severity.",
            None,
            MetricType::Gauge,
        )?;
        for r in &v.rules {
            for s in r.severities {
                let n = v
                    .firing
                    .iter()
                    .filter(|a| a.alertname == r.alertname && a.severity == *s)
                    .count();
                let labels = [("alertname", r.alertname), ("severity", s.as_str())];
                ConstGauge::new(n as i64).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}

/// Starts the engine's task on `runtime`: its notifiers, then an evaluation every
/// `evaluation_interval_seconds`. Errors name the notifier that cannot be set up.
pub fn start(
    runtime: &tokio::runtime::Runtime,
    config: &AlertsConfig,
    monitor: &crate::db::DbConfig,
    inputs: AlertInputs,
    book: AlertBook,
    external_url: Option<String>,
) -> anyhow::Result<tokio::sync::watch::Sender<AlertsConfig>> {
    let AlertInputs {
        board,
        storage,
        budgets,
    } = inputs;
    let _guard = runtime.enter();
    let sinks = notice::sinks(config)?;
    let notifier = notify::Notifier::start(sinks, &notice::delivery(config), book.count());
    let engine = Engine::new(config);
    let instance = notice::instance();
    tracing::info!(
        rules = engine.rules.len(),
        notifiers = ?notifier.sink_names(),
        interval_seconds = config.evaluation_interval_seconds,
        "alert engine on"
    );
    let (reload_tx, reload_rx) = tokio::sync::watch::channel(config.clone());
    runtime.spawn(serve(
        engine,
        reload_rx,
        Duration::from_secs(config.evaluation_interval_seconds),
        Sources {
            board,
            storage,
            budgets,
            monitor: monitor.clone(),
        },
        book,
        Outbox {
            notifier,
            instance,
            external_url,
        },
    ));
    Ok(reload_tx)
}

/// What the rules read besides the SQL of the health loops.
pub struct AlertInputs {
    /// What the health loops last read.
    pub board: Board,
    /// The storage quotas, when `storage.enabled`.
    pub storage: Option<crate::storage::StorageHandle>,
    /// The budgets' utilisations, when `budgets.enabled`.
    pub budgets: Option<crate::budget::metrics::BudgetMetrics>,
}

/// Where notices go: the notifiers, the instance they name, and the UI's address for
/// their links (`metrics.external_url`).
struct Outbox {
    notifier: notify::Notifier,
    instance: String,
    external_url: Option<String>,
}

/// Where the engine's task reads its inputs.
struct Sources {
    board: Board,
    storage: Option<crate::storage::StorageHandle>,
    budgets: Option<crate::budget::metrics::BudgetMetrics>,
    /// Where the state is persisted ([`persist`]).
    monitor: crate::db::DbConfig,
}

/// A session of the monitor database within 5 s, or none (tried again next time).
async fn state_client(monitor: &crate::db::DbConfig) -> Option<tokio_postgres::Client> {
    match tokio::time::timeout(Duration::from_secs(5), crate::db::connect(monitor)).await {
        Ok(Ok(c)) => Some(c),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "alert state: cannot connect; persisted at a later evaluation");
            None
        }
        Err(_) => None,
    }
}

async fn serve(
    mut engine: Engine,
    mut reloads: tokio::sync::watch::Receiver<AlertsConfig>,
    interval: Duration,
    sources: Sources,
    book: AlertBook,
    outbox: Outbox,
) {
    let Outbox {
        notifier,
        instance,
        external_url,
    } = outbox;
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let names = notifier.sink_names();
    let mut clock = TickClock::new();
    let mut client = state_client(&sources.monitor).await;
    let mut written = persist::Written::default();
    let mut persisting = true;
    if let Some(c) = &client {
        match persist::load(c).await {
            Ok((alerts, baselines)) => {
                written = persist::Written::from_loaded(&alerts);
                let (a, b) = engine.restore(alerts, baselines);
                tracing::info!(
                    alerts = a,
                    baselines = b,
                    "alert state restored from pgmon.alert_state and pgmon.alert_baselines"
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "alert state unreadable (is sql/002_enforcement.sql up to date?); every alert starts inactive")
            }
        }
    }
    loop {
        let at = ticker.tick().await;
        if reloads.has_changed().unwrap_or(false) {
            engine.reconfigure(&reloads.borrow_and_update());
        }
        let storage = match &sources.storage {
            // A busy coordinator costs this round its storage rules, not the others.
            Some(h) => tokio::time::timeout(Duration::from_secs(1), h.status())
                .await
                .ok()
                .flatten()
                .map(|s| {
                    s.roles
                        .into_iter()
                        .map(|r| (r.role, r.state.as_str()))
                        .collect()
                }),
            None => None,
        };
        let now = clock.at(at, crate::util::now_ms());
        let inputs = Inputs {
            board: &sources.board,
            storage,
            budgets: sources.budgets.as_ref().map(|b| b.utilisations()),
        };
        for n in engine.tick(now, &inputs) {
            tracing::warn!(
                alertname = n.alert.alertname,
                status = ?n.status,
                severity = n.alert.severity.as_str(),
                message = %n.alert.message,
                "alert"
            );
            notifier.send(notice::payload(&n, &instance, external_url.as_deref()));
        }
        book.publish(engine.view(now, names.clone()));
        if !persisting {
            continue;
        }
        if client
            .as_ref()
            .is_none_or(tokio_postgres::Client::is_closed)
        {
            client = state_client(&sources.monitor).await;
        }
        if let Some(c) = &mut client
            && let Err(e) = written.write(c, &engine).await
        {
            if crate::db::schema_missing(&e) {
                tracing::warn!(error = %e, "alert state is not persisted: pgmon.alert_state is missing or not writable (install sql/002_enforcement.sql in the monitor database)");
                persisting = false;
            } else {
                tracing::warn!(error = %e, "alert state: write failed; retried at the next evaluation");
            }
            client = None;
        }
    }
}

/// The engine's clock: each tick's scheduled time as milliseconds since the epoch, so two
/// ticks are exactly an interval apart (a `for` of one interval fires at the second tick,
/// not sometimes at the third because the task woke a millisecond late). Anchored on the
/// wall clock, and anchored again when the two drift more than a second apart (a clock
/// step).
struct TickClock {
    anchor: Option<(tokio::time::Instant, u64)>,
}

impl TickClock {
    fn new() -> Self {
        Self { anchor: None }
    }

    /// The time of the tick scheduled at `at`, given the wall clock `wall_ms` now.
    fn at(&mut self, at: tokio::time::Instant, wall_ms: u64) -> u64 {
        if let Some((a, ms)) = self.anchor {
            let projected = ms + at.saturating_duration_since(a).as_millis() as u64;
            if projected.abs_diff(wall_ms) <= 1000 {
                return projected;
            }
        }
        self.anchor = Some((at, wall_ms));
        wall_ms
    }
}
