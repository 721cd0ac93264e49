//! One role's storage quota as a pure state machine (issue 4): ok → soft (warn) → hard
//! (grace `hard_grace_period`) → locked (sessions terminated, `NOLOGIN`) → back under the
//! hard limit for `unlock_grace_period` → unlocked; with `manual_unlock` it stays locked
//! until [`Quota::manual_unlock`]. Time is passed in (unix milliseconds), so every
//! transition is tested with an injected clock, and timers are absolute instants that a
//! restarted agent resumes from pgmon.storage_state.

use super::policy::Limits;

/// Where a role stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// At or under the soft limit.
    Ok,
    /// Past the soft limit, at or under the hard limit: warned.
    Soft,
    /// Past the hard limit, within the grace period.
    Hard,
    /// Locked by pgmon: `NOLOGIN`, sessions terminated.
    Locked,
}

impl Phase {
    /// Every phase, in order.
    pub const ALL: [Phase; 4] = [Phase::Ok, Phase::Soft, Phase::Hard, Phase::Locked];

    /// The name used in metrics, the audit, pgmon.storage_state and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Ok => "ok",
            Phase::Soft => "soft",
            Phase::Hard => "hard",
            Phase::Locked => "locked",
        }
    }

    /// The inverse of [`Phase::as_str`].
    pub fn parse(s: &str) -> Option<Self> {
        Phase::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// What a transition asks the enforcer to do in the catalog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Nothing: a log line, an audit row and a notification.
    Record,
    /// `pgmon.lock_role(role, 'storage', batch)`, then one more sweep of its sessions.
    Lock,
    /// `pgmon.unlock_role(role, 'storage')`.
    Unlock,
}

/// Why a transition happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// Usage moved across a limit.
    Usage,
    /// The hard grace period ran out.
    HardGraceOver,
    /// Under the hard limit for the whole unlock grace period.
    UnlockGraceOver,
    /// `pgmon-agent unlock ROLE`.
    Manual,
}

impl Reason {
    /// For logs, the audit and notifications.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Usage => "usage",
            Reason::HardGraceOver => "hard grace period over",
            Reason::UnlockGraceOver => "under the hard limit for the unlock grace period",
            Reason::Manual => "manual unlock",
        }
    }
}

/// One change of phase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transition {
    pub from: Phase,
    pub to: Phase,
    pub action: Action,
    pub reason: Reason,
    /// Bytes when it happened.
    pub usage: u64,
    /// Unix ms.
    pub at_ms: u64,
}

/// One role's quota state. `since_ms` is when it entered `phase`; `under_since_ms`, while
/// locked, is when usage last went back under the hard limit (the unlock timer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quota {
    pub phase: Phase,
    pub since_ms: u64,
    pub under_since_ms: Option<u64>,
    /// Last known usage, bytes.
    pub usage: u64,
}

impl Quota {
    /// A role first seen at `now_ms`: ok, usage unknown (0) until counted.
    pub fn new(now_ms: u64) -> Self {
        Self {
            phase: Phase::Ok,
            since_ms: now_ms,
            under_since_ms: None,
            usage: 0,
        }
    }

    /// Records a new usage and returns the transitions it causes (at most two: with a hard
    /// grace of 0, crossing the hard limit is `→ hard` and `hard → locked` at once).
    pub fn observe(&mut self, usage: u64, limits: &Limits, now_ms: u64) -> Vec<Transition> {
        self.usage = usage;
        self.evaluate(limits, now_ms)
    }

    /// Runs the timers (no new usage): the hard grace and the unlock grace.
    pub fn tick(&mut self, limits: &Limits, now_ms: u64) -> Vec<Transition> {
        self.evaluate(limits, now_ms)
    }

    /// `pgmon-agent unlock ROLE`: a locked role is unlocked now, whatever its timers and
    /// `manual_unlock` say, and lands in the phase its usage gives (hard, with a fresh
    /// grace period, if it is still past the hard limit). `None` when not locked.
    pub fn manual_unlock(&mut self, limits: &Limits, now_ms: u64) -> Option<Transition> {
        if self.phase != Phase::Locked {
            return None;
        }
        let to = Self::target(self.usage, limits);
        Some(self.go(to, Action::Unlock, Reason::Manual, now_ms))
    }

    /// Milliseconds left in the hard grace period (hard), or until the unlock (locked,
    /// back under the hard limit, automatic unlock); `None` otherwise.
    pub fn time_left_ms(&self, limits: &Limits, now_ms: u64) -> Option<u64> {
        match (self.phase, self.under_since_ms) {
            (Phase::Hard, _) => Some((self.since_ms + limits.hard_grace_ms).saturating_sub(now_ms)),
            (Phase::Locked, Some(u)) if !limits.manual_unlock => {
                Some((u + limits.unlock_grace_ms).saturating_sub(now_ms))
            }
            _ => None,
        }
    }

    fn target(usage: u64, limits: &Limits) -> Phase {
        if usage > limits.hard {
            Phase::Hard
        } else if usage > limits.soft {
            Phase::Soft
        } else {
            Phase::Ok
        }
    }

    fn go(&mut self, to: Phase, action: Action, reason: Reason, now_ms: u64) -> Transition {
        let t = Transition {
            from: self.phase,
            to,
            action,
            reason,
            usage: self.usage,
            at_ms: now_ms,
        };
        self.phase = to;
        self.since_ms = now_ms;
        self.under_since_ms = None;
        t
    }

    fn evaluate(&mut self, limits: &Limits, now_ms: u64) -> Vec<Transition> {
        let mut out = Vec::new();
        let target = Self::target(self.usage, limits);
        match self.phase {
            Phase::Locked if target == Phase::Hard => self.under_since_ms = None,
            Phase::Locked => {
                let under = *self.under_since_ms.get_or_insert(now_ms);
                if !limits.manual_unlock && now_ms.saturating_sub(under) >= limits.unlock_grace_ms {
                    out.push(self.go(target, Action::Unlock, Reason::UnlockGraceOver, now_ms));
                }
            }
            phase if phase != target => {
                out.push(self.go(target, Action::Record, Reason::Usage, now_ms));
            }
            _ => {}
        }
        if self.phase == Phase::Hard && now_ms.saturating_sub(self.since_ms) >= limits.hard_grace_ms
        {
            out.push(self.go(Phase::Locked, Action::Lock, Reason::HardGraceOver, now_ms));
        }
        out
    }
}

#[cfg(test)]
#[path = "state_tests.rs"]
mod tests;
