//! `capture:` in the policy file: the kernel hook family, the ring buffer and what is
//! copied per call, and whether TLS sessions are read.

use serde::Deserialize;

/// Which kernel hook family to use.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum HookChoice {
    /// The cheapest family the kernel accepts, in the order fexit, tp_btf_sock, tp_btf,
    /// tracepoint, raw_tracepoint (default).
    #[default]
    Auto,
    /// `fexit/__sys_recvfrom` + `fexit/__sys_sendto` only.
    Fexit,
    /// `tp_btf/sock_recv_length` + `tp_btf/sock_send_length` only.
    #[serde(rename = "tp_btf_sock")]
    TpBtfSock,
    /// `tp_btf/sys_exit` only.
    #[serde(rename = "tp_btf")]
    TpBtf,
    /// `tracepoint/syscalls/sys_{enter,exit}_{recvfrom,sendto}` only.
    Tracepoint,
    /// `raw_tp/sys_exit` only.
    RawTracepoint,
}

impl HookChoice {
    /// The name the policy file uses: `auto`, or the one family's
    /// [`HookFamily::name`](super::hooks::HookFamily::name).
    pub fn as_str(self) -> &'static str {
        match super::hooks::HookFamily::candidates(self) {
            [one] => one.name(),
            _ => "auto",
        }
    }
}

/// Whether to read TLS sessions' plaintext (`capture.tls`).
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TlsChoice {
    /// Entry-only uprobes on `SSL_accept`, `SSL_read`, `SSL_write` and `SSL_get_error` of
    /// the libssl the postmaster maps, when it maps one and they attach (default).
    #[default]
    Auto,
    /// No probe in libssl: TLS sessions are counted as unreadable and their backends
    /// charged by CPU time.
    Off,
}

/// Kernel capture settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureConfig {
    /// Hook family: `auto` (default), `fexit`, `tp_btf_sock`, `tp_btf`, `tracepoint` or
    /// `raw_tracepoint`.
    pub hooks: HookChoice,
    /// Size of the ring buffer shared with the kernel, bytes; a power of two, at least
    /// 1 MiB. A record takes its payload, a 40-byte header and the ring's 8-byte header,
    /// rounded up to 8 bytes: ~112 bytes for a `pgbench -S` request, ~120 for its one-row
    /// reply. Default 16 MiB: ~145 000 such records, ~1.4 s of `pgbench -S` at 50 000
    /// transactions/s, the highest rate measured here.
    pub ring_buffer_bytes: u32,
    /// Bytes copied per `recvfrom`/`sendto` call, 1024 to 65536 (default 65536). A backend
    /// reads at most 8192 bytes per call, so received query text is always whole; longer
    /// sends (large result rows) keep their head and their last 472 bytes (where a reply's
    /// CommandComplete and ReadyForQuery are) and are counted in
    /// `pgmon_capture_truncated_total`.
    pub max_bytes_per_call: u32,
    /// How often the agent drains the ring buffer, milliseconds (default 50). The kernel
    /// submits without a wakeup per record; it wakes the agent early only when the buffer
    /// is a quarter full. Each timed wakeup costs the host CPU: at 20 000 pgbench
    /// transactions/s the agent spent 1.0 µs per transaction at 5 ms and 0.6 µs at 50 ms
    /// (its threads' schedstat run time, this 2-core VM); budgets are evaluated after
    /// each drain, so enforcement waits at most this long more.
    pub drain_interval_ms: u64,
    /// Largest single protocol message reassembled, bytes (default 1 MiB). A longer query
    /// is counted as truncated and its statement is not normalized.
    pub max_message_bytes: usize,
    /// Most processes tracked at once (size of the kernel's `TRACKED` map; default 65536).
    pub max_backends: u32,
    /// Have the kernel time every run of pgmon's programs (`BPF_ENABLE_STATS`, Linux ≥ 5.8)
    /// and export it as `pgmon_probe_run_seconds_total` / `pgmon_probe_runs_total`
    /// (default false). The timing itself costs two clock reads per run. Turning it on
    /// needs CAP_SYS_ADMIN, which the unit does not grant; without it the agent says so
    /// and exports what `sysctl kernel.bpf_stats_enabled=1` (set by an administrator)
    /// gives.
    pub probe_stats: bool,
    /// TLS sessions' plaintext: `auto` (default) or `off`. With `auto` the agent probes the
    /// entry of libssl's `SSL_accept`, `SSL_read`, `SSL_write` and `SSL_get_error` in the
    /// library file the postmaster maps (never a return probe: those can kill a process
    /// under a seccomp filter on Linux ≥ 6.11); every process on the host that calls them
    /// takes a breakpoint trap (~1–2 µs), and only the cluster's backends' bytes are kept.
    pub tls: TlsChoice,
}

impl Default for CaptureConfig {
    fn default() -> Self {
        Self {
            hooks: HookChoice::Auto,
            ring_buffer_bytes: 16 << 20,
            max_bytes_per_call: pgmon_common::MAX_BYTES_PER_CALL,
            drain_interval_ms: 50,
            max_message_bytes: 1 << 20,
            max_backends: 65_536,
            probe_stats: false,
            tls: TlsChoice::Auto,
        }
    }
}
