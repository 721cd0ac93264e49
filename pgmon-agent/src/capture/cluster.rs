//! Finding the tracked cluster's processes from outside: its postmaster (from
//! `postmaster.pid`), the postmaster's current children (from /proc), and the tracefs
//! facts the kernel programs need.

use std::path::{Path, PathBuf};

/// Where tracefs is expected (Documentation/trace/ftrace.rst).
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// Errors finding the cluster or preparing tracefs.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// `postmaster.pid` could not be read: the cluster is not running, or the path is wrong.
    #[error("{path}: cannot read postmaster.pid (is the cluster running?)")]
    PidFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Its first line is not a pid.
    #[error("{path}: first line is not a process id")]
    BadPidFile { path: PathBuf },
    /// The pid in `postmaster.pid` is not a running process.
    #[error("postmaster pid {pid} from {path} is not running (stale postmaster.pid?)")]
    NotRunning { pid: u32, path: PathBuf },
    /// tracefs is not mounted and could not be mounted.
    #[error("tracefs is not mounted at {TRACEFS} and mounting it failed")]
    Tracefs(#[source] std::io::Error),
    /// A file the agent must read is not readable by it.
    #[error("{path}: permission denied: reading it needs CAP_DAC_READ_SEARCH (or root)")]
    Denied { path: PathBuf },
    /// The `sched_process_fork` format file lacks `child_pid`.
    #[error("cannot find child_pid in {0}")]
    ForkFormat(String),
}

/// Reads the postmaster's pid from `<data_directory>/postmaster.pid` (its first line;
/// PostgreSQL docs, section 19.2 "Creating a Database Cluster" / storage-file-layout) and
/// checks that the process exists.
pub fn postmaster_pid(data_directory: &Path) -> Result<u32, ClusterError> {
    let path = data_directory.join("postmaster.pid");
    let text = std::fs::read_to_string(&path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::PermissionDenied {
            ClusterError::Denied { path: path.clone() }
        } else {
            ClusterError::PidFile {
                path: path.clone(),
                source,
            }
        }
    })?;
    let pid: u32 = text
        .lines()
        .next()
        .and_then(|l| l.trim().parse().ok())
        .ok_or_else(|| ClusterError::BadPidFile { path: path.clone() })?;
    if !Path::new(&format!("/proc/{pid}")).exists() {
        return Err(ClusterError::NotRunning { pid, path });
    }
    Ok(pid)
}

/// Pids of the processes whose parent is `parent`, from /proc/<pid>/stat.
pub fn children_of(parent: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| parent_of(pid) == Some(parent))
        .collect()
}

/// The parent pid of `pid` (field 4 of /proc/<pid>/stat, after the parenthesised comm,
/// which may itself contain spaces and parentheses: proc(5)).
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Mounts tracefs at [`TRACEFS`] unless it is already there (aya attaches tracepoints by
/// the ids tracefs lists).
pub fn ensure_tracefs() -> Result<(), ClusterError> {
    let events = Path::new(TRACEFS).join("events");
    match std::fs::metadata(&events) {
        Ok(m) if m.is_dir() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(ClusterError::Denied { path: events });
        }
        _ => {}
    }
    let c = |s: &str| std::ffi::CString::new(s).expect("no NUL in constant");
    let (src, dst, fs) = (c("tracefs"), c(TRACEFS), c("tracefs"));
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(ClusterError::Tracefs(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Byte offset of `child_pid` in the `sched_process_fork` record, from its tracefs format
/// file (it moved when `parent_comm` became `__data_loc` in Linux 6.x).
pub fn fork_child_pid_offset() -> Result<u32, ClusterError> {
    let path = format!("{TRACEFS}/events/sched/sched_process_fork/format");
    let text =
        std::fs::read_to_string(&path).map_err(|_| ClusterError::ForkFormat(path.clone()))?;
    parse_field_offset(&text, "child_pid").ok_or(ClusterError::ForkFormat(path))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|line| {
        let line = line.trim();
        let decl = line.strip_prefix("field:")?.split(';').next()?;
        if decl.split_whitespace().last()? != field {
            return None;
        }
        let off = line.split("offset:").nth(1)?.split(';').next()?;
        off.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fork_format_offsets_old_and_new() {
        let new = "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                   \tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\
                   \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(new, "child_pid"), Some(20));
        let old = "\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\
                   \tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(old, "child_pid"), Some(44));
        assert_eq!(parse_field_offset(old, "parent_pid"), None);
    }

    #[test]
    fn parent_of_self_is_our_parent() {
        let me = std::process::id();
        assert_eq!(parent_of(me), Some(std::os::unix::process::parent_id()));
        assert!(children_of(std::os::unix::process::parent_id()).contains(&me));
    }
}
