//! One tier of `budgets.tiers`: its budget and unit, and over what time its spend counts,
//! a rolling window (`window_seconds`) or a calendar period (`reset: hourly | daily`).
//!
//! The two exclude each other. The YAML is read by hand ([`TierVisitor`]) so that giving
//! both is refused at the second of the two keys, and the error names its line, column and
//! field like every other error of the policy file.

use std::{fmt, marker::PhantomData};

use serde::{
    Deserialize, Deserializer,
    de::{self, DeserializeSeed, MapAccess, Visitor},
};

use super::policy::Unit;

/// A calendar reset of a tier's spend (`reset:`), instead of a rolling window.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reset {
    /// The spend counts from the start of the current hour (UTC, hh:00:00).
    Hourly,
    /// The spend counts from the start of the current day (UTC, 00:00:00).
    Daily,
}

impl Reset {
    /// The period's length, seconds.
    pub fn period_seconds(self) -> u64 {
        match self {
            Reset::Hourly => 3600,
            Reset::Daily => 86_400,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Reset::Hourly => "hourly",
            Reset::Daily => "daily",
        }
    }
}

/// One tier.
#[derive(Clone, Debug)]
pub struct Tier {
    /// Unit of `budget` and `burst`: `plan_cost` (default) or `exec_seconds`.
    pub unit: Unit,
    /// Spend allowed per window (or per calendar period with `reset`). Required, > 0.
    pub budget: f64,
    /// Length of the rolling window, seconds (default 60, 1..=86400): the spend is that of
    /// the last `window_seconds` seconds. With `reset` it cannot be given, and reads as the
    /// period's length (3600 or 86400), the longest the spend can accumulate.
    pub window_seconds: u64,
    /// `hourly` or `daily`: instead of a rolling window, the spend counts from the start of
    /// the current hour or day in UTC (unix time: no time zone, no daylight saving) and
    /// falls to zero at the boundary, where every role of the tier is judged again (a role
    /// on a step is given back within one drain interval). Default: none, the rolling
    /// window. Excludes `window_seconds`.
    pub reset: Option<Reset>,
    /// Spend above the budget tolerated before the ladder counts it: utilisation =
    /// max(0, spend − burst) ÷ budget (default 0: utilisation = spend ÷ budget).
    pub burst: f64,
    /// What one second of CPU time of a backend whose statements pgmon cannot read (a
    /// GSSAPI-encrypted session, or TLS with `capture.tls: off`) is charged, in
    /// `plan_cost` units (default 150 000: the generic-plan cost per second of execution of
    /// pgbench-table scans and aggregates measured here, 148 000–217 000). An
    /// `exec_seconds` tier charges those CPU seconds as they are. Such a backend is charged
    /// every 200 ms by the CPU time it used since (`/proc/<pid>/stat` utime + stime), to
    /// the role `pg_stat_activity` names.
    pub cpu_second_cost: f64,
}

/// `window_seconds` when none is given.
pub const DEFAULT_WINDOW_SECONDS: u64 = 60;

/// `cpu_second_cost` when none is given.
pub const DEFAULT_CPU_SECOND_COST: f64 = 150_000.0;

impl Tier {
    /// The seconds whose spend counts at `now_ms`, ending with the current second: the
    /// rolling window, or with `reset` the seconds since the period's start (UTC), the
    /// current one included.
    pub fn window_at(&self, now_ms: u64) -> u64 {
        match self.reset {
            None => self.window_seconds,
            Some(r) => (now_ms / 1000) % r.period_seconds() + 1,
        }
    }

    /// Start of the calendar period holding `now_ms`, unix ms (`None` for a rolling window).
    pub fn period_start_ms(&self, now_ms: u64) -> Option<u64> {
        self.reset.map(|r| {
            let p = r.period_seconds() * 1000;
            now_ms - now_ms % p
        })
    }
}

impl<'de> Deserialize<'de> for Tier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(TierVisitor)
    }
}

/// The keys of a tier; any other is refused (`deny_unknown_fields`).
#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "snake_case")]
enum Field {
    Unit,
    Budget,
    WindowSeconds,
    Reset,
    Burst,
    CpuSecondCost,
}

/// Reads a tier's mapping, refusing `window_seconds` and `reset` together.
struct TierVisitor;

impl<'de> Visitor<'de> for TierVisitor {
    type Value = Tier;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a tier: {budget, unit, window_seconds or reset, burst, cpu_second_cost}")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Tier, A::Error> {
        let (mut unit, mut budget, mut window, mut reset, mut burst, mut cpu) =
            (None, None, None, None, None, None);
        while let Some(key) = map.next_key::<Field>()? {
            match key {
                Field::Unit => unit = Some(map.next_value()?),
                Field::Budget => budget = Some(map.next_value()?),
                Field::Burst => burst = Some(map.next_value()?),
                Field::CpuSecondCost => cpu = Some(map.next_value()?),
                Field::WindowSeconds => {
                    let w: u64 = map.next_value_seed(Exclusive::new(|w| {
                        reset.map(|r: Reset| exclusive(*w, r))
                    }))?;
                    window = Some(w);
                }
                Field::Reset => {
                    let r: Reset =
                        map.next_value_seed(Exclusive::new(|r| window.map(|w| exclusive(w, *r))))?;
                    reset = Some(r);
                }
            }
        }
        let budget = budget.ok_or_else(|| de::Error::missing_field("budget"))?;
        Ok(Tier {
            unit: unit.unwrap_or_default(),
            budget,
            window_seconds: window
                .or(reset.map(Reset::period_seconds))
                .unwrap_or(DEFAULT_WINDOW_SECONDS),
            reset,
            burst: burst.unwrap_or(0.0),
            cpu_second_cost: cpu.unwrap_or(DEFAULT_CPU_SECOND_COST),
        })
    }
}

fn exclusive(window: u64, reset: Reset) -> String {
    format!(
        "`window_seconds: {window}` and `reset: {}` exclude each other: a calendar reset counts the spend from the start of the current {} (UTC), a window over the last seconds; give one of them",
        reset.name(),
        if reset == Reset::Hourly {
            "hour"
        } else {
            "day"
        },
    )
}

/// Deserializes a `T`, then fails with the message `conflict` gives for it, if any: the
/// error is raised while the value is read, so it carries the value's position and path.
struct Exclusive<T, F> {
    conflict: F,
    value: PhantomData<T>,
}

impl<T, F: FnOnce(&T) -> Option<String>> Exclusive<T, F> {
    fn new(conflict: F) -> Self {
        Self {
            conflict,
            value: PhantomData,
        }
    }
}

impl<'de, T: Deserialize<'de>, F: FnOnce(&T) -> Option<String>> DeserializeSeed<'de>
    for Exclusive<T, F>
{
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        let v = T::deserialize(d)?;
        match (self.conflict)(&v) {
            Some(message) => Err(de::Error::custom(message)),
            None => Ok(v),
        }
    }
}
