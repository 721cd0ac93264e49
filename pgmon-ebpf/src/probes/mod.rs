//! Probe families, one per file. The agent loads the cheapest family that the kernel
//! accepts (see `pgmon-agent/src/capture/hooks.rs` for the registry and its cost ranks).
pub mod btf_tp;
pub mod fexit;
pub mod lifecycle;
pub mod raw_tp;
pub mod sock_tp;
pub mod syscall_tp;
pub mod tls;

use pgmon_common::kind;

/// What a syscall number means to the capture: `kind::RECV` for `recvfrom` (45),
/// `kind::SEND` for `sendto` (44), `None` for every other syscall. x86_64 numbers, from
/// arch/x86/entry/syscalls/syscall_64.tbl; used by the hooks that see every syscall.
#[inline(always)]
pub fn socket_call_kind(nr: u64) -> Option<u32> {
    match nr {
        45 => Some(kind::RECV),
        44 => Some(kind::SEND),
        _ => None,
    }
}
