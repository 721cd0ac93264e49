//! `budgets:` in the policy file: tiers, the role → tier map, exemptions and the ladder.

use std::collections::BTreeMap;

use globset::{Glob, GlobMatcher};
use serde::Deserialize;

pub use super::tier::{Reset, Tier};

/// Whether decisions are acted on.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Decide, audit and log everything; change nothing in the catalog (default).
    #[default]
    Observe,
    /// Apply each step through pgmon's SECURITY DEFINER functions (sql/002_enforcement.sql).
    Enforce,
}

/// What a tier's budget is counted in.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unit {
    /// Generic-plan total cost of each execution (planner units), default.
    #[default]
    PlanCost,
    /// Execution time on the wire (request → completion), seconds.
    ExecSeconds,
}

impl Unit {
    /// The name the policy file uses (`plan_cost`, `exec_seconds`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::PlanCost => "plan_cost",
            Self::ExecSeconds => "exec_seconds",
        }
    }
}

/// One role → tier rule; the first rule that matches wins.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleRule {
    /// A role name, or a glob (`tenant_*`, `app_?`, `[ab]*`).
    #[serde(rename = "match")]
    pub pattern: String,
    /// Name of a tier in `tiers`.
    pub tier: String,
}

/// What a step does.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionKind {
    /// Log, audit (and alert); nothing in the catalog.
    Warn,
    /// `ALTER ROLE … CONNECTION LIMIT limit`, and terminate the role's backends beyond
    /// it, newest first.
    ConnectionLimit,
    /// Terminate every backend of the role and make it `NOLOGIN`.
    Lock,
}

impl ActionKind {
    /// The name the policy file uses (`warn`, `connection_limit`, `lock`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Warn => "warn",
            Self::ConnectionLimit => "connection_limit",
            Self::Lock => "lock",
        }
    }
}

/// One step of the escalation ladder.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Utilisation at which the step applies (≥ 0).
    pub at: f64,
    pub action: ActionKind,
    /// Connection limit for `connection_limit` (≥ 0).
    #[serde(default)]
    pub limit: Option<i32>,
}

/// `budgets:`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetPolicy {
    /// Keep per-role budgets at all (default false).
    pub enabled: bool,
    pub mode: Mode,
    /// Tiers by name.
    pub tiers: BTreeMap<String, Tier>,
    /// Role → tier rules, first match wins.
    pub roles: Vec<RoleRule>,
    /// Tier of roles no rule matches; none = such roles have no budget.
    pub default_tier: Option<String>,
    /// Roles never charged or touched (names or globs). Superusers, replication roles and
    /// roles named `pgmon*` are always exempt, whatever this list says.
    pub exempt: Vec<String>,
    /// Escalation ladder, ascending `at`. Default: 0.8 warn, 1.0 connection limit 5,
    /// 1.5 connection limit 1, 2.0 lock.
    pub ladder: Vec<Step>,
    /// Seconds between writes of the changed ledgers to `pgmon.budget_ledgers` (one row
    /// per role charged since the last write, whatever its window; default 5, 1..=300). A
    /// crash loses at most this much spend.
    pub persist_interval_seconds: u64,
}

impl Default for BudgetPolicy {
    fn default() -> Self {
        let step = |at, action, limit| Step { at, action, limit };
        Self {
            enabled: false,
            mode: Mode::Observe,
            tiers: BTreeMap::new(),
            roles: Vec::new(),
            default_tier: None,
            exempt: Vec::new(),
            ladder: vec![
                step(0.8, ActionKind::Warn, None),
                step(1.0, ActionKind::ConnectionLimit, Some(5)),
                step(1.5, ActionKind::ConnectionLimit, Some(1)),
                step(2.0, ActionKind::Lock, None),
            ],
            persist_interval_seconds: 5,
        }
    }
}

/// The policy with its globs compiled.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub policy: BudgetPolicy,
    rules: Vec<(GlobMatcher, String)>,
    exempt: Vec<GlobMatcher>,
}

impl BudgetPolicy {
    /// Checks references and ranges, compiles the globs; the error is `(field, message)`.
    pub fn compile(&self) -> Result<Compiled, (String, String)> {
        let glob = |field: String, p: &str| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| (field, e.to_string()))
        };
        for (name, t) in &self.tiers {
            if !(t.budget > 0.0 && t.budget.is_finite()) {
                return Err((format!("budgets.tiers.{name}.budget"), "must be > 0".into()));
            }
            if t.window_seconds == 0 || t.window_seconds > 86_400 {
                return Err((
                    format!("budgets.tiers.{name}.window_seconds"),
                    "must be within 1..=86400".into(),
                ));
            }
            if t.burst < 0.0 {
                return Err((format!("budgets.tiers.{name}.burst"), "must be ≥ 0".into()));
            }
        }
        if !(1..=300).contains(&self.persist_interval_seconds) {
            return Err((
                "budgets.persist_interval_seconds".into(),
                "must be within 1..=300".into(),
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in self.roles.iter().enumerate() {
            if !self.tiers.contains_key(&r.tier) {
                return Err((
                    format!("budgets.roles[{i}].tier"),
                    format!("no tier named {:?}", r.tier),
                ));
            }
            rules.push((
                glob(format!("budgets.roles[{i}].match"), &r.pattern)?,
                r.tier.clone(),
            ));
        }
        if let Some(t) = &self.default_tier
            && !self.tiers.contains_key(t)
        {
            return Err((
                "budgets.default_tier".into(),
                format!("no tier named {t:?}"),
            ));
        }
        let exempt = self
            .exempt
            .iter()
            .enumerate()
            .map(|(i, p)| glob(format!("budgets.exempt[{i}]"), p))
            .collect::<Result<_, _>>()?;
        for (i, s) in self.ladder.iter().enumerate() {
            if !(s.at >= 0.0 && s.at.is_finite()) {
                return Err((format!("budgets.ladder[{i}].at"), "must be ≥ 0".into()));
            }
            if i > 0 && s.at <= self.ladder[i - 1].at {
                return Err((
                    format!("budgets.ladder[{i}].at"),
                    "steps must be in ascending order of `at`".into(),
                ));
            }
            match (s.action, s.limit) {
                (ActionKind::ConnectionLimit, Some(l)) if l >= 0 => {}
                (ActionKind::ConnectionLimit, _) => {
                    return Err((
                        format!("budgets.ladder[{i}].limit"),
                        "connection_limit needs limit ≥ 0".into(),
                    ));
                }
                (_, Some(_)) => {
                    return Err((
                        format!("budgets.ladder[{i}].limit"),
                        "only connection_limit takes a limit".into(),
                    ));
                }
                _ => {}
            }
        }
        Ok(Compiled {
            policy: self.clone(),
            rules,
            exempt,
        })
    }
}

impl Compiled {
    /// The tier of `role`, or `None` when it has no budget (exempt, or no rule and no
    /// default tier). `protected` says the catalog marks it superuser or replication.
    pub fn tier_of(&self, role: &str, protected: bool) -> Option<&str> {
        if protected || always_exempt(role) || self.exempt.iter().any(|g| g.is_match(role)) {
            return None;
        }
        self.rules
            .iter()
            .find(|(g, _)| g.is_match(role))
            .map(|(_, t)| t.as_str())
            .or(self.policy.default_tier.as_deref())
    }
}

impl Compiled {
    /// Whether `budgets.exempt` names `role` (by name or glob). The enforcer copies the
    /// roles it names into `pgmon.exempt_roles`, so the SQL functions refuse them too.
    pub fn listed_exempt(&self, role: &str) -> bool {
        self.exempt.iter().any(|g| g.is_match(role))
    }
}

/// pgmon's own roles, and PostgreSQL's predefined roles.
pub fn always_exempt(role: &str) -> bool {
    role.starts_with("pgmon") || role.starts_with("pg_")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(yaml: &str) -> BudgetPolicy {
        yaml_serde::from_str(yaml).unwrap()
    }

    #[test]
    fn roles_map_to_tiers_first_match_wins() {
        let p = policy(
            "enabled: true\ntiers:\n  free: {budget: 100}\n  premium: {budget: 1000, unit: exec_seconds}\n\
             roles:\n  - {match: 'vip_*', tier: premium}\n  - {match: '*', tier: free}\n\
             exempt: [admin, 'ops_*']\n",
        );
        let c = p.compile().unwrap();
        assert_eq!(c.tier_of("vip_anna", false), Some("premium"));
        assert_eq!(c.tier_of("bob", false), Some("free"));
        assert_eq!(c.tier_of("admin", false), None);
        assert_eq!(c.tier_of("ops_x", false), None);
        assert_eq!(c.tier_of("pgmon", false), None);
        assert_eq!(c.tier_of("bob", true), None, "superusers are exempt");
        assert_eq!(c.policy.ladder.len(), 4);
    }

    #[test]
    fn a_calendar_reset_replaces_the_rolling_window() {
        let p = policy(
            "tiers:\n  h: {budget: 10, reset: hourly}\n  d: {budget: 10, reset: daily}\n  r: {budget: 10}\n",
        );
        let (h, d, r) = (&p.tiers["h"], &p.tiers["d"], &p.tiers["r"]);
        assert_eq!((h.reset, h.window_seconds), (Some(Reset::Hourly), 3600));
        assert_eq!((d.reset, d.window_seconds), (Some(Reset::Daily), 86_400));
        assert_eq!(
            (r.reset, r.window_seconds),
            (None, 60),
            "rolling by default"
        );
        // 12:34:56 UTC: 34 min 57 s of the hour count (the current second included), all
        // of the day's 12 h 34 min 57 s, and the rolling window's 60 s.
        let t = (19_000 * 86_400 + 12 * 3600 + 34 * 60 + 56) * 1000 + 500;
        assert_eq!(h.window_at(t), 34 * 60 + 57);
        assert_eq!(d.window_at(t), 12 * 3600 + 34 * 60 + 57);
        assert_eq!(r.window_at(t), 60);
        assert_eq!(
            h.period_start_ms(t),
            Some((19_000 * 86_400 + 12 * 3600) * 1000)
        );
        assert_eq!(d.period_start_ms(t), Some(19_000 * 86_400 * 1000));
        assert_eq!(r.period_start_ms(t), None);
        let e = yaml_serde::from_str::<BudgetPolicy>("tiers:\n  h: {budget: 1, reset: weekly}\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `weekly`"), "{e}");
    }

    #[test]
    fn bad_policies_name_the_field() {
        let e = policy("tiers:\n  free: {budget: 0}\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.0, "budgets.tiers.free.budget");
        let e = policy("tiers:\n  free: {budget: 1}\nroles:\n  - {match: x, tier: gold}\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.0, "budgets.roles[0].tier");
        let e = policy("ladder:\n  - {at: 1.0, action: warn}\n  - {at: 0.5, action: lock}\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.0, "budgets.ladder[1].at");
        let e = policy("ladder:\n  - {at: 1.0, action: connection_limit}\n")
            .compile()
            .unwrap_err();
        assert_eq!(e.0, "budgets.ladder[0].limit");
    }
}
