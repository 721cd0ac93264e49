//! `tp_btf/sock_recv_length` and `tp_btf/sock_send_length`: BTF-typed tracepoints inside
//! the socket layer (net/socket.c, `sock_recvmsg_nosec` / `sock_sendmsg_nosec`, Linux ≥ 6.3),
//! which fire once per socket receive or send of any process with the call's result.
//!
//! Unlike the syscall hooks they do not put every syscall of every task on the tracing slow
//! path: a process that is not on a socket never runs them. The tracepoint does not carry
//! the user buffer, so the program takes it from the syscall's saved registers
//! (`bpf_task_pt_regs`, x86_64: `orig_ax` = syscall number, `di` = fd, `si` = buffer), and
//! only for `recvfrom`/`sendto`, the calls postgres makes on client sockets.

use aya_ebpf::{
    bindings::pt_regs,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use pgmon_common::kind;

use crate::{emit::emit_call, tracked};

/// `MSG_PEEK` (include/linux/socket.h): the bytes stay queued and are read again, so a peek
/// is not captured.
const MSG_PEEK: i32 = 2;

#[btf_tracepoint(function = "sock_recv_length")]
pub fn pgmon_sock_recv_length(ctx: BtfTracePointContext) -> u32 {
    // Arguments: (struct sock *sk, int ret, int flags).
    let ret: i32 = ctx.arg(1);
    let flags: i32 = ctx.arg(2);
    if ret <= 0 || flags & MSG_PEEK != 0 {
        return 0;
    }
    on_socket_call(kind::RECV, ret as i64)
}

#[btf_tracepoint(function = "sock_send_length")]
pub fn pgmon_sock_send_length(ctx: BtfTracePointContext) -> u32 {
    let ret: i32 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    on_socket_call(kind::SEND, ret as i64)
}

#[inline(always)]
fn on_socket_call(want: u32, ret: i64) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    // SAFETY: both helpers are allowed in tracing programs and return typed (BTF) pointers
    // to the current task and its user-mode registers; the verifier checks the loads
    // below against the kernel's BTF layout of struct pt_regs.
    let (nr, fd, buf) = unsafe {
        let regs = bpf_task_pt_regs(bpf_get_current_task_btf()) as *const pt_regs;
        ((*regs).orig_rax, (*regs).rdi, (*regs).rsi)
    };
    if super::socket_call_kind(nr) != Some(want) {
        return 0;
    }
    emit_call(want, pid, state, fd as u32, buf, ret);
    0
}
