//! `pgmon-agent run --config FILE`: attach, capture, serve, until SIGTERM or SIGINT.
//!
//! Threads: the capture thread owns the kernel objects and the whole pipeline (no locks on
//! the hot path); a small tokio runtime serves HTTP and the monitor connection. On SIGTERM
//! the capture thread stops, its `Capture` is dropped, which detaches every probe, and the
//! process exits 0. If the agent dies instead, the kernel detaches the probes with its file
//! descriptors: queries never wait on pgmon.

use std::{
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    attribution,
    budget::{
        Budgets, Channels,
        enforce::{self, Enforcer},
        reset::ResetRequest,
    },
    capture::tls::TlsCapture,
    capture::{Capture, cluster},
    config::Config,
    cost::{Costs, worker::Worker},
    http::{self, Endpoint},
    metrics::Metrics,
    pipeline::BudgetLink,
    pipeline::Pipeline,
    pipeline::metrics::TrafficMetrics,
    status::StatusRequest,
};

/// Runs the agent with the policy file at `config_path`, logging in `log_format`.
pub fn run(config_path: &Path, log_format: crate::daemon::LogFormat) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    crate::daemon::init_logging(log_format);
    crate::daemon::require_capabilities()?;

    let monitor = config.cluster.monitor()?;
    let read_only = crate::privileges::check_at_start(config.security.read_only_enforce, &monitor)?;
    let capture = Capture::attach(&config.capture, &config.cluster.data_directory)
        .context("attaching the capture")?;
    let hook = capture.hook();
    for (family, why) in capture.refused() {
        tracing::info!(hook = family.name(), reason = %why, "cheaper hook family refused by the kernel");
    }
    tracing::info!(
        hook = hook.name(),
        cost_rank = hook.cost_rank(),
        postmaster = capture.postmaster_pid(),
        preexisting_backends = capture.preexisting().len(),
        "capture attached"
    );
    match capture.tls() {
        TlsCapture::On { library, .. } => {
            tracing::info!(%library, "TLS capture on: entry probes on SSL_accept, SSL_read, SSL_write, SSL_get_error");
        }
        TlsCapture::Off { reason } => {
            tracing::info!(%reason, "TLS capture off: TLS sessions are counted as unreadable and charged by CPU time");
        }
    }
    let (metrics, sets) = register_metrics(
        hook.name(),
        hook.cost_rank(),
        config.cluster.name.as_deref(),
    );
    sets.traffic.set_tls_capture(capture.tls());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("pgmon-io")
        .build()?;
    let listener = runtime
        .block_on(http::bind(config.metrics.listen))
        .with_context(|| format!("metrics.listen: cannot listen on {}", config.metrics.listen))?;

    let (lookup_tx, lookup_rx) = tokio::sync::mpsc::unbounded_channel();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let (status_tx, status_rx) = std::sync::mpsc::channel::<StatusRequest>();
    let (reset_tx, reset_rx) = std::sync::mpsc::channel::<ResetRequest>();
    let last_drain_ms = Arc::new(AtomicU64::new(0));
    let drained = last_drain_ms.clone();
    let stop = Arc::new(AtomicBool::new(false));

    let (budget_link, budget_policies, cost_control) =
        match start_budgets(&config, &runtime, &monitor, &sets)? {
            Some((link, tx, cost)) => (Some(link), Some(tx), cost),
            None => (None, None, None),
        };
    if config.health.enabled {
        crate::health::start(&runtime, &config.health, &monitor, &sets.health);
    }
    let cleanup = if config.cleanup.enabled {
        let policy = config
            .cleanup
            .compile()
            .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
        tracing::info!(mode = ?policy.config.mode, "session cleanup on");
        let (tx, rx) = tokio::sync::watch::channel(policy);
        runtime.spawn(crate::cleanup::serve(
            rx,
            monitor.clone(),
            sets.budget.clone(),
        ));
        Some(tx)
    } else {
        None
    };
    runtime.spawn(crate::cli::emergency::on_sigusr1(monitor.clone()));
    let storage = start_storage(&config, &runtime, &monitor, &sets)?;
    let alerts = if config.alerts.enabled {
        Some(crate::alerts::start(
            &runtime,
            &config.alerts,
            &monitor,
            crate::alerts::AlertInputs {
                board: sets.health.clone(),
                storage: storage.clone(),
                budgets: config.budgets.enabled.then(|| sets.budget.clone()),
            },
            sets.alerts.clone(),
            config.metrics.external_url.clone(),
        )?)
    } else {
        None
    };
    let api = crate::api::Api::new(
        &config.health,
        &config.cluster.data_directory,
        monitor.clone(),
        status_tx.clone(),
        storage.clone(),
        sets.health.clone(),
        config.security.redact_sql_text,
    );
    runtime.spawn(attribution::serve(
        monitor.clone(),
        lookup_rx,
        answer_tx,
        metrics.db_connect_errors.clone(),
    ));
    let history = crate::history::History::default();
    runtime.spawn(crate::history::run(
        history.clone(),
        status_tx.clone(),
        sets.health.clone(),
    ));
    runtime.spawn(http::serve(
        listener,
        Endpoint {
            metrics: metrics.clone(),
            health: sets.health.clone(),
            alerts: sets.alerts.clone(),
            status: status_tx,
            last_drain_ms: last_drain_ms.clone(),
            storage: storage.clone(),
            cost: cost_control,
            budget_reset: config.budgets.enabled.then_some(reset_tx),
            api,
            history,
        },
        config.metrics.clone(),
    ));
    tracing::info!(
        ui = %format!("{}://{}/", config.metrics.scheme(), config.metrics.listen),
        basic_auth = !config.metrics.basic_auth_users.is_empty(),
        "serving the web UI, /metrics, /healthz, /api/v1/*"
    );

    let capture_thread = {
        let stop = stop.clone();
        let config = config.clone();
        let traffic = sets.traffic.clone();
        std::thread::Builder::new()
            .name("pgmon-capture".into())
            .spawn(move || {
                let mut pipeline = Pipeline::new(
                    &config.query,
                    config.capture.max_message_bytes,
                    traffic,
                    lookup_tx,
                );
                pipeline.set_redact_sql_text(config.security.redact_sql_text);
                if let Some(link) = budget_link {
                    pipeline = pipeline.with_budgets(link);
                }
                capture_loop(
                    capture,
                    &mut pipeline,
                    &config,
                    &stop,
                    &Inbox {
                        answers: answer_rx,
                        status: status_rx,
                        resets: reset_rx,
                    },
                    &last_drain_ms,
                );
            })?
    };

    let mut reloader = super::reload::Reloader {
        path: config_path.to_owned(),
        started: config.clone(),
        current: config.clone(),
        budgets: budget_policies,
        storage,
        cleanup,
        alerts,
        metrics: metrics.clone(),
    };
    let refused = runtime.block_on(async {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let mut refusal = crate::privileges::check_later(read_only, &monitor);
        let mut refused = None;
        let ready = tokio::spawn(become_ready(monitor.clone(), hook.name()));
        crate::audit::spawn_pruner(monitor.clone(), config.audit.retention_days);
        let watchdog = crate::daemon::watchdog_period()
            .map(|period| tokio::spawn(watchdog(period, drained.clone())));
        loop {
            tokio::select! {
                _ = term.recv() => { tracing::info!("SIGTERM: detaching"); break; }
                _ = int.recv() => { tracing::info!("SIGINT: detaching"); break; }
                _ = hup.recv() => reloader.reload_and_log(),
                Some(e) = refusal.recv() => {
                    tracing::error!("{}; detaching", crate::util::error_chain(&e));
                    refused = Some(e);
                    break;
                }
            }
        }
        ready.abort();
        if let Some(w) = watchdog {
            w.abort();
        }
        crate::daemon::notify_stopping();
        Ok::<_, std::io::Error>(refused)
    })?;
    stop.store(true, Ordering::Relaxed);
    capture_thread
        .join()
        .map_err(|_| anyhow::anyhow!("capture thread panicked"))?;
    runtime.shutdown_timeout(Duration::from_secs(2));
    tracing::info!("probes detached; exiting");
    match refused {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

/// Each subsystem's metric families, registered into the one exporter at start-up. Each
/// set goes only to the subsystem that updates it; the health board and the alert book
/// also go to their readers (the alert engine, the API, `/healthz`).
struct Sets {
    traffic: Arc<TrafficMetrics>,
    cost: crate::cost::CostMetrics,
    budget: crate::budget::metrics::BudgetMetrics,
    storage: crate::storage::metrics::StorageMetrics,
    health: crate::health::Board,
    alerts: crate::alerts::AlertBook,
}

/// The exporter and every subsystem's families registered in it; `hook` and its cost rank
/// become `pgmon_probe_info`, `cluster` (`cluster.name`) a label on every series.
fn register_metrics(hook: &str, cost_rank: usize, cluster: Option<&str>) -> (Arc<Metrics>, Sets) {
    let mut metrics = Metrics::for_cluster(cluster);
    let registry = metrics.registry();
    let sets = Sets {
        traffic: TrafficMetrics::register(registry, hook, cost_rank),
        cost: crate::cost::CostMetrics::register(registry),
        budget: crate::budget::metrics::BudgetMetrics::register(registry),
        storage: crate::storage::metrics::StorageMetrics::register(registry),
        health: crate::health::Board::default(),
        alerts: crate::alerts::AlertBook::register(registry),
    };
    registry.register_collector(sets.health.collector());
    (Arc::new(metrics), sets)
}

/// Waits until the monitor database answers (retrying with backoff), then tells systemd
/// the agent is ready: the probes are attached before this task starts.
async fn become_ready(monitor: crate::db::DbConfig, hook: &'static str) {
    let client = crate::db::connect_with_backoff(&monitor, "readiness", None).await;
    drop(client);
    let status = format!("capturing with {hook}; database reached");
    tracing::info!(hook, "ready: probes attached, database reached");
    crate::daemon::notify_ready(&status);
}

/// Pings systemd's watchdog every half `period` while the capture thread drains; a
/// capture thread stuck for longer than `period` (or 5 s, whichever is longer) stops the
/// pings, and systemd restarts the unit.
async fn watchdog(period: Duration, last_drain_ms: Arc<AtomicU64>) {
    let stale_ms = period.max(Duration::from_secs(5)).as_millis() as u64;
    let mut tick = tokio::time::interval(period / 2);
    loop {
        tick.tick().await;
        let last = last_drain_ms.load(Ordering::Relaxed);
        if last != 0 && crate::util::now_ms().saturating_sub(last) < stale_ms {
            crate::daemon::notify_watchdog();
        } else if last != 0 {
            tracing::error!(
                since_ms = crate::util::now_ms().saturating_sub(last),
                "capture thread stalled: withholding the watchdog ping"
            );
        }
    }
}

/// A reloaded budget policy's way to the capture thread.
type PolicySender = std::sync::mpsc::Sender<crate::budget::policy::Compiled>;

/// When `budgets.enabled`: loads the persisted ledgers and steps, starts the cost worker
/// and the enforcer on `runtime`, and returns what the capture thread needs and where
/// reloaded policies go.
fn start_budgets(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    monitor: &crate::db::DbConfig,
    sets: &Sets,
) -> anyhow::Result<Option<(BudgetLink, PolicySender, Option<crate::cost::Control>)>> {
    if !config.budgets.enabled {
        return Ok(None);
    }
    let policy = config
        .budgets
        .compile()
        .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
    let costs = Costs::new(&config.cost);
    let mut cost_control = None;
    let (request_tx, request_rx) = tokio::sync::mpsc::unbounded_channel();
    let (answer_tx, answer_rx) = std::sync::mpsc::channel();
    let (enforcer_tx, enforcer_rx) = tokio::sync::mpsc::unbounded_channel();
    let (protected_tx, protected_rx) = std::sync::mpsc::channel();
    if config.cost.enabled {
        // cost.connection, else the monitor's (with cluster.password_file).
        let cost_db = match config.cost.connection.as_deref() {
            Some(conninfo) => crate::db::monitor_config(conninfo)?,
            None => monitor.clone(),
        };
        let worker = Worker::new(
            cost_db,
            config.cost.clone(),
            costs.clone(),
            sets.cost.clone(),
        );
        let store = {
            let _enter = runtime.enter();
            crate::cost::store::Store::start(monitor.clone(), costs.ttl())
        };
        cost_control = Some(crate::cost::Control {
            costs: costs.clone(),
            store: store.clone(),
        });
        runtime.spawn(worker.serve(request_rx, answer_tx, Some((store, monitor.clone()))));
    }
    let persisted = runtime.block_on(async {
        match tokio::time::timeout(Duration::from_secs(10), enforce::load(monitor)).await {
            Ok(p) => p,
            Err(_) => {
                tracing::warn!("database unreachable for 10 s: budgets start empty");
                Default::default()
            }
        }
    });
    tracing::info!(
        mode = ?config.budgets.mode,
        restored_steps = persisted.steps.len(),
        restored_ledgers = persisted.buckets.len(),
        "budgets on"
    );
    runtime.spawn(
        Enforcer {
            config: monitor.clone(),
            mode: config.budgets.mode,
            ladder: config.budgets.ladder.clone(),
            policy: policy.clone(),
            metrics: sets.budget.clone(),
        }
        .serve(enforcer_rx, protected_tx),
    );
    let budgets = Budgets::new(
        policy,
        &config.cost,
        costs,
        Channels {
            cost_requests: request_tx,
            enforcer: enforcer_tx,
        },
        sets.cost.clone(),
        sets.budget.clone(),
        persisted,
    );
    let (policy_tx, policy_rx) = std::sync::mpsc::channel();
    Ok(Some((
        BudgetLink {
            budgets,
            cost_answers: answer_rx,
            protected: protected_rx,
            policies: policy_rx,
        },
        policy_tx,
        cost_control,
    )))
}

/// When `storage.enabled`: loads the persisted quota state and starts the storage tasks
/// on `runtime` (crate::storage); returns the handle the HTTP endpoint uses for status
/// and unlock.
fn start_storage(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    monitor: &crate::db::DbConfig,
    sets: &Sets,
) -> anyhow::Result<Option<crate::storage::StorageHandle>> {
    if !config.storage.enabled {
        return Ok(None);
    }
    let policy = config
        .storage
        .compile()
        .map_err(|(field, message)| anyhow::anyhow!("{field}: {message}"))?;
    let handle = runtime.block_on(crate::storage::start(
        policy,
        monitor.clone(),
        config.cluster.data_directory.clone(),
        sets.storage.clone(),
        config.metrics.external_url.clone(),
    ));
    Ok(Some(handle))
}

/// What the capture thread is asked, besides its records.
struct Inbox {
    /// pg_stat_activity lookups answered.
    answers: std::sync::mpsc::Receiver<attribution::Answer>,
    /// Status documents to fill in.
    status: std::sync::mpsc::Receiver<StatusRequest>,
    /// Budgets to reset by hand (`pgmon-agent unlock --budget`).
    resets: std::sync::mpsc::Receiver<ResetRequest>,
}

/// Drains the ring buffer every `capture.drain_interval_ms` (or sooner when the kernel
/// wakes us), answers status requests and budget resets, applies attribution answers,
/// publishes counters, and follows a restarted postmaster. Returns when `stop` is set; dropping `capture`
/// then detaches the probes.
fn capture_loop(
    mut capture: Capture,
    pipeline: &mut Pipeline,
    config: &Config,
    stop: &AtomicBool,
    inbox: &Inbox,
    last_drain_ms: &AtomicU64,
) {
    let Inbox {
        answers,
        status,
        resets,
    } = inbox;
    let interval = Duration::from_millis(config.capture.drain_interval_ms);
    let started = Instant::now();
    let mut last_publish = Instant::now();
    let mut last_pid_check = Instant::now();
    pipeline.set_preexisting(capture.preexisting());
    pipeline.set_tls_capture(capture.tls().is_on());
    while !stop.load(Ordering::Relaxed) {
        capture.wait(interval);
        let (_, bad) = capture.drain(|record| pipeline.on_record(&record));
        pipeline.tick();
        if bad > 0 {
            tracing::warn!(records = bad, "undecodable ring-buffer records");
        }
        while let Ok(answer) = answers.try_recv() {
            pipeline.on_answer(answer);
        }
        while let Ok(request) = status.try_recv() {
            match request {
                StatusRequest::Document(reply) => {
                    pipeline.publish(&capture);
                    let _ = reply.send(pipeline.status(
                        &capture,
                        started,
                        &config.cluster.data_directory,
                    ));
                }
                StatusRequest::Interval(reply) => {
                    let _ = reply.send(pipeline.interval_status());
                }
            }
        }
        while let Ok(request) = resets.try_recv() {
            pipeline.reset_budget(request);
        }
        if last_publish.elapsed() >= Duration::from_millis(500) {
            pipeline.publish(&capture);
            last_publish = Instant::now();
        }
        if last_pid_check.elapsed() >= Duration::from_secs(1) {
            last_pid_check = Instant::now();
            if let Ok(pid) = cluster::postmaster_pid(&config.cluster.data_directory)
                && capture.retarget(pid)
            {
                tracing::warn!(
                    postmaster = pid,
                    "postmaster restarted; following the new one"
                );
                pipeline.set_preexisting(capture.preexisting());
            }
        }
        last_drain_ms.store(crate::util::now_ms(), Ordering::Relaxed);
    }
    // Records still in the ring when we stop are counted, not processed.
    let (n, _) = capture.drain(|record| pipeline.on_record(&record));
    tracing::info!(final_records = n, "capture stopped");
}
