//! `tp_btf/sys_exit`: one BTF-typed raw tracepoint at syscall exit. On x86_64 the syscall's
//! arguments are still in its `pt_regs` at exit (`di` = fd, `si` = buffer; the result is
//! the tracepoint's second argument), and with BTF the program reads them directly, without
//! a helper call. No entry program and no map entry between entry and exit: the cheapest
//! hook measured where fentry/fexit are refused.

use aya_ebpf::{
    bindings::pt_regs, helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{emit::emit_call, tracked};

#[btf_tracepoint(function = "sys_exit")]
pub fn pgmon_btf_sys_exit(ctx: BtfTracePointContext) -> u32 {
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return 0;
    }
    let regs: *const pt_regs = ctx.arg(0);
    // SAFETY: `regs` is the tracepoint's typed (PTR_TO_BTF_ID) argument; the verifier
    // checks these loads against the kernel's BTF layout of struct pt_regs.
    let nr = unsafe { (*regs).orig_rax };
    let Some(kind) = super::socket_call_kind(nr) else {
        return 0;
    };
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    // SAFETY: as above.
    let (fd, buf) = unsafe { ((*regs).rdi, (*regs).rsi) };
    emit_call(kind, pid, state, fd as u32, buf, ret);
    0
}
