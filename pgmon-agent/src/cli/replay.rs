//! `pgmon-agent replay CAPTURE [--passes N] [--cold]`: runs the agent's pipeline (wire
//! parser, normalizer, statistics) over recorded records on the current thread, with no
//! kernel and no database, and prints the throughput as JSON. Used by `cargo xtask bench`.
//!
//! Each pass replays the whole file through a fresh pipeline (connections and statistics
//! start empty); `--cold` also starts each pass with an empty statement cache, so every
//! distinct statement is a libpg_query miss; without it the cache is warmed by one
//! unmeasured pass first, so the measured passes are hits.
//!
//! The statement cache's hit ratio is reported for the first pass over the file with an
//! empty cache (`first_pass_hit_ratio`: what an agent that starts while this traffic runs
//! sees — every distinct shape is one miss) and for the measured passes.

use std::{path::Path, time::Instant};

use anyhow::Context as _;

use crate::{
    capture::Record,
    config::Config,
    pipeline::{Pipeline, metrics::TrafficMetrics},
};

/// Replays `file` `passes` times and prints
/// `{"records":…,"queries":…,"seconds":…,"records_per_second":…,"queries_per_second":…,
/// "first_pass_hit_ratio":…,"hit_ratio":…,"statement_cache_misses":…,"cold":…}`; the ratios
/// are hits ÷ (hits + misses) of the statement cache, `null` when nothing was looked up.
pub fn replay(file: &Path, passes: u32, cold: bool) -> anyhow::Result<()> {
    let raw = super::record::read_capture(file)?;
    let records: Vec<Record<'_>> = raw
        .iter()
        .map(|r| Record::decode(r).context("undecodable record in capture file"))
        .collect::<anyhow::Result<_>>()?;
    let config = Config::parse(
        Path::new("(replay)"),
        "cluster:\n  data_directory: /nonexistent\n",
    )?;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let mut pipeline = Pipeline::new(
        &config.query,
        config.capture.max_message_bytes,
        TrafficMetrics::register(&mut Default::default(), "replay", 0),
        tx.clone(),
    );
    let ratio = |a: crate::query::NormalizerStats, b: crate::query::NormalizerStats| {
        let (hits, misses) = (b.hits - a.hits, b.misses - a.misses);
        (hits + misses > 0).then(|| hits as f64 / (hits + misses) as f64)
    };
    let mut first_pass_hit_ratio = None;
    if !cold {
        let before = pipeline.normalizer_stats();
        for r in &records {
            pipeline.on_record(r);
        }
        first_pass_hit_ratio = ratio(before, pipeline.normalizer_stats());
    }
    let mut measured = crate::query::NormalizerStats::default();
    let mut seconds = 0.0;
    let mut queries = 0u64;
    for _ in 0..passes.max(1) {
        if cold {
            pipeline = Pipeline::new(
                &config.query,
                config.capture.max_message_bytes,
                TrafficMetrics::register(&mut Default::default(), "replay", 0),
                tx.clone(),
            );
        } else {
            pipeline.reset_connections();
        }
        let before = pipeline.total_queries();
        let cache_before = pipeline.normalizer_stats();
        let t = Instant::now();
        for r in &records {
            pipeline.on_record(r);
        }
        seconds += t.elapsed().as_secs_f64();
        queries += pipeline.total_queries() - before;
        let cache_after = pipeline.normalizer_stats();
        measured.hits += cache_after.hits - cache_before.hits;
        measured.misses += cache_after.misses - cache_before.misses;
        if cold && first_pass_hit_ratio.is_none() {
            first_pass_hit_ratio = ratio(cache_before, cache_after);
        }
    }
    let n = records.len() as u64 * u64::from(passes.max(1));
    println!(
        "{}",
        serde_json::json!({
            "records": n,
            "queries": queries,
            "seconds": seconds,
            "records_per_second": n as f64 / seconds,
            "queries_per_second": queries as f64 / seconds,
            "first_pass_hit_ratio": first_pass_hit_ratio,
            "hit_ratio": ratio(Default::default(), measured),
            "statement_cache_misses": measured.misses,
            "cold": cold,
        })
    );
    Ok(())
}
