//! Syscall tracepoints: `tracepoint/syscalls/sys_{enter,exit}_{recvfrom,sendto}`.
//!
//! Record offsets from the tracefs format files (stable for syscall tracepoints: the
//! arguments start at byte 16, 8 bytes each; `ret` of the exit record is at 16).

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use pgmon_common::{counter, kind};

use crate::{bump, call_enter, call_exit, emit::emit_call, tracked};

const ARG0: usize = 16;
const ARG1: usize = 24;
const RET: usize = 16;

#[tracepoint(category = "syscalls", name = "sys_enter_recvfrom")]
pub fn pgmon_tp_enter_recvfrom(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, kind::RECV)
}

#[tracepoint(category = "syscalls", name = "sys_exit_recvfrom")]
pub fn pgmon_tp_exit_recvfrom(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

#[tracepoint(category = "syscalls", name = "sys_enter_sendto")]
pub fn pgmon_tp_enter_sendto(ctx: TracePointContext) -> u32 {
    on_enter(&ctx, kind::SEND)
}

#[tracepoint(category = "syscalls", name = "sys_exit_sendto")]
pub fn pgmon_tp_exit_sendto(ctx: TracePointContext) -> u32 {
    on_exit(&ctx)
}

#[inline(always)]
fn on_enter(ctx: &TracePointContext, kind: u32) -> u32 {
    if let Err(_) = try_enter(ctx, kind) {
        bump(counter::PROBE_ERRORS, 1);
    }
    0
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext, kind: u32) -> Result<(), i64> {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    if tracked(pid).is_none() {
        return Ok(());
    }
    // SAFETY: reads of the tracepoint record through bpf_probe_read.
    let fd: u64 = unsafe { ctx.read_at(ARG0) }.map_err(i64::from)?;
    let buf: u64 = unsafe { ctx.read_at(ARG1) }.map_err(i64::from)?;
    call_enter(pid, kind, fd as u32, buf);
    Ok(())
}

#[inline(always)]
fn on_exit(ctx: &TracePointContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    let Some((kind, fd, buf)) = call_exit(pid) else {
        return 0;
    };
    // SAFETY: read of the tracepoint record through bpf_probe_read.
    match unsafe { ctx.read_at::<i64>(RET) } {
        Ok(ret) => emit_call(kind, pid, state, fd, buf, ret),
        Err(_) => {
            bump(counter::PROBE_ERRORS, 1);
        }
    }
    0
}
