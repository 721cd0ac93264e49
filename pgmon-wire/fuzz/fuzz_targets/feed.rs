//! Fuzz target `feed`: arbitrary bytes, cut into chunks and directions by the input itself,
//! fed to one [`Connection`]. It must never panic, and what it reports must keep the
//! crate's documented promises (a completion never ends before it starts; no more pending
//! responses than [`Limits::max_pending`]).
//!
//! Input layout: byte 0 chooses the connection (bit 0: picked up mid-stream, bit 1: small
//! limits); then records of a 2-byte header `h0 h1` and a body. `h0 % 8` says what the
//! record is (0–2 frontend bytes, 3–5 backend bytes, 6 a gap: frontend if `h1` is even,
//! backend if odd, 7 records lost in both directions; gaps and losses have no body);
//! `(h0 / 8) * 256 + h1` is the body's length (cut at the input's end), or for a gap the
//! number of bytes missing. Each record has the next timestamp.
//!
//! Run: `cd pgmon-wire/fuzz && cargo +nightly fuzz run feed -- -max_total_time=300`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgmon_wire::{
    Completion, Connection, DesyncReason, Direction, Encryption, ErrorContext, ErrorResponse,
    Limits, Sink, Startup,
};

/// A sink that checks what it is told and otherwise counts.
#[derive(Default)]
struct Check {
    events: u64,
}

impl Check {
    fn completion<S>(&mut self, c: &Completion<S>) {
        assert!(
            c.start_ns <= c.end_ns,
            "completion ends before it starts: {} > {}",
            c.start_ns,
            c.end_ns
        );
        self.events += 1;
    }
}

impl Sink for Check {
    type Stmt = u32;

    fn prepare(&mut self, text: &[u8], simple: bool, out: &mut Vec<u32>) {
        // One statement per `;`-separated piece that is not blank, as a splitter would.
        let n = if simple {
            text.split(|&b| b == b';')
                .filter(|s| s.iter().any(|b| !b.is_ascii_whitespace()))
                .count()
        } else {
            1
        };
        out.extend(0..n as u32);
        self.events += 1;
    }

    fn truncated(&mut self, prefix: &[u8], len: usize, _: bool, out: &mut Vec<u32>) {
        assert!(
            prefix.len() <= len,
            "prefix {} longer than {len}",
            prefix.len()
        );
        out.push(u32::MAX);
    }

    fn startup(&mut self, _: &Startup<'_>) {
        self.events += 1;
    }

    fn encrypted(&mut self, _: Encryption) {
        self.events += 1;
    }

    fn cancel_request(&mut self) {
        self.events += 1;
    }

    fn completed(&mut self, c: Completion<u32>) {
        self.completion(&c);
    }

    fn unattributed(&mut self, c: Completion<()>) {
        self.completion(&c);
    }

    fn error(&mut self, _: ErrorResponse, _: ErrorContext) {
        self.events += 1;
    }

    fn desync(&mut self, _: Direction, _: DesyncReason) {
        self.events += 1;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let limits = if flags & 2 != 0 {
        Limits {
            max_message: 64,
            max_pending: 4,
            max_names: 2,
        }
    } else {
        Limits::default()
    };
    let mut conn: Connection<u32> = if flags & 1 != 0 {
        Connection::mid_stream_with_limits(limits)
    } else {
        Connection::with_limits(limits)
    };
    let mut sink = Check::default();
    let mut ts = 0u64;
    while let [h0, h1, tail @ ..] = rest {
        ts += 1;
        let len = usize::from(h0 / 8) * 256 + usize::from(*h1);
        let (body, next) = tail.split_at(len.min(tail.len()));
        rest = next;
        match h0 % 8 {
            0..=2 => conn.frontend(ts, body, &mut sink),
            3..=5 => conn.backend(ts, body, &mut sink),
            6 => {
                rest = tail;
                if h1 & 1 == 0 {
                    conn.frontend_gap(len as u64, &mut sink);
                } else {
                    conn.backend_gap(len as u64, &mut sink);
                }
            }
            _ => {
                rest = tail;
                conn.lost(&mut sink);
            }
        }
        assert!(conn.pending() <= limits.max_pending);
    }
    let _ = (conn.phase(), conn.is_synchronized(), sink.events);
});
