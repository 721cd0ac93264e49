//! Per-role storage quotas (issue 4): soft and hard limits on the bytes each role owns in
//! every database, a grace period past the hard limit, then its sessions terminated and
//! `NOLOGIN`; unlocked once back under the hard limit for the unlock grace period, or only
//! by `pgmon-agent unlock ROLE` where the policy says `manual_unlock`.
//!
//! Tasks, all on the agent's tokio runtime:
//! - [`coordinator`]: owns every role's [`state::Quota`] and usage, lists `pg_database`
//!   and `pg_roles`, schedules counts, runs the timers, answers status and unlock.
//! - [`database`]: one per database: LISTEN for sql/004_storage.sql's notifications, sync
//!   of the limits, counts ([`usage`]).
//! - [`enforce`]: applies transitions in the monitor database (lock, unlock, audit,
//!   persisted state) in order.
//! - [`snapshot`]: writes each role's counted bytes after every full recount and reads
//!   them back at start, so a restart enforces before its first recount.
//! - [`notify`]: Slack and JSON webhooks, off the enforcement path.

pub mod coordinator;
pub mod database;
pub mod enforce;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod snapshot;
pub mod state;
pub mod usage;

use std::{path::PathBuf, sync::Arc, time::Duration};

use tokio::sync::{mpsc, oneshot};

use database::{DbEvent, DbState};
use state::Phase;

/// What the coordinator receives.
#[derive(Debug)]
pub enum Event {
    /// From a database task.
    Db(DbEvent),
    /// The enforcer applied (or failed to apply) a transition of `role`.
    Enforced {
        role: String,
        result: String,
        ok: bool,
    },
    /// `GET /api/v1/status`.
    Status(oneshot::Sender<StorageStatus>),
    /// A reloaded policy (SIGHUP): limits, exemptions, mode, dry run and batch apply at
    /// once (the roles are listed again and re-judged against the new limits, keeping
    /// their state and timers); intervals, notifications and the textfile path at the
    /// next restart.
    Reload(Box<policy::Compiled>),
    /// `POST /api/v1/storage/unlock?role=…` (`pgmon-agent unlock ROLE`).
    Unlock {
        role: String,
        reply: oneshot::Sender<Result<String, String>>,
    },
}

/// The storage section of `/api/v1/status`.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct StorageStatus {
    pub dry_run: bool,
    /// Usage cache TTL after a notification, seconds.
    pub usage_ttl_seconds: f64,
    /// Duration of the last full recount, seconds; `None` before the first finishes.
    pub last_recount_seconds: Option<f64>,
    /// Seconds since the last full recount finished.
    pub last_recount_age_seconds: Option<f64>,
    pub databases: Vec<DatabaseStatus>,
    /// Limited roles (and roles pgmon still holds locked), the fullest first (usage ÷
    /// hard limit).
    pub roles: Vec<RoleStorageStatus>,
}

/// One database.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct DatabaseStatus {
    pub name: String,
    #[serde(flatten)]
    pub state: DbState,
}

/// One role.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct RoleStorageStatus {
    pub role: String,
    /// Bytes, all databases; `None` until first counted.
    pub usage_bytes: Option<u64>,
    pub soft_limit_bytes: u64,
    pub hard_limit_bytes: u64,
    pub state: Phase,
    /// Seconds in this state.
    pub state_seconds: f64,
    /// Seconds left in the hard grace period (hard), or until the automatic unlock
    /// (locked and back under the hard limit).
    pub time_left_seconds: Option<f64>,
    pub manual_unlock: bool,
    /// False for a role pgmon still holds locked although the policy no longer limits it
    /// (it waits for `pgmon-agent unlock`).
    pub limited: bool,
    /// The last lock or unlock's result, when it was not applied (refused, failed).
    pub enforcement_error: Option<String>,
}

/// How the HTTP endpoint reaches the coordinator.
#[derive(Clone)]
pub struct StorageHandle {
    tx: mpsc::UnboundedSender<Event>,
}

impl StorageHandle {
    /// The current storage status; `None` if the coordinator is gone or busy for 5 s.
    pub async fn status(&self) -> Option<StorageStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Event::Status(tx)).ok()?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .ok()?
            .ok()
    }

    /// Hands a reloaded policy to the coordinator; false if it has stopped.
    pub fn reload(&self, policy: policy::Compiled) -> bool {
        self.tx.send(Event::Reload(Box::new(policy))).is_ok()
    }

    /// Unlocks `role` by hand: `Ok` with what `pgmon.unlock_role` said, or why not.
    pub async fn unlock(&self, role: String) -> Result<String, String> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Event::Unlock { role, reply: tx })
            .map_err(|_| "the storage coordinator has stopped".to_owned())?;
        tokio::time::timeout(Duration::from_secs(30), rx)
            .await
            .map_err(|_| "no answer within 30 s".to_owned())?
            .map_err(|_| "the storage coordinator dropped the request".to_owned())?
    }
}

/// Starts the storage tasks on the current runtime (call inside it): loads the persisted
/// state, then spawns the coordinator (which spawns the rest).
pub async fn start(
    policy: policy::Compiled,
    monitor: crate::db::DbConfig,
    data_dir: PathBuf,
    metrics: metrics::StorageMetrics,
    external_url: Option<String>,
) -> StorageHandle {
    let persisted = match tokio::time::timeout(Duration::from_secs(10), enforce::load(&monitor))
        .await
    {
        Ok(p) => p,
        Err(_) => {
            tracing::error!(
                "storage: monitor database unreachable for 10 s; starting without the persisted quota state (locks pgmon holds stay in pgmon.role_locks and are picked up at the next start)"
            );
            Default::default()
        }
    };
    let loaded = match tokio::time::timeout(Duration::from_secs(10), async {
        let c = crate::db::connect_with_backoff(&monitor, "storage usage", None).await;
        snapshot::load(&c).await
    })
    .await
    {
        Ok(Ok(l)) => l,
        Ok(Err(e)) => {
            tracing::warn!(error = %crate::util::error_chain(&e), "storage: the persisted usage (pgmon.storage_usage) is unreadable: is sql/004_storage.sql up to date in the monitor database? Roles are judged after the first full recount");
            Default::default()
        }
        Err(_) => Default::default(),
    };
    tracing::info!(
        dry_run = policy.policy.dry_run,
        usage_ttl_ms = policy.usage_ttl_ms,
        termination_batch = policy.termination_batch,
        restored = persisted.len(),
        usage_roles = loaded.roles(),
        usage_age_seconds = loaded.age_ms(crate::util::now_ms()).map(|ms| ms / 1000),
        "storage quotas on"
    );
    let (tx, rx) = mpsc::unbounded_channel();
    let c = coordinator::Coordinator::new(
        policy,
        monitor,
        data_dir,
        metrics,
        tx.clone(),
        (persisted, loaded),
        external_url,
    );
    tokio::spawn(c.serve(rx));
    StorageHandle { tx }
}

/// A database name, shared by the coordinator and the database tasks.
pub type DbName = Arc<str>;
