//! The cost worker's queue: the fingerprints waiting for an estimate, taken by call
//! frequency with the long tail sampled.
//!
//! Each request carries a counter the capture thread bumps at every execution charged the
//! default while it waits ([`CostRequest::calls`]). The worker takes the most-called
//! pending fingerprint three times out of four and the oldest the fourth time
//! ([`OLDEST_EVERY`]): after a restart or a deploy the statements that carry the load are
//! costed first, and a fingerprint seen once is still costed, never starved.
//!
//! Its depth and the age of its oldest estimate are read at scrape time
//! ([`QueueGauges`]): `pgmon_cost_queue_depth` and `pgmon_cost_queue_oldest_seconds`.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::{MetricType, gauge::ConstGauge},
};

use super::CostRequest;

/// One pick in this many goes to the oldest pending fingerprint rather than the most
/// called.
pub const OLDEST_EVERY: u64 = 4;

/// What the scrape reads: requests sent and not yet answered (the capture thread adds, the
/// worker subtracts) and when the oldest of them was sent (unix ms, 0: none).
#[derive(Clone, Debug, Default)]
pub struct QueueGauges {
    depth: Arc<AtomicI64>,
    oldest_ms: Arc<AtomicU64>,
}

impl QueueGauges {
    /// A request was sent.
    pub fn sent(&self) {
        self.depth.fetch_add(1, Ordering::Relaxed);
    }

    /// A request was answered (or dropped).
    fn done(&self) {
        self.depth.fetch_sub(1, Ordering::Relaxed);
    }

    /// Requests sent and not answered.
    pub fn depth(&self) -> i64 {
        self.depth.load(Ordering::Relaxed).max(0)
    }

    fn set_oldest(&self, ms: u64) {
        self.oldest_ms.store(ms, Ordering::Relaxed);
    }
}

impl Collector for QueueGauges {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let depth = e.encode_descriptor(
            "pgmon_cost_queue_depth",
            "Fingerprints waiting for a cost estimate (charged cost.default_cost meanwhile)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(self.depth()).encode(depth)?;
        let oldest = self.oldest_ms.load(Ordering::Relaxed);
        let age = if oldest == 0 {
            0.0
        } else {
            crate::util::now_ms().saturating_sub(oldest) as f64 / 1000.0
        };
        let m = e.encode_descriptor(
            "pgmon_cost_queue_oldest_seconds",
            "Age of the oldest fingerprint waiting for a cost estimate, seconds (0: none waits)",
            None,
            MetricType::Gauge,
        )?;
        ConstGauge::new(age).encode(m)
    }
}

/// A request and when it arrived, unix ms.
struct Waiting {
    req: CostRequest,
    since_ms: u64,
}

/// The pending fingerprints, oldest first.
pub struct Queue {
    waiting: VecDeque<Waiting>,
    picks: u64,
    gauges: QueueGauges,
}

impl Queue {
    /// An empty queue publishing to `gauges`.
    pub fn new(gauges: QueueGauges) -> Self {
        Self {
            waiting: VecDeque::new(),
            picks: 0,
            gauges,
        }
    }

    /// Adds a request that arrived at `now_ms`.
    pub fn push(&mut self, req: CostRequest, now_ms: u64) {
        self.waiting.push_back(Waiting {
            req,
            since_ms: now_ms,
        });
        self.publish_oldest(None);
    }

    /// Fingerprints waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// True when nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// The next request to estimate: the most called, or every [`OLDEST_EVERY`]th pick
    /// the oldest (ties: the oldest). The gauges keep counting it as waiting (since when it
    /// arrived) until [`Queue::finished`].
    pub fn pop(&mut self) -> Option<CostRequest> {
        self.picks += 1;
        let i = if self.picks.is_multiple_of(OLDEST_EVERY) {
            0
        } else {
            let mut best = 0;
            let mut best_calls = 0;
            for (i, w) in self.waiting.iter().enumerate() {
                let c = w.req.calls.load(Ordering::Relaxed);
                if c > best_calls {
                    (best, best_calls) = (i, c);
                }
            }
            best
        };
        let w = self.waiting.remove(i)?;
        self.publish_oldest(Some(w.since_ms));
        Some(w.req)
    }

    /// The request [`Queue::pop`] returned is answered.
    pub fn finished(&mut self) {
        self.gauges.done();
        self.publish_oldest(None);
    }

    fn publish_oldest(&self, in_progress: Option<u64>) {
        let oldest = self
            .waiting
            .iter()
            .map(|w| w.since_ms)
            .chain(in_progress)
            .min()
            .unwrap_or(0);
        self.gauges.set_oldest(oldest);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    fn req(fp: u64, calls: u32) -> CostRequest {
        CostRequest {
            fingerprint: fp,
            normalized: "SELECT $1".into(),
            truncated: false,
            role: "r".into(),
            database: "d".into(),
            calls: Arc::new(AtomicU32::new(calls)),
        }
    }

    #[test]
    fn most_called_first_and_every_fourth_pick_the_oldest() {
        let gauges = QueueGauges::default();
        let mut q = Queue::new(gauges.clone());
        // fingerprint i called i times; 1 arrived first.
        for fp in 1..=8 {
            gauges.sent();
            q.push(req(fp, fp as u32), 1000 + fp);
        }
        assert_eq!(gauges.depth(), 8);
        let mut order = Vec::new();
        while let Some(r) = q.pop() {
            order.push(r.fingerprint);
            q.finished();
        }
        // picks 1-3: 8, 7, 6; pick 4: the oldest (1); 5-7: 5, 4, 3; 8: the oldest left (2).
        assert_eq!(order, [8, 7, 6, 1, 5, 4, 3, 2]);
        assert_eq!(gauges.depth(), 0);
        assert_eq!(gauges.oldest_ms.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn calls_counted_while_waiting_move_a_fingerprint_up() {
        let mut q = Queue::new(QueueGauges::default());
        let (a, b) = (req(1, 1), req(2, 1));
        let b_calls = b.calls.clone();
        q.push(a, 1);
        q.push(b, 2);
        b_calls.fetch_add(5, Ordering::Relaxed);
        assert_eq!(q.pop().map(|r| r.fingerprint), Some(2));
    }

    #[test]
    fn the_oldest_gauge_covers_the_request_in_progress() {
        let gauges = QueueGauges::default();
        let mut q = Queue::new(gauges.clone());
        q.push(req(1, 9), 100);
        q.push(req(2, 1), 200);
        let first = q.pop().unwrap();
        assert_eq!(first.fingerprint, 1);
        assert_eq!(gauges.oldest_ms.load(Ordering::Relaxed), 100, "in progress");
        q.finished();
        assert_eq!(gauges.oldest_ms.load(Ordering::Relaxed), 200);
    }
}
