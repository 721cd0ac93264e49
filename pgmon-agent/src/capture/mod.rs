//! The kernel side, seen from the agent: load the embedded programs, attach the cheapest
//! hook family the kernel accepts, tell the programs which postmaster to follow, and drain
//! the ring buffer.

pub mod cluster;
pub mod config;
pub mod hooks;
pub mod pids;
pub mod probe_point;
pub mod tls;

use std::{
    os::fd::{AsFd, AsRawFd, OwnedFd},
    path::Path,
    time::Duration,
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
};
use pgmon_common::{
    CONFIG_FORK_CHILD_PID_OFFSET, CONFIG_MAX_BYTES_PER_CALL, CONFIG_POSTMASTER_PID,
    CONFIG_WAKEUP_BYTES, EventHeader, TrackedProcess, counter,
};

pub use hooks::{HookError, HookFamily};

use config::CaptureConfig;

/// The kernel programs, built by `build.rs` (aya-build) for bpfel-unknown-none.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/pgmon"));

/// One ring-buffer record: its header and the payload bytes it carries.
#[derive(Clone, Copy, Debug)]
pub struct Record<'a> {
    pub header: EventHeader,
    pub data: &'a [u8],
}

impl<'a> Record<'a> {
    /// Decodes a raw ring-buffer item; `None` if it is shorter than its header says
    /// (never expected: counted by the caller as a probe error).
    pub fn decode(raw: &'a [u8]) -> Option<Self> {
        let hsize = std::mem::size_of::<EventHeader>();
        if raw.len() < hsize {
            return None;
        }
        // SAFETY: EventHeader is plain old data; the read is unaligned-safe.
        let header: EventHeader =
            unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<EventHeader>()) };
        let data = raw.get(hsize..hsize + header.len as usize)?;
        Some(Record { header, data })
    }
}

/// Sums of the kernel's per-CPU counters (`pgmon_common::counter`).
#[derive(Clone, Copy, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct KernelCounters {
    pub events: u64,
    pub dropped: u64,
    pub dropped_bytes: u64,
    pub truncated: u64,
    pub truncated_bytes: u64,
    pub probe_errors: u64,
    pub forks: u64,
}

/// Errors attaching the capture.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// The cluster or tracefs could not be found.
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    /// The embedded object did not load (maps could not be created: memlock, privileges).
    #[error("loading the kernel programs failed (are we root, with CAP_BPF and CAP_PERFMON?)")]
    Load(#[source] aya::EbpfError),
    /// A map the object should have is missing or of the wrong type.
    #[error("map {name}")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    /// The fork/exit tracepoints could not be attached.
    #[error("process lifecycle probes")]
    Lifecycle(#[source] HookError),
    /// The `TRACKED_PIDS` map could not be mapped into the agent.
    #[error("mapping the TRACKED_PIDS map into memory")]
    PidMap(#[source] std::io::Error),
    /// No socket hook family could be attached; each refusal is listed.
    #[error("no hook family could be attached: {}", .0.iter().map(|(f, e)| format!("{}: {e}", f.name())).collect::<Vec<_>>().join("; "))]
    NoHook(Vec<(HookFamily, String)>),
}

/// The attached kernel programs and their maps.
pub struct Capture {
    // Dropping the Ebpf object detaches every program (their links are owned by it).
    _ebpf: Ebpf,
    ring: RingBuf<MapData>,
    counters: PerCpuArray<MapData, u64>,
    tracked: HashMap<MapData, u32, TrackedProcess>,
    /// The `TRACKED_PIDS` state bytes; the agent sets the `TRACKED` bit of every pid it
    /// seeds into `tracked`.
    pids: pids::PidBytes,
    config: Array<MapData, u32>,
    hook: HookFamily,
    refused: Vec<(HookFamily, String)>,
    tls: tls::TlsCapture,
    postmaster: u32,
    preexisting: Vec<u32>,
    /// `capture.probe_stats`.
    stats_wanted: bool,
    /// Holds the kernel's run-time statistics on while the capture lives.
    _stats: Option<OwnedFd>,
}

/// Run-time statistics of one kernel program since it was loaded (`bpf_prog_info`
/// `run_time_ns` and `run_cnt`; counted only while statistics are enabled).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramStats {
    /// The program's name in the object (`pgmon_sock_recv_length`, …).
    pub name: String,
    /// Summed run time, nanoseconds.
    pub run_ns: u64,
    /// Runs.
    pub runs: u64,
}

fn map_err(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> CaptureError {
    move |source| CaptureError::Map { name, source }
}

impl Capture {
    /// Loads the programs, attaches the lifecycle probes and the first hook family of
    /// `cfg.hooks` that the kernel accepts, then seeds `TRACKED` with the postmaster's
    /// current children. The fork probe is attached before the seeding, so no backend
    /// forked meanwhile is missed.
    pub fn attach(cfg: &CaptureConfig, data_directory: &Path) -> Result<Self, CaptureError> {
        cluster::ensure_tracefs()?;
        let postmaster = cluster::postmaster_pid(data_directory)?;
        let fork_offset = cluster::fork_child_pid_offset()?;
        raise_memlock_limit();

        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ring_buffer_bytes)
            .map_max_entries("TRACKED", cfg.max_backends)
            .load(EBPF_OBJECT)
            .map_err(CaptureError::Load)?;

        let mut config: Array<MapData, u32> =
            Array::try_from(ebpf.take_map("CONFIG").ok_or(CaptureError::Map {
                name: "CONFIG",
                source: aya::maps::MapError::InvalidName {
                    name: "CONFIG".into(),
                },
            })?)
            .map_err(map_err("CONFIG"))?;
        for (idx, value) in [
            (CONFIG_POSTMASTER_PID, postmaster),
            (CONFIG_MAX_BYTES_PER_CALL, cfg.max_bytes_per_call),
            (CONFIG_WAKEUP_BYTES, cfg.ring_buffer_bytes / 4),
            (CONFIG_FORK_CHILD_PID_OFFSET, fork_offset),
        ] {
            config.set(idx, value, 0).map_err(map_err("CONFIG"))?;
        }

        hooks::attach_tracepoint(&mut ebpf, "pgmon_fork", "sched", "sched_process_fork")
            .map_err(CaptureError::Lifecycle)?;
        hooks::attach_tracepoint(&mut ebpf, "pgmon_exit", "sched", "sched_process_exit")
            .map_err(CaptureError::Lifecycle)?;

        let mut refused = Vec::new();
        let mut chosen = None;
        for &family in HookFamily::candidates(cfg.hooks) {
            match family.attach(&mut ebpf) {
                Ok(()) => {
                    chosen = Some(family);
                    break;
                }
                Err(e) => {
                    let full = crate::util::error_chain(&e);
                    tracing::info!(hook = family.name(), error = %full, "hook family refused, trying the next");
                    refused.push((family, short_reason(&full)));
                }
            }
        }
        let hook = chosen.ok_or_else(|| CaptureError::NoHook(refused.clone()))?;
        let tls = tls::attach(&mut ebpf, cfg.tls, postmaster);

        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(CaptureError::Map {
                name,
                source: aya::maps::MapError::InvalidName { name: name.into() },
            })
        };
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_err("EVENTS"))?;
        let counters =
            PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let tracked = HashMap::try_from(take(&mut ebpf, "TRACKED")?).map_err(map_err("TRACKED"))?;
        let pids = match take(&mut ebpf, "TRACKED_PIDS")? {
            aya::maps::Map::Array(data) => {
                pids::PidBytes::new(data).map_err(CaptureError::PidMap)?
            }
            _ => {
                return Err(CaptureError::Map {
                    name: "TRACKED_PIDS",
                    source: aya::maps::MapError::InvalidName {
                        name: "TRACKED_PIDS".into(),
                    },
                });
            }
        };

        let stats = if cfg.probe_stats {
            match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
                Ok(fd) => Some(fd),
                Err(e) => {
                    tracing::warn!(
                        error = %crate::util::error_chain(&e),
                        "capture.probe_stats: the kernel refused BPF_ENABLE_STATS (it needs \
                         CAP_SYS_ADMIN); the probe run times stay 0 unless \
                         `sysctl kernel.bpf_stats_enabled=1` is set"
                    );
                    None
                }
            }
        } else {
            None
        };
        let mut capture = Capture {
            _ebpf: ebpf,
            ring,
            counters,
            tracked,
            pids,
            config,
            hook,
            refused,
            tls,
            postmaster,
            preexisting: Vec::new(),
            stats_wanted: cfg.probe_stats,
            _stats: stats,
        };
        capture.seed_children();
        Ok(capture)
    }

    /// Adds the postmaster's current children to `TRACKED` and remembers them as
    /// pre-existing (their StartupMessage was not seen).
    fn seed_children(&mut self) {
        let children = cluster::children_of(self.postmaster);
        for &pid in &children {
            match self.tracked.insert(pid, TrackedProcess::default(), 0) {
                Ok(()) => self.pids.mark(pid),
                Err(e) => tracing::warn!(pid, error = %e, "cannot track an existing backend"),
            }
        }
        self.preexisting = children;
    }

    /// Pids that were already running when the capture attached (or re-targeted).
    pub fn preexisting(&self) -> &[u32] {
        &self.preexisting
    }

    /// The hook family in use.
    pub fn hook(&self) -> HookFamily {
        self.hook
    }

    /// Families tried before the chosen one, and why the kernel refused each.
    pub fn refused(&self) -> &[(HookFamily, String)] {
        &self.refused
    }

    /// Whether TLS sessions' plaintext is captured, from which library, or why not.
    pub fn tls(&self) -> &tls::TlsCapture {
        &self.tls
    }

    /// The postmaster being followed.
    pub fn postmaster_pid(&self) -> u32 {
        self.postmaster
    }

    /// Follows a restarted postmaster: rewrites its pid for the fork probe and seeds its
    /// children. Returns false if `pid` is the one already followed.
    pub fn retarget(&mut self, pid: u32) -> bool {
        if pid == self.postmaster {
            return false;
        }
        if let Err(e) = self.config.set(CONFIG_POSTMASTER_PID, pid, 0) {
            tracing::error!(error = %e, "cannot update the postmaster pid in the kernel");
            return false;
        }
        self.postmaster = pid;
        self.seed_children();
        true
    }

    /// Number of processes in `TRACKED`.
    pub fn tracked_count(&self) -> usize {
        self.tracked.keys().count()
    }

    /// Run time and runs of each program that ran (the attached hook family and the
    /// lifecycle probes), sorted by name; empty unless `capture.probe_stats`.
    pub fn program_stats(&self) -> Vec<ProgramStats> {
        if !self.stats_wanted {
            return Vec::new();
        }
        let mut v: Vec<ProgramStats> = self
            ._ebpf
            .programs()
            .filter_map(|(name, p)| {
                let info = p.info().ok()?;
                (info.run_count() > 0).then(|| ProgramStats {
                    name: name.to_string(),
                    run_ns: info.run_time().as_nanos() as u64,
                    runs: info.run_count(),
                })
            })
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Sums the per-CPU counters.
    pub fn counters(&self) -> KernelCounters {
        let sum = |idx: u32| -> u64 {
            self.counters
                .get(&idx, 0)
                .map(|v| v.iter().sum())
                .unwrap_or(0)
        };
        KernelCounters {
            events: sum(counter::EVENTS),
            dropped: sum(counter::DROPPED),
            dropped_bytes: sum(counter::DROPPED_BYTES),
            truncated: sum(counter::TRUNCATED),
            truncated_bytes: sum(counter::TRUNCATED_BYTES),
            probe_errors: sum(counter::PROBE_ERRORS),
            forks: sum(counter::FORKS),
        }
    }

    /// Waits up to `timeout` for the kernel's early wakeup (ring buffer a quarter full);
    /// records submitted without a wakeup are found by the next [`Self::drain`] anyway.
    pub fn wait(&self, timeout: Duration) {
        let mut pfd = libc::pollfd {
            fd: self.ring.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd; EINTR and errors just end the wait early.
        unsafe { libc::poll(&mut pfd, 1, ms) };
    }

    /// Hands every record in the ring buffer to `f`, oldest first; returns how many, and
    /// how many could not be decoded.
    pub fn drain(&mut self, mut f: impl FnMut(Record<'_>)) -> (usize, usize) {
        let (mut n, mut bad) = (0, 0);
        while let Some(item) = self.ring.next() {
            match Record::decode(&item) {
                Some(r) => f(r),
                None => bad += 1,
            }
            n += 1;
        }
        (n, bad)
    }
}

/// Lets the kernel charge map memory on kernels older than 5.11 (memcg accounting makes
/// this a no-op on newer ones).
fn raise_memlock_limit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: plain setrlimit call with a valid struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!("setrlimit(RLIMIT_MEMLOCK) failed; fine on Linux ≥ 5.11");
    }
}

/// The first line of a kernel refusal, without aya's empty "Verifier output" tail: what
/// `status` shows (the log keeps the whole verifier output).
fn short_reason(full: &str) -> String {
    let first = full.lines().next().unwrap_or(full);
    let cut = first
        .find(". Verifier output")
        .map_or(first, |i| &first[..i]);
    cut.replace("the BPF_PROG_LOAD syscall returned ", "BPF_PROG_LOAD: ")
}
