//! The two pure gates in front of each sink: [`Dedup`] (a payload whose key was delivered
//! within the window is dropped) and [`RateLimit`] (at most N payloads a minute; the excess
//! is counted and summed up in one message when the minute ends). Both take the time as an
//! argument, so they are tested without waiting.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

/// Keys remembered at most; past this, keys older than the window are forgotten at once.
const MAX_KEYS: usize = 100_000;

/// Remembers when each key was last let through.
#[derive(Debug)]
pub struct Dedup {
    window: Duration,
    last: HashMap<String, Instant>,
}

impl Dedup {
    /// A gate that lets a key through at most once per `window` (zero: always).
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            last: HashMap::new(),
        }
    }

    /// True when `key` was not let through within the window before `now`.
    pub fn fresh(&self, key: &str, now: Instant) -> bool {
        self.last
            .get(key)
            .is_none_or(|t| now.saturating_duration_since(*t) >= self.window)
    }

    /// Records that `key` was let through at `now`.
    pub fn record(&mut self, key: &str, now: Instant) {
        self.last.insert(key.to_owned(), now);
        if self.last.len() > MAX_KEYS {
            let window = self.window;
            self.last
                .retain(|_, t| now.saturating_duration_since(*t) < window);
        }
    }
}

/// What [`RateLimit`] held back in one window.
#[derive(Debug, PartialEq)]
pub struct Suppressed {
    /// Payloads held back.
    pub count: u64,
    /// The one-line texts of the first few (at most [`RateLimit::EXAMPLES`]).
    pub examples: Vec<String>,
}

/// At most `max` payloads per fixed window (a minute in the agent), the window starting
/// with the first payload after the previous one ended.
#[derive(Debug)]
pub struct RateLimit {
    max: u32,
    window: Duration,
    started: Option<Instant>,
    sent: u32,
    held: u64,
    examples: Vec<String>,
}

impl RateLimit {
    /// Texts kept for the summary.
    pub const EXAMPLES: usize = 5;

    /// `max` per minute; 0 means no limit.
    pub fn per_minute(max: u32) -> Self {
        Self::new(max, Duration::from_secs(60))
    }

    /// `max` per `window`; 0 means no limit.
    pub fn new(max: u32, window: Duration) -> Self {
        Self {
            max,
            window,
            started: None,
            sent: 0,
            held: 0,
            examples: Vec::new(),
        }
    }

    /// True when a payload may go now; otherwise it is counted (with `text` kept as an
    /// example) and false is returned. Call [`RateLimit::take_summary`] first, so a
    /// finished window is closed.
    pub fn admit(&mut self, text: &str, now: Instant) -> bool {
        if self.max == 0 {
            return true;
        }
        match self.started {
            Some(s) if now.saturating_duration_since(s) < self.window => {}
            _ => {
                self.started = Some(now);
                self.sent = 0;
            }
        }
        if self.sent < self.max {
            self.sent += 1;
            return true;
        }
        self.held += 1;
        if self.examples.len() < Self::EXAMPLES {
            self.examples.push(text.to_owned());
        }
        false
    }

    /// When the current window ends, if it held anything back (the sink's task sleeps
    /// until then to send the summary).
    pub fn summary_due(&self) -> Option<Instant> {
        (self.held > 0).then(|| self.started.map(|s| s + self.window))?
    }

    /// What the window held back, once it has ended at `now` (and resets the count).
    pub fn take_summary(&mut self, now: Instant) -> Option<Suppressed> {
        let due = self.summary_due()?;
        if now < due {
            return None;
        }
        let s = Suppressed {
            count: self.held,
            examples: std::mem::take(&mut self.examples),
        };
        self.held = 0;
        Some(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_passes_once_per_window() {
        let t0 = Instant::now();
        let mut d = Dedup::new(Duration::from_secs(10));
        assert!(d.fresh("a", t0));
        d.record("a", t0);
        assert!(!d.fresh("a", t0 + Duration::from_secs(9)));
        assert!(d.fresh("b", t0 + Duration::from_secs(9)));
        assert!(d.fresh("a", t0 + Duration::from_secs(10)));
        let mut none = Dedup::new(Duration::ZERO);
        none.record("a", t0);
        assert!(none.fresh("a", t0));
    }

    #[test]
    fn the_excess_of_a_minute_is_summed_up_when_it_ends() {
        let t0 = Instant::now();
        let s = |n| t0 + Duration::from_secs(n);
        let mut r = RateLimit::per_minute(2);
        assert!(r.admit("1", s(0)));
        assert!(r.admit("2", s(10)));
        assert_eq!(r.summary_due(), None);
        for i in 0..7 {
            assert!(!r.admit(&format!("x{i}"), s(20)));
        }
        assert_eq!(r.summary_due(), Some(s(60)));
        assert_eq!(r.take_summary(s(59)), None);
        let sum = r.take_summary(s(60)).unwrap();
        assert_eq!(sum.count, 7);
        assert_eq!(sum.examples, ["x0", "x1", "x2", "x3", "x4"]);
        assert_eq!(r.take_summary(s(61)), None, "summed up once");
        // A new window opens with the next payload.
        assert!(r.admit("3", s(61)));
        assert!(r.admit("4", s(62)));
        assert!(!r.admit("5", s(63)));
        assert_eq!(r.summary_due(), Some(s(121)));
    }

    #[test]
    fn zero_means_no_limit() {
        let t0 = Instant::now();
        let mut r = RateLimit::per_minute(0);
        assert!((0..1000).all(|_| r.admit("x", t0)));
        assert_eq!(r.summary_due(), None);
    }
}
