//! The coordinator's answer to `GET /api/v1/status`.

use super::Coordinator;
use crate::storage::{DatabaseStatus, RoleStorageStatus, StorageStatus};

impl Coordinator {
    pub(super) fn status(&self, now: u64) -> StorageStatus {
        let mut roles: Vec<RoleStorageStatus> = self
            .roles
            .iter()
            .map(|(r, e)| RoleStorageStatus {
                role: r.clone(),
                usage_bytes: (e.counted || !e.per_db.is_empty())
                    .then(|| e.per_db.values().map(|(b, _)| b).sum()),
                soft_limit_bytes: e.limits.soft,
                hard_limit_bytes: e.limits.hard,
                state: e.quota.phase,
                state_seconds: now.saturating_sub(e.quota.since_ms) as f64 / 1000.0,
                time_left_seconds: e
                    .quota
                    .time_left_ms(&e.limits, now)
                    .map(|ms| ms as f64 / 1000.0),
                manual_unlock: e.limits.manual_unlock,
                limited: e.limited,
                enforcement_error: e.enforcement_error.clone(),
            })
            .collect();
        let fill = |s: &RoleStorageStatus| {
            s.usage_bytes.unwrap_or(0) as f64 / s.hard_limit_bytes.max(1) as f64
        };
        roles.sort_by(|a, b| fill(b).total_cmp(&fill(a)).then(a.role.cmp(&b.role)));
        StorageStatus {
            dry_run: self.policy.policy.dry_run,
            usage_ttl_seconds: self.policy.usage_ttl_ms as f64 / 1000.0,
            last_recount_seconds: self.last_recount.map(|(s, _)| s),
            last_recount_age_seconds: self.last_recount.map(|(_, at)| at.elapsed().as_secs_f64()),
            databases: self
                .dbs
                .iter()
                .map(|(d, e)| DatabaseStatus {
                    name: d.to_string(),
                    state: e.state.clone(),
                })
                .collect(),
            roles,
        }
    }
}
