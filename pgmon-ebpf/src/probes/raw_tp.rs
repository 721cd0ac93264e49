//! Raw syscall tracepoints: `raw_tp/sys_enter` and `raw_tp/sys_exit`, filtered on the
//! syscall number (x86_64: `recvfrom` = 45, `sendto` = 44, arch/x86/entry/syscalls/
//! syscall_64.tbl). They run for every syscall on the host, but skip the perf-record
//! set-up of `tracepoint/syscalls/*`.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use pgmon_common::{InflightCall, counter, kind};

use crate::{INFLIGHT, bump, emit::emit_call, is_tracked};

const NR_SENDTO: i64 = 44;
const NR_RECVFROM: i64 = 45;

#[raw_tracepoint(tracepoint = "sys_enter")]
pub fn pgmon_raw_sys_enter(ctx: RawTracePointContext) -> u32 {
    let nr: i64 = ctx.arg(1);
    let kind = match nr {
        NR_RECVFROM => kind::RECV,
        NR_SENDTO => kind::SEND,
        _ => return 0,
    };
    let id = bpf_get_current_pid_tgid();
    if !is_tracked((id >> 32) as u32) {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: kernel pointer from the tracepoint, read with bpf_probe_read_kernel.
    let (fd, buf) = unsafe {
        match (
            bpf_probe_read_kernel(&raw const (*regs).rdi),
            bpf_probe_read_kernel(&raw const (*regs).rsi),
        ) {
            (Ok(fd), Ok(buf)) => (fd, buf),
            _ => {
                bump(counter::PROBE_ERRORS, 1);
                return 0;
            }
        }
    };
    let call = InflightCall { buf, fd: fd as u32, kind };
    if INFLIGHT.insert(id, call, 0).is_err() {
        bump(counter::PROBE_ERRORS, 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn pgmon_raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = INFLIGHT.get_ptr(id) else {
        return 0;
    };
    // SAFETY: map value pointer, copied out before the entry is removed.
    let call = unsafe { *call };
    let _ = INFLIGHT.remove(id);
    let ret: i64 = ctx.arg(1);
    emit_call(call.kind, (id >> 32) as u32, call.fd, call.buf, ret);
    0
}
