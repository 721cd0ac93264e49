//! TLS capture: finds the libssl the postmaster maps and attaches the entry-only uprobes of
//! `pgmon-ebpf/src/probes/tls.rs` to it, once for the whole host (`UProbeScope::AllProcesses`:
//! the kernel plants the breakpoints in every process mapping the file, forked backends
//! included; the programs keep only tracked backends' calls). Each probe sits on the first
//! instruction of the function that the kernel emulates, when decoding proves it equivalent
//! to the entry ([`super::probe_point`]): one trap per call instead of two.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf,
    programs::{ProgramError, UProbe, uprobe::UProbeScope},
};

use super::config::TlsChoice;
use super::probe_point;

/// The programs and the libssl functions they are attached to, in attach order
/// (`SSL_get_error` first, so no read or write is remembered without its completion).
pub const PROBES: [(&str, &str); 4] = [
    ("pgmon_ssl_get_error", "SSL_get_error"),
    ("pgmon_ssl_accept", "SSL_accept"),
    ("pgmon_ssl_read", "SSL_read"),
    ("pgmon_ssl_write", "SSL_write"),
];

/// What became of TLS capture (`status`, `doctor`, `pgmon_tls_capture_info`).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TlsCapture {
    /// The probes are attached to `library`.
    On {
        /// The libssl file, as the postmaster maps it.
        library: String,
        /// The libssl functions probed and where, e.g. `SSL_read+0x16 (js, emulated)` or
        /// `SSL_accept (sub, single-stepped: why)` ([`super::probe_point::ProbePoint::describe`]).
        functions: Vec<String>,
    },
    /// No probe in libssl; TLS sessions are unreadable, and why.
    Off {
        /// Why: `capture.tls: off`, no libssl mapped, a refused attach.
        reason: String,
    },
}

impl TlsCapture {
    /// Whether plaintext of TLS sessions is captured.
    pub fn is_on(&self) -> bool {
        matches!(self, TlsCapture::On { .. })
    }
}

/// Why TLS capture could not be turned on.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// `/proc/<pid>/maps` could not be read.
    #[error("cannot read /proc/{pid}/maps")]
    Maps {
        /// The postmaster.
        pid: u32,
        #[source]
        source: std::io::Error,
    },
    /// The postmaster maps no file named `libssl.so*` (a server built without OpenSSL, or
    /// linked statically).
    #[error("the postmaster (pid {0}) maps no libssl.so*: TLS sessions stay unreadable")]
    NoLibssl(u32),
    /// The function's bytes could not be read from the library (no such symbol, not an
    /// x86-64 ELF object).
    #[error("where to probe {function}")]
    ProbePoint {
        /// The libssl function.
        function: &'static str,
        #[source]
        source: Box<probe_point::PointError>,
    },
    /// The embedded object lacks a program (a build mismatch).
    #[error("program {0} is missing from the embedded object")]
    Missing(&'static str),
    /// The kernel refused to load or attach a probe (e.g. the symbol is absent from the
    /// library: another TLS library under the name libssl).
    #[error("{program} on {function} in {library}")]
    Attach {
        /// The program.
        program: &'static str,
        /// The libssl function.
        function: &'static str,
        /// The library file.
        library: String,
        #[source]
        source: Box<ProgramError>,
    },
}

/// Turns TLS capture on for the cluster of `postmaster`, or says why it stays off. On a
/// failed attach, the probes already attached are unloaded again.
pub fn attach(ebpf: &mut Ebpf, choice: TlsChoice, postmaster: u32) -> TlsCapture {
    if choice == TlsChoice::Off {
        return TlsCapture::Off {
            reason: "capture.tls: off".to_owned(),
        };
    }
    let result = libssl_of(postmaster).and_then(|lib| {
        let functions = try_attach(ebpf, &lib)?;
        Ok((lib, functions))
    });
    match result {
        Ok((lib, functions)) => TlsCapture::On {
            library: lib.display().to_string(),
            functions,
        },
        Err(e) => {
            for (name, _) in PROBES {
                if let Some(aya::programs::Program::UProbe(p)) = ebpf.program_mut(name) {
                    let _ = p.unload();
                }
            }
            let reason = crate::util::error_chain(&e);
            tracing::warn!(error = %reason, "TLS capture is off");
            TlsCapture::Off { reason }
        }
    }
}

/// Attaches every probe of [`PROBES`]; returns where each went, described for `status`.
fn try_attach(ebpf: &mut Ebpf, lib: &Path) -> Result<Vec<String>, TlsError> {
    let mut functions = Vec::with_capacity(PROBES.len());
    for (program, function) in PROBES {
        let (point, why_not) =
            probe_point::probe_point(lib, function).map_err(|source| TlsError::ProbePoint {
                function,
                source: Box::new(source),
            })?;
        let p: &mut UProbe = ebpf
            .program_mut(program)
            .ok_or(TlsError::Missing(program))?
            .try_into()
            .map_err(|source| attach_error(program, function, lib, source))?;
        p.load()
            .map_err(|source| attach_error(program, function, lib, source))?;
        p.attach(point.file_offset, lib, UProbeScope::AllProcesses)
            .map_err(|source| attach_error(program, function, lib, source))?;
        let described = point.describe(function, why_not.as_deref());
        tracing::debug!(probe = %described, file_offset = point.file_offset, "TLS probe attached");
        functions.push(described);
    }
    Ok(functions)
}

fn attach_error(
    program: &'static str,
    function: &'static str,
    lib: &Path,
    source: ProgramError,
) -> TlsError {
    TlsError::Attach {
        program,
        function,
        library: lib.display().to_string(),
        source: Box::new(source),
    }
}

/// The libssl file the process `pid` maps, as a path this process can open: the path of
/// `/proc/<pid>/maps`, or the same under `/proc/<pid>/root` when the postmaster runs in
/// another mount namespace (a container).
pub fn libssl_of(pid: u32) -> Result<PathBuf, TlsError> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| TlsError::Maps { pid, source })?;
    let path = libssl_in_maps(&maps).ok_or(TlsError::NoLibssl(pid))?;
    if Path::new(path).exists() {
        return Ok(PathBuf::from(path));
    }
    Ok(Path::new(&format!("/proc/{pid}/root")).join(path.trim_start_matches('/')))
}

/// The first mapped file whose name starts with `libssl.so` in the text of a
/// `/proc/<pid>/maps` (proc(5): the path is the sixth field, and may hold spaces).
fn libssl_in_maps(maps: &str) -> Option<&str> {
    maps.lines().find_map(|line| {
        let path = line.splitn(6, char::is_whitespace).nth(5)?.trim();
        let name = Path::new(path).file_name()?.to_str()?;
        (path.starts_with('/') && name.starts_with("libssl.so")).then_some(path)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_libssl_in_maps() {
        let maps = "\
55d0c8a00000-55d0c8b00000 r--p 00000000 fe:01 1234   /usr/lib/postgresql/15/bin/postgres
7f0000000000-7f0000100000 r-xp 00020000 fe:01 5678   /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f0000200000-7f0000300000 r-xp 00030000 fe:01 5679   /usr/lib/x86_64-linux-gnu/libssl.so.3
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0      [stack]
";
        assert_eq!(
            libssl_in_maps(maps),
            Some("/usr/lib/x86_64-linux-gnu/libssl.so.3")
        );
        assert_eq!(
            libssl_in_maps("7f00-7f01 r-xp 0 fe:01 1 /lib/libc.so.6\n"),
            None
        );
        let spaced = "7f00-7f01 r-xp 0 fe:01 1     /opt/my pg/lib/libssl.so.1.1\n";
        assert_eq!(libssl_in_maps(spaced), Some("/opt/my pg/lib/libssl.so.1.1"));
    }
}
