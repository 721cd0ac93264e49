//! The agent's side of the `TRACKED_PIDS` prefilter: one byte per pid that the kernel
//! programs read before they look a process up in `TRACKED` (layout and rules:
//! `pgmon_common::PIDS_PER_ELEMENT`). The map is `BPF_F_MMAPABLE` and the agent writes the
//! bytes of the backends it seeds straight into its memory: a map update would rewrite a
//! whole 8-pid element and could undo a byte the fork probe set meanwhile.

use std::{io, os::fd::AsFd, ptr::NonNull};

use aya::maps::MapData;
use pgmon_common::PIDS_PER_ELEMENT;

/// `PID_MAX_LIMIT` on 64-bit kernels (include/linux/threads.h): the most `pid_max` can be.
const PID_MAX_LIMIT: u32 = 4 * 1024 * 1024;

/// Map elements that cover every pid below `/proc/sys/kernel/pid_max` (below
/// `PID_MAX_LIMIT` when it cannot be read). A pid beyond the map (`pid_max` raised after
/// load) is looked up in `TRACKED` directly, so a small map is slower, never wrong.
pub fn elements() -> u32 {
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(PID_MAX_LIMIT)
        .clamp(1, PID_MAX_LIMIT);
    pid_max.div_ceil(PIDS_PER_ELEMENT)
}

/// The `TRACKED_PIDS` map, mapped into the agent.
pub struct PidBytes {
    _map: MapData,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for PidBytes {}

impl PidBytes {
    /// Maps `map`, an `Array<u64>` of `elements` entries created with `BPF_F_MMAPABLE`.
    ///
    /// # Errors
    /// The `mmap(2)` error (`EINVAL` if the map was not created mmapable).
    pub fn new(map: MapData, elements: u32) -> io::Result<Self> {
        let len = elements as usize * 8;
        // SAFETY: a shared read-write mapping of the map's fd, of the map's value area
        // (max_entries × 8 bytes; the kernel rounds it up to pages); checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&map.fd().as_fd()),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(io::Error::last_os_error)?;
        Ok(Self {
            _map: map,
            base,
            len,
        })
    }

    /// Marks `pid` as possibly tracked (after its `TRACKED` insert). A pid beyond the map
    /// needs no mark.
    pub fn mark(&mut self, pid: u32) {
        let i = pid as usize;
        if i < self.len {
            // SAFETY: i < len, inside the mapping; a one-byte store leaves the other pids'
            // bytes, which the kernel may be writing, alone.
            unsafe { self.base.as_ptr().add(i).write_volatile(1) };
        }
    }
}

impl Drop for PidBytes {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_map_covers_every_pid_below_pid_max() {
        let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .expect("pid_max")
            .trim()
            .parse()
            .expect("a number");
        let n = elements();
        assert!(
            n * PIDS_PER_ELEMENT >= pid_max,
            "{n} elements for {pid_max}"
        );
        assert!((n - 1) * PIDS_PER_ELEMENT < pid_max, "no more than needed");
    }
}
