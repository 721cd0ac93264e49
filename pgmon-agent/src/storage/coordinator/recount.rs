//! Counting: the full recount every `recount_interval_seconds` (an epoch per run, over
//! every database), a database's counts applied to its roles, and the persisted usage that
//! judges roles before the first recount has finished.

use std::{collections::HashMap, sync::Arc, time::Instant};

use super::{Coordinator, RoleEntry};
use crate::{
    storage::{
        DbName,
        database::{DbCmd, Scope},
        snapshot::{Snapshot, UsageRow},
    },
    util::now_ms,
};

impl Coordinator {
    pub(super) fn start_recount(&mut self) {
        if let Some((epoch, started, pending)) = &self.epoch {
            tracing::warn!(epoch, after = ?started.elapsed(), waiting_for = ?pending, "storage: the previous full recount has not finished; starting another");
        }
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        let mut pending = Vec::new();
        for (db, e) in &self.dbs {
            if e.cmds.send(DbCmd::Full(epoch)).is_ok() {
                pending.push(db.clone());
            }
        }
        self.epoch = Some((epoch, Instant::now(), pending));
        self.finish_epoch_if_done();
    }

    pub(super) fn on_counted(
        &mut self,
        db: DbName,
        scope: Scope,
        bytes: HashMap<String, u64>,
        started_ms: u64,
        epoch: Option<u64>,
        now: u64,
    ) {
        let record = |role: &str, e: &mut RoleEntry| -> bool {
            let b = bytes.get(role).copied().unwrap_or(0);
            match e.per_db.get(&db) {
                Some((_, at)) if *at > started_ms => false,
                _ => {
                    e.per_db.insert(db.clone(), (b, started_ms));
                    // The count saw what was reported before it started.
                    e.growth = 0;
                    e.counted = true;
                    true
                }
            }
        };
        let mut changed = Vec::new();
        match scope {
            Scope::All => {
                self.covered.insert(db.clone());
                for (r, e) in self.roles.iter_mut() {
                    if record(r, e) {
                        changed.push(r.clone());
                    }
                }
            }
            Scope::Roles(list) => {
                for r in list {
                    if let Some(e) = self.roles.get_mut(&r)
                        && record(&r, e)
                    {
                        changed.push(r);
                    }
                }
            }
        }
        for r in changed {
            self.observe(&r, now);
        }
        if let Some(epoch) = epoch
            && let Some((current, _, pending)) = &mut self.epoch
            && *current == epoch
        {
            pending.retain(|d| *d != db);
            self.finish_epoch_if_done();
        }
    }

    pub(super) fn finish_epoch_if_done(&mut self) {
        if let Some((epoch, started, pending)) = &self.epoch
            && pending.is_empty()
        {
            let secs = started.elapsed().as_secs_f64();
            self.metrics.recount_seconds(secs);
            tracing::debug!(epoch, seconds = secs, "storage: full recount done");
            self.last_recount = Some((secs, Instant::now()));
            self.epoch = None;
            self.textfile_dirty = true;
            self.persist_usage();
            if !self.ready {
                self.ready = true;
                let now = now_ms();
                let roles: Vec<String> = self.roles.keys().cloned().collect();
                for r in roles {
                    self.observe(&r, now);
                }
            }
        }
    }

    /// Judges every role on its persisted counts at once when they cover every database
    /// listed (a database created while the agent was away waits for the first recount).
    pub(super) fn apply_seed(&mut self) {
        let covered = &self.seed.covered;
        if self.dbs.is_empty() || !self.dbs.keys().all(|d| covered.contains(d)) {
            if !self.seed.usage.is_empty() || !covered.is_empty() {
                tracing::info!(
                    "storage: the persisted usage does not cover every database; roles are judged after the first full recount"
                );
            }
            return;
        }
        let now = now_ms();
        tracing::info!(
            roles = self.roles.values().filter(|e| !e.per_db.is_empty()).count(),
            age_seconds = self.seed.age_ms(now).map(|ms| ms / 1000),
            "storage: judging roles on their persisted usage until the first full recount"
        );
        self.seed.usage.clear();
        self.ready = true;
        let roles: Vec<String> = self.roles.keys().cloned().collect();
        for r in roles {
            self.observe(&r, now);
        }
    }

    /// Hands every known count to the [`snapshot`] writer.
    pub(super) fn persist_usage(&self) {
        let Some(tx) = &self.usage_tx else {
            return;
        };
        let rows = self
            .roles
            .iter()
            .flat_map(|(r, e)| {
                e.per_db.iter().map(|(db, (bytes, at))| UsageRow {
                    role: r.clone(),
                    db: db.clone(),
                    bytes: *bytes,
                    counted_ms: *at,
                    hard: e.limits.hard,
                })
            })
            .collect();
        tx.send_replace(Arc::new(Snapshot {
            rows,
            covered: self.covered.iter().cloned().collect(),
            databases: self.dbs.keys().cloned().collect(),
        }));
    }
}
