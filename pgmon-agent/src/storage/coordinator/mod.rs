//! The coordinator: every limited role's [`Quota`] and its bytes per database; the list of
//! databases (one [`DbTask`] each) and of roles (their limits, synced to every database);
//! the counts (a notified role is recounted in that database at once, or when its usage
//! cache TTL has passed since its last count there); the full recount every
//! `recount_interval_seconds`; the timers; status and manual unlock. Transitions go to the
//! enforcer in order; nothing here waits on the database except the catalog listings.

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{Semaphore, mpsc, watch};

use super::{
    DbName, Event,
    database::{DbCmd, DbEvent, DbState, LimitTable},
    enforce::{Enforce, Enforcer, Persisted},
    metrics::{StorageMetrics, write_textfile},
    notify::Notifier,
    policy::{Compiled, Limits},
    snapshot::{self, Loaded, Snapshot},
    state::{Quota, Transition},
};
use crate::util::now_ms;

/// The trigger notifies at most once per session, role and quarter second
/// (sql/004_storage.sql); a recount this long after a notified one sees what it kept
/// quiet. A role within the margin of its hard limit that keeps writing is notified, and
/// so counted, every quarter second.
pub const TRAILING_MS: u64 = 600;

/// A role listed after the agent started may have written before its tables had the
/// trigger (the walk skips a table a writer holds, and attaches it only at the next
/// walk), so it is counted every [`NEW_ROLE_EVERY_MS`] for its first [`NEW_ROLE_MS`].
pub const NEW_ROLE_MS: u64 = 10_000;
/// See [`NEW_ROLE_MS`].
pub const NEW_ROLE_EVERY_MS: u64 = 500;

mod catalog;
mod recount;
mod report;

struct RoleEntry {
    limits: Limits,
    /// False: the policy no longer limits it, but pgmon still holds it locked.
    limited: bool,
    quota: Quota,
    /// Bytes per database and when they were measured (unix ms).
    per_db: HashMap<DbName, (u64, u64)>,
    /// Counted since the agent started (timers wait for it: a persisted usage may be
    /// stale). Before it, `per_db` holds the persisted counts, if any.
    counted: bool,
    /// Last count per database (unix ms), for the usage cache TTL.
    last_count: HashMap<DbName, u64>,
    /// Growth the notifications reported since the role's last count, bytes: for each
    /// relation, its reported size minus the size it last reported
    /// ([`DbEvent::Notified`]'s `relation`; a first report counts whole).
    growth: u64,
    /// The last size each written relation reported, by (database, oid).
    reported: HashMap<(DbName, u32), u64>,
    /// Counts due per database: (unix ms, trailing). A notified count is followed by one
    /// trailing count [`TRAILING_MS`] or the TTL later, whichever is longer.
    due: HashMap<DbName, (u64, bool)>,
    /// Counted every [`NEW_ROLE_EVERY_MS`] until then (unix ms): a role created after the
    /// agent started.
    new_until: u64,
    enforcement_error: Option<String>,
}

/// Whether `e`'s last counted usage (all databases) plus the growth reported since is at
/// least `(1 − margin)` of its hard limit (`storage.near_limit_margin`).
fn near_limit(e: &RoleEntry, margin: f64) -> bool {
    let total: u64 = e.per_db.values().map(|(b, _)| b).sum();
    total.saturating_add(e.growth) as f64 >= (1.0 - margin) * e.limits.hard as f64
}

struct DbEntry {
    cmds: mpsc::UnboundedSender<DbCmd>,
    state: DbState,
}

/// See the module documentation.
pub struct Coordinator {
    policy: Arc<Compiled>,
    monitor: crate::db::DbConfig,
    data_dir: Arc<PathBuf>,
    metrics: StorageMetrics,
    events: mpsc::UnboundedSender<Event>,
    enforcer: mpsc::UnboundedSender<Enforce>,
    enforcer_rx: Option<mpsc::UnboundedReceiver<Enforce>>,
    roles: HashMap<String, RoleEntry>,
    /// Persisted states of roles not seen in pg_roles yet.
    persisted: HashMap<String, Persisted>,
    /// Persisted usage ([`snapshot`]): counts of roles not seen in pg_roles yet, and the
    /// databases they cover wholly.
    seed: Loaded,
    /// Where the full recounts' results go to be persisted.
    usage_tx: Option<watch::Sender<Arc<Snapshot>>>,
    /// Databases counted whole since the agent started.
    covered: std::collections::HashSet<DbName>,
    /// The highest role oid listed ([`Self::poll_new_roles`]).
    max_role_oid: i64,
    dbs: BTreeMap<DbName, DbEntry>,
    limits_tx: watch::Sender<Arc<LimitTable>>,
    permits: Arc<Semaphore>,
    /// The running full recount: (epoch, started, databases not answered yet).
    epoch: Option<(u64, Instant, Vec<DbName>)>,
    next_epoch: u64,
    last_recount: Option<(f64, Instant)>,
    textfile_dirty: bool,
    /// The first full recount has finished: every database's bytes are known, so sums
    /// are true and the state machines may run (before it, a role's bytes in the
    /// databases not counted yet would look like 0, and a resumed grace would be cleared).
    ready: bool,
    /// A reloaded policy waits for the next catalog refresh (run at once) to re-judge
    /// every role against its limits.
    reloaded: bool,
    /// `metrics.external_url`: notifications link to the UI's Storage quotas page.
    external_url: Option<String>,
}

impl Coordinator {
    /// A coordinator seeded with `persisted` states and `seed` usage (applied when each
    /// role is listed); its notifications link to the UI under `external_url`.
    pub fn new(
        policy: Compiled,
        monitor: crate::db::DbConfig,
        data_dir: PathBuf,
        metrics: StorageMetrics,
        events: mpsc::UnboundedSender<Event>,
        (persisted, seed): (HashMap<String, Persisted>, Loaded),
        external_url: Option<String>,
    ) -> Self {
        let (enforcer, enforcer_rx) = mpsc::unbounded_channel();
        Self {
            policy: Arc::new(policy),
            monitor,
            data_dir: Arc::new(data_dir),
            metrics,
            events,
            enforcer,
            enforcer_rx: Some(enforcer_rx),
            roles: HashMap::new(),
            persisted,
            seed,
            usage_tx: None,
            covered: Default::default(),
            max_role_oid: 0,
            dbs: BTreeMap::new(),
            limits_tx: watch::Sender::new(Arc::new(Vec::new())),
            permits: Arc::new(Semaphore::new(2)),
            epoch: None,
            next_epoch: 1,
            last_recount: None,
            textfile_dirty: false,
            ready: false,
            reloaded: false,
            external_url,
        }
    }

    /// Serves until the runtime shuts down.
    pub async fn serve(mut self, mut rx: mpsc::UnboundedReceiver<Event>) {
        let p = &self.policy.policy;
        let enforcer = Enforcer {
            config: self.monitor.clone(),
            dry_run: p.dry_run,
            batch: self.policy.termination_batch,
            pause_ms: p.termination_pause_ms,
            metrics: self.metrics.clone(),
            notifier: Notifier::start(
                &p.notifications,
                self.metrics.clone(),
                self.external_url.clone(),
            ),
            events: self.events.clone(),
        };
        if let Some(erx) = self.enforcer_rx.take() {
            tokio::spawn(enforcer.serve(erx));
        }
        self.usage_tx = Some(snapshot::spawn_writer(self.monitor.clone(), &self.seed));
        let mut refresh = tokio::time::interval(Duration::from_secs(p.refresh_interval_seconds));
        let mut recount = tokio::time::interval(Duration::from_secs(p.recount_interval_seconds));
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let mut new_roles = tokio::time::interval(Duration::from_secs(1));
        new_roles.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut textfile_at = Instant::now();
        // The first refresh lists roles and databases; the first recount follows it.
        let first = crate::db::connect_with_backoff(&self.monitor, "storage catalog", None).await;
        if let Err(e) = self.refresh(&first).await {
            tracing::warn!(error = %e, "storage: listing pg_roles/pg_database failed");
        }
        self.apply_seed();
        let mut client = Some(first);
        refresh.tick().await;
        recount.tick().await;
        self.start_recount();
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    Some(ev) => {
                        self.on_event(ev);
                        if self.reloaded {
                            refresh.reset_immediately();
                        }
                    }
                    None => return,
                },
                _ = refresh.tick() => {
                    let c = match client.take() {
                        Some(c) if !c.is_closed() => c,
                        _ => crate::db::connect_with_backoff(&self.monitor, "storage catalog", None).await,
                    };
                    match self.refresh(&c).await {
                        Ok(()) => {
                            client = Some(c);
                            if std::mem::take(&mut self.reloaded) {
                                let now = now_ms();
                                let roles: Vec<String> = self.roles.keys().cloned().collect();
                                for r in roles {
                                    self.observe(&r, now);
                                }
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "storage: listing pg_roles/pg_database failed"),
                    }
                }
                _ = recount.tick() => self.start_recount(),
                _ = new_roles.tick() => {
                    if let Some(c) = client.as_ref().filter(|c| !c.is_closed())
                        && let Err(e) = self.poll_new_roles(c).await
                    {
                        tracing::debug!(error = %e, "storage: listing new roles failed; the next refresh reconnects");
                    }
                }
                _ = tick.tick() => {
                    self.on_tick();
                    if self.textfile_dirty && textfile_at.elapsed() >= Duration::from_secs(1) {
                        self.write_textfile();
                        textfile_at = Instant::now();
                    }
                }
            }
        }
    }

    fn reload(&mut self, policy: Compiled) {
        let (old, new) = (&self.policy.policy, &policy.policy);
        let later = [
            (
                "notifications",
                format!("{:?}", old.notifications) != format!("{:?}", new.notifications),
            ),
            ("textfile", old.textfile != new.textfile),
            (
                "recount_interval_seconds",
                old.recount_interval_seconds != new.recount_interval_seconds,
            ),
            (
                "refresh_interval_seconds",
                old.refresh_interval_seconds != new.refresh_interval_seconds,
            ),
        ];
        for (field, changed) in later {
            if changed {
                tracing::warn!(field = %format!("storage.{field}"), "policy reload: this change takes effect at the next restart");
            }
        }
        let _ = self.enforcer.send(Enforce::Configure {
            dry_run: new.dry_run,
            batch: policy.termination_batch,
            pause_ms: new.termination_pause_ms,
        });
        self.policy = Arc::new(policy);
        self.reloaded = true;
    }

    fn write_textfile(&mut self) {
        self.textfile_dirty = false;
        if let Some(path) = &self.policy.policy.textfile
            && let Err(e) = write_textfile(path, &self.metrics.encode())
        {
            tracing::warn!(path = %path.display(), error = %e, "storage: textfile not written");
        }
    }

    fn on_event(&mut self, ev: Event) {
        let now = now_ms();
        match ev {
            Event::Db(DbEvent::Notified { db, role, relation }) => {
                let ttl = self.policy.usage_ttl_ms;
                let margin = self.policy.policy.near_limit_margin;
                let Some(e) = self.roles.get_mut(&role) else {
                    return;
                };
                if let Some((relid, bytes)) = relation {
                    let before = e.reported.insert((db.clone(), relid), bytes).unwrap_or(0);
                    e.growth = e.growth.saturating_add(bytes.saturating_sub(before));
                }
                let last = e.last_count.get(&db).copied().unwrap_or(0);
                // Near its hard limit (its last count plus the growth reported since) a
                // role is recounted at once: the TTL only spares the database the counts
                // of roles with room left.
                let at = if near_limit(e, margin) {
                    now
                } else {
                    (last + ttl).max(now)
                };
                let due = e.due.entry(db).or_insert((at, false));
                *due = (due.0.min(at), false);
                if at <= now {
                    self.flush_due(now);
                }
            }
            Event::Db(DbEvent::Counted {
                db,
                scope,
                bytes,
                started_ms,
                epoch,
            }) => self.on_counted(db, scope, bytes, started_ms, epoch, now),
            Event::Db(DbEvent::State { db, state }) => {
                if !state.connected
                    && let Some((_, _, pending)) = &mut self.epoch
                {
                    pending.retain(|d| *d != db);
                    self.finish_epoch_if_done();
                }
                if let Some(e) = self.dbs.get_mut(&db) {
                    e.state = state;
                }
            }
            Event::Reload(policy) => self.reload(*policy),
            Event::Enforced { role, result, ok } => {
                if let Some(e) = self.roles.get_mut(&role) {
                    e.enforcement_error = (!ok).then_some(result);
                }
            }
            Event::Status(reply) => {
                let _ = reply.send(self.status(now));
            }
            Event::Unlock { role, reply } => {
                let unlocked = self.roles.get_mut(&role).map(|e| {
                    let phase = e.quota.phase;
                    (e.quota.manual_unlock(&e.limits, now), phase)
                });
                match unlocked {
                    None => {
                        let _ = reply.send(Err(format!(
                            "role {role:?} has no storage quota here (not limited by the policy, or unknown)"
                        )));
                    }
                    Some((None, phase)) => {
                        let _ = reply.send(Err(format!(
                            "role {role:?} is not locked by pgmon's storage quota (state: {})",
                            phase.as_str()
                        )));
                    }
                    Some((Some(t), _)) => {
                        let e = &self.roles[&role];
                        self.send(&role, t, e, Some(reply));
                        if !e.limited {
                            self.roles.remove(&role);
                            self.metrics.forget(&role);
                        }
                    }
                }
            }
        }
    }

    /// Sums `role`'s bytes over the databases and runs its state machine.
    fn observe(&mut self, role: &str, now: u64) {
        if !self.ready {
            return;
        }
        let Some(e) = self.roles.get_mut(role) else {
            return;
        };
        let total: u64 = e.per_db.values().map(|(b, _)| b).sum();
        let before = e.quota.under_since_ms;
        let ts = e.quota.observe(total, &e.limits, now);
        self.metrics.usage(role, total);
        self.textfile_dirty = true;
        self.after(role, ts, before);
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        self.flush_due(now);
        let mut fired = Vec::new();
        for (r, e) in self.roles.iter_mut() {
            if !e.counted {
                continue;
            }
            let before = e.quota.under_since_ms;
            let ts = e.quota.tick(&e.limits, now);
            if !ts.is_empty() || before != e.quota.under_since_ms {
                fired.push((r.clone(), ts, before));
            }
        }
        for (r, ts, before) in fired {
            self.after(&r, ts, before);
        }
    }

    /// Sends the counts that are due, one command per database; each notified (not
    /// trailing) one schedules its trailing count.
    fn flush_due(&mut self, now: u64) {
        let far_trail = self.policy.usage_ttl_ms.max(TRAILING_MS);
        let margin = self.policy.policy.near_limit_margin;
        let mut per_db: HashMap<DbName, Vec<String>> = HashMap::new();
        for (r, e) in self.roles.iter_mut() {
            let trail = if near_limit(e, margin) {
                TRAILING_MS
            } else {
                far_trail
            };
            let trail = if now < e.new_until {
                NEW_ROLE_EVERY_MS
            } else {
                trail
            };
            let mut trailing = Vec::new();
            e.due.retain(|db, (at, is_trailing)| {
                if *at > now {
                    return true;
                }
                per_db.entry(db.clone()).or_default().push(r.clone());
                if !*is_trailing || now < e.new_until {
                    trailing.push(db.clone());
                }
                if !*is_trailing {
                    e.last_count.insert(db.clone(), now);
                }
                false
            });
            for db in trailing {
                e.due.insert(db, (now + trail, true));
            }
        }
        for (db, roles) in per_db {
            if let Some(d) = self.dbs.get(&db) {
                let _ = d.cmds.send(DbCmd::Count(roles));
            }
        }
    }

    /// Handles transitions (and a change of the unlock timer) of `role`.
    fn after(&mut self, role: &str, ts: Vec<Transition>, under_before: Option<u64>) {
        if !ts.is_empty() {
            self.textfile_dirty = true;
        }
        let Some(e) = self.roles.get(role) else {
            return;
        };
        if ts.is_empty() {
            if under_before != e.quota.under_since_ms {
                let _ = self.enforcer.send(Enforce::Persist {
                    role: role.to_owned(),
                    quota: e.quota.clone(),
                });
            }
            return;
        }
        for t in ts {
            self.send(role, t, e, None);
        }
    }

    fn send(
        &self,
        role: &str,
        transition: Transition,
        e: &RoleEntry,
        reply: Option<tokio::sync::oneshot::Sender<Result<String, String>>>,
    ) {
        self.metrics.phase(role, e.quota.phase);
        let _ = self.enforcer.send(Enforce::Transition {
            role: role.to_owned(),
            transition,
            limits: e.limits,
            quota: e.quota.clone(),
            reply,
        });
    }
}
