//! Rolling windows over counters, for the rules that look at rates: [`Window`] keeps a
//! counter's samples over a window and gives its increase and rate (a counter that goes
//! back, a statistics reset, starts the window again), and [`Baseline`] keeps past rates
//! and says whether a new one is a surge: above mean + σ·standard deviation of the
//! baseline, once the baseline has enough observations, and above an absolute floor.
//! Times are milliseconds from an injected clock.

use std::collections::VecDeque;

/// A counter's (or several counters') samples within the last `window_ms`.
#[derive(Clone, Debug)]
pub struct Window<const N: usize> {
    window_ms: u64,
    samples: VecDeque<(u64, [f64; N])>,
}

impl<const N: usize> Window<N> {
    /// An empty window of `window_ms`.
    pub fn new(window_ms: u64) -> Self {
        Self {
            window_ms,
            samples: VecDeque::new(),
        }
    }

    /// Adds the counters' values at `t`; keeps the newest sample at or before the window's
    /// start so the increase spans the whole window.
    pub fn push(&mut self, t: u64, values: [f64; N]) {
        if let Some((_, last)) = self.samples.back()
            && values.iter().zip(last).any(|(v, l)| v < l)
        {
            self.samples.clear();
        }
        self.samples.push_back((t, values));
        let start = t.saturating_sub(self.window_ms);
        while self.samples.len() > 2 && self.samples[1].0 <= start {
            self.samples.pop_front();
        }
    }

    /// Milliseconds between the oldest and the newest sample.
    pub fn span_ms(&self) -> u64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) => b.0 - a.0,
            _ => 0,
        }
    }

    /// Increase of each counter over the window, once it spans at least half of it.
    pub fn increase(&self) -> Option<[f64; N]> {
        let (a, b) = (self.samples.front()?, self.samples.back()?);
        if self.span_ms() * 2 < self.window_ms || self.span_ms() == 0 {
            return None;
        }
        let mut out = [0.0; N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = b.1[i] - a.1[i];
        }
        Some(out)
    }

    /// Per-second rate of each counter over the window (see [`Window::increase`]).
    pub fn rate(&self) -> Option<[f64; N]> {
        let secs = self.span_ms() as f64 / 1000.0;
        self.increase().map(|inc| inc.map(|d| d / secs))
    }
}

/// Past rates of one counter, at most one per `step_ms`, at most `cap` of them.
#[derive(Clone, Debug)]
pub struct Baseline {
    step_ms: u64,
    cap: usize,
    last_ms: Option<u64>,
    values: VecDeque<f64>,
}

/// Most observations a baseline keeps (one a minute for a day).
pub const MAX_OBSERVATIONS: usize = 1440;

/// What [`Baseline::judge`] found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Judgement {
    /// The rate is a surge.
    pub surge: bool,
    /// Mean of the baseline.
    pub mean: f64,
    /// mean + σ·standard deviation: the rate must exceed this (and the floor).
    pub limit: f64,
    /// Observations in the baseline.
    pub samples: usize,
}

impl Baseline {
    /// A baseline reaching `baseline_ms` back, observed at most every `interval_ms` (an
    /// evaluation) and at most [`MAX_OBSERVATIONS`] times over `baseline_ms`.
    pub fn new(baseline_ms: u64, interval_ms: u64) -> Self {
        let step_ms = interval_ms
            .max(baseline_ms / MAX_OBSERVATIONS as u64)
            .max(1);
        Self {
            step_ms,
            cap: ((baseline_ms / step_ms) as usize).clamp(2, MAX_OBSERVATIONS),
            last_ms: None,
            values: VecDeque::new(),
        }
    }

    /// The observations and the time of the last one, to persist.
    pub fn saved(&self) -> (Vec<f64>, Option<u64>) {
        (self.values.iter().copied().collect(), self.last_ms)
    }

    /// Takes back what [`Baseline::saved`] gave (the newest `cap` observations).
    pub fn restore(&mut self, values: Vec<f64>, last_ms: Option<u64>) {
        let skip = values.len().saturating_sub(self.cap);
        self.values = values.into_iter().skip(skip).collect();
        self.last_ms = last_ms;
    }

    /// Observations held now, and their mean (0 when there are none), in the rate's unit.
    pub fn observed(&self) -> (usize, f64) {
        let n = self.values.len();
        let mean = if n == 0 {
            0.0
        } else {
            self.values.iter().sum::<f64>() / n as f64
        };
        (n, mean)
    }

    /// Judges `rate` against the baseline as it was, then adds it (when a step has passed
    /// since the last observation). Surge: at least `min_samples` observations, `rate` >
    /// mean + `sigma`·sd (population standard deviation) and `rate` ≥ `floor`.
    pub fn judge(
        &mut self,
        t: u64,
        rate: f64,
        sigma: f64,
        min_samples: usize,
        floor: f64,
    ) -> Judgement {
        let (n, mean) = self.observed();
        let var = if n == 0 {
            0.0
        } else {
            self.values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n as f64
        };
        let limit = mean + sigma * var.sqrt();
        let j = Judgement {
            surge: n >= min_samples && rate > limit && rate >= floor,
            mean,
            limit,
            samples: n,
        };
        if self
            .last_ms
            .is_none_or(|l| t.saturating_sub(l) + self.step_ms / 10 >= self.step_ms)
        {
            self.values.push_back(rate);
            self.last_ms = Some(t);
            while self.values.len() > self.cap {
                self.values.pop_front();
            }
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1000;

    #[test]
    fn window_rates_span_the_window_and_restart_after_a_reset() {
        let mut w = Window::<1>::new(10 * S);
        w.push(0, [0.0]);
        assert_eq!(w.rate(), None, "one sample");
        w.push(4 * S, [40.0]);
        assert_eq!(w.rate(), None, "less than half the window");
        w.push(5 * S, [50.0]);
        assert_eq!(w.rate(), Some([10.0]));
        for t in 6..=20 {
            w.push(t * S, [t as f64 * 10.0 + if t > 15 { 100.0 } else { 0.0 }]);
        }
        // From t=10 (100) to t=20 (300): 20/s.
        assert_eq!(w.span_ms(), 10 * S);
        assert_eq!(w.rate(), Some([20.0]));
        w.push(21 * S, [5.0]);
        assert_eq!(w.rate(), None, "a counter that went back starts anew");
        w.push(26 * S, [55.0]);
        assert_eq!(w.increase(), Some([50.0]));
    }

    #[test]
    fn a_surge_needs_samples_sigma_and_the_floor() {
        let mut b = Baseline::new(1440 * S, S);
        // Too few observations yet.
        assert!(!b.judge(0, 1e9, 3.0, 5, 1e6).surge);
        let mut b = Baseline::new(1440 * S, S);
        for t in 0..10 {
            let j = b.judge(t * S, 100.0 + (t % 2) as f64 * 20.0, 3.0, 5, 1e6);
            assert!(!j.surge);
        }
        // mean 110, sd 10: limit 140; a rate under the floor never fires.
        let j = b.judge(10 * S, 5e5, 3.0, 5, 1e6);
        assert!(!j.surge, "{j:?}");
        assert_eq!(j.samples, 10);
        let j = b.judge(11 * S, 2e6, 3.0, 5, 1e6);
        assert!(j.surge, "{j:?}");
        // An idle cluster: all zero, sd 0, limit 0 — only the floor keeps it quiet.
        let mut idle = Baseline::new(1440 * S, S);
        for t in 0..30 {
            idle.judge(t * S, 0.0, 3.0, 5, 1e6);
        }
        assert!(!idle.judge(30 * S, 1000.0, 3.0, 5, 1e6).surge);
        assert!(idle.judge(31 * S, 2e6, 3.0, 5, 1e6).surge);
    }

    #[test]
    fn the_baseline_is_bounded_and_stepped() {
        // A day at a 5 s evaluation: one observation a minute, 1440 at most.
        let mut b = Baseline::new(86_400 * S, 5 * S);
        assert_eq!((b.step_ms, b.cap), (60 * S, 1440));
        for t in 0..(2 * 86_400 / 5) {
            b.judge(t * 5 * S, 1.0, 3.0, 2, 0.0);
        }
        assert_eq!(b.values.len(), 1440);
    }
}
