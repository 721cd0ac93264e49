//! TLS plaintext of the tracked backends: entry-only uprobes on libssl's `SSL_accept`,
//! `SSL_read`, `SSL_write` and `SSL_get_error`, attached once per libssl file the
//! postmaster maps (forked backends inherit the breakpoints; every other process that calls
//! these functions traps too, and is turned away by its pid-state byte).
//!
//! No return probe: since Linux 6.11 a uretprobe's trampoline is a syscall that seccomp
//! filters (systemd's `SystemCallFilter=`) may kill the process for, and a backend's crash
//! restarts the whole cluster. The byte count comes instead from the entry of
//! `SSL_get_error(ssl, n)`, which PostgreSQL calls right after every `SSL_read` and
//! `SSL_write` with their return value (`be_tls_read`/`be_tls_write`,
//! src/backend/libpq/be-secure-openssl.c). These programs only read the caller's registers
//! and memory; they never write user memory or change control flow.

use aya_ebpf::{helpers::bpf_get_current_pid_tgid, macros::uprobe, programs::ProbeContext};
use pgmon_common::{ORIGIN_FORKED, TLS_FD, TrackedProcess, flags, kind, pid_state};

use crate::{TRACKED, emit::emit_bytes, tracked};

/// `int SSL_accept(SSL *ssl)`: the backend's client session is this `SSL *`. From here on
/// its socket carries the handshake and ciphertext, which are no longer copied.
#[uprobe]
pub fn pgmon_ssl_accept(ctx: ProbeContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    if let Some(p) = TRACKED.get_ptr_mut(pid) {
        // SAFETY: map value pointer, valid for this program run; a backend is one thread.
        unsafe { (*p).tls_ssl = ssl };
        mark_tls(state);
    }
    0
}

/// `int SSL_read(SSL *ssl, void *buf, int num)`: remembers the buffer.
#[uprobe]
pub fn pgmon_ssl_read(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::RECV);
    0
}

/// `int SSL_write(SSL *ssl, const void *buf, int num)`: remembers the buffer.
#[uprobe]
pub fn pgmon_ssl_write(ctx: ProbeContext) -> u32 {
    enter(&ctx, kind::SEND);
    0
}

/// `int SSL_get_error(const SSL *ssl, int ret)`: `ret` is what the `SSL_read`/`SSL_write`
/// just before returned; when positive, that many plaintext bytes are in its buffer.
#[uprobe]
pub fn pgmon_ssl_get_error(ctx: ProbeContext) -> u32 {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return 0;
    };
    let Some(p) = TRACKED.get_ptr_mut(pid) else {
        return 0;
    };
    // SAFETY: map value pointer, valid for this program run; a backend is one thread.
    let (call, buf) = unsafe {
        let call = (*p).tls_kind;
        (*p).tls_kind = 0;
        (call, (*p).tls_buf)
    };
    if call == 0 {
        return 0; // after SSL_accept, or a call on another SSL *
    }
    let ret: i32 = ctx.arg(1).unwrap_or(0);
    emit_bytes(call, pid, state, TLS_FD, buf, ret as i64, flags::TLS);
    0
}

#[inline(always)]
fn enter(ctx: &ProbeContext, call: u32) {
    let pid = (bpf_get_current_pid_tgid() >> 32) as u32;
    let Some(state) = tracked(pid) else {
        return;
    };
    let Some(p) = TRACKED.get_ptr_mut(pid) else {
        return;
    };
    let ssl: u64 = ctx.arg(0).unwrap_or(0);
    let buf: u64 = ctx.arg(1).unwrap_or(0);
    // SAFETY: map value pointer, valid for this program run; a backend is one thread.
    unsafe {
        if !is_session(&mut *p, ssl) {
            (*p).tls_kind = 0;
            return;
        }
        (*p).tls_buf = buf;
        (*p).tls_kind = call;
    }
    mark_tls(state);
}

/// Whether `ssl` is the backend's client session. A backend the agent seeded from /proc
/// (older than the agent) never showed its `SSL_accept`: its first `SSL *` is taken.
#[inline(always)]
fn is_session(t: &mut TrackedProcess, ssl: u64) -> bool {
    if t.tls_ssl == 0 && t.origin != ORIGIN_FORKED {
        t.tls_ssl = ssl;
    }
    t.tls_ssl != 0 && t.tls_ssl == ssl
}

/// Marks the backend's session as TLS in its pid-state byte: the socket programs stop
/// copying its ciphertext. Only programs running in this pid write this bit (see
/// `pgmon_common::pid_state`).
#[inline(always)]
fn mark_tls(state: *mut u8) {
    // SAFETY: this backend's byte in TRACKED_PIDS, valid for this program run.
    unsafe { *state |= pid_state::TLS };
}
