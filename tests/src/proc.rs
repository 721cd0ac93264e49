//! Child-process plumbing: the `postgres` OS user, running commands as that user, and
//! running commands with their output captured into readable errors.

use std::ffi::{CStr, CString};
use std::os::unix::process::CommandExt as _;
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// The OS account that clusters run as (PostgreSQL refuses to run as root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostgresUser {
    /// Numeric user id.
    pub uid: u32,
    /// Numeric primary group id.
    pub gid: u32,
    /// Home directory (from the passwd entry).
    pub home: String,
}

/// Looks up the OS user `postgres` (created by Debian's postgresql packages, or by
/// `cargo xtask setup` when missing).
pub fn postgres_user() -> Result<PostgresUser> {
    lookup_user("postgres")?.context(
        "OS user `postgres` does not exist (install Debian's postgresql-15 or run `cargo xtask setup`)",
    )
}

fn lookup_user(name: &str) -> Result<Option<PostgresUser>> {
    let cname = CString::new(name)?;
    let mut buf = vec![0u8; 16 * 1024];
    // SAFETY: passwd is plain old data; all-zero is a valid (empty) value.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the duration of the call and buf.len() is its size.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr().cast(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 {
        bail!(
            "getpwnam_r({name}) failed: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    if result.is_null() {
        return Ok(None);
    }
    let home = if pwd.pw_dir.is_null() {
        String::new()
    } else {
        // SAFETY: getpwnam_r succeeded, pw_dir points into buf and is NUL-terminated.
        unsafe { CStr::from_ptr(pwd.pw_dir) }
            .to_string_lossy()
            .into_owned()
    };
    Ok(Some(PostgresUser {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home,
    }))
}

/// libpq environment variables that would silently change what a client connects to.
const PG_ENV: &[&str] = &[
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGAPPNAME",
    "PGSSLMODE",
    "PGCONNECT_TIMEOUT",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
];

/// Removes libpq's environment variables so only explicit arguments count.
pub(crate) fn clean_pg_env(cmd: &mut Command) -> &mut Command {
    for v in PG_ENV {
        cmd.env_remove(v);
    }
    cmd
}

/// Makes `cmd` run as `user` (uid/gid; std drops supplementary groups), with `HOME` set to
/// the user's home and libpq's environment removed.
pub(crate) fn as_user<'c>(cmd: &'c mut Command, user: &PostgresUser) -> &'c mut Command {
    clean_pg_env(cmd)
        .uid(user.uid)
        .gid(user.gid)
        .env("HOME", &user.home)
        .env("LC_ALL", "C")
}

/// Renders a command line for messages.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd` to completion with stdin closed and output captured.
pub(crate) fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .with_context(|| format!("cannot run `{}`", describe(cmd)))
}

/// Formats a finished command's stdout and stderr for an error message.
pub(crate) fn format_output(out: &Output) -> String {
    let mut s = String::new();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !stdout.trim().is_empty() {
        s.push_str("--- stdout ---\n");
        s.push_str(stdout.trim_end());
        s.push('\n');
    }
    if !stderr.trim().is_empty() {
        s.push_str("--- stderr ---\n");
        s.push_str(stderr.trim_end());
        s.push('\n');
    }
    s
}

/// Runs `cmd` to completion; fails with the command line, its exit status and both output
/// streams unless it exits 0.
pub(crate) fn run_ok(cmd: &mut Command) -> Result<std::process::Output> {
    let out = output(cmd)?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({})\n{}",
            describe(cmd),
            out.status,
            format_output(&out)
        );
    }
    Ok(out)
}

/// Runs `cmd`; on success returns its stdout, on failure an error carrying the command line,
/// the exit status and both output streams.
pub(crate) fn run_checked(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&run_ok(cmd)?.stdout).into_owned())
}

/// Sends `sig` to `pid`; false if the process does not exist (or pid is not positive).
pub(crate) fn signal(pid: i32, sig: i32) -> bool {
    // SAFETY: kill has no memory-safety preconditions.
    pid > 0 && unsafe { libc::kill(pid, sig) } == 0
}

/// True while a process with this pid exists and is not a zombie (an exited postmaster may
/// linger as a zombie of PID 1 for a while; it counts as gone).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || !signal(pid, 0) {
        return false;
    }
    // A zombie still answers kill(0); treat it as gone.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit_once(") ")
            .is_some_and(|(_, rest)| rest.starts_with('Z')),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_user_lookup() {
        let root = lookup_user("root").unwrap().unwrap();
        assert_eq!(root.uid, 0);
        assert!(lookup_user("no-such-user-pgmon").unwrap().is_none());
    }

    #[test]
    fn checked_run_reports_output() {
        let err = run_checked(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("out") && err.contains("err") && err.contains('3'),
            "{err}"
        );
        assert_eq!(run_checked(Command::new("echo").arg("hi")).unwrap(), "hi\n");
    }

    #[test]
    fn own_pid_is_alive() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
    }
}
