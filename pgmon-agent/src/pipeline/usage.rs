//! What the agent costs per query rate, recently: the figure a DBA sizes it by (issue 24).
//!
//! The capture thread records the process's CPU seconds (utime + stime of every thread,
//! `/proc/self/stat`, proc(5)) and the statements completed so far each time it publishes
//! its counters (every 500 ms). The status document then reports, over the last
//! [`WINDOW`] or so: the agent's CPU as a fraction of one core, the statements per second
//! it saw, and their ratio per 1,000 statements/s — which the agent's cost is roughly
//! proportional to, since it works per captured message (`bench/REPORT.md`, "what the
//! agent costs per 1,000 queries/s", measures it at three rates).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::status::RecentUsage;

/// The span the figures cover: 10 s, the history's interval.
pub const WINDOW: Duration = Duration::from_secs(10);

/// Below this many statements per second the per-1,000 figure is left out: the agent's
/// fixed work (health loops, the HTTP server) would dominate it.
pub const MIN_RATE: f64 = 10.0;

/// Samples of (when, CPU seconds, statements), oldest first, spanning a little more than
/// [`WINDOW`].
#[derive(Debug, Default)]
pub struct UsageWindow {
    samples: VecDeque<(Instant, f64, u64)>,
}

impl UsageWindow {
    /// Records a sample and forgets those no longer needed to span [`WINDOW`].
    pub fn record(&mut self, at: Instant, cpu_seconds: f64, statements: u64) {
        self.samples.push_back((at, cpu_seconds, statements));
        // Keep the newest sample that is at least WINDOW old, and everything after it.
        while self
            .samples
            .get(1)
            .is_some_and(|(t, ..)| at.duration_since(*t) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// The figures from the oldest sample kept to the newest; `None` until they span at
    /// least half of [`WINDOW`].
    pub fn recent(&self) -> Option<RecentUsage> {
        let (t0, cpu0, q0) = *self.samples.front()?;
        let (t1, cpu1, q1) = *self.samples.back()?;
        let seconds = t1.duration_since(t0).as_secs_f64();
        if seconds < WINDOW.as_secs_f64() / 2.0 {
            return None;
        }
        let cpu_fraction = ((cpu1 - cpu0) / seconds).max(0.0);
        let queries_per_second = q1.saturating_sub(q0) as f64 / seconds;
        Some(RecentUsage {
            window_seconds: seconds,
            cpu_fraction,
            queries_per_second,
            cpu_fraction_per_1000_queries_per_second: (queries_per_second >= MIN_RATE)
                .then(|| cpu_fraction / (queries_per_second / 1000.0)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_the_window_and_divides_by_the_rate() {
        let t = Instant::now();
        let mut w = UsageWindow::default();
        w.record(t, 1.0, 0);
        assert_eq!(w.recent(), None, "one sample spans nothing");
        // 2 % of a core at 5,000 statements/s for 20 s, sampled every 500 ms.
        for i in 1..=40u32 {
            let s = f64::from(i) * 0.5;
            w.record(
                t + Duration::from_millis(u64::from(i) * 500),
                1.0 + 0.02 * s,
                (5000.0 * s) as u64,
            );
        }
        let r = w.recent().unwrap();
        assert!((r.window_seconds - 10.0).abs() < 1e-9, "{r:?}");
        assert!((r.cpu_fraction - 0.02).abs() < 1e-9, "{r:?}");
        assert!((r.queries_per_second - 5000.0).abs() < 1e-6, "{r:?}");
        let per = r.cpu_fraction_per_1000_queries_per_second.unwrap();
        assert!((per - 0.004).abs() < 1e-9, "{r:?}");
        assert!(w.samples.len() <= 22, "{} samples kept", w.samples.len());
    }

    #[test]
    fn an_idle_agent_has_no_per_rate_figure() {
        let t = Instant::now();
        let mut w = UsageWindow::default();
        w.record(t, 0.0, 0);
        w.record(t + Duration::from_secs(10), 0.01, 5);
        let r = w.recent().unwrap();
        assert_eq!(r.cpu_fraction_per_1000_queries_per_second, None);
        assert!((r.cpu_fraction - 0.001).abs() < 1e-12);
    }
}
