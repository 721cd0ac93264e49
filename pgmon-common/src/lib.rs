//! Types shared by the kernel programs (`pgmon-ebpf`) and the agent (`pgmon-agent`).
//!
//! Every type is `#[repr(C)]` with explicit padding and `u32` flags instead of `bool`, so the
//! kernel and the agent agree on the bytes without a second definition. Sizes are checked at
//! compile time.
#![no_std]

/// Most payload bytes in one record (a chunk of a call): the most a PostgreSQL backend
/// reads from its client socket in one `recvfrom()` call (`PQ_RECV_BUFFER_SIZE`,
/// src/backend/libpq/pqcomm.c), and the size of its send buffer (`PQ_SEND_BUFFER_SIZE`).
pub const CHUNK_BYTES: usize = 8192;

/// Most chunks one syscall is split into; with [`CHUNK_BYTES`] that is 64 KiB per call.
/// Bytes past the effective cap (the lesser of this and the configured
/// `capture.max_bytes_per_call`) are not copied; the record says how many were skipped.
pub const MAX_CHUNKS_PER_CALL: u32 = 8;

/// Upper bound of `capture.max_bytes_per_call`.
pub const MAX_BYTES_PER_CALL: u32 = CHUNK_BYTES as u32 * MAX_CHUNKS_PER_CALL;

/// Bytes kept from the end of a call longer than the cap: a reply's last messages
/// (CommandComplete, ErrorResponse, ReadyForQuery) are there.
pub const TAIL_BYTES: u32 = 472;

/// Lower bound of `capture.max_bytes_per_call` (room for a head and a tail).
pub const MIN_BYTES_PER_CALL: u32 = 1024;

/// What a record describes (`EventHeader::kind`).
pub mod kind {
    /// Bytes a backend received from its client (`recvfrom`): the frontend stream.
    pub const RECV: u32 = 1;
    /// Bytes a backend sent to its client (`sendto`): the backend stream.
    pub const SEND: u32 = 2;
    /// A tracked backend exited; its connection state ends. `fd` is 0, `len` is 0.
    pub const EXIT: u32 = 3;
    /// The postmaster forked a child that is now tracked. `len` is 0.
    pub const FORK: u32 = 4;
}

/// Bits of `EventHeader::flags`.
pub mod flags {
    /// The call moved more bytes than the cap: this record is its tail (the last
    /// `TAIL_BYTES`), and the bytes between the previous record's end and `offset` were
    /// not copied.
    pub const TRUNCATED: u32 = 1 << 0;
    /// At least one earlier record of this backend was lost (ring buffer full, or its bytes
    /// could not be read): the agent must resynchronise this backend's streams before
    /// trusting them again. The kernel keeps the mark in the backend's pid-state byte
    /// ([`pid_state::LOST`]) until a record carries it.
    pub const LOST_BEFORE: u32 = 1 << 1;
    /// This record is the last chunk of its call.
    pub const LAST_CHUNK: u32 = 1 << 2;
    /// The payload is TLS plaintext, taken at libssl's `SSL_read`/`SSL_write` (the record's
    /// `fd` is [`crate::TLS_FD`]), not bytes of the socket.
    pub const TLS: u32 = 1 << 3;
}

/// `EventHeader::fd` of a TLS plaintext record: the libssl probes do not see the socket,
/// and a backend has one client connection (`MyProcPort`), so the agent joins the record to
/// the backend's one TLS connection.
pub const TLS_FD: u32 = u32::MAX;

/// Header of every ring-buffer record. 40 bytes, no implicit padding.
///
/// A record is this header followed by `len` payload bytes; the ring buffer rounds each
/// record up to 8 bytes. A fork or exit record is the header alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventHeader {
    /// `bpf_ktime_get_ns()` when the call returned (CLOCK_MONOTONIC, nanoseconds).
    pub ts_ns: u64,
    /// One of [`kind`].
    pub kind: u32,
    /// Process id (tgid) of the backend.
    pub pid: u32,
    /// The socket's file descriptor in the backend.
    pub fd: u32,
    /// Payload bytes in this record.
    pub len: u32,
    /// Bytes the whole syscall moved (its return value).
    pub call_bytes: u32,
    /// Offset of this record's payload within the call.
    pub offset: u32,
    /// Bits of [`flags`].
    pub flags: u32,
    /// Explicit padding; always 0.
    pub _pad: u32,
}

/// A record with room for the largest chunk. The kernel programs assemble each record in a
/// per-CPU scratch copy of this and hand the ring buffer its first `40 + header.len` bytes
/// (one `bpf_ringbuf_output`: a reservation must have a constant size).
#[repr(C)]
pub struct Record {
    pub header: EventHeader,
    pub data: [u8; CHUNK_BYTES],
}

/// Indices of the per-CPU counter array `COUNTERS` (a `PerCpuArray<u64>`); the agent sums
/// the CPUs and exports them.
pub mod counter {
    /// Records submitted to the ring buffer.
    pub const EVENTS: u32 = 0;
    /// Records lost because the ring buffer was full (reservation failed).
    pub const DROPPED: u32 = 1;
    /// Payload bytes lost with those records.
    pub const DROPPED_BYTES: u32 = 2;
    /// Calls that moved more bytes than the cap.
    pub const TRUNCATED: u32 = 3;
    /// Bytes not copied because of the cap.
    pub const TRUNCATED_BYTES: u32 = 4;
    /// Probe failures: a user-memory read or a map update that failed.
    pub const PROBE_ERRORS: u32 = 5;
    /// Tracked processes added by the fork probe.
    pub const FORKS: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 8;
}

/// Value of the `TRACKED` map (key: backend pid). 40 bytes.
///
/// It carries the arguments of the backend's `recvfrom`/`sendto` in flight, from syscall
/// entry to exit (the `tracepoint` family, whose exit record lacks them): a backend is one
/// single-threaded process, so it has at most one call in flight, and keeping the arguments
/// here saves a hash-map insert and delete per call. The TLS probes keep theirs apart:
/// libssl's own socket calls happen inside `SSL_read`/`SSL_write`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedProcess {
    /// User-space buffer of the call in flight.
    pub inflight_buf: u64,
    /// [`kind::RECV`] or [`kind::SEND`] while a call is in flight, 0 otherwise.
    pub inflight_kind: u32,
    /// Socket file descriptor of the call in flight.
    pub inflight_fd: u32,
    /// The `SSL *` of the backend's client session: the one its `SSL_accept` took (a
    /// backend accepts exactly one TLS session, `be_tls_open_server`), or for a backend
    /// already running when the agent started, the first one it reads or writes. Calls on
    /// any other `SSL *` (a libpq connection the backend opened itself: dblink,
    /// postgres_fdw) are not its client's and are left alone. 0 until known.
    pub tls_ssl: u64,
    /// Plaintext buffer of the `SSL_read`/`SSL_write` in flight, from its entry to the
    /// `SSL_get_error(ssl, n)` that PostgreSQL calls right after it (`be_tls_read`,
    /// `be_tls_write` in src/backend/libpq/be-secure-openssl.c).
    pub tls_buf: u64,
    /// [`kind::RECV`] (`SSL_read`) or [`kind::SEND`] (`SSL_write`) while one is in
    /// flight, 0 otherwise.
    pub tls_kind: u32,
    /// [`ORIGIN_FORKED`] when the fork probe added the process (so its `SSL_accept`, if
    /// any, was seen), 0 when the agent seeded it from /proc.
    pub origin: u32,
}

/// `TrackedProcess::origin` of a process the fork probe added.
pub const ORIGIN_FORKED: u32 = 1;

/// `PID_MAX_LIMIT` on 64-bit kernels (include/linux/threads.h): no pid reaches it, whatever
/// `kernel.pid_max` is set to.
pub const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Pids per element of the pid-state map `TRACKED_PIDS` (an `Array<u64>`): pid `p` is
/// byte `p % 8` of element `p / 8`, a set of [`pid_state`] bits.
pub const PIDS_PER_ELEMENT: u32 = 8;

/// Elements of `TRACKED_PIDS`: a byte for every pid below [`PID_MAX_LIMIT`] (4 MiB,
/// allocated by the kernel at load), so no pid ever falls outside it.
pub const PID_STATE_ELEMENTS: u32 = PID_MAX_LIMIT / PIDS_PER_ELEMENT;

/// Bits of a pid's byte in `TRACKED_PIDS`: the state the socket programs read, and write,
/// on every call instead of looking the pid up in `TRACKED` (an inlined array load against
/// a hash lookup: ~80 ns less per backend call here, `capture.probe_stats`).
///
/// [`TRACKED`](pid_state::TRACKED) is set after the pid's `TRACKED` insert (by the fork
/// program, or by the agent for the backends it seeds, with a one-byte atomic OR into its
/// mmap of the map: a map update would rewrite 8 pids' bytes) and the byte is cleared when
/// the exit program removes the pid. The other bits are written only by programs running
/// in that pid.
pub mod pid_state {
    /// The pid is a process of the tracked cluster.
    pub const TRACKED: u8 = 1;
    /// A record of this pid was lost; the next record it submits carries
    /// [`crate::flags::LOST_BEFORE`].
    pub const LOST: u8 = 2;
    /// The backend's client session is TLS (set by the TLS probes at its `SSL_accept`, or
    /// at the first `SSL_read`/`SSL_write` of a backend older than the agent): its socket
    /// carries ciphertext, which the socket programs no longer copy.
    pub const TLS: u8 = 4;
}

/// Index in the `CONFIG` array (`Array<u32>`) of the tracked postmaster's pid. Read by the
/// fork probe; the agent rewrites it if the postmaster restarts.
pub const CONFIG_POSTMASTER_PID: u32 = 0;
/// Index in `CONFIG` of the effective byte cap per call (≤ [`MAX_BYTES_PER_CALL`]).
pub const CONFIG_MAX_BYTES_PER_CALL: u32 = 1;
/// Index in `CONFIG` of the ring-buffer fill (bytes) past which a submit wakes the agent.
pub const CONFIG_WAKEUP_BYTES: u32 = 2;
/// Index in `CONFIG` of `child_pid`'s byte offset in the `sched_process_fork` tracepoint
/// record (read by the agent from tracefs: it moved between kernel versions).
pub const CONFIG_FORK_CHILD_PID_OFFSET: u32 = 3;
/// Length of `CONFIG`.
pub const CONFIG_LEN: u32 = 4;

const _: () = assert!(core::mem::size_of::<EventHeader>() == 40);
const _: () = assert!(core::mem::size_of::<Record>() == 40 + CHUNK_BYTES);
const _: () = assert!(core::mem::size_of::<TrackedProcess>() == 40);
const _: () = assert!(TAIL_BYTES < MIN_BYTES_PER_CALL / 2);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain #[repr(C)] integers with explicit padding; every bit pattern is valid.
    unsafe impl aya::Pod for super::EventHeader {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TrackedProcess {}
}
