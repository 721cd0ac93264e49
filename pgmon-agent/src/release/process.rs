//! The running agent as a process, for `pgmon-agent release-all`: found by the socket it
//! listens on (`metrics.listen`), which needs no answer from it (a stuck agent may not
//! answer), and stopped the way it was started: `systemctl stop UNIT` when it is a
//! systemd unit's main process (so `Restart=on-failure` does not bring it back), SIGTERM
//! otherwise (the agent detaches and exits 0), SIGKILL after 15 s.

use std::{
    fs, io,
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

/// The agent's process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentProcess {
    pub pid: u32,
    /// The systemd unit whose main process it is (`pgmon-agent.service`), if any.
    pub unit: Option<String>,
}

/// Errors finding or stopping the agent.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// /proc could not be read.
    #[error("reading /proc: {0}")]
    Proc(#[source] io::Error),
    /// Something else listens on the agent's address.
    #[error("process {pid} listening on {addr} is {exe}, not pgmon-agent: not stopping it")]
    NotTheAgent {
        pid: u32,
        addr: SocketAddr,
        exe: String,
    },
    /// `systemctl stop` failed.
    #[error("systemctl stop {unit}: {message}")]
    Systemctl { unit: String, message: String },
    /// kill(2) failed.
    #[error("signalling pid {pid}: {source}")]
    Signal {
        pid: u32,
        #[source]
        source: io::Error,
    },
    /// The process outlived SIGKILL by 5 s.
    #[error("pid {0} is still running 5 s after SIGKILL")]
    StillRunning(u32),
}

/// The agent listening on `addr`, if a process listens there; an error when that process
/// is not a `pgmon-agent` binary.
pub fn find(addr: SocketAddr) -> Result<Option<AgentProcess>, ProcessError> {
    let Some(pid) = listener_pid(addr).map_err(ProcessError::Proc)? else {
        return Ok(None);
    };
    let exe = fs::read_link(format!("/proc/{pid}/exe"))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|e| format!("(unreadable: {e})"));
    let name = Path::new(exe.trim_end_matches(" (deleted)"))
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if !name.starts_with("pgmon-agent") {
        return Err(ProcessError::NotTheAgent { pid, addr, exe });
    }
    Ok(Some(AgentProcess {
        pid,
        unit: systemd_unit(pid),
    }))
}

/// Stops the agent and waits until it has exited; says how.
pub fn stop(agent: &AgentProcess) -> Result<String, ProcessError> {
    let pid = agent.pid;
    if let Some(unit) = &agent.unit {
        let out = Command::new("systemctl")
            .args(["stop", unit])
            .output()
            .map_err(|e| ProcessError::Systemctl {
                unit: unit.clone(),
                message: e.to_string(),
            })?;
        if !out.status.success() {
            return Err(ProcessError::Systemctl {
                unit: unit.clone(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        if wait_gone(pid, Duration::from_secs(30)).is_some() {
            return Ok(format!("systemctl stop {unit}: stopped"));
        }
    }
    let t = Instant::now();
    signal(pid, libc::SIGTERM)?;
    if wait_gone(pid, Duration::from_secs(15)).is_some() {
        return Ok(format!(
            "SIGTERM to pid {pid}: exited after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    signal(pid, libc::SIGKILL)?;
    match wait_gone(pid, Duration::from_secs(5)) {
        Some(_) => Ok(format!(
            "pid {pid} ignored SIGTERM for 15 s: killed (SIGKILL; the kernel detached its probes)"
        )),
        None => Err(ProcessError::StillRunning(pid)),
    }
}

fn signal(pid: u32, sig: libc::c_int) -> Result<(), ProcessError> {
    let Ok(p) = libc::pid_t::try_from(pid) else {
        return Err(ProcessError::Signal {
            pid,
            source: io::Error::from(io::ErrorKind::InvalidInput),
        });
    };
    // SAFETY: kill(2) with a pid read from /proc and a valid signal number.
    if unsafe { libc::kill(p, sig) } == 0 || gone(pid) {
        Ok(())
    } else {
        Err(ProcessError::Signal {
            pid,
            source: io::Error::last_os_error(),
        })
    }
}

/// Polls every 50 ms until `pid` has exited (or is a zombie its parent has not reaped
/// yet); `None` after `within`.
fn wait_gone(pid: u32, within: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < within {
        if gone(pid) {
            return Some(t.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Whether `pid` no longer runs: no /proc entry, or state Z (zombie) or X (dead)
/// (`/proc/PID/stat`, proc(5), read by `procfs`).
fn gone(pid: u32) -> bool {
    i32::try_from(pid)
        .ok()
        .and_then(|p| procfs::process::Process::new(p).ok())
        .and_then(|p| p.stat().ok())
        .is_none_or(|stat| stat.state == 'Z' || stat.state == 'X')
}

/// The systemd unit `pid` is the main process of: the `.service` its cgroup names
/// (`/proc/PID/cgroup`), if systemd runs this host (`/run/systemd/system`, sd_booted(3))
/// and `systemctl show -p MainPID` of that unit is `pid` (a process merely started from
/// a unit's shell is not its main process).
fn systemd_unit(pid: u32) -> Option<String> {
    if !Path::new("/run/systemd/system").exists() {
        return None;
    }
    let cgroups = procfs::process::Process::new(i32::try_from(pid).ok()?)
        .ok()?
        .cgroups()
        .ok()?;
    let unit = unit_of_cgroup(cgroups.0.iter().map(|c| c.pathname.as_str()))?;
    let out = Command::new("systemctl")
        .args(["show", "-p", "MainPID", "--value", &unit])
        .output()
        .ok()?;
    let main: u32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (main == pid).then_some(unit)
}

/// The `.service` unit named by the last component of a process's cgroup paths
/// (`/proc/PID/cgroup`: cgroup v2's `0::` line, or v1's hierarchies).
pub fn unit_of_cgroup<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    paths
        .into_iter()
        .filter_map(|path| path.rsplit('/').next())
        .find(|last| last.ends_with(".service"))
        .map(str::to_owned)
}

/// The pid owning the TCP socket listening on `addr`: its inode from `/proc/net/tcp` or
/// `tcp6` (proc(5)), then the process with that socket among its file descriptors (both
/// read by `procfs`).
fn listener_pid(addr: SocketAddr) -> io::Result<Option<u32>> {
    use procfs::{
        net::TcpState,
        process::{FDTarget, all_processes},
    };
    let inodes: Vec<u64> = [procfs::net::tcp(), procfs::net::tcp6()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.state == TcpState::Listen && e.local_address == addr)
        .map(|e| e.inode)
        .collect();
    if inodes.is_empty() {
        return Ok(None);
    }
    for p in all_processes().map_err(io::Error::other)?.flatten() {
        let Ok(fds) = p.fd() else { continue };
        if fds
            .flatten()
            .any(|fd| matches!(fd.target, FDTarget::Socket(i) if inodes.contains(&i)))
        {
            return Ok(u32::try_from(p.pid).ok());
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_comes_from_the_cgroup() {
        assert_eq!(
            unit_of_cgroup(["/system.slice/pgmon-agent.service"]).as_deref(),
            Some("pgmon-agent.service")
        );
        let v1 = ["/user.slice", "/system.slice/pgmon-agent.service"];
        assert_eq!(unit_of_cgroup(v1).as_deref(), Some("pgmon-agent.service"));
        assert_eq!(unit_of_cgroup(["/user.slice/session-3.scope"]), None);
        assert_eq!(unit_of_cgroup(["/"]), None);
    }

    #[test]
    fn this_process_runs_and_its_own_listener_is_found() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        assert_eq!(listener_pid(addr).unwrap(), Some(std::process::id()));
        assert!(!gone(std::process::id()));
        drop(l);
        assert_eq!(listener_pid(addr).unwrap(), None);
    }
}
