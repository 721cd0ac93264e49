//! The catalog side of the coordinator: `pg_roles` (who is limited, with what limits,
//! synced to every database) and `pg_database` (a task per database).

use std::{collections::HashMap, sync::Arc};

use tokio::sync::mpsc;
use tokio_postgres::Client;

use super::{Coordinator, DbEntry, RoleEntry};
use crate::{
    storage::{
        DbName,
        database::{DbCmd, DbState, DbTask, LimitTable},
        policy::Limits,
        state::{Phase, Quota},
    },
    util::now_ms,
};

impl Coordinator {
    /// Lists the roles (limits, synced to every database) and the databases (a task for
    /// each new one; a dropped one's bytes are forgotten).
    pub(super) async fn refresh(&mut self, client: &Client) -> Result<(), tokio_postgres::Error> {
        let now = now_ms();
        let rows = client
            .query(
                "SELECT rolname::text, rolsuper OR rolreplication, oid::int8 FROM pg_catalog.pg_roles",
                &[],
            )
            .await?;
        let mut listed = std::collections::HashSet::new();
        for r in rows {
            let (name, protected): (String, bool) = (r.get(0), r.get(1));
            self.max_role_oid = self.max_role_oid.max(r.get(2));
            let limits = self.policy.limits_of(&name, protected);
            listed.insert(name.clone());
            match (self.roles.get_mut(&name), limits) {
                (Some(e), Some(l)) => {
                    if e.limits != l || !e.limited {
                        self.metrics.limits(&name, &l);
                    }
                    (e.limits, e.limited) = (l, true);
                }
                (Some(e), None) if e.quota.phase == Phase::Locked => {
                    if e.limited {
                        tracing::warn!(role = %name, "storage: the policy no longer limits this role, but pgmon holds it locked; it stays locked until `pgmon-agent unlock {name}`");
                    }
                    e.limited = false;
                }
                (Some(_), None) => {
                    self.roles.remove(&name);
                    self.metrics.forget(&name);
                }
                (None, l) => {
                    self.insert_role(name, l, now);
                }
            }
        }
        // Dropped roles: nothing to enforce; a lock pgmon held is cleaned up by
        // unlock_role ('role no longer exists').
        let dropped: Vec<String> = self
            .roles
            .keys()
            .filter(|r| !listed.contains(*r))
            .cloned()
            .collect();
        for name in dropped {
            if let Some(mut e) = self.roles.remove(&name)
                && let Some(t) = e.quota.manual_unlock(&e.limits, now)
            {
                self.send(&name, t, &e, None);
            }
            self.metrics.forget(&name);
        }
        self.sync_limit_table();

        let rows = client
            .query(
                "SELECT datname::text FROM pg_catalog.pg_database \
                 WHERE datallowconn AND NOT datistemplate ORDER BY datname",
                &[],
            )
            .await?;
        let names: Vec<DbName> = rows.iter().map(|r| r.get::<_, String>(0).into()).collect();
        let gone: Vec<DbName> = self
            .dbs
            .keys()
            .filter(|d| !names.contains(d))
            .cloned()
            .collect();
        for db in gone {
            self.dbs.remove(&db);
            tracing::info!(database = %db, "storage: database gone");
            let affected: Vec<String> = self
                .roles
                .iter_mut()
                .filter_map(|(r, e)| e.per_db.remove(&db).map(|_| r.clone()))
                .collect();
            for r in affected {
                self.observe(&r, now);
            }
        }
        for db in names {
            if self.dbs.contains_key(&db) {
                continue;
            }
            let (cmds, cmds_rx) = mpsc::unbounded_channel();
            let mut config = self.monitor.clone();
            config.dbname(&*db);
            tokio::spawn(
                DbTask {
                    name: db.clone(),
                    config,
                    data_dir: self.data_dir.clone(),
                    events: self.events.clone(),
                    cmds: cmds_rx,
                    limits: self.limits_tx.subscribe(),
                    permits: self.permits.clone(),
                }
                .run(),
            );
            if let Some((epoch, _, pending)) = &mut self.epoch {
                let _ = cmds.send(DbCmd::Full(*epoch));
                pending.push(db.clone());
            }
            self.dbs.insert(
                db,
                DbEntry {
                    cmds,
                    state: DbState::default(),
                },
            );
        }
        Ok(())
    }

    /// Lists the roles created since the last listing (oids above the highest seen; the
    /// refresh every `refresh_interval_seconds` catches anything else) and, for each the
    /// policy limits, adds it, syncs the limits to every database (so its new tables get
    /// the trigger) and counts it there at once: a tenant created after the agent started
    /// is judged within about a second, not at the next refresh. One index scan of
    /// pg_authid a second.
    pub(super) async fn poll_new_roles(
        &mut self,
        client: &Client,
    ) -> Result<(), tokio_postgres::Error> {
        let rows = client
            .query(
                "SELECT rolname::text, rolsuper OR rolreplication, oid::int8 \
                 FROM pg_catalog.pg_roles WHERE oid > $1::int8::oid",
                &[&self.max_role_oid],
            )
            .await?;
        let now = now_ms();
        let mut added = Vec::new();
        for r in rows {
            let (name, protected): (String, bool) = (r.get(0), r.get(1));
            self.max_role_oid = self.max_role_oid.max(r.get(2));
            if self.roles.contains_key(&name) {
                continue;
            }
            let limits = self.policy.limits_of(&name, protected);
            if limits.is_some() && self.insert_role(name.clone(), limits, now) {
                added.push(name);
            }
        }
        if added.is_empty() {
            return Ok(());
        }
        tracing::info!(roles = ?added, "storage: new limited roles; limits synced, counted at once");
        self.sync_limit_table();
        let dbs: Vec<DbName> = self.dbs.keys().cloned().collect();
        for name in &added {
            if let Some(e) = self.roles.get_mut(name) {
                e.new_until = now + super::NEW_ROLE_MS;
                for db in &dbs {
                    e.due.insert(db.clone(), (now, false));
                }
            }
        }
        self.flush_due(now);
        Ok(())
    }

    /// Adds `name` with its limits `l` (or, when the policy does not limit it but pgmon
    /// holds it locked, as a locked role only `unlock` frees), its persisted state and its
    /// persisted usage. Returns false when there is nothing to track.
    fn insert_role(&mut self, name: String, l: Option<Limits>, now: u64) -> bool {
        let p = self.persisted.remove(&name);
        let locked = p.as_ref().is_some_and(|p| p.quota.phase == Phase::Locked);
        let Some(limits) = l.or(locked.then_some(Limits {
            soft: 0,
            hard: 0,
            hard_grace_ms: 0,
            unlock_grace_ms: 0,
            manual_unlock: true,
        })) else {
            return false;
        };
        let quota = p.map_or_else(|| Quota::new(now), |p| p.quota);
        if l.is_some() {
            self.metrics.limits(&name, &limits);
        }
        self.metrics.phase(&name, quota.phase);
        let per_db = self
            .seed
            .usage
            .remove(&name)
            .map(|v| v.into_iter().map(|(d, b, at)| (d, (b, at))).collect())
            .unwrap_or_default();
        self.roles.insert(
            name,
            RoleEntry {
                limits,
                limited: l.is_some(),
                quota,
                per_db,
                counted: false,
                last_count: HashMap::new(),
                due: HashMap::new(),
                new_until: 0,
                growth: 0,
                reported: HashMap::new(),
                enforcement_error: None,
            },
        );
        true
    }

    /// Publishes the limited roles and their limits to the database tasks (which sync
    /// `pgmon.storage_limits` and walk the triggers when it changes).
    fn sync_limit_table(&mut self) {
        let mut table: LimitTable = self
            .roles
            .iter()
            .filter(|(_, e)| e.limited)
            .map(|(r, e)| {
                let b = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                (r.clone(), b(e.limits.soft), b(e.limits.hard))
            })
            .collect();
        table.sort();
        self.limits_tx.send_if_modified(|t| {
            let changed = **t != table;
            if changed {
                *t = Arc::new(table);
            }
            changed
        });
    }
}
