//! Copying one syscall's bytes into the ring buffer, in chunks of at most 8 KiB, each in
//! the smallest of three record sizes (128 B, 512 B, 8 KiB + header) that holds it.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_user},
};
use pgmon_common::{
    CHUNK_BYTES, CONFIG_MAX_BYTES_PER_CALL, CONFIG_WAKEUP_BYTES, EventHeader, MAX_BYTES_PER_CALL,
    MAX_CHUNKS_PER_CALL, MIN_BYTES_PER_CALL, Record, SMALL_CHUNK_BYTES, TAIL_BYTES,
    TINY_CHUNK_BYTES, TinyRecord, TrackedProcess, counter, flags,
};

use crate::{EVENTS, bump, config};

/// Smallest power of two above each payload size, minus one.
const TINY_MASK: usize = TINY_CHUNK_BYTES.next_power_of_two() - 1;
const SMALL_MASK: usize = SMALL_CHUNK_BYTES.next_power_of_two() - 1;
const LARGE_MASK: usize = (CHUNK_BYTES + 1).next_power_of_two() - 1;
const _: () = assert!(
    TINY_MASK >= TINY_CHUNK_BYTES && SMALL_MASK >= SMALL_CHUNK_BYTES && LARGE_MASK >= CHUNK_BYTES
);

/// A tiny or small record asks whether to wake the agent only when its CPU's record count
/// is a multiple of this; a large one and a marker always ask. The early wakeup is a safety
/// valve for a ring filling faster than the drain timer empties it: this lets it come at
/// most 15 × 512 B = 7.5 KiB per CPU late, against a threshold of a quarter of a ring of
/// ≥ 1 MiB.
const WAKEUP_CHECK_EVERY: u64 = 16;

/// Submit flag: no wakeup unless the ring buffer holds more than `threshold` bytes
/// (`CONFIG_WAKEUP_BYTES`). A wakeup per record halves pgbench TPS on 2 cores (DESIGN.md,
/// measured); the agent drains on a short timer instead. The ring is asked (a
/// `bpf_ringbuf_query` helper call, ~50 ns here) only when `always`, or when `count`, this
/// CPU's record count, is a multiple of [`WAKEUP_CHECK_EVERY`].
#[inline(always)]
fn wakeup_flag(threshold: u64, count: u64, always: bool) -> u64 {
    if (always || count % WAKEUP_CHECK_EVERY == 0)
        && threshold != 0
        && EVENTS.query(BPF_RB_AVAIL_DATA as u64) > threshold
    {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Takes (and clears) the backend's "a record was lost" mark.
#[inline(always)]
fn take_lost(tracked: *mut TrackedProcess) -> u32 {
    // SAFETY: `tracked` is this backend's TRACKED value, valid for this program run.
    unsafe {
        let f = (*tracked).flags;
        if f & flags::LOST_BEFORE != 0 {
            (*tracked).flags = f & !flags::LOST_BEFORE;
        }
        f & flags::LOST_BEFORE
    }
}

#[inline(always)]
fn mark_lost(tracked: *mut TrackedProcess) {
    // SAFETY: as in `take_lost`.
    unsafe { (*tracked).flags |= flags::LOST_BEFORE };
}

/// Emits a record with no payload (fork, exit).
#[inline(always)]
pub fn emit_marker(kind: u32, pid: u32) {
    match EVENTS.reserve::<TinyRecord>(0) {
        Some(mut entry) => {
            let rec = entry.as_mut_ptr();
            // SAFETY: reserved memory of TinyRecord size; only the header is written and
            // len = 0 tells the agent not to read the payload.
            unsafe {
                (*rec).header = EventHeader {
                    ts_ns: bpf_ktime_get_ns(),
                    kind,
                    pid,
                    ..EventHeader::default()
                };
            }
            let count = bump(counter::EVENTS, 1);
            entry.submit(wakeup_flag(config(CONFIG_WAKEUP_BYTES) as u64, count, true));
        }
        None => {
            bump(counter::DROPPED, 1);
        }
    }
}

/// Copies the `ret` bytes a tracked backend moved through `buf` on socket `fd` into the ring
/// buffer, in chunks of ≤ 8 KiB, at most the configured cap per call; counts what it drops.
///
/// A call longer than the cap keeps its head (`cap − TAIL_BYTES` bytes) and its last
/// [`TAIL_BYTES`]: a backend's reply ends with CommandComplete and ReadyForQuery, so the
/// agent still sees each query end even when a large result is cut; the bytes in between
/// are skipped by length inside the DataRows that hold them.
///
/// `tracked` is the backend's `TRACKED` value, which the caller has already looked up.
#[inline(always)]
pub fn emit_call(kind: u32, pid: u32, tracked: *mut TrackedProcess, fd: u32, buf: u64, ret: i64) {
    if ret <= 0 {
        return;
    }
    let call_bytes = if ret > u32::MAX as i64 {
        u32::MAX
    } else {
        ret as u32
    };
    let mut cap = config(CONFIG_MAX_BYTES_PER_CALL);
    if cap == 0 || cap > MAX_BYTES_PER_CALL {
        cap = MAX_BYTES_PER_CALL;
    }
    if cap < MIN_BYTES_PER_CALL {
        cap = MIN_BYTES_PER_CALL;
    }
    let truncated = call_bytes > cap;
    let head_total = if truncated {
        cap - TAIL_BYTES
    } else {
        call_bytes
    };
    let wake = config(CONFIG_WAKEUP_BYTES) as u64;
    let ts_ns = unsafe { bpf_ktime_get_ns() };
    let mut lost = take_lost(tracked);

    let mut i = 0u32;
    while i < MAX_CHUNKS_PER_CALL {
        let offset = i * CHUNK_BYTES as u32;
        if offset >= head_total {
            break;
        }
        let rest = head_total - offset;
        let len = if rest > CHUNK_BYTES as u32 {
            CHUNK_BYTES as u32
        } else {
            rest
        };
        let last = !truncated && offset + len >= head_total;
        let f = lost | if last { flags::LAST_CHUNK } else { 0 };
        let header = EventHeader {
            ts_ns,
            kind,
            pid,
            fd,
            len,
            call_bytes,
            offset,
            flags: f,
            _pad: 0,
        };
        let src = (buf + offset as u64) as *const core::ffi::c_void;
        let outcome = if (len as usize) <= TINY_CHUNK_BYTES {
            emit_chunk::<TINY_CHUNK_BYTES, TINY_MASK>(header, src, len, wake)
        } else if (len as usize) <= SMALL_CHUNK_BYTES {
            emit_chunk::<SMALL_CHUNK_BYTES, SMALL_MASK>(header, src, len, wake)
        } else {
            emit_chunk::<CHUNK_BYTES, LARGE_MASK>(header, src, len, wake)
        };
        if !submitted(outcome, tracked, rest) {
            return;
        }
        lost = 0;
        i += 1;
    }
    if truncated {
        bump(counter::TRUNCATED, 1);
        bump(counter::TRUNCATED_BYTES, (call_bytes - cap) as u64);
        let offset = call_bytes - TAIL_BYTES;
        let header = EventHeader {
            ts_ns,
            kind,
            pid,
            fd,
            len: TAIL_BYTES,
            call_bytes,
            offset,
            flags: lost | flags::LAST_CHUNK | flags::TRUNCATED,
            _pad: 0,
        };
        let src = (buf + offset as u64) as *const core::ffi::c_void;
        let outcome = emit_chunk::<SMALL_CHUNK_BYTES, SMALL_MASK>(header, src, TAIL_BYTES, wake);
        submitted(outcome, tracked, TAIL_BYTES);
    }
}

/// Counts a chunk that was not submitted and marks the stream as having a hole; returns
/// whether it was submitted.
#[inline(always)]
fn submitted(outcome: Outcome, tracked: *mut TrackedProcess, rest: u32) -> bool {
    match outcome {
        Outcome::Submitted => true,
        Outcome::RingFull => {
            bump(counter::DROPPED, 1);
            bump(counter::DROPPED_BYTES, rest as u64);
            mark_lost(tracked);
            false
        }
        Outcome::ReadFailed => {
            bump(counter::PROBE_ERRORS, 1);
            mark_lost(tracked);
            false
        }
    }
}

/// What became of one chunk.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Submitted,
    /// No room in the ring buffer.
    RingFull,
    /// The user-memory read failed (or the length failed its bound check).
    ReadFailed,
}

/// Copies one chunk of `len` ≤ `N` bytes at `src` into a fresh `Record<N>` reservation
/// and submits it. `MASK` is the smallest power of two above `N`, minus one.
#[inline(always)]
fn emit_chunk<const N: usize, const MASK: usize>(
    header: EventHeader,
    src: *const core::ffi::c_void,
    len: u32,
    wake: u64,
) -> Outcome {
    let Some(mut entry) = EVENTS.reserve::<Record<N>>(0) else {
        return Outcome::RingFull;
    };
    let rec = entry.as_mut_ptr();
    // Mask with a power of two minus one (a no-op for a length within bounds) so the
    // verifier sees a bounded size, then check the real bound. The volatile read keeps LLVM
    // from folding the bound check below into the caller's branch, where the verifier would
    // lose the link between the check and the size.
    let n = unsafe { core::ptr::read_volatile(&len) } as usize & MASK;
    if n > N {
        entry.discard(0);
        return Outcome::ReadFailed;
    }
    // SAFETY: `rec` is a reservation of Record<N> size; n ≤ N.
    let rc = unsafe {
        (*rec).header = header;
        bpf_probe_read_user((*rec).data.as_mut_ptr().cast(), n as u32, src)
    };
    if rc != 0 {
        entry.discard(0);
        return Outcome::ReadFailed;
    }
    let count = bump(counter::EVENTS, 1);
    entry.submit(wakeup_flag(wake, count, N == CHUNK_BYTES));
    Outcome::Submitted
}
