//! `raw_tp/sys_exit`: a raw tracepoint at every syscall's exit, filtered on the syscall
//! number read from its `pt_regs` (x86_64: `orig_ax`; the arguments are still in `di`/`si`
//! at exit). Untyped, so every read goes through `bpf_probe_read_kernel`; the fallback
//! where BTF-typed tracepoints are not available.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use pgmon_common::counter;

use crate::{bump, emit::emit_call, tracked};

#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn pgmon_raw_sys_exit(ctx: RawTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: kernel pointer from the tracepoint, read with bpf_probe_read_kernel.
    let Ok(nr) = (unsafe { bpf_probe_read_kernel(&raw const (*regs).orig_rax) }) else {
        bump(counter::PROBE_ERRORS, 1);
        return 0;
    };
    let Some(kind) = super::socket_call_kind(nr) else {
        return 0;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    // SAFETY: as above.
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
    emit_call(kind, pid, state, fd as u32, buf, ret);
    0
}
