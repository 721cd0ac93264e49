//! What the health loops last saw, kept for `/metrics` and `/healthz`: each loop replaces
//! its own families wholesale after each run, so a relation or standby that disappeared
//! disappears from the scrape too.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
};

/// Whether a family is a gauge or a counter (exported with `_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Gauge,
    Counter,
}

/// One sample: its labels (name, value) and its value.
pub type Sample = (Vec<(&'static str, String)>, f64);

/// One metric family as a loop read it: name, help, type and its samples.
#[derive(Clone, Debug, PartialEq)]
pub struct Family {
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    pub samples: Vec<Sample>,
}

impl Family {
    /// An empty family.
    pub fn new(name: &'static str, help: &'static str, kind: Kind) -> Self {
        Self {
            name,
            help,
            kind,
            samples: Vec::new(),
        }
    }

    /// Adds one sample.
    pub fn push(&mut self, labels: Vec<(&'static str, String)>, value: f64) -> &mut Self {
        self.samples.push((labels, value));
        self
    }

    /// A family with one unlabelled sample.
    pub fn single(name: &'static str, help: &'static str, kind: Kind, value: f64) -> Self {
        let mut f = Self::new(name, help, kind);
        f.push(Vec::new(), value);
        f
    }
}

/// How one loop fared on its last run.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LoopState {
    /// Seconds the last run took.
    pub duration_seconds: f64,
    /// The last run succeeded.
    pub success: bool,
    /// Runs that failed since start.
    pub errors: u64,
    /// The last run took longer than the loop's budget.
    pub over_budget: bool,
    /// The loop's budget, seconds.
    pub budget_seconds: f64,
    /// Seconds between runs.
    pub interval_seconds: u64,
    /// Runs that failed in a row, up to the last one (0 after a success).
    pub consecutive_failures: u64,
    /// Why the last failed run failed (the error chain, one line).
    pub last_error: Option<String>,
    /// When the loop started (milliseconds since the UNIX epoch).
    pub since_ms: u64,
    /// When the last run ended, successful or not; `None` before the first.
    pub last_run_ms: Option<u64>,
    /// When the last successful run ended; `None` before the first.
    pub last_success_ms: Option<u64>,
}

/// Runs failed in a row from which a loop makes `/healthz` answer 503.
pub const FAILURES_UNHEALTHY: u64 = 3;

/// Intervals without a completed run from which a loop has missed its schedule.
pub const MISSED_INTERVALS_UNHEALTHY: u64 = 2;

#[derive(Debug, Default)]
struct Inner {
    families: BTreeMap<&'static str, Vec<Family>>,
    loops: BTreeMap<&'static str, LoopState>,
}

/// The shared board: written by the loops, read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Board {
    inner: Arc<Mutex<Inner>>,
}

impl Board {
    /// Replaces `loop_name`'s families with `families` (a failed run keeps the old ones).
    pub fn publish(&self, loop_name: &'static str, families: Vec<Family>) {
        if let Ok(mut i) = self.inner.lock() {
            i.families.insert(loop_name, families);
        }
    }

    /// Records how a run of `loop_name` went.
    pub fn record(&self, loop_name: &'static str, state: LoopState) {
        if let Ok(mut i) = self.inner.lock() {
            i.loops.insert(loop_name, state);
        }
    }

    /// The state of every loop that ran at least once.
    pub fn loops(&self) -> BTreeMap<&'static str, LoopState> {
        self.inner
            .lock()
            .map(|i| i.loops.clone())
            .unwrap_or_default()
    }

    /// Registers `loop_name` as started at `now_ms`, running every `interval_seconds`
    /// within `budget_seconds`, so that a loop that never completes a run is seen
    /// ([`Board::unhealthy`]).
    pub fn expect(
        &self,
        loop_name: &'static str,
        interval_seconds: u64,
        budget_seconds: f64,
        now_ms: u64,
    ) {
        if let Ok(mut i) = self.inner.lock() {
            i.loops.entry(loop_name).or_insert(LoopState {
                interval_seconds,
                budget_seconds,
                since_ms: now_ms,
                ..LoopState::default()
            });
        }
    }

    /// Why the health loops make the agent unhealthy at `now_ms` (empty: they do not),
    /// one sentence each:
    ///
    /// - the database is unreachable: the `fast` loop (`pg_up`) has not succeeded for at
    ///   least one of its intervals and its last run failed;
    /// - a loop failed its last [`FAILURES_UNHEALTHY`] runs;
    /// - a loop missed its schedule: no run completed for
    ///   [`MISSED_INTERVALS_UNHEALTHY`] intervals plus its budget (a run stuck on a lock or
    ///   a connection that does not answer).
    pub fn unhealthy(&self, now_ms: u64) -> Vec<String> {
        let mut out = Vec::new();
        for (name, s) in self.loops() {
            if s.interval_seconds == 0 {
                continue;
            }
            let interval_ms = s.interval_seconds * 1000;
            let error = s.last_error.as_deref().unwrap_or("no error recorded");
            let since_success = now_ms.saturating_sub(s.last_success_ms.unwrap_or(s.since_ms));
            if name == "fast"
                && !s.success
                && s.last_run_ms.is_some()
                && since_success >= interval_ms
            {
                out.push(format!(
                    "database unreachable for {} s (the fast loop, every {} s: {error})",
                    since_success / 1000,
                    s.interval_seconds
                ));
            } else if s.consecutive_failures >= FAILURES_UNHEALTHY {
                out.push(format!(
                    "loop {name} failed its last {} runs: {error}",
                    s.consecutive_failures
                ));
            }
            let since_run = now_ms.saturating_sub(s.last_run_ms.unwrap_or(s.since_ms));
            let allowed =
                MISSED_INTERVALS_UNHEALTHY * interval_ms + (s.budget_seconds * 1000.0) as u64;
            if since_run > allowed {
                out.push(format!(
                    "loop {name} has completed no run for {} s (it runs every {} s)",
                    since_run / 1000,
                    s.interval_seconds
                ));
            }
        }
        out
    }

    /// Loops whose last run exceeded their budget: `name (1.3 s > 1 s budget)`.
    pub fn degraded(&self) -> Vec<String> {
        self.loops()
            .into_iter()
            .filter(|(_, s)| s.over_budget)
            .map(|(n, s)| {
                format!(
                    "{n} ({:.2} s > {} s budget)",
                    s.duration_seconds, s.budget_seconds
                )
            })
            .collect()
    }

    /// The value of `name` with exactly `labels`, if a loop published it (for tests and
    /// `status`).
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let i = self.inner.lock().ok()?;
        i.families
            .values()
            .flatten()
            .filter(|f| f.name == name)
            .flat_map(|f| f.samples.iter())
            .find(|(l, _)| {
                l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|(_, v)| *v)
    }

    /// Every sample of `name`, from every loop; `None` when no loop published a family of
    /// that name (not read yet, or its loop failed), which is not the same as none at all.
    pub fn samples(&self, name: &str) -> Option<Vec<Sample>> {
        let i = self.inner.lock().ok()?;
        let mut found = false;
        let mut out = Vec::new();
        for f in i.families.values().flatten().filter(|f| f.name == name) {
            found = true;
            out.extend(f.samples.iter().cloned());
        }
        found.then_some(out)
    }

    /// The largest sample of `name` over all its labels, with those labels.
    pub fn max(&self, name: &str) -> Option<(Vec<(&'static str, String)>, f64)> {
        let i = self.inner.lock().ok()?;
        i.families
            .values()
            .flatten()
            .filter(|f| f.name == name)
            .flat_map(|f| f.samples.iter())
            .max_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
    }

    /// A collector for the registry.
    pub fn collector(&self) -> Box<dyn Collector> {
        Box::new(BoardCollector(self.clone()))
    }
}

#[derive(Debug)]
struct BoardCollector(Board);

impl Collector for BoardCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Ok(inner) = self.0.inner.lock() else {
            return Ok(());
        };
        // Families of one name from several loops are merged under one descriptor.
        let mut by_name: BTreeMap<&str, (&Family, Vec<&Sample>)> = BTreeMap::new();
        for f in inner.families.values().flatten() {
            by_name
                .entry(f.name)
                .or_insert_with(|| (f, Vec::new()))
                .1
                .extend(f.samples.iter());
        }
        for (name, (f, samples)) in by_name {
            let t = match f.kind {
                Kind::Gauge => MetricType::Gauge,
                Kind::Counter => MetricType::Counter,
            };
            let mut m = e.encode_descriptor(name, f.help, None, t)?;
            if let [(labels, v)] = samples.as_slice()
                && labels.is_empty()
            {
                // No `{}` after the name of an unlabelled sample.
                match f.kind {
                    Kind::Gauge => ConstGauge::new(*v).encode(m)?,
                    Kind::Counter => ConstCounter::new(*v).encode(m)?,
                }
                continue;
            }
            for (labels, v) in samples {
                let labels: Vec<(&str, &str)> =
                    labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
                let enc = m.encode_family(&labels)?;
                match f.kind {
                    Kind::Gauge => ConstGauge::new(*v).encode(enc)?,
                    Kind::Counter => ConstCounter::new(*v).encode(enc)?,
                }
            }
        }
        let loops = [
            (
                "pgmon_scrape_duration_seconds",
                "Seconds the last run of each health loop took.",
                MetricType::Gauge,
            ),
            (
                "pgmon_last_scrape_success",
                "1 when the last run of the health loop succeeded.",
                MetricType::Gauge,
            ),
            (
                "pgmon_errors",
                "Failed runs of each health loop since the agent started.",
                MetricType::Counter,
            ),
            (
                "pgmon_loop_over_budget",
                "1 when the last run of the health loop exceeded its time budget (degraded).",
                MetricType::Gauge,
            ),
        ];
        for (i, (name, help, t)) in loops.into_iter().enumerate() {
            let mut m = e.encode_descriptor(name, help, None, t)?;
            for (loop_name, s) in &inner.loops {
                let labels = [("loop", *loop_name)];
                let enc = m.encode_family(&labels)?;
                match i {
                    0 => ConstGauge::new(s.duration_seconds).encode(enc)?,
                    1 => ConstGauge::new(i64::from(s.success)).encode(enc)?,
                    2 => ConstCounter::new(s.errors).encode(enc)?,
                    _ => ConstGauge::new(i64::from(s.over_budget)).encode(enc)?,
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A loop every `interval` s with a 1 s budget, started at 0.
    fn started(b: &Board, name: &'static str, interval: u64) -> LoopState {
        b.expect(name, interval, 1.0, 0);
        LoopState {
            interval_seconds: interval,
            budget_seconds: 1.0,
            ..LoopState::default()
        }
    }

    fn ran(b: &Board, name: &'static str, s: &mut LoopState, at_ms: u64, error: Option<&str>) {
        s.last_run_ms = Some(at_ms);
        s.success = error.is_none();
        match error {
            None => {
                s.consecutive_failures = 0;
                s.last_success_ms = Some(at_ms);
            }
            Some(e) => {
                s.consecutive_failures += 1;
                s.errors += 1;
                s.last_error = Some(e.to_owned());
            }
        }
        b.record(name, s.clone());
    }

    #[test]
    fn an_unreachable_database_is_unhealthy_after_one_fast_interval() {
        let b = Board::default();
        let mut fast = started(&b, "fast", 15);
        ran(&b, "fast", &mut fast, 1_000, None);
        assert!(b.unhealthy(2_000).is_empty());
        ran(&b, "fast", &mut fast, 10_000, Some("connection refused"));
        assert!(
            b.unhealthy(15_999).is_empty(),
            "under 15 s since the last success: not yet"
        );
        let why = b.unhealthy(16_000);
        assert_eq!(
            why,
            ["database unreachable for 15 s (the fast loop, every 15 s: connection refused)"]
        );
        ran(&b, "fast", &mut fast, 31_000, None);
        assert!(
            b.unhealthy(31_000).is_empty(),
            "back as soon as a run succeeds"
        );
    }

    #[test]
    fn a_loop_failing_three_times_in_a_row_or_missing_its_schedule_is_unhealthy() {
        let b = Board::default();
        let mut slow = started(&b, "slow", 600);
        for (i, at) in [600_000, 1_200_000].into_iter().enumerate() {
            ran(&b, "slow", &mut slow, at, Some("permission denied"));
            assert!(b.unhealthy(at).is_empty(), "{} failures", i + 1);
        }
        ran(&b, "slow", &mut slow, 1_800_000, Some("permission denied"));
        assert_eq!(
            b.unhealthy(1_800_000),
            ["loop slow failed its last 3 runs: permission denied"]
        );
        // A loop that never completes: two intervals and its budget after its start.
        let b = Board::default();
        started(&b, "hourly", 3600);
        assert!(b.unhealthy(7_201_000).is_empty());
        assert_eq!(
            b.unhealthy(7_201_001),
            ["loop hourly has completed no run for 7201 s (it runs every 3600 s)"]
        );
    }
}
