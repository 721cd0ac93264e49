//! `fexit/__sys_recvfrom` and `fexit/__sys_sendto` (net/socket.c): one program per call,
//! with the arguments and the return value together, no map between entry and exit. The
//! cheapest hook where the kernel allows BPF trampolines (some hosts refuse them: EPERM).

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::fexit, programs::FExitContext};
use pgmon_common::kind;

use crate::{emit::emit_call, tracked};

#[fexit(function = "__sys_recvfrom")]
pub fn pgmon_fexit_recvfrom(ctx: FExitContext) -> u32 {
    on_exit(&ctx, kind::RECV)
}

#[fexit(function = "__sys_sendto")]
pub fn pgmon_fexit_sendto(ctx: FExitContext) -> u32 {
    on_exit(&ctx, kind::SEND)
}

#[inline(always)]
fn on_exit(ctx: &FExitContext, kind: u32) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    // __sys_recvfrom(int fd, void __user *ubuf, size_t size, unsigned int flags, ...)
    // __sys_sendto(int fd, void __user *buff, size_t len, unsigned int flags, ...)
    let fd: i32 = ctx.arg(0);
    let buf: u64 = ctx.arg(1);
    // Both take 6 arguments; the return value follows them in the trampoline context.
    let ret: i64 = ctx.arg(6);
    emit_call(kind, pid, state, fd as u32, buf, ret as i32 as i64);
    0
}
