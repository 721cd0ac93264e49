//! The probe registry: each family of kernel hooks, its cost rank, what it needs from the
//! kernel, and how to attach it. The agent tries the families cheapest first and keeps the
//! first that loads and attaches (`capture.hooks: auto`), or only the configured one.

use aya::{
    Btf, Ebpf,
    programs::{FExit, ProgramError, RawTracePoint, TracePoint},
};

use crate::config::HookChoice;

/// A family of hooks on the backends' `recvfrom`/`sendto` calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HookFamily {
    /// `fexit/__sys_recvfrom` + `fexit/__sys_sendto`: one BPF trampoline call per syscall
    /// of any process, arguments and return value together. Needs BTF and BPF
    /// trampolines (Linux ≥ 5.5; refused with EPERM on some hardened kernels).
    Fexit,
    /// `tracepoint/syscalls/sys_{enter,exit}_{recvfrom,sendto}`: runs only for those
    /// syscalls (needs CONFIG_FTRACE_SYSCALLS); a hash-map entry carries the arguments from
    /// entry to exit.
    Tracepoint,
    /// `raw_tp/sys_enter` + `raw_tp/sys_exit`: two program runs per syscall of any process,
    /// filtered on the syscall number; a hash-map entry carries the arguments across.
    RawTracepoint,
}

impl HookFamily {
    /// All families, cheapest first. fexit is first because it does strictly less work per
    /// call where it is allowed. Tracepoints come before raw tracepoints by measurement
    /// (`cargo xtask bench`, bench/): `pgbench -S -c 2 -j 2` kept ~1.0× its detached TPS
    /// with `tracepoint/syscalls/*`, ~0.65× with `raw_tp/sys_{enter,exit}`, whose programs
    /// run on every syscall of every process on the host.
    pub const BY_COST: [HookFamily; 3] =
        [HookFamily::Fexit, HookFamily::Tracepoint, HookFamily::RawTracepoint];

    /// Rank in [`Self::BY_COST`], 0 = cheapest; exported as a label of `pgmon_probe_info`.
    pub fn cost_rank(self) -> usize {
        Self::BY_COST.iter().position(|&f| f == self).unwrap_or(usize::MAX)
    }

    /// Name used in `status`, logs and the `hook` label of `pgmon_probe_info`.
    pub fn name(self) -> &'static str {
        match self {
            HookFamily::Fexit => "fexit",
            HookFamily::RawTracepoint => "raw_tracepoint",
            HookFamily::Tracepoint => "tracepoint",
        }
    }

    /// The kernel programs of this family (names of the functions in `pgmon-ebpf`).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            HookFamily::Fexit => &["pgmon_fexit_recvfrom", "pgmon_fexit_sendto"],
            HookFamily::RawTracepoint => &["pgmon_raw_sys_enter", "pgmon_raw_sys_exit"],
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
                    p.load(function, &btf).map_err(|e| HookError::program(name, e))?;
                    p.attach().map_err(|e| HookError::program(name, e))?;
                }
            }
            HookFamily::RawTracepoint => {
                for (name, tp) in
                    [("pgmon_raw_sys_enter", "sys_enter"), ("pgmon_raw_sys_exit", "sys_exit")]
                {
                    let p: &mut RawTracePoint = program(ebpf, name)?;
                    p.load().map_err(|e| HookError::program(name, e))?;
                    p.attach(tp).map_err(|e| HookError::program(name, e))?;
                }
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

/// Loads and attaches one `tracepoint/<category>/<name>` program.
pub fn attach_tracepoint(
    ebpf: &mut Ebpf,
    program_name: &'static str,
    category: &str,
    name: &str,
) -> Result<(), HookError> {
    let p: &mut TracePoint = program(ebpf, program_name)?;
    p.load().map_err(|e| HookError::program(program_name, e))?;
    p.attach(category, name).map_err(|e| HookError::program(program_name, e))?;
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
        assert_eq!(c.len(), 3);
        assert!(c.windows(2).all(|w| w[0].cost_rank() < w[1].cost_rank()));
        assert_eq!(HookFamily::candidates(HookChoice::Tracepoint), [HookFamily::Tracepoint]);
    }
}
