//! `pgmon-agent record --config FILE --out CAPTURE --seconds N`: attaches like `run` and
//! writes every raw ring-buffer record to a file, for `replay` and the benchmarks.
//!
//! File format: a sequence of records, each a little-endian `u32` length followed by that
//! many bytes (the record exactly as the kernel wrote it: `EventHeader` + payload).

use std::{
    io::{BufWriter, Write as _},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use pgmon_common::EventHeader;

use crate::{capture::Capture, config::Config};

/// Records for `seconds`, then detaches. Prints how many records and bytes it wrote.
pub fn record(config_path: &Path, out: &Path, seconds: u64) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let mut capture = Capture::attach(&config.capture, &config.cluster.data_directory)?;
    let file =
        std::fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let hsize = std::mem::size_of::<EventHeader>();
    let (mut records, mut bytes) = (0u64, 0u64);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let interval = Duration::from_millis(config.capture.drain_interval_ms);
    let mut write_err = None;
    // Ready marker for scripts: the probes are attached from here on.
    println!("recording with hook {}", capture.hook().name());
    while Instant::now() < deadline {
        capture.wait(interval);
        capture.drain(|r| {
            let len = hsize + r.data.len();
            // SAFETY: EventHeader is plain old data.
            let header =
                unsafe { std::slice::from_raw_parts((&raw const r.header).cast::<u8>(), hsize) };
            let res = w
                .write_all(&(len as u32).to_le_bytes())
                .and_then(|()| w.write_all(header))
                .and_then(|()| w.write_all(r.data));
            if let Err(e) = res {
                write_err.get_or_insert(e);
            }
            records += 1;
            bytes += len as u64;
        });
        if let Some(e) = write_err.take() {
            return Err(e).context("writing the capture file");
        }
    }
    w.flush()?;
    let k = capture.counters();
    println!(
        "recorded {records} records, {bytes} bytes; kernel dropped {}, truncated {}",
        k.dropped, k.truncated
    );
    Ok(())
}

/// Reads a capture file into memory: one `Vec<u8>` per record.
pub fn read_capture(path: &Path) -> anyhow::Result<Vec<Vec<u8>>> {
    let data = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut out = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        let len = u32::from_le_bytes([data[i], data[i + 1], data[i + 2], data[i + 3]]) as usize;
        i += 4;
        let rec = data.get(i..i + len).with_context(|| {
            format!("{}: record at byte {} is cut short", path.display(), i - 4)
        })?;
        out.push(rec.to_vec());
        i += len;
    }
    Ok(out)
}
