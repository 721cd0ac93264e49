//! Idle-session culling (seed 002, "Total Connections … Kill idle connections"): when the
//! cluster's client connections pass a threshold, end the sessions that sit idle — state
//! `idle`, never `idle in transaction` — oldest first (the earliest `state_change`), a batch
//! per cleanup round, until the count is back at the threshold.
//!
//! Opt-in, and `mode: observe` (audit and log what would be ended) unless set to `enforce`.
//! Never touched: superusers and replication roles (not even read), pgmon's own roles,
//! `pgmon.exempt_roles` (refused by `pgmon.end_session` itself), `cleanup.exempt` and
//! `cleanup.idle_culling.exempt`. A session is ended through `pgmon.end_session`
//! (sql/005_sessions.sql) only if its `state_change` is still the one seen: a session that
//! ran a statement or opened a transaction since is left alone.

use globset::{Glob, GlobMatcher};
use serde::Deserialize;
use tokio_postgres::Client;

use super::{Action, Session};
use crate::budget::policy::Mode;

/// Client backends now (every role, pgmon's session included, as
/// `pgmon_connections_used_ratio` counts them) and `max_connections`.
pub(super) const CONNECTIONS: &str = "SELECT count(*)::int8, current_setting('max_connections')::int8 \
     FROM pg_stat_activity WHERE backend_type = 'client backend'";

/// `cleanup.idle_culling`: off by default. When the cluster's client connections are above
/// `connections` (or `connections_ratio` of max_connections), ends sessions idle at least
/// `min_idle_seconds`, the longest idle first, at most `batch` per cleanup round, until the
/// count is back at the threshold. Needs `cleanup.enabled`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct IdleCulling {
    /// Cull idle sessions (default false).
    pub enabled: bool,
    /// `observe` (default: audit and log the sessions it would end, end none) or
    /// `enforce`. Independent of `cleanup.mode`, so culling can be watched first while the
    /// other rules act.
    pub mode: Mode,
    /// Cull while client connections (client backends in pg_stat_activity, every role) are
    /// above this count. None by default: `connections_ratio` decides. Seed 002 says 50.
    pub connections: Option<u64>,
    /// Cull while client connections are above this share of max_connections, when
    /// `connections` is not set (default 0.9).
    pub connections_ratio: f64,
    /// Only sessions idle at least this long, seconds (default 60): a pooled connection
    /// between two statements is not a forgotten one.
    pub min_idle_seconds: f64,
    /// Sessions ended per cleanup round at most (default 10); the next round, one
    /// `cleanup.interval_seconds` later, takes the next batch if still over.
    pub batch: usize,
    /// Roles never culled (names or globs), besides `cleanup.exempt`.
    pub exempt: Vec<String>,
}

impl Default for IdleCulling {
    fn default() -> Self {
        Self {
            enabled: false,
            mode: Mode::Observe,
            connections: None,
            connections_ratio: 0.9,
            min_idle_seconds: 60.0,
            batch: 10,
            exempt: Vec::new(),
        }
    }
}

/// [`IdleCulling`] with its globs compiled.
#[derive(Clone, Debug)]
pub struct Culling {
    pub config: IdleCulling,
    exempt: Vec<GlobMatcher>,
}

impl IdleCulling {
    /// Checks ranges and compiles the globs; the error is `(field, message)`.
    pub fn compile(&self) -> Result<Culling, (String, String)> {
        let field = |f: &str| format!("cleanup.idle_culling.{f}");
        let r = self.connections_ratio;
        if !(r > 0.0 && r <= 1.0) {
            return Err((field("connections_ratio"), format!("{r} must be in (0, 1]")));
        }
        if !(self.min_idle_seconds >= 0.0 && self.min_idle_seconds.is_finite()) {
            return Err((field("min_idle_seconds"), "must be 0 or more".into()));
        }
        if self.batch == 0 {
            return Err((field("batch"), "must be at least 1".into()));
        }
        let exempt = self
            .exempt
            .iter()
            .enumerate()
            .map(|(i, p)| {
                Glob::new(p)
                    .map(|g| g.compile_matcher())
                    .map_err(|e| (field(&format!("exempt[{i}]")), e.to_string()))
            })
            .collect::<Result<_, _>>()?;
        Ok(Culling {
            config: self.clone(),
            exempt,
        })
    }
}

impl Culling {
    /// The connection count above which it culls, for `max_connections`.
    pub fn limit(&self, max_connections: i64) -> i64 {
        match self.config.connections {
            Some(n) => i64::try_from(n).unwrap_or(i64::MAX),
            None => (self.config.connections_ratio * max_connections as f64).floor() as i64,
        }
    }

    /// The sessions to end when `clients` client backends are open out of
    /// `max_connections`: idle ones of roles that `exempt` (cleanup's exemptions) and this
    /// rule's own list leave alone, idle at least `min_idle_seconds`, longest idle first, at
    /// most `clients − limit` and `batch`.
    pub fn pick(
        &self,
        sessions: &[Session],
        clients: i64,
        max_connections: i64,
        exempt: impl Fn(&str) -> bool,
    ) -> Vec<Action> {
        let limit = self.limit(max_connections);
        let over = clients.saturating_sub(limit);
        if over <= 0 {
            return Vec::new();
        }
        let mut idle: Vec<&Session> = sessions
            .iter()
            .filter(|s| s.state == "idle" && s.state_age >= self.config.min_idle_seconds)
            .filter(|s| !exempt(&s.role) && !self.exempt.iter().any(|g| g.is_match(&s.role)))
            .collect();
        // Oldest state_change first; the pid breaks ties so that rounds agree.
        idle.sort_by(|a, b| a.state_change.cmp(&b.state_change).then(a.pid.cmp(&b.pid)));
        let n = usize::try_from(over)
            .unwrap_or(usize::MAX)
            .min(self.config.batch);
        idle.into_iter()
            .take(n)
            .map(|s| Action {
                action: "terminate",
                source: "idle_culling",
                mode: self.config.mode,
                rule: format!(
                    "idle_culling: pid {} idle {:.1} s; {clients} client connections > {limit}",
                    s.pid, s.state_age
                ),
                target: s.clone(),
            })
            .collect()
    }
}

/// Waits (at most 2 s, as `pgmon.await_exit` of sql/002 does) until the terminated
/// backends `pids` have left pg_stat_activity, so that the next round's count no longer
/// holds them and no one is culled in their place. Errors are left to the next round.
pub(super) async fn await_exit(client: &Client, pids: &[i32]) {
    if pids.is_empty() {
        return;
    }
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while tokio::time::Instant::now() < deadline {
        let left: Result<i64, _> = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY ($1)",
                &[&pids],
            )
            .await
            .map(|r| r.get(0));
        match left {
            Ok(0) | Err(_) => return,
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
    tracing::warn!(pids = ?pids, "idle culling: terminated backends still running after 2 s");
}

/// Client backends and max_connections now.
pub(super) async fn connections(client: &Client) -> Result<(i64, i64), tokio_postgres::Error> {
    let r = client.query_one(CONNECTIONS, &[]).await?;
    Ok((r.get(0), r.get(1)))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    fn session(pid: i32, role: &str, state: &str, idle_since_s: u64, age: f64) -> Session {
        Session {
            pid,
            role: role.into(),
            state: state.into(),
            backend_start: SystemTime::UNIX_EPOCH,
            state_change: Some(SystemTime::UNIX_EPOCH + Duration::from_secs(idle_since_s)),
            query_start: None,
            state_age: age,
            query_age: age,
            blockers: Vec::new(),
            lock_wait: Some(0.0),
        }
    }

    fn culling(yaml_like: IdleCulling) -> Culling {
        yaml_like.compile().unwrap()
    }

    #[test]
    fn oldest_idle_first_within_the_excess_and_the_batch() {
        let c = culling(IdleCulling {
            enabled: true,
            connections: Some(10),
            min_idle_seconds: 5.0,
            batch: 3,
            exempt: vec!["ops_*".into()],
            ..IdleCulling::default()
        });
        let sessions = [
            session(1, "app", "idle", 300, 100.0),
            session(2, "app", "idle", 100, 300.0),
            session(3, "app", "idle in transaction", 50, 999.0),
            session(4, "app", "active", 10, 999.0),
            session(5, "ops_cron", "idle", 1, 999.0),
            session(6, "app", "idle", 200, 200.0),
            session(7, "app", "idle", 390, 2.0),
            session(8, "boss", "idle", 2, 999.0),
            session(9, "app", "idle", 250, 150.0),
        ];
        let exempt = |r: &str| r == "boss";
        let pids = |clients| -> Vec<i32> {
            c.pick(&sessions, clients, 100, exempt)
                .iter()
                .map(|a| a.target.pid)
                .collect()
        };
        assert_eq!(pids(10), Vec::<i32>::new(), "at the threshold: nothing");
        assert_eq!(pids(11), [2], "one over: the longest idle");
        assert_eq!(pids(12), [2, 6]);
        assert_eq!(pids(40), [2, 6, 9], "at most the batch");
        let a = &c.pick(&sessions, 11, 100, exempt)[0];
        assert_eq!(
            (a.action, a.source, a.mode),
            ("terminate", "idle_culling", Mode::Observe)
        );
        assert_eq!(
            a.rule,
            "idle_culling: pid 2 idle 300.0 s; 11 client connections > 10"
        );
        // All but 1, 2, 6, 9 are idle in transaction, active, too recently idle or exempt.
        assert_eq!(
            c.pick(&sessions, 1000, 100, exempt).len(),
            3,
            "the batch bounds it"
        );
        let wide = culling(IdleCulling {
            batch: 100,
            ..c.config.clone()
        });
        let all: Vec<i32> = wide
            .pick(&sessions, 1000, 100, exempt)
            .iter()
            .map(|a| a.target.pid)
            .collect();
        assert_eq!(all, [2, 6, 9, 1]);
    }

    #[test]
    fn the_threshold_follows_max_connections_unless_a_count_is_given() {
        let c = culling(IdleCulling::default());
        assert_eq!(c.limit(100), 90);
        assert_eq!(c.limit(1000), 900);
        let c = culling(IdleCulling {
            connections: Some(50),
            ..IdleCulling::default()
        });
        assert_eq!(c.limit(1000), 50);
    }

    fn parse(cleanup: &str) -> Result<crate::config::Config, String> {
        let text = format!("cluster:\n  data_directory: /d\ncleanup:\n{cleanup}");
        crate::config::Config::parse(std::path::Path::new("pgmon.yaml"), &text)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn the_policy_parses() {
        let c = parse(
            "  enabled: true\n  idle_culling:\n    enabled: true\n    mode: enforce\n    \
             connections: 50\n    min_idle_seconds: 30\n    batch: 5\n    exempt: [app_pool]\n",
        )
        .unwrap();
        let i = &c.cleanup.idle_culling;
        assert!(i.enabled);
        assert_eq!(i.mode, Mode::Enforce);
        assert_eq!(i.connections, Some(50));
        assert_eq!((i.min_idle_seconds, i.batch), (30.0, 5));
        assert_eq!(i.exempt, ["app_pool"]);
        assert_eq!(c.cleanup.mode, Mode::Observe, "cleanup's own mode is apart");
        let d = parse("  enabled: true\n").unwrap().cleanup.idle_culling;
        assert_eq!(d, IdleCulling::default());
        assert!(!d.enabled && d.mode == Mode::Observe);
        assert_eq!(
            (d.connections_ratio, d.min_idle_seconds, d.batch),
            (0.9, 60.0, 10)
        );
        let e = parse("  idle_culling: {enabled: true, max_idle: 5}\n").unwrap_err();
        assert!(
            e.starts_with("pgmon.yaml:4:33: cleanup.idle_culling.max_idle: unknown field"),
            "{e}"
        );
        let e = parse("  idle_culling: {connections_ratio: 0}\n").unwrap_err();
        assert_eq!(
            e,
            "pgmon.yaml: cleanup.idle_culling.connections_ratio: 0 must be in (0, 1]"
        );
    }

    #[test]
    fn bad_values_name_the_field() {
        let bad = |c: IdleCulling| c.compile().unwrap_err().0;
        let d = IdleCulling::default();
        assert_eq!(
            bad(IdleCulling {
                connections_ratio: 1.5,
                ..d.clone()
            }),
            "cleanup.idle_culling.connections_ratio"
        );
        assert_eq!(
            bad(IdleCulling {
                batch: 0,
                ..d.clone()
            }),
            "cleanup.idle_culling.batch"
        );
        assert_eq!(
            bad(IdleCulling {
                exempt: vec!["a[".into()],
                ..d
            }),
            "cleanup.idle_culling.exempt[0]"
        );
    }
}
