//! pgmon's kernel programs.
//!
//! They watch the client sockets of one PostgreSQL cluster's backends: the postmaster's pid
//! is written into `CONFIG` by the agent, the fork probe adds each child it forks to
//! `TRACKED` and marks it in `TRACKED_PIDS`, and the socket probes copy the bytes every
//! tracked backend receives and sends into the `EVENTS` ring buffer (see `pgmon_common`
//! for the record layout). Nothing here blocks or changes a syscall: a probe that fails
//! counts the failure and returns.
//!
//! Probe families, one file each under `probes/`, cheapest first:
//! - `fexit`: `fexit/__sys_recvfrom` and `fexit/__sys_sendto` (one program per call, args and
//!   return value together; refused with EPERM on some hosts),
//! - `sock_tp`: `tp_btf/sock_recv_length` + `tp_btf/sock_send_length` (socket layer, run
//!   only by processes on a socket), buffer and fd from the syscall's saved registers,
//! - `btf_tp`: `tp_btf/sys_exit` alone, arguments read from the typed `pt_regs`,
//! - `syscall_tp`: `tracepoint/syscalls/sys_{enter,exit}_{recvfrom,sendto}`,
//! - `raw_tp`: `raw_tp/sys_exit` alone, arguments read with `bpf_probe_read_kernel`.
//!
//! `lifecycle` (fork and exit of tracked processes) is shared by all families; `tls`
//! (entry-only uprobes in libssl) adds the plaintext of TLS sessions to any of them.
#![no_std]
#![no_main]

mod emit;
mod probes;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use pgmon_common::{
    CONFIG_LEN, PID_STATE_ELEMENTS, PIDS_PER_ELEMENT, Record, TrackedProcess, counter, pid_state,
};

/// Records for the agent. Size set by the agent at load time (`capture.ring_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Backends of the tracked cluster, keyed by pid. Seeded by the agent from /proc at start,
/// extended by the fork probe, pruned by the exit probe.
#[map]
static TRACKED: HashMap<u32, TrackedProcess> = HashMap::with_max_entries(65_536, 0);

/// One state byte per pid (`pgmon_common::pid_state`, layout
/// `pgmon_common::PIDS_PER_ELEMENT`), covering every possible pid. Every socket call of
/// every process on the host runs the hook, and almost none is a backend's: one inlined
/// array load turns them away (`capture.probe_stats` under `pgbench -S` against another
/// cluster: 151 → 101 ns per send and 121 → 84 ns per receive against a `TRACKED` lookup),
/// and a backend's call reads and writes its state here too, never in `TRACKED`.
#[map]
static TRACKED_PIDS: Array<u64> = Array::with_max_entries(PID_STATE_ELEMENTS, BPF_F_MMAPABLE);

/// Per-CPU scratch records, one per kind of call (index `kind & 1`): a record is
/// assembled here and copied into `EVENTS` at its exact size. A program never runs twice
/// at once on one CPU (the kernel skips a nested run and counts it in the program's
/// `recursion_misses`), and the receive and send programs use different slots.
#[map]
static SCRATCH: PerCpuArray<Record> = PerCpuArray::with_max_entries(2, 0);

/// Run-time settings written by the agent (indices `pgmon_common::CONFIG_*`).
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_LEN, 0);

/// Per-CPU counters (indices `pgmon_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// This CPU's slot of counter `idx`. Programs do not preempt each other on one CPU, so a
/// run may read and write it without atomics.
#[inline(always)]
fn counter_slot(idx: u32) -> Option<*mut u64> {
    COUNTERS.get_ptr_mut(idx)
}

/// Adds `n` to per-CPU counter `idx`; returns this CPU's new count (0 if the slot cannot
/// be read).
#[inline(always)]
fn bump(idx: u32, n: u64) -> u64 {
    match counter_slot(idx) {
        // SAFETY: see `counter_slot`.
        Some(p) => unsafe {
            *p += n;
            *p
        },
        None => 0,
    }
}

/// Reads `CONFIG[idx]`, 0 when unset.
#[inline(always)]
fn config(idx: u32) -> u32 {
    CONFIG.get(idx).copied().unwrap_or(0)
}

/// `pid`'s state byte if it is a process of the tracked cluster.
#[inline(always)]
fn tracked(pid: u32) -> Option<*mut u8> {
    let e = TRACKED_PIDS.get_ptr_mut(pid / PIDS_PER_ELEMENT)?;
    // SAFETY: an 8-byte map value; the offset is < 8.
    let p = unsafe { e.cast::<u8>().add((pid % PIDS_PER_ELEMENT) as usize) };
    // SAFETY: as above.
    (unsafe { *p } & pid_state::TRACKED != 0).then_some(p)
}

/// Sets `pid`'s state byte to `v` (a one-byte store: the other pids' bytes of the element,
/// which other CPUs and the agent write, are untouched).
#[inline(always)]
fn set_pid_state(pid: u32, v: u8) {
    if let Some(p) = TRACKED_PIDS.get_ptr_mut(pid / PIDS_PER_ELEMENT) {
        // SAFETY: as in `tracked`.
        unsafe {
            core::ptr::write_volatile(p.cast::<u8>().add((pid % PIDS_PER_ELEMENT) as usize), v)
        };
    }
}

/// Syscall entry of a tracked backend: remembers the call's arguments in its `TRACKED`
/// value.
#[inline(always)]
fn call_enter(pid: u32, kind: u32, fd: u32, buf: u64) {
    if let Some(p) = TRACKED.get_ptr_mut(pid) {
        // SAFETY: map value pointer, valid for this program run.
        unsafe {
            (*p).inflight_buf = buf;
            (*p).inflight_fd = fd;
            (*p).inflight_kind = kind;
        }
    }
}

/// Syscall exit: takes the arguments saved by [`call_enter`] (kind, fd, buf), if a call
/// is in flight.
#[inline(always)]
fn call_exit(pid: u32) -> Option<(u32, u32, u64)> {
    let p = TRACKED.get_ptr_mut(pid)?;
    // SAFETY: map value pointer, valid for this program run.
    unsafe {
        let kind = (*p).inflight_kind;
        if kind == 0 {
            return None;
        }
        (*p).inflight_kind = 0;
        Some((kind, (*p).inflight_fd, (*p).inflight_buf))
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
