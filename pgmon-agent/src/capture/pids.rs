//! The agent's side of `TRACKED_PIDS`, the kernel programs' one state byte per pid (layout
//! and rules: `pgmon_common::pid_state`). The map is `BPF_F_MMAPABLE` and the agent sets
//! the `TRACKED` bit of the backends it seeds straight in its memory: a map update would
//! rewrite a whole 8-pid element and could undo a byte the kernel set meanwhile.

use std::{
    io,
    os::fd::AsFd,
    ptr::NonNull,
    sync::atomic::{AtomicU8, Ordering},
};

use aya::maps::MapData;
use pgmon_common::{PID_MAX_LIMIT, PID_STATE_ELEMENTS, PIDS_PER_ELEMENT, pid_state};

const _: () = assert!(PID_STATE_ELEMENTS as u64 * PIDS_PER_ELEMENT as u64 == PID_MAX_LIMIT as u64);

/// The `TRACKED_PIDS` map, mapped into the agent.
pub struct PidBytes {
    _map: MapData,
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and only written through `&mut self`.
unsafe impl Send for PidBytes {}

impl PidBytes {
    /// Maps `map`, the `Array<u64>` of `PID_STATE_ELEMENTS` entries created with
    /// `BPF_F_MMAPABLE`.
    ///
    /// # Errors
    /// The `mmap(2)` error (`EINVAL` if the map was not created mmapable).
    pub fn new(map: MapData) -> io::Result<Self> {
        let len = PID_MAX_LIMIT as usize;
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

    /// Sets `pid`'s `TRACKED` bit (after its `TRACKED` insert), keeping the bits the
    /// kernel may have set.
    pub fn mark(&mut self, pid: u32) {
        let i = pid as usize;
        if i < self.len {
            // SAFETY: i < len, inside the mapping; a one-byte atomic OR leaves the other
            // pids' bytes, and this pid's other bits, alone.
            let byte = unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(i)) };
            byte.fetch_or(pid_state::TRACKED, Ordering::Release);
        }
    }

    /// `pid`'s state byte.
    #[cfg(test)]
    fn get(&self, pid: u32) -> u8 {
        assert!((pid as usize) < self.len);
        // SAFETY: inside the mapping.
        unsafe { AtomicU8::from_ptr(self.base.as_ptr().add(pid as usize)) }.load(Ordering::Acquire)
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
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    use super::*;

    /// `bpf(2)` with a zeroed 128-byte `union bpf_attr` whose head is `head`.
    fn bpf(cmd: libc::c_long, head: &[u64]) -> libc::c_long {
        let mut attr = [0u64; 16];
        attr[..head.len()].copy_from_slice(head);
        // SAFETY: a valid, zero-padded attribute buffer of the size passed.
        unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), 128usize) }
    }

    /// The element holding `pid`'s byte, read the way the kernel programs see it (a map
    /// lookup, not the agent's mapping).
    fn element(fd: &OwnedFd, pid: u32) -> [u8; 8] {
        let key = pid / PIDS_PER_ELEMENT;
        let mut value = [0u8; 8];
        let rc = bpf(
            1, // BPF_MAP_LOOKUP_ELEM
            &[
                fd.as_raw_fd() as u64,
                &key as *const u32 as u64,
                value.as_mut_ptr() as u64,
            ],
        );
        assert_eq!(rc, 0, "lookup: {}", io::Error::last_os_error());
        value
    }

    #[test]
    fn marks_are_one_byte_ors_the_kernel_sees_in_place() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: creating a BPF map needs root");
            return;
        }
        // BPF_MAP_CREATE: ARRAY (2), key 4 B, value 8 B, PID_STATE_ELEMENTS entries,
        // BPF_F_MMAPABLE (1 << 10); the u32 fields packed two to a u64.
        let rc = bpf(
            0,
            &[
                2 | (4 << 32),
                8 | ((PID_STATE_ELEMENTS as u64) << 32),
                1 << 10,
            ],
        );
        assert!(rc >= 0, "map create: {}", io::Error::last_os_error());
        // SAFETY: a new fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(rc as i32) };
        let lookup_fd = fd.try_clone().expect("dup");
        let mut bytes = PidBytes::new(MapData::from_fd(fd).expect("map data")).expect("mmap");

        let last = PID_MAX_LIMIT - 1;
        for pid in [8, 15, 4242, last] {
            bytes.mark(pid);
        }
        // A bit the kernel set before the agent's mark survives it.
        // SAFETY: inside the mapping; the test is the only writer.
        unsafe { bytes.base.as_ptr().add(17).write_volatile(pid_state::LOST) };
        bytes.mark(17);

        assert_eq!(element(&lookup_fd, 8), [1, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(element(&lookup_fd, 17), [0, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(element(&lookup_fd, 4242)[4242 % 8], 1);
        assert_eq!(element(&lookup_fd, last), [0, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(element(&lookup_fd, 1000), [0; 8]);
        assert_eq!(bytes.get(17), pid_state::TRACKED | pid_state::LOST);
    }
}
