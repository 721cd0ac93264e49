//! pgmon's kernel programs.
//!
//! They watch the client sockets of one PostgreSQL cluster's backends: the postmaster's pid
//! is written into `CONFIG` by the agent, the fork probe adds each child it forks to
//! `TRACKED`, and the socket probes copy the bytes every tracked backend receives and sends
//! into the `EVENTS` ring buffer (see `pgmon_common` for the record layout). Nothing here
//! blocks or changes a syscall: a probe that fails counts the failure and returns.
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
//! `lifecycle` (fork and exit of tracked processes) is shared by all families.
#![no_std]
#![no_main]

mod emit;
mod probes;

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use pgmon_common::{CONFIG_LEN, PIDS_PER_ELEMENT, TrackedProcess, counter};

/// Records for the agent. Size set by the agent at load time (`capture.ring_buffer_bytes`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(16 * 1024 * 1024, 0);

/// Backends of the tracked cluster, keyed by pid. Seeded by the agent from /proc at start,
/// extended by the fork probe, pruned by the exit probe.
#[map]
static TRACKED: HashMap<u32, TrackedProcess> = HashMap::with_max_entries(65_536, 0);

/// One byte per pid, non-zero when the pid may be in `TRACKED` (layout:
/// `pgmon_common::PIDS_PER_ELEMENT`). Every socket call of every process on the host runs
/// the hook, and almost none is a backend's: this inlined array load turns them away for
/// about 40–50 ns less than the `TRACKED` hash lookup (`capture.probe_stats` under
/// `pgbench -S` against another cluster: 151 → 101 ns per send, 121 → 84 ns per receive).
/// Set after the `TRACKED` insert (fork probe, agent seeding), cleared at exit; a stale
/// non-zero byte only costs the hash lookup. Size set by the agent from `pid_max`.
#[map]
static TRACKED_PIDS: Array<u64> = Array::with_max_entries(4096, BPF_F_MMAPABLE);

/// Run-time settings written by the agent (indices `pgmon_common::CONFIG_*`).
#[map]
static CONFIG: Array<u32> = Array::with_max_entries(CONFIG_LEN, 0);

/// Per-CPU counters (indices `pgmon_common::counter`).
#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Adds `n` to per-CPU counter `idx`; returns this CPU's new count (0 if the slot cannot
/// be read).
#[inline(always)]
fn bump(idx: u32, n: u64) -> u64 {
    match COUNTERS.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, programs do not preempt each other on one CPU.
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

/// Whether `pid` may be in `TRACKED` (its `TRACKED_PIDS` byte is set, or the pid lies
/// beyond the map because `pid_max` grew after load).
#[inline(always)]
fn may_be_tracked(pid: u32) -> bool {
    match TRACKED_PIDS.get_ptr(pid / PIDS_PER_ELEMENT) {
        // SAFETY: an 8-byte map value; the offset is < 8.
        Some(p) => unsafe { *p.cast::<u8>().add((pid % PIDS_PER_ELEMENT) as usize) != 0 },
        None => true,
    }
}

/// Sets `pid`'s `TRACKED_PIDS` byte to `v` (one-byte store: the other pids' bytes of the
/// element, which other CPUs and the agent write, are untouched).
#[inline(always)]
fn mark_pid(pid: u32, v: u8) {
    if let Some(p) = TRACKED_PIDS.get_ptr_mut(pid / PIDS_PER_ELEMENT) {
        // SAFETY: as in `may_be_tracked`.
        unsafe {
            core::ptr::write_volatile(p.cast::<u8>().add((pid % PIDS_PER_ELEMENT) as usize), v)
        };
    }
}

/// `pid`'s TRACKED value if it is a backend of the tracked cluster.
#[inline(always)]
fn tracked(pid: u32) -> Option<*mut TrackedProcess> {
    if !may_be_tracked(pid) {
        return None;
    }
    TRACKED.get_ptr_mut(pid)
}

/// Syscall entry of a tracked backend: remembers the call's arguments in its `TRACKED`
/// value `p` (from [`tracked`]).
#[inline(always)]
fn call_enter(p: *mut TrackedProcess, kind: u32, fd: u32, buf: u64) {
    // SAFETY: map value pointer, valid for this program run.
    unsafe {
        (*p).inflight_buf = buf;
        (*p).inflight_fd = fd;
        (*p).inflight_kind = kind;
    }
}

/// Syscall exit: takes the arguments saved by [`call_enter`] (kind, fd, buf) and the
/// backend's TRACKED value, if a call is in flight.
#[inline(always)]
fn call_exit(pid: u32) -> Option<(u32, u32, u64, *mut TrackedProcess)> {
    let p = tracked(pid)?;
    // SAFETY: map value pointer, valid for this program run.
    unsafe {
        let kind = (*p).inflight_kind;
        if kind == 0 {
            return None;
        }
        (*p).inflight_kind = 0;
        Some((kind, (*p).inflight_fd, (*p).inflight_buf, p))
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
