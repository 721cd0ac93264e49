//! `cargo xtask kernels [--kernel 5.10|6.1|6.12|all]`: the agent on other kernels than the
//! host's (issue 25). The host runs one kernel (6.18 here, which refuses fexit), so the hook
//! families that only older or newer kernels load or refuse are never exercised by
//! `cargo xtask test`. This command boots Debian's own kernel images in QEMU and runs the
//! release agent in each:
//!
//! 1. fetches `linux-image-<release>` of the kernel's suite (6.1: bookworm, 5.10: bullseye,
//!    6.12: bookworm-backports) through a private apt configuration under
//!    [`KERNELS_DIR`]`/apt/<suite>` (its own `sources.list`, lists and cache: the host's apt
//!    state is never read for sources nor written), never installing it: `apt-get download`,
//!    `dpkg -x` into [`KERNELS_DIR`]`/<kernel>/`, then `depmod` (Debian's packages ship no
//!    `modules.dep`). A kernel already unpacked is reused;
//! 2. builds a busybox initramfs (Debian's `busybox-static`) holding the virtio, 9p and
//!    overlay modules of that kernel; its `/init` mounts the host's `/` read-only over
//!    virtio-9p under a tmpfs overlay (plain tmpfs on `/tmp`, `/run`, `/var` when overlayfs
//!    refuses the 9p lower layer), mounts proc, sys, dev, debugfs, tracefs and bpffs, runs
//!    the guest script from a second, writable 9p share, writes its output and exit code
//!    there, and reboots (QEMU runs with `-no-reboot`, so that ends it);
//! 3. boots `qemu-system-x86_64 -accel tcg` (never KVM: this machine's /dev/kvm is a
//!    software backend that hangs stock kernels), pinned to one core by `taskset`, bounded by
//!    `timeout`. The guest script starts Debian's PostgreSQL 15 from the host's files
//!    (initdb into tmpfs, socket in the same dir) and runs `pgmon-agent doctor` once per
//!    hook family with `capture.hooks` forced to it; then (unless `--doctor-only`), for
//!    each family whose doctor says it loads, the capture suite itself ([`CAPTURE_TEST`],
//!    the test binary of `tests/tests/capture.rs`) with `PGMON_TEST_HOOKS` set to the
//!    family: the same assertions as on the host, not a second copy of them;
//! 4. prints a table kernel × family: the suite's verdict (passed with its count of exact
//!    runs and the family in use, or its first failure), doctor's verdict (loads with its
//!    cost rank, or refused and why), and each guest's wall time (boot to power-off) with
//!    its uptime at each stage.
//!
//! Emulated guests run 20–100× slower than the host: the matrix proves loading, attaching
//! and exact counts, never cost.
//!
//! Each guest's files stay in `KERNELS_DIR/run/<kernel>/`: `guest.sh`, `output.txt`, `rc`,
//! `console.log` (the serial console) and `capture-<family>.log`.
//!
//! Needs root (apt, dpkg, 9p export of `/` with the host's permissions) and the host packages
//! `cargo xtask setup` installs (QEMU, busybox, cpio, kmod: see
//! [`crate::setup::APT_PACKAGES`]).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{
    agent_release_binary, cargo, describe, is_root, run_capture, run_streaming, which,
};

/// Where kernels, the private apt state, the initramfs and each guest's output live.
pub const KERNELS_DIR: &str = "/opt/pgmon-test/kernels";

/// The hook families `capture.hooks` accepts, cheapest first, then `auto` (the agent's own
/// choice: the cheapest that loads). Source: `pgmon-agent/src/capture/hooks.rs`.
pub const FAMILIES: &[&str] = &[
    "fexit",
    "tp_btf_sock",
    "tp_btf",
    "tracepoint",
    "raw_tracepoint",
    "auto",
];

/// Modules the initramfs loads (with their dependencies, per `modules.dep`), those built into
/// the kernel skipped: virtio's PCI transport, 9p over virtio, and overlayfs.
const GUEST_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay"];

/// The capture suite's test run in each guest, once per hook family the kernel accepts:
/// `tests/tests/capture.rs`'s PostgreSQL 15 suite (pgbench -S under every protocol and with
/// -C over unix and TCP, pgmon's count = pgbench's = pg_stat_statements', two roles at once,
/// a connection older than the agent, a 100 KiB query, another cluster left alone, nothing
/// dropped or desynced), the family forced by `PGMON_TEST_HOOKS`.
pub const CAPTURE_TEST: &str = "capture_pg15";

/// One kernel of the matrix: the name on the command line and where Debian ships it.
struct Kernel {
    /// `5.10`, `6.1` or `6.12`.
    name: &'static str,
    /// Debian suite whose `linux-image-amd64` depends on this kernel's image package.
    suite: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "5.10",
        suite: "bullseye",
    },
    Kernel {
        name: "6.1",
        suite: "bookworm",
    },
    Kernel {
        name: "6.12",
        suite: "bookworm-backports",
    },
];

/// Arguments of `cargo xtask kernels`.
#[derive(clap::Args)]
pub struct KernelsArgs {
    /// Which kernels, comma-separated: 5.10 (bullseye), 6.1 (bookworm), 6.12
    /// (bookworm-backports), or all.
    #[arg(long, value_delimiter = ',', default_value = "6.1")]
    kernel: Vec<String>,
    /// Hook families to try, comma-separated, of fexit, tp_btf_sock, tp_btf, tracepoint,
    /// raw_tracepoint, auto.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fexit,tp_btf_sock,tp_btf,tracepoint,raw_tracepoint,auto"
    )]
    families: Vec<String>,
    /// Only `pgmon-agent doctor` per hook family; not the capture suite.
    #[arg(long)]
    doctor_only: bool,
    /// The host CPU QEMU is pinned to (`taskset -c`).
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Seconds a guest may take from boot to power-off before `timeout` ends it (the
    /// capture suite takes minutes per family under emulation).
    #[arg(long, default_value_t = 3600)]
    timeout: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Seconds the capture suite may take per family in a guest before `timeout` ends it.
    #[arg(long, default_value_t = 900)]
    suite_timeout: u32,
    /// Skip `cargo build --release -p pgmon-agent` (use the binary as it is).
    #[arg(long)]
    no_build: bool,
}

/// What one guest reported about one hook family.
#[derive(Default)]
pub struct FamilyResult {
    /// The doctor's `hooks` line without its name: `ok    fexit loads and attaches (cost
    /// rank 0)` or `FAIL  no hook family could be attached: …`; `None` when none came back.
    doctor: Option<String>,
    /// Why the capture suite did not run for this family (doctor refused it).
    skipped: Option<String>,
    /// The capture suite's exit code in the guest (0: every check passed); `None` when it
    /// did not run or did not finish.
    suite_exit: Option<i32>,
    /// The suite's per-run count lines (`… pgbench N tx, pgmon N, pg_stat_statements N`).
    counts: Vec<String>,
    /// The suite's `FAIL: …` lines.
    failures: Vec<String>,
    /// The hook family the agent used (from the suite's `hook family asked: …, in use: …`).
    in_use: Option<String>,
}

impl FamilyResult {
    /// Whether the capture suite ran and passed.
    pub fn passed(&self) -> bool {
        self.suite_exit == Some(0)
    }
}

/// What one guest reported.
pub struct GuestResult {
    pub kernel: &'static str,
    /// `uname -r` of the guest, e.g. `6.1.0-50-amd64`.
    release: String,
    /// Boot to power-off, as the host measured it.
    wall: Duration,
    /// Guest uptime (s) when the script started, PostgreSQL was up, the doctors were done
    /// and the script ended (`@@ … at uptime` markers; the guest clock runs on TCG's time).
    uptimes: Vec<(String, f64)>,
    /// Per family asked for, in order.
    pub families: Vec<(String, FamilyResult)>,
    /// Why the guest's report is incomplete, if it is.
    pub problem: Option<String>,
}

/// Fetches, boots and reports each kernel asked for; fails if a kernel cannot be fetched or
/// booted, or (after the table) if a guest's script did not finish or the capture suite
/// failed on a family the kernel accepts. A hook family a kernel refuses is a result in the
/// table, not a failure.
pub fn run(args: &KernelsArgs) -> Result<()> {
    if !args.no_build {
        run_streaming(cargo().args(["build", "--release", "-p", "pgmon-agent"]))?;
    }
    let results = matrix(args)?;
    print!("{}", table(&results));
    let full = (args.kernel.iter().any(|k| k == "all")
        || KERNELS
            .iter()
            .all(|k| args.kernel.iter().any(|a| a == k.name)))
        && FAMILIES
            .iter()
            .all(|f| args.families.iter().any(|a| a == f))
        && !args.doctor_only;
    if full {
        write_readme(&results)?;
    } else {
        println!("(a partial matrix: the README's kernel table is left as it is)");
    }
    let unfinished: Vec<&str> = results
        .iter()
        .filter(|r| r.problem.is_some())
        .map(|r| r.kernel)
        .collect();
    if !unfinished.is_empty() {
        bail!(
            "the guest script did not finish on {} (see {KERNELS_DIR}/run/<kernel>/console.log)",
            unfinished.join(", ")
        );
    }
    let failed: Vec<String> = results
        .iter()
        .flat_map(|r| {
            r.families
                .iter()
                .filter(|(_, f)| f.skipped.is_none() && !f.passed())
                .map(move |(family, _)| format!("{} {family}", r.kernel))
        })
        .collect();
    if !failed.is_empty() {
        bail!(
            "the capture suite failed on {} (see {KERNELS_DIR}/run/<kernel>/capture-<family>.log)",
            failed.join(", ")
        );
    }
    Ok(())
}

/// The arguments `cargo xtask test` runs the matrix with: 6.1 and 5.10, the agent on `auto`
/// (fexit on both) and on `tp_btf` (the family kernels 5.5–6.2 fall back to where fexit is
/// refused); the release agent and test binaries as the test run built them.
pub fn test_args() -> KernelsArgs {
    KernelsArgs {
        kernel: vec!["6.1".into(), "5.10".into()],
        families: vec!["auto".into(), "tp_btf".into()],
        doctor_only: false,
        cpu: 1,
        timeout: 2400,
        memory: 2048,
        suite_timeout: 900,
        no_build: true,
    }
}

/// Fetches and boots each kernel of `args` in turn (the release agent must be built);
/// returns what each guest reported.
pub fn matrix(args: &KernelsArgs) -> Result<Vec<GuestResult>> {
    if !is_root() {
        bail!("cargo xtask kernels needs root (apt-get download, dpkg -x, 9p export of /)");
    }
    let names: Vec<&str> = if args.kernel.iter().any(|k| k == "all") {
        KERNELS.iter().map(|k| k.name).collect()
    } else {
        args.kernel.iter().map(String::as_str).collect()
    };
    let kernels = names
        .iter()
        .map(|name| {
            KERNELS
                .iter()
                .find(|k| k.name == *name)
                .with_context(|| format!("unknown kernel {name:?}: 5.10, 6.1, 6.12 or all"))
        })
        .collect::<Result<Vec<&Kernel>>>()?;
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "taskset",
        "timeout",
        "dpkg",
    ] {
        if which(tool).is_none() {
            bail!("{tool} is not on PATH: run `cargo xtask setup` (it installs the host packages)");
        }
    }
    let agent = agent_release_binary();
    if !agent.is_file() {
        bail!(
            "{} is missing (cargo build --release -p pgmon-agent)",
            agent.display()
        );
    }
    if let Some(bad) = args
        .families
        .iter()
        .find(|f| !FAMILIES.contains(&f.as_str()))
    {
        bail!(
            "unknown hook family {bad:?}: one of {}",
            FAMILIES.join(", ")
        );
    }
    let suite = if args.doctor_only {
        None
    } else {
        Some(capture_test_binary()?)
    };
    let mut results = Vec::new();
    for k in kernels {
        let root = fetch(k)?;
        let release = kernel_release(&root)?;
        let initrd = build_initramfs(k, &root, &release)?;
        results.push(boot(
            args,
            k,
            &root,
            &release,
            &initrd,
            &agent,
            suite.as_deref(),
        )?);
    }
    Ok(results)
}

/// The capture suite's test binary (`cargo test --release -p pgmon-tests --test capture
/// --no-run`, built if it is not), from cargo's JSON messages.
fn capture_test_binary() -> Result<PathBuf> {
    let out = run_capture(cargo().args([
        "test",
        "--release",
        "-p",
        "pgmon-tests",
        "--test",
        "capture",
        "--no-run",
        "--message-format=json",
    ]))?;
    out.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["target"]["name"] == "capture")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .context("cargo built no executable for the capture test")
}

/// `KERNELS_DIR/<name>`: the unpacked image package (`boot/`, `lib/modules/`).
fn kernel_root(k: &Kernel) -> PathBuf {
    Path::new(KERNELS_DIR).join(k.name)
}

/// The private apt options for `suite`: sources, lists and cache under
/// `KERNELS_DIR/apt/<suite>`, no source parts, so the host's own sources and state are not
/// used (the host's dpkg status is only read).
fn apt_options(suite: &str) -> Result<Vec<String>> {
    let dir = Path::new(KERNELS_DIR).join("apt").join(suite);
    for sub in ["lists/partial", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
    }
    let sources = dir.join("sources.list");
    let line = format!(
        "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
         http://deb.debian.org/debian {suite} main\n"
    );
    std::fs::write(&sources, line)
        .with_context(|| format!("cannot write {}", sources.display()))?;
    Ok(vec![
        "-o".into(),
        format!("Dir::Etc::SourceList={}", sources.display()),
        "-o".into(),
        "Dir::Etc::SourceParts=/dev/null".into(),
        "-o".into(),
        format!("Dir::State::Lists={}", dir.join("lists").display()),
        "-o".into(),
        format!("Dir::Cache={}", dir.join("cache").display()),
        "-o".into(),
        "APT::Get::List-Cleanup=0".into(),
        // The download dir is root's; without this apt warns that `_apt` cannot write it.
        "-o".into(),
        "APT::Sandbox::User=root".into(),
    ])
}

/// Fetches and unpacks kernel `k` once; returns its root. The image package is the one
/// `linux-image-amd64` of the suite depends on (`apt-cache depends`).
fn fetch(k: &Kernel) -> Result<PathBuf> {
    let root = kernel_root(k);
    let marker = root.join(".pgmon-unpacked");
    if marker.is_file() {
        println!(
            "kernel {}: reusing {} ({})",
            k.name,
            root.display(),
            std::fs::read_to_string(&marker)?.trim()
        );
        return Ok(root);
    }
    let opts = apt_options(k.suite)?;
    run_streaming(Command::new("apt-get").args(&opts).args(["-q", "update"]))?;
    let deps = run_capture(
        Command::new("apt-cache")
            .args(&opts)
            .args(["depends", "linux-image-amd64"]),
    )?;
    let package = deps
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && *p != "linux-image-amd64")
        .with_context(|| {
            format!(
                "linux-image-amd64 of {} depends on no kernel image:\n{deps}",
                k.suite
            )
        })?
        .to_owned();
    let download = Path::new(KERNELS_DIR)
        .join("apt")
        .join(k.suite)
        .join("debs");
    std::fs::create_dir_all(&download)?;
    run_streaming(
        Command::new("apt-get")
            .args(&opts)
            .args(["-q", "download", &package])
            .current_dir(&download),
    )?;
    let deb = std::fs::read_dir(&download)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&format!("{package}_")) && n.ends_with(".deb"))
        })
        .max()
        .with_context(|| {
            format!(
                "apt-get download left no {package}_*.deb in {}",
                download.display()
            )
        })?;
    if root.exists() {
        std::fs::remove_dir_all(&root)
            .with_context(|| format!("cannot remove the partial {}", root.display()))?;
    }
    std::fs::create_dir_all(&root)?;
    run_streaming(Command::new("dpkg").arg("-x").arg(&deb).arg(&root))?;
    // depmod -b looks in <root>/lib/modules; a merged-/usr package ships usr/lib/modules.
    if !root.join("lib/modules").exists() && root.join("usr/lib/modules").exists() {
        std::os::unix::fs::symlink("usr/lib", root.join("lib"))?;
    }
    let release = kernel_release(&root)?;
    run_streaming(Command::new(depmod()?).arg("-b").arg(&root).arg(&release))?;
    std::fs::write(&marker, format!("{package} from {}\n", deb.display()))?;
    println!(
        "kernel {}: {package} unpacked into {}",
        k.name,
        root.display()
    );
    Ok(root)
}

/// `depmod`, which Debian installs in /sbin (not on a user's PATH).
fn depmod() -> Result<PathBuf> {
    which("depmod")
        .or_else(|| {
            ["/usr/sbin/depmod", "/sbin/depmod"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .context("depmod is missing (apt-get install kmod)")
}

/// The kernel release of an unpacked image: the one directory under `lib/modules`.
fn kernel_release(root: &Path) -> Result<String> {
    let dir = root.join("lib/modules");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    match names.as_slice() {
        [one] => Ok(one.clone()),
        _ => bail!("{} holds {names:?}, not one kernel release", dir.display()),
    }
}

/// A module's name as the kernel knows it: file name without `.ko[.xz|.zst|.gz]`, `-` as `_`.
fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The module files (relative to `lib/modules/<release>`) to load for [`GUEST_MODULES`],
/// dependencies first, per `modules.dep`; built-in modules (`modules.builtin`) are skipped.
fn module_load_order(moddir: &Path) -> Result<Vec<String>> {
    let dep = std::fs::read_to_string(moddir.join("modules.dep"))
        .with_context(|| format!("cannot read {}/modules.dep", moddir.display()))?;
    let builtin = std::fs::read_to_string(moddir.join("modules.builtin")).unwrap_or_default();
    let builtin: Vec<String> = builtin.lines().map(module_name).collect();
    let table: Vec<(String, String, Vec<String>)> = dep
        .lines()
        .filter_map(|l| {
            let (m, deps) = l.split_once(':')?;
            Some((
                module_name(m),
                m.to_owned(),
                deps.split_whitespace().map(str::to_owned).collect(),
            ))
        })
        .collect();
    fn visit(
        name: &str,
        table: &[(String, String, Vec<String>)],
        builtin: &[String],
        order: &mut Vec<String>,
    ) -> Result<()> {
        if builtin.iter().any(|b| b == name) {
            return Ok(());
        }
        let (_, path, deps) = table
            .iter()
            .find(|(n, _, _)| n == name)
            .with_context(|| format!("module {name} is neither in modules.dep nor built in"))?;
        if order.contains(path) {
            return Ok(());
        }
        for d in deps {
            visit(&module_name(d), table, builtin, order)?;
        }
        order.push(path.clone());
        Ok(())
    }
    let mut order = Vec::new();
    for m in GUEST_MODULES {
        visit(m, &table, &builtin, &mut order)?;
    }
    Ok(order)
}

/// The initramfs's `/init` (busybox sh). Kernel messages go to the serial console; the guest
/// script's output goes to `/out/output.txt` and its exit code to `/out/rc`.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
echo "pgmon-init: kernel $(uname -r)"
while read m; do
  insmod "/modules/$m" || echo "pgmon-init: insmod $m failed"
done < /modules/order
mkdir -p /lower /rw /newroot /out
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144,cache=loose hostroot /lower || { echo "pgmon-init: 9p root mount failed"; reboot -f; }
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 pgmonout /out || { echo "pgmon-init: 9p out mount failed"; reboot -f; }
mount -t tmpfs -o size=70% tmpfs /rw
mkdir -p /rw/upper /rw/work
if mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot; then
  echo "pgmon-init: / is the host's, read-only over 9p, under a tmpfs overlay"
else
  echo "pgmon-init: overlayfs refused; / read-only over 9p with tmpfs on /tmp /run /var"
  mount --bind /lower /newroot
  for d in tmp run var; do mount -t tmpfs tmpfs /newroot/$d; done
  mkdir -p /newroot/var/tmp /newroot/var/run /newroot/var/log
fi
mount -t proc proc /newroot/proc
mount -t sysfs sysfs /newroot/sys
mount -t devtmpfs devtmpfs /newroot/dev
mkdir -p /newroot/dev/pts /newroot/dev/shm
mount -t devpts devpts /newroot/dev/pts
mount -t tmpfs tmpfs /newroot/dev/shm
mount -t tmpfs tmpfs /newroot/tmp
mount -t debugfs debugfs /newroot/sys/kernel/debug 2>/dev/null
mount -t tracefs tracefs /newroot/sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /newroot/sys/fs/bpf 2>/dev/null
mkdir -p /newroot/run/pgmon-out
mount --bind /out /newroot/run/pgmon-out
ip link set lo up
chroot /newroot /bin/sh -c 'hostname pgmon-guest; ip link set lo up 2>/dev/null; /bin/sh /run/pgmon-out/guest.sh > /run/pgmon-out/output.txt 2>&1; echo $? > /run/pgmon-out/rc'
echo "pgmon-init: guest script exited $(cat /out/rc)"
sync
umount /newroot/run/pgmon-out 2>/dev/null
umount /out 2>/dev/null
reboot -f
"#;

/// Builds `KERNELS_DIR/<name>/initrd.img` (cpio newc): busybox, [`INIT`], and the modules of
/// [`module_load_order`] decompressed (busybox's insmod takes plain `.ko` files).
fn build_initramfs(k: &Kernel, root: &Path, release: &str) -> Result<PathBuf> {
    let moddir = root.join("lib/modules").join(release);
    let order = module_load_order(&moddir)?;
    let tree = Path::new(KERNELS_DIR).join(format!("{}-initramfs", k.name));
    if tree.exists() {
        std::fs::remove_dir_all(&tree)?;
    }
    for d in ["bin", "modules", "proc", "sys", "dev"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox =
        which("busybox").context("busybox is missing (apt-get install busybox-static)")?;
    std::fs::copy(&busybox, tree.join("bin/busybox"))
        .with_context(|| format!("cannot copy {}", busybox.display()))?;
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
    let mut list = String::new();
    for m in &order {
        let src = moddir.join(m);
        let name = format!("{}.ko", module_name(m));
        let dst = tree.join("modules").join(&name);
        let decompress = if m.ends_with(".xz") {
            Some("xz")
        } else if m.ends_with(".zst") {
            Some("zstd")
        } else if m.ends_with(".gz") {
            Some("gzip")
        } else {
            None
        };
        match decompress {
            Some(tool) => {
                let out = Command::new(tool)
                    .arg("-dc")
                    .arg(&src)
                    .output()
                    .with_context(|| format!("cannot run {tool} -dc {}", src.display()))?;
                if !out.status.success() {
                    bail!("{tool} -dc {} failed", src.display());
                }
                std::fs::write(&dst, out.stdout)?;
            }
            None => {
                std::fs::copy(&src, &dst)
                    .with_context(|| format!("cannot copy {}", src.display()))?;
            }
        }
        writeln!(list, "{name}")?;
    }
    std::fs::write(tree.join("modules/order"), list)?;
    let init = tree.join("init");
    std::fs::write(&init, INIT)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&init, std::fs::Permissions::from_mode(0o755))?;
    }
    let initrd = kernel_root(k).join("initrd.img");
    let file = std::fs::File::create(&initrd)
        .with_context(|| format!("cannot create {}", initrd.display()))?;
    let mut cpio = Command::new("sh");
    cpio.args([
        "-c",
        "find . | LC_ALL=C sort | cpio --quiet -o -H newc -R 0:0",
    ])
    .current_dir(&tree)
    .stdout(file);
    run_streaming(&mut cpio)?;
    std::fs::remove_dir_all(&tree)?;
    println!(
        "kernel {}: initramfs {} (modules: {})",
        k.name,
        initrd.display(),
        order
            .iter()
            .map(|m| module_name(m))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(initrd)
}

/// The script the guest runs (as root, from the output share): starts Debian's PostgreSQL 15
/// for the doctor, runs `pgmon-agent doctor` once per family with `capture.hooks` forced to
/// it, then, with `suite` (the capture test binary), runs [`CAPTURE_TEST`] once per family
/// whose doctor line says it loads, `PGMON_TEST_HOOKS` set to the family, its log in
/// `capture-<family>.log` of the output share. `@@ ` lines mark what [`parse`] reads.
fn guest_script(
    agent: &Path,
    suite: Option<&Path>,
    families: &[&str],
    suite_timeout: u32,
) -> String {
    let families = families.join(" ");
    let capture = match suite {
        None => String::new(),
        Some(suite) => format!(
            r#"
for fam in {families}; do
  echo "@@ capture $fam"
  if ! grep -Eq "^ok +hooks" $D/doctor-$fam.txt; then echo "@@ capture skipped: doctor refused the family"; continue; fi
  PGMON_AGENT_BIN=$AGENT PGMON_TEST_HOOKS=$fam timeout {suite_timeout} {suite} {CAPTURE_TEST} --exact --test-threads=1 --nocapture > /run/pgmon-out/capture-$fam.log 2>&1
  rc=$?
  grep -E "pgbench [0-9]+ tx, pgmon|hook family asked|^FAIL" /run/pgmon-out/capture-$fam.log
  echo "@@ capture exit $rc"
  echo "@@ capture $fam done at uptime $(cut -d' ' -f1 /proc/uptime) s"
done
"#,
            suite = suite.display()
        ),
    };
    format!(
        r#"#!/bin/sh
# Written by cargo xtask kernels; runs in the guest as root.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LC_ALL=C
AGENT={agent}
PGBIN=/usr/lib/postgresql/15/bin
ADDR=127.0.0.1:9187
D=/tmp/pgmon-kernels
echo "@@ release $(uname -r)"
echo "@@ script starts at uptime $(cut -d' ' -f1 /proc/uptime) s"
mkdir -p $D && chown postgres:postgres $D
runuser -u postgres -- $PGBIN/initdb -D $D/data -U postgres -A trust > $D/initdb.log 2>&1 || {{ echo "@@ initdb failed"; cat $D/initdb.log; }}
runuser -u postgres -- $PGBIN/pg_ctl -D $D/data -l $D/pg.log -w -t 120 -o "-k $D -c listen_addresses= -p 5432" start > /dev/null || {{ echo "@@ postgres failed"; cat $D/pg.log; }}
echo "@@ postgres up at uptime $(cut -d' ' -f1 /proc/uptime) s"
for fam in {families}; do
  cat > $D/$fam.yaml <<EOF
cluster:
  data_directory: $D/data
  connection: "host=$D port=5432 user=postgres dbname=postgres"
capture:
  hooks: $fam
metrics:
  listen: $ADDR
security:
  read_only_enforce: false
EOF
  echo "@@ doctor $fam"
  $AGENT doctor -c $D/$fam.yaml > $D/doctor-$fam.txt 2>&1
  cat $D/doctor-$fam.txt
done
runuser -u postgres -- $PGBIN/pg_ctl -D $D/data -w stop -m fast > /dev/null
echo "@@ doctors done at uptime $(cut -d' ' -f1 /proc/uptime) s"
{capture}
echo "@@ done at uptime $(cut -d' ' -f1 /proc/uptime) s"
"#,
        agent = agent.display()
    )
}

/// Boots kernel `k` with `initrd`; returns what its guest script reported.
fn boot(
    args: &KernelsArgs,
    k: &Kernel,
    root: &Path,
    release: &str,
    initrd: &Path,
    agent: &Path,
    suite: Option<&Path>,
) -> Result<GuestResult> {
    let out = Path::new(KERNELS_DIR).join("run").join(k.name);
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir_all(&out)?;
    std::fs::write(
        out.join("guest.sh"),
        guest_script(
            agent,
            suite,
            &args.families.iter().map(String::as_str).collect::<Vec<_>>(),
            args.suite_timeout,
        ),
    )?;
    let console = out.join("console.log");
    let vmlinuz = root.join("boot").join(format!("vmlinuz-{release}"));
    let mut qemu = Command::new("taskset");
    qemu.args([
        "-c",
        &args.cpu.to_string(),
        "timeout",
        &args.timeout.to_string(),
    ])
    .args([
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        "max",
        "-smp",
        "1",
    ])
    .args(["-m", &args.memory.to_string()])
    .args([
        "-nodefaults",
        "-display",
        "none",
        "-no-reboot",
        "-monitor",
        "none",
    ])
    .arg("-serial")
    .arg(format!("file:{}", console.display()))
    .arg("-kernel")
    .arg(&vmlinuz)
    .arg("-initrd")
    .arg(initrd)
    .args([
        "-append",
        "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init",
    ])
    .args([
        "-fsdev",
        "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
    ])
    .arg("-fsdev")
    .arg(format!(
        "local,id=pgmonout,path={},security_model=none",
        out.display()
    ))
    .args(["-device", "virtio-9p-pci,fsdev=pgmonout,mount_tag=pgmonout"]);
    println!("kernel {}: booting {release}: {}", k.name, describe(&qemu));
    let start = Instant::now();
    let status = qemu
        .stdin(std::process::Stdio::null())
        .status()
        .with_context(|| format!("cannot run `{}`", describe(&qemu)))?;
    let wall = start.elapsed();
    let output = std::fs::read_to_string(out.join("output.txt")).unwrap_or_default();
    let rc = std::fs::read_to_string(out.join("rc")).ok();
    println!(
        "kernel {}: guest ran {:.1} s (qemu {status}); its output ({}):\n{output}",
        k.name,
        wall.as_secs_f64(),
        out.join("output.txt").display()
    );
    let mut res = parse(k.name, &output, wall, &args.families);
    if rc.is_none() {
        let log = std::fs::read_to_string(&console).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(30)..].join("\n");
        println!(
            "kernel {}: the guest script did not finish; console tail:\n{tail}",
            k.name
        );
        res.problem = Some(format!(
            "guest script did not finish (qemu {status}; see {})",
            console.display()
        ));
    }
    Ok(res)
}

/// Reads the guest's marker lines (see [`guest_script`]): the release, the uptimes, each
/// family's `hooks` line of doctor and its capture run's notes.
fn parse(kernel: &'static str, output: &str, wall: Duration, families: &[String]) -> GuestResult {
    let mut res = GuestResult {
        kernel,
        release: String::new(),
        wall,
        uptimes: Vec::new(),
        families: families
            .iter()
            .map(|f| (f.clone(), FamilyResult::default()))
            .collect(),
        problem: None,
    };
    enum Section {
        None,
        Doctor(usize),
        Capture(usize),
    }
    let mut section = Section::None;
    let index = |f: &str| families.iter().position(|x| x == f.trim());
    for line in output.lines() {
        if let Some(r) = line.strip_prefix("@@ release ") {
            res.release = r.trim().to_owned();
        } else if let Some(f) = line.strip_prefix("@@ doctor ") {
            section = index(f).map_or(Section::None, Section::Doctor);
        } else if let Some(f) = line.strip_prefix("@@ capture ")
            && let Some(i) = index(f)
        {
            // `@@ capture <family>` opens its section; `@@ capture exit N`,
            // `@@ capture skipped: …` and `@@ capture <family> done at uptime …` fall through.
            section = Section::Capture(i);
        } else if let Some(m) = line.strip_prefix("@@ ") {
            if let Some((what, t)) = m.split_once(" at uptime ") {
                if let Ok(t) = t.trim_end_matches(" s").parse::<f64>() {
                    res.uptimes.push((what.to_owned(), t));
                }
                section = Section::None;
            } else if let Section::Capture(i) = section {
                let f = &mut res.families[i].1;
                if let Some(why) = m.strip_prefix("capture skipped: ") {
                    f.skipped = Some(why.to_owned());
                } else if let Some(rc) = m.strip_prefix("capture exit ") {
                    f.suite_exit = rc.trim().parse().ok();
                }
            }
        } else {
            match section {
                Section::Doctor(i) => {
                    let mut words = line.split_whitespace();
                    let level = words.next().unwrap_or("?");
                    if words.next() == Some("hooks") {
                        let detail = line.split_once("hooks").map_or("", |(_, d)| d).trim();
                        res.families[i].1.doctor = Some(format!("{level} {detail}"));
                    }
                }
                Section::Capture(i) => {
                    let f = &mut res.families[i].1;
                    if let Some(fail) = line.strip_prefix("FAIL: ") {
                        f.failures.push(fail.to_owned());
                    } else if let Some((_, used)) = line.split_once("in use: ") {
                        f.in_use = Some(used.trim().to_owned());
                    } else if line.contains(" tx, pgmon ") {
                        f.counts.push(line.to_owned());
                    }
                }
                Section::None => {}
            }
        }
    }
    res
}

/// One family's capture-suite verdict, for the table: `passed: N runs exact (fexit)`,
/// `FAILED (exit N): first failure`, `refused`, or `-` when it did not run.
fn suite_verdict(f: &FamilyResult) -> String {
    let used = f
        .in_use
        .as_ref()
        .map(|u| format!(" ({u})"))
        .unwrap_or_default();
    match (f.suite_exit, &f.skipped) {
        (_, Some(_)) => "refused (not run)".to_owned(),
        (Some(0), _) => format!("passed: {} runs exact{used}", f.counts.len()),
        (Some(rc), _) => format!(
            "FAILED (exit {rc}){used}: {}",
            f.failures.first().map_or("see its log", String::as_str)
        ),
        (None, None) => "-".to_owned(),
    }
}

/// The report: one row per kernel × family (doctor's verdict, the capture count), then the
/// wall time and guest uptimes per kernel.
pub fn table(results: &[GuestResult]) -> String {
    let mut s = format!(
        "\n{:<7} {:<22} {:<15} {:<40} doctor\n",
        "kernel", "release", "family", "capture suite (counts exact?)"
    );
    for r in results {
        for (family, f) in &r.families {
            let doctor = match &f.doctor {
                None => "no report".to_owned(),
                Some(l) if l.starts_with("ok") => {
                    format!("loads: {}", l.trim_start_matches("ok").trim())
                }
                Some(l) => format!("refused: {}", l.trim_start_matches("FAIL").trim()),
            };
            let _ = writeln!(
                s,
                "{:<7} {:<22} {:<15} {:<40} {doctor}",
                r.kernel,
                r.release,
                family,
                suite_verdict(f)
            );
        }
    }
    s.push_str("\nkernel  wall (boot to power-off)  guest uptime at: ");
    if let Some(r) = results.first() {
        let names: Vec<&str> = r.uptimes.iter().map(|(n, _)| n.as_str()).collect();
        s.push_str(&names.join(" / "));
    }
    s.push('\n');
    for r in results {
        let uptimes: Vec<String> = r.uptimes.iter().map(|(_, t)| format!("{t:.1} s")).collect();
        let _ = writeln!(
            s,
            "{:<7} {:>6.1} s                  {}{}",
            r.kernel,
            r.wall.as_secs_f64(),
            uptimes.join(" / "),
            r.problem
                .as_ref()
                .map(|p| format!("  [{p}]"))
                .unwrap_or_default()
        );
    }
    s
}

/// Markers around the README's kernel table, which a full matrix run rewrites (issue 25: the
/// table is the matrix's last run, never written by hand).
const README_BEGIN: &str =
    "<!-- kernel-matrix: written by `cargo xtask kernels --kernel all`; do not edit -->";
const README_END: &str = "<!-- /kernel-matrix -->";

/// The README's table of `results`: one row per kernel, one column per hook family, each
/// cell the capture suite's verdict or the kernel's refusal; the family `auto` picked last.
fn readme_table(results: &[GuestResult]) -> String {
    let named: Vec<&str> = FAMILIES.iter().copied().filter(|f| *f != "auto").collect();
    let mut s = format!(
        "| kernel | {} | `auto` picks |\n|---|{}---|\n",
        named
            .iter()
            .map(|f| format!("`{f}`"))
            .collect::<Vec<_>>()
            .join(" | "),
        "---|".repeat(named.len())
    );
    for r in results {
        let cell = |family: &str| {
            let Some((_, f)) = r.families.iter().find(|(n, _)| n == family) else {
                return "not run".to_owned();
            };
            if f.skipped.is_some() {
                let why = f.doctor.as_deref().unwrap_or("refused");
                let why = why.trim_start_matches("FAIL").trim();
                let short: String = why.chars().take(90).collect();
                return format!("refused ({short})");
            }
            match f.suite_exit {
                Some(0) => format!("loads, counts exact ({} runs)", f.counts.len()),
                Some(rc) => format!("FAILED (exit {rc})"),
                None => "no result".to_owned(),
            }
        };
        let auto = r
            .families
            .iter()
            .find(|(n, _)| n == "auto")
            .and_then(|(_, f)| f.in_use.clone())
            .map_or("?".to_owned(), |u| format!("`{u}`"));
        let _ = writeln!(
            s,
            "| {} (`{}`) | {} | {auto} |",
            r.kernel,
            r.release,
            named
                .iter()
                .map(|f| cell(f))
                .collect::<Vec<_>>()
                .join(" | ")
        );
    }
    s
}

/// Rewrites the README's kernel table (between [`README_BEGIN`] and [`README_END`]) from a
/// full matrix run. Errors: the README is unreadable or lacks the markers.
fn write_readme(results: &[GuestResult]) -> Result<()> {
    let path = crate::util::workspace_root().join("README.md");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    let (Some(a), Some(b)) = (text.find(README_BEGIN), text.find(README_END)) else {
        bail!(
            "{} lacks the kernel-matrix markers ({README_BEGIN} … {README_END})",
            path.display()
        );
    };
    let date = run_capture(Command::new("date").args(["-u", "+%Y-%m-%d"]))?;
    let new = format!(
        "{README_BEGIN}\n{}\nLast run {}, QEMU (TCG) guests of Debian's kernels, PostgreSQL 15; \
         emulated guests run 20–100× slower than a host, so this proves loading, attaching and \
         exact counts, not cost.\n",
        readme_table(results),
        date.trim()
    );
    let text = format!("{}{new}{}", &text[..a], &text[b..]);
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote the kernel table into {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A guest's output as a 6.1 guest wrote it (doctor and capture sections, uptimes).
    const OUTPUT: &str = "@@ release 6.1.0-50-amd64
@@ script starts at uptime 3.80 s
@@ postgres up at uptime 15.02 s
@@ doctor auto
ok    hooks                        fexit loads and attaches (cost rank 0)
@@ doctor tp_btf_sock
FAIL  hooks                        no hook family could be attached: tp_btf_sock: unknown BTF type
@@ doctors done at uptime 17.24 s
@@ capture auto
test capture_pg15 ... Pg15 Tcp -M simple : pgbench 1000 tx, pgmon 1000, pg_stat_statements 1000
Pg15 Unix -M prepared -C: pgbench 200 tx, pgmon 200, pg_stat_statements 200
Pg15 hook family asked: auto, in use: fexit
@@ capture exit 0
@@ capture auto done at uptime 150.94 s
@@ capture tp_btf_sock
@@ capture skipped: doctor refused the family
@@ done at uptime 150.99 s
";

    #[test]
    fn parses_doctor_and_capture_sections() {
        let families = vec!["auto".to_owned(), "tp_btf_sock".to_owned()];
        let r = parse("6.1", OUTPUT, Duration::from_secs(155), &families);
        assert_eq!(r.release, "6.1.0-50-amd64");
        let (_, auto) = &r.families[0];
        assert_eq!(auto.suite_exit, Some(0));
        assert!(auto.passed());
        assert_eq!(auto.counts.len(), 2);
        assert_eq!(auto.in_use.as_deref(), Some("fexit"));
        assert!(
            auto.doctor
                .as_deref()
                .unwrap()
                .starts_with("ok fexit loads")
        );
        let (_, sock) = &r.families[1];
        assert!(sock.skipped.is_some());
        assert_eq!(sock.suite_exit, None);
        assert!(sock.doctor.as_deref().unwrap().starts_with("FAIL"));
        assert_eq!(suite_verdict(auto), "passed: 2 runs exact (fexit)");
        assert_eq!(suite_verdict(sock), "refused (not run)");
        let names: Vec<&str> = r.uptimes.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "script starts",
                "postgres up",
                "doctors done",
                "capture auto done",
                "done"
            ]
        );
    }
}
