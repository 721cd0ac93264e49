//! Copying one syscall's bytes into the ring buffer, in chunks of at most 8 KiB, each a
//! record of its exact size (header + payload, rounded up to 8 bytes by the ring).
//!
//! A record is assembled in a per-CPU scratch record (`SCRATCH`) and copied into the ring
//! with one `bpf_ringbuf_output` call: a reservation must have a constant size, so the
//! alternative is a reserve and a submit of a fixed-size slot, two helper calls where this
//! makes one (helper calls dominate a record's cost here: ~40–130 ns each with this
//! host's retpoline and SRSO mitigations, `capture.probe_stats`).

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{bpf_ktime_get_ns, generated::bpf_probe_read_user},
};
use pgmon_common::{
    CHUNK_BYTES, CONFIG_MAX_BYTES_PER_CALL, CONFIG_WAKEUP_BYTES, EventHeader, MAX_BYTES_PER_CALL,
    MAX_CHUNKS_PER_CALL, MIN_BYTES_PER_CALL, TAIL_BYTES, counter, flags, pid_state,
};

use crate::{EVENTS, SCRATCH, bump, config, counter_slot};

/// Smallest power of two above a chunk's largest payload, minus one.
const CHUNK_MASK: usize = (CHUNK_BYTES + 1).next_power_of_two() - 1;
const HEADER_BYTES: usize = core::mem::size_of::<EventHeader>();

/// A record of at most 512 bytes asks whether to wake the agent only when its CPU's record
/// count is a multiple of this; a larger one and a marker always ask. The early wakeup is a
/// safety valve for a ring filling faster than the drain timer empties it: this lets it
/// come at most 15 × 512 B = 7.5 KiB per CPU late, against a threshold of a quarter of a
/// ring of ≥ 1 MiB.
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

/// Takes (and clears) the backend's "a record was lost" mark from its pid-state byte.
#[inline(always)]
fn take_lost(state: *mut u8) -> u32 {
    // SAFETY: `state` is this backend's byte in TRACKED_PIDS, valid for this program run;
    // only programs running in this backend write its bits other than TRACKED.
    unsafe {
        let v = *state;
        if v & pid_state::LOST == 0 {
            return 0;
        }
        *state = v & !pid_state::LOST;
    }
    flags::LOST_BEFORE
}

#[inline(always)]
fn mark_lost(state: *mut u8) {
    // SAFETY: as in `take_lost`.
    unsafe { *state |= pid_state::LOST };
}

/// Emits a record with no payload (fork, exit).
#[inline(always)]
pub fn emit_marker(kind: u32, pid: u32) {
    match EVENTS.reserve::<EventHeader>(0) {
        Some(mut entry) => {
            let rec = entry.as_mut_ptr();
            // SAFETY: reserved memory of EventHeader size; len = 0.
            unsafe {
                *rec = EventHeader {
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
/// `state` is the backend's pid-state byte, which the caller has already looked up. A
/// backend whose session is TLS ([`pid_state::TLS`]) has its socket calls left alone: they
/// carry ciphertext, and the TLS probes copy the plaintext instead.
#[inline(always)]
pub fn emit_call(kind: u32, pid: u32, state: *mut u8, fd: u32, buf: u64, ret: i64) {
    // SAFETY: `state` is this backend's byte in TRACKED_PIDS, valid for this program run.
    if unsafe { *state } & pid_state::TLS != 0 {
        return;
    }
    emit_bytes(kind, pid, state, fd, buf, ret, 0);
}

/// [`emit_call`]'s copy, for socket bytes and TLS plaintext alike; `extra` is or-ed into
/// every record's flags ([`flags::TLS`] for plaintext).
#[inline(always)]
pub fn emit_bytes(kind: u32, pid: u32, state: *mut u8, fd: u32, buf: u64, ret: i64, extra: u32) {
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
    let mut carried = take_lost(state) | extra;

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
        let f = carried | if last { flags::LAST_CHUNK } else { 0 };
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
        if !submitted(emit_chunk(header, src, wake), state, rest) {
            return;
        }
        carried = extra;
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
            flags: carried | flags::LAST_CHUNK | flags::TRUNCATED,
            _pad: 0,
        };
        let src = (buf + offset as u64) as *const core::ffi::c_void;
        submitted(emit_chunk(header, src, wake), state, TAIL_BYTES);
    }
}

/// Counts a chunk that was not submitted and marks the stream as having a hole; returns
/// whether it was submitted.
#[inline(always)]
fn submitted(outcome: Outcome, state: *mut u8, rest: u32) -> bool {
    match outcome {
        Outcome::Submitted => true,
        Outcome::RingFull => {
            bump(counter::DROPPED, 1);
            bump(counter::DROPPED_BYTES, rest as u64);
            mark_lost(state);
            false
        }
        Outcome::ReadFailed => {
            bump(counter::PROBE_ERRORS, 1);
            mark_lost(state);
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
    /// The user-memory read failed (or the length failed its bound check, or the scratch
    /// record could not be had).
    ReadFailed,
}

/// Copies the chunk `header` describes (`header.len` ≤ [`CHUNK_BYTES`] bytes at `src`)
/// into this CPU's scratch record for its kind, then the record, at its exact size, into
/// the ring buffer.
#[inline(always)]
fn emit_chunk(header: EventHeader, src: *const core::ffi::c_void, wake: u64) -> Outcome {
    let Some(rec) = SCRATCH.get_ptr_mut(header.kind & 1) else {
        return Outcome::ReadFailed;
    };
    // Mask with a power of two minus one (a no-op for a length within bounds) so the
    // verifier sees a bounded size, then check the real bound. The volatile read keeps LLVM
    // from folding the bound check below into the caller's branch, where the verifier would
    // lose the link between the check and the size.
    let n = unsafe { core::ptr::read_volatile(&header.len) } as usize & CHUNK_MASK;
    if n > CHUNK_BYTES {
        return Outcome::ReadFailed;
    }
    // SAFETY: `rec` is this CPU's scratch record (no other run of this program can use it
    // meanwhile: see SCRATCH); n ≤ CHUNK_BYTES, the size of its data.
    let rc = unsafe {
        (*rec).header = header;
        bpf_probe_read_user((*rec).data.as_mut_ptr().cast(), n as u32, src)
    };
    if rc != 0 {
        return Outcome::ReadFailed;
    }
    // SAFETY: the first HEADER_BYTES + n ≤ size_of::<Record>() bytes of the scratch
    // record, all written above.
    let bytes = unsafe { core::slice::from_raw_parts(rec.cast::<u8>(), HEADER_BYTES + n) };
    // Counted once it is in the ring; the count it will have samples `wakeup_flag`.
    let events = counter_slot(counter::EVENTS);
    // SAFETY: see `counter_slot`.
    let count = events.map_or(0, |p| unsafe { *p }) + 1;
    let flag = wakeup_flag(wake, count, n + HEADER_BYTES > 512);
    if EVENTS.output::<[u8]>(bytes, flag).is_err() {
        return Outcome::RingFull;
    }
    if let Some(p) = events {
        // SAFETY: see `counter_slot`.
        unsafe { *p = count };
    }
    Outcome::Submitted
}
