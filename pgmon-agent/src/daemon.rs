//! Living under systemd: the capabilities `run` needs (checked before anything is loaded,
//! so a missing one is named instead of surfacing as a bare `EPERM`), the readiness and
//! watchdog notifications of `Type=notify` units (sd_notify(3), through the `sd-notify`
//! crate; without `NOTIFY_SOCKET` they are no-ops), and the log format.

use std::time::Duration;

use caps::{CapSet, Capability};

/// One capability `pgmon-agent run` needs, and why.
#[derive(Clone, Copy, Debug)]
pub struct Need {
    /// The capability, as in capabilities(7).
    pub cap: Capability,
    /// Another capability the kernel accepts in its place (include/linux/capability.h:
    /// `bpf_capable()` and `perfmon_capable()` also accept `CAP_SYS_ADMIN`; file access
    /// checks (fs/namei.c `generic_permission`) also accept `CAP_DAC_OVERRIDE`).
    pub or: Capability,
    /// What it is for, in plain words.
    pub why: &'static str,
}

/// Everything `run` needs, and nothing else: the unit's `CapabilityBoundingSet=` and
/// `AmbientCapabilities=` are this list. Measured on this project's hosts with `setpriv`
/// (tests/tests/install.rs): with these three an unprivileged uid attaches and captures;
/// without any one of them it cannot.
pub const NEEDED: [Need; 3] = [
    Need {
        cap: Capability::CAP_BPF,
        or: Capability::CAP_SYS_ADMIN,
        why: "create the eBPF maps and load the programs (bpf(2))",
    },
    Need {
        cap: Capability::CAP_PERFMON,
        or: Capability::CAP_SYS_ADMIN,
        why: "load tracing programs that read the backends' socket buffers and attach them \
              to tracepoints (kernel/bpf/syscall.c: tracing program types need perfmon_capable())",
    },
    Need {
        cap: Capability::CAP_DAC_READ_SEARCH,
        or: Capability::CAP_DAC_OVERRIDE,
        why: "read postmaster.pid inside the data directory (mode 0700, owned by postgres) \
              and the tracepoint ids under /sys/kernel/tracing (mode 0700, owned by root)",
    },
];

/// The needed capabilities the process does not have in its effective set (empty when
/// the set cannot be read: the kernel then has the last word).
pub fn missing_capabilities() -> Vec<Need> {
    let Ok(effective) = caps::read(None, CapSet::Effective) else {
        return Vec::new();
    };
    NEEDED
        .into_iter()
        .filter(|n| !effective.contains(&n.cap) && !effective.contains(&n.or))
        .collect()
}

/// `Err` naming each missing capability and what it is for. With
/// `PGMON_SKIP_CAPABILITY_CHECK=1` in the environment the check is skipped and the kernel
/// has the last word (the tests use it to show each capability is truly needed).
pub fn require_capabilities() -> anyhow::Result<()> {
    if std::env::var_os("PGMON_SKIP_CAPABILITY_CHECK").is_some_and(|v| v == "1") {
        return Ok(());
    }
    let missing = missing_capabilities();
    if missing.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = missing
        .iter()
        .map(|n| format!("{} (to {})", n.cap, n.why))
        .collect();
    anyhow::bail!(
        "missing capability {}; run as root, or as the systemd unit does \
         (AmbientCapabilities=CAP_BPF CAP_PERFMON CAP_DAC_READ_SEARCH)",
        list.join(", ")
    )
}

/// Tells systemd the agent is ready (probes attached, database reached), with a status
/// line for `systemctl status`. A no-op outside a `Type=notify` unit.
pub fn notify_ready(status: &str) {
    if let Err(e) = sd_notify::notify(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]) {
        tracing::warn!(error = %e, "sd_notify READY failed");
    }
}

/// Tells systemd a reload started (`RELOADING=1` with the monotonic time it needs); follow
/// with [`notify_ready`].
pub fn notify_reloading() {
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    let _ = sd_notify::notify(&states);
}

/// Tells systemd the agent is stopping.
pub fn notify_stopping() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
}

/// The watchdog period systemd asked for (`WatchdogSec=`), if any.
pub fn watchdog_period() -> Option<Duration> {
    sd_notify::watchdog_enabled()
}

/// Sends one `WATCHDOG=1`.
pub fn notify_watchdog() {
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
}

/// How log lines are written to stderr (the journal under systemd).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event (default).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields` (with
    /// `message`); enforcement actions have target `pgmon::enforcement`.
    Json,
}

/// Installs the global subscriber; the level filter comes from `PGMON_LOG` (tracing's
/// EnvFilter syntax), default `info`.
pub fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PGMON_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_target(false)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .with_target(true)
            .with_current_span(false)
            .init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_needed_list_is_the_units() {
        let unit = include_str!("../../systemd/pgmon-agent.service");
        for n in NEEDED {
            let name = n.cap.to_string();
            for key in ["CapabilityBoundingSet=", "AmbientCapabilities="] {
                let line = unit
                    .lines()
                    .find(|l| l.starts_with(key))
                    .unwrap_or_else(|| panic!("{key} missing from the unit"));
                assert!(line.contains(&name), "{key} lacks {name}");
                assert_eq!(
                    line.split_whitespace().count(),
                    NEEDED.len(),
                    "{key} must list exactly the needed capabilities: {line}"
                );
            }
        }
    }
}
