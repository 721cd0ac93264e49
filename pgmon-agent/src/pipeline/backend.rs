//! A backend process of the tracked cluster as the pipeline keeps it: who its traffic is
//! charged to, whether its session is readable, and its client connections' parsers; with
//! the clocks and `/proc` readings that charge an unreadable backend by CPU time.

use crate::query::Stmt;

use super::stats::RoleDbId;

/// Who a backend's traffic is charged to.
#[derive(Debug)]
pub(super) enum Identity {
    /// Forked while we watch: its StartupMessage will tell.
    AwaitStartup,
    /// Opened before the agent: asked of pg_stat_activity; completions wait here.
    Pending(Vec<(Stmt, u64, Option<[u8; 5]>)>),
    /// Attributed.
    Known(RoleDbId),
    /// pgmon's own session, a replication connection or a cancel request: not traffic.
    Ignored,
    /// Nobody could say: its queries are counted as unattributed.
    Unknown,
}

/// Whether pgmon reads an encrypted session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Crypto {
    /// TLS negotiated (SSLRequest answered `S`, or a direct TLS ClientHello) at `since_ns`
    /// (CLOCK_MONOTONIC); its plaintext has not shown yet.
    Awaiting { since_ns: u64 },
    /// Its plaintext comes from the libssl probes.
    Readable,
    /// Nothing of it can be read (GSSAPI, TLS with the probes off or not reaching it): its
    /// backend is charged by CPU time.
    Unreadable,
}

/// How long a TLS session may go without plaintext before it counts as unreadable. The
/// handshake and the StartupMessage take milliseconds; a session whose libssl is not the
/// probed one never shows any.
pub(super) const AWAIT_PLAINTEXT_NS: u64 = 3_000_000_000;

/// How often the CPU time of unreadable backends is read and charged.
pub(super) const CPU_CHARGE_EVERY_MS: u64 = 200;

/// A backend process of the tracked cluster.
#[derive(Debug)]
pub(super) struct Backend {
    pub(super) identity: Identity,
    /// Forked after the capture attached (its first bytes are a startup packet).
    pub(super) fresh: bool,
    /// Set once the session is encrypted.
    pub(super) crypto: Option<Crypto>,
    /// CPU time (clock ticks) already charged, for an unreadable backend.
    pub(super) cpu_ticks: Option<u64>,
    pub(super) fds: Vec<u32>,
    /// `standard_conforming_strings`, from the backend's ParameterStatus (sent at startup
    /// and after each change: PostgreSQL docs 55.2.7); `on`, the default since 9.1, for a
    /// connection whose startup was not seen.
    pub(super) standard_strings: bool,
}

/// One client connection: its parser and, per direction, where the previous record of the
/// current syscall ended (records of one call arrive in order; a jump is bytes the kernel
/// did not copy).
pub(super) struct Conn {
    pub(super) wire: pgmon_wire::Connection<Stmt>,
    /// End offset within the current call: [frontend, backend].
    pub(super) next_offset: [u32; 2],
}

impl Backend {
    pub(super) fn new(fresh: bool) -> Self {
        Self {
            identity: Identity::AwaitStartup,
            fresh,
            crypto: None,
            cpu_ticks: None,
            fds: Vec::new(),
            standard_strings: true,
        }
    }
}

/// Whether `b` is unreadable and not yet charged by CPU time.
pub(super) fn backend_unreadable(b: Option<&Backend>) -> bool {
    b.is_some_and(|b| b.crypto == Some(Crypto::Unreadable) && b.cpu_ticks.is_none())
}

/// CLOCK_MONOTONIC now, nanoseconds (the clock of `bpf_ktime_get_ns`, so of record
/// timestamps).
pub(super) fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid timespec to fill; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// utime + stime of process `pid`, clock ticks (proc(5), `/proc/<pid>/stat` fields 14 and
/// 15); `None` once it is gone.
pub(super) fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let mut fields = stat.get(stat.rfind(')')? + 2..)?.split_whitespace();
    // After the command: state is field 3, so utime (14) is the 12th and stime the 13th.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// `sysconf(_SC_CLK_TCK)`: the unit of [`cpu_ticks`] (100 on Linux).
pub(super) fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 { hz as f64 } else { 100.0 }
}
