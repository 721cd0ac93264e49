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
use pgmon_common::{counter, kind};

use crate::{bump, call_enter, call_exit, emit::emit_call, is_tracked};

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
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if !is_tracked(pid) {
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
    call_enter(pid, kind, fd as u32, buf);
    0
}

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn pgmon_raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some((kind, fd, buf)) = call_exit(pid) else {
        return 0;
    };
    let ret: i64 = ctx.arg(1);
    emit_call(kind, pid, fd, buf, ret);
    0
}
