//! Fork and exit of the tracked cluster's processes (`tracepoint/sched/*`).
//!
//! `sched_process_fork` runs in the parent's context: when the parent is the tracked
//! postmaster, the child is added to `TRACKED` before it runs, so a backend's first read
//! (its StartupMessage) is always seen. `sched_process_exit` runs in the exiting task.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::tracepoint, programs::TracePointContext,
};
use pgmon_common::{
    CONFIG_FORK_CHILD_PID_OFFSET, CONFIG_POSTMASTER_PID, ORIGIN_FORKED, TrackedProcess, counter,
    kind, pid_state,
};

use crate::{TRACKED, bump, config, emit::emit_marker, set_pid_state, tracked};

#[tracepoint(category = "sched", name = "sched_process_fork")]
pub fn pgmon_fork(ctx: TracePointContext) -> u32 {
    match try_fork(&ctx) {
        Ok(()) => 0,
        Err(_) => {
            bump(counter::PROBE_ERRORS, 1);
            0
        }
    }
}

fn try_fork(ctx: &TracePointContext) -> Result<(), i64> {
    let parent = (bpf_get_current_pid_tgid() >> 32) as u32;
    let postmaster = config(CONFIG_POSTMASTER_PID);
    if postmaster == 0 || parent != postmaster {
        return Ok(());
    }
    // The offset of `child_pid` moved between kernels (tracefs format file); the agent
    // reads it and stores it in CONFIG.
    let offset = (config(CONFIG_FORK_CHILD_PID_OFFSET) & 0xff) as usize;
    // SAFETY: read of the tracepoint record through bpf_probe_read.
    let child: i32 = unsafe { ctx.read_at(offset) }.map_err(i64::from)?;
    if child <= 0 {
        return Ok(());
    }
    TRACKED
        .insert(
            child as u32,
            TrackedProcess {
                origin: ORIGIN_FORKED,
                ..TrackedProcess::default()
            },
            0,
        )
        .map_err(i64::from)?;
    set_pid_state(child as u32, pid_state::TRACKED);
    bump(counter::FORKS, 1);
    emit_marker(kind::FORK, child as u32);
    Ok(())
}

#[tracepoint(category = "sched", name = "sched_process_exit")]
pub fn pgmon_exit(_ctx: TracePointContext) -> u32 {
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    let tid = id as u32;
    if tid != tgid {
        return 0; // a thread, not the process
    }
    // The state byte says whether the pid is tracked: the hash is touched only for the
    // cluster's own processes.
    if tracked(tgid).is_some() {
        let _ = TRACKED.remove(tgid);
        set_pid_state(tgid, 0);
        emit_marker(kind::EXIT, tgid);
    } else if tgid == config(CONFIG_POSTMASTER_PID) {
        emit_marker(kind::EXIT, tgid);
    }
    0
}
