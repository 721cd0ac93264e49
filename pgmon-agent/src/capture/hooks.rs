//! The probe registry: each family of kernel hooks, its cost rank, what it needs from the
//! kernel, and how to attach it. The agent tries the families cheapest first and keeps the
//! first that loads and attaches (`capture.hooks: auto`), or only the configured one.

use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, FExit, ProgramError, RawTracePoint, TracePoint},
};

use super::config::HookChoice;

/// A family of hooks on the backends' `recvfrom`/`sendto` calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFamily {
    /// `fexit/__sys_recvfrom` + `fexit/__sys_sendto`: one BPF trampoline call per syscall
    /// of any process, arguments and return value together. Needs BTF and BPF
    /// trampolines (Linux ≥ 5.5; refused with EPERM on some hardened kernels).
    Fexit,
    /// `tp_btf/sock_recv_length` + `tp_btf/sock_send_length`: one program run per socket
    /// receive or send of any process (net/socket.c, Linux ≥ 6.3), buffer and fd taken from
    /// the syscall's saved registers. Other syscalls are untouched. Needs BTF.
    TpBtfSock,
    /// `tp_btf/sys_exit`: one program run per syscall exit of any process, reading the
    /// syscall number and arguments from the typed `pt_regs` (no helper calls, no map
    /// entry between entry and exit). Needs BTF (Linux ≥ 5.5).
    TpBtf,
    /// `tracepoint/syscalls/sys_{enter,exit}_{recvfrom,sendto}`: runs only for those
    /// syscalls (needs CONFIG_FTRACE_SYSCALLS); a hash-map entry carries the arguments from
    /// entry to exit.
    Tracepoint,
    /// `raw_tp/sys_exit`: one program run per syscall exit of any process, untyped, so the
    /// syscall number and arguments are read with `bpf_probe_read_kernel`.
    RawTracepoint,
}

impl HookFamily {
    /// All families, cheapest first. fexit does the least work per call where BPF
    /// trampolines are allowed. `tp_btf_sock` runs only on socket calls and leaves every
    /// other syscall of the host on its fast path; the syscall hooks below it put every
    /// syscall of every task on the kernel's syscall-tracing slow path. Measured here at a
    /// fixed 30 000 pgbench -S transactions/s, busy CPU per transaction rose by 2.8 µs with
    /// `tp_btf_sock` and 3.7 µs with `tp_btf` (over 43.5 µs detached). Among the syscall
    /// hooks, `tp_btf` runs one program per syscall exit with plain loads; `tracepoint`
    /// runs two per captured call plus perf's record set-up; `raw_tracepoint` reads
    /// through helpers. `cargo xtask bench` reports each family's TPS ratio.
    pub const BY_COST: [HookFamily; 5] = [
        HookFamily::Fexit,
        HookFamily::TpBtfSock,
        HookFamily::TpBtf,
        HookFamily::Tracepoint,
        HookFamily::RawTracepoint,
    ];

    /// Rank in [`Self::BY_COST`], 0 = cheapest; exported as a label of `pgmon_probe_info`.
    pub fn cost_rank(self) -> usize {
        Self::BY_COST
            .iter()
            .position(|&f| f == self)
            .unwrap_or(usize::MAX)
    }

    /// Name used in `status`, logs and the `hook` label of `pgmon_probe_info`.
    pub fn name(self) -> &'static str {
        match self {
            HookFamily::Fexit => "fexit",
            HookFamily::TpBtfSock => "tp_btf_sock",
            HookFamily::TpBtf => "tp_btf",
            HookFamily::RawTracepoint => "raw_tracepoint",
            HookFamily::Tracepoint => "tracepoint",
        }
    }

    /// The kernel programs of this family (names of the functions in `pgmon-ebpf`).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            HookFamily::Fexit => &["pgmon_fexit_recvfrom", "pgmon_fexit_sendto"],
            HookFamily::TpBtfSock => &["pgmon_sock_recv_length", "pgmon_sock_send_length"],
            HookFamily::TpBtf => &["pgmon_btf_sys_exit"],
            HookFamily::RawTracepoint => &["pgmon_raw_sys_exit"],
            HookFamily::Tracepoint => &[
                "pgmon_tp_enter_recvfrom",
                "pgmon_tp_exit_recvfrom",
                "pgmon_tp_enter_sendto",
                "pgmon_tp_exit_sendto",
            ],
        }
    }

    /// Families to try for a configured choice, in order.
    pub fn candidates(choice: HookChoice) -> &'static [HookFamily] {
        match choice {
            HookChoice::Auto => &Self::BY_COST,
            HookChoice::Fexit => &[HookFamily::Fexit],
            HookChoice::TpBtfSock => &[HookFamily::TpBtfSock],
            HookChoice::TpBtf => &[HookFamily::TpBtf],
            HookChoice::RawTracepoint => &[HookFamily::RawTracepoint],
            HookChoice::Tracepoint => &[HookFamily::Tracepoint],
        }
    }

    /// Loads and attaches every program of the family. On error the programs it did load
    /// are unloaded again (which detaches them), so a refused family leaves nothing behind.
    pub fn attach(self, ebpf: &mut Ebpf) -> Result<(), HookError> {
        let result = self.try_attach(ebpf);
        if result.is_err() {
            for name in self.programs() {
                if let Some(program) = ebpf.program_mut(name) {
                    // Unloading a program that never loaded fails harmlessly.
                    let _ = match program {
                        aya::programs::Program::FExit(p) => p.unload(),
                        aya::programs::Program::BtfTracePoint(p) => p.unload(),
                        aya::programs::Program::RawTracePoint(p) => p.unload(),
                        aya::programs::Program::TracePoint(p) => p.unload(),
                        _ => Ok(()),
                    };
                }
            }
        }
        result
    }

    fn try_attach(self, ebpf: &mut Ebpf) -> Result<(), HookError> {
        match self {
            HookFamily::Fexit => {
                let btf = Btf::from_sys_fs().map_err(|e| HookError::Btf(e.to_string()))?;
                for (name, function) in [
                    ("pgmon_fexit_recvfrom", "__sys_recvfrom"),
                    ("pgmon_fexit_sendto", "__sys_sendto"),
                ] {
                    let p: &mut FExit = program(ebpf, name)?;
                    p.load(function, &btf)
                        .map_err(|e| HookError::program(name, e))?;
                    p.attach().map_err(|e| HookError::program(name, e))?;
                }
            }
            HookFamily::TpBtfSock => {
                let btf = Btf::from_sys_fs().map_err(|e| HookError::Btf(e.to_string()))?;
                for (name, tp) in [
                    ("pgmon_sock_recv_length", "sock_recv_length"),
                    ("pgmon_sock_send_length", "sock_send_length"),
                ] {
                    attach_btf_tracepoint(ebpf, &btf, name, tp)?;
                }
            }
            HookFamily::TpBtf => {
                let btf = Btf::from_sys_fs().map_err(|e| HookError::Btf(e.to_string()))?;
                attach_btf_tracepoint(ebpf, &btf, "pgmon_btf_sys_exit", "sys_exit")?;
            }
            HookFamily::RawTracepoint => {
                let name = "pgmon_raw_sys_exit";
                let p: &mut RawTracePoint = program(ebpf, name)?;
                p.load().map_err(|e| HookError::program(name, e))?;
                p.attach("sys_exit")
                    .map_err(|e| HookError::program(name, e))?;
            }
            HookFamily::Tracepoint => {
                for (name, tp) in [
                    ("pgmon_tp_enter_recvfrom", "sys_enter_recvfrom"),
                    ("pgmon_tp_exit_recvfrom", "sys_exit_recvfrom"),
                    ("pgmon_tp_enter_sendto", "sys_enter_sendto"),
                    ("pgmon_tp_exit_sendto", "sys_exit_sendto"),
                ] {
                    attach_tracepoint(ebpf, name, "syscalls", tp)?;
                }
            }
        }
        Ok(())
    }
}

/// Loads and attaches one `tp_btf/<name>` program.
fn attach_btf_tracepoint(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program_name: &'static str,
    name: &str,
) -> Result<(), HookError> {
    let p: &mut BtfTracePoint = program(ebpf, program_name)?;
    p.load(name, btf)
        .map_err(|e| HookError::program(program_name, e))?;
    p.attach()
        .map_err(|e| HookError::program(program_name, e))?;
    Ok(())
}

/// Loads and attaches one `tracepoint/<category>/<name>` program.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    category: &str,
    name: &str,
) -> Result<(), HookError> {
    let p: &mut TracePoint = program(ebpf, program_name)?;
    p.load().map_err(|e| HookError::program(program_name, e))?;
    p.attach(category, name)
        .map_err(|e| HookError::program(program_name, e))?;
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, HookError>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or(HookError::Missing(name))?;
    p.try_into().map_err(|e| HookError::program(name, e))
}

/// Why a hook family could not be used.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// The embedded object lacks a program (a build mismatch).
    #[error("program {0} is missing from the embedded object")]
    Missing(&'static str),
    /// The kernel's BTF (/sys/kernel/btf/vmlinux) could not be read.
    #[error("kernel BTF unavailable: {0}")]
    Btf(String),
    /// The kernel refused to load or attach a program (verifier, EPERM, missing hook).
    #[error("{program}")]
    Program {
        program: &'static str,
        #[source]
        source: ProgramError,
    },
}

impl HookError {
    fn program(program: &'static str, source: ProgramError) -> Self {
        HookError::Program { program, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_tries_every_family_cheapest_first() {
        let c = HookFamily::candidates(HookChoice::Auto);
        assert_eq!(c.len(), 5);
        assert!(c.windows(2).all(|w| w[0].cost_rank() < w[1].cost_rank()));
        assert_eq!(
            HookFamily::candidates(HookChoice::Tracepoint),
            [HookFamily::Tracepoint]
        );
    }
}
