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
//!    (initdb into tmpfs, socket in the same dir), runs `pgmon-agent doctor` once per hook
//!    family with `capture.hooks` forced to it, then (unless `--doctor-only`) per family
//!    `pgmon-agent run` with that policy while `pgbench -S -t 1000` runs as role `bench`,
//!    and saves the agent's status JSON;
//! 4. prints a table kernel × family: the calls of pgbench's SELECT the agent counted
//!    (exact when 1000), doctor's verdict (loads with its cost rank, or refused and why),
//!    and each guest's wall time (boot to power-off) with its uptime at each stage.
//!
//! Each guest's files stay in `KERNELS_DIR/run/<kernel>/`: `guest.sh`, `output.txt`, `rc`,
//! `console.log` (the serial console) and `status-<family>.json`.
//!
//! Needs root (apt, dpkg, 9p export of `/` with the host's permissions) and the host packages
//! of [`HOST_PACKAGES`].

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

/// Debian packages this command needs on the host: QEMU (system emulator for x86), a static
/// busybox for the initramfs, `cpio` to pack it, `kmod` for `depmod`, `xz-utils` and `zstd`
/// for compressed modules; `debian-archive-keyring` signs all three suites.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "kmod",
    "xz-utils",
    "zstd",
    "debian-archive-keyring",
];

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

/// Transactions of `pgbench -S` in the capture step (one captured statement each).
const PGBENCH_TRANSACTIONS: u32 = 1000;

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
    /// Which kernel: 5.10 (bullseye), 6.1 (bookworm), 6.12 (bookworm-backports) or all.
    #[arg(long, default_value = "6.1")]
    kernel: String,
    /// Hook families to try, comma-separated, of fexit, tp_btf_sock, tp_btf, tracepoint,
    /// raw_tracepoint, auto.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "fexit,tp_btf_sock,tp_btf,tracepoint,raw_tracepoint,auto"
    )]
    families: Vec<String>,
    /// Only `pgmon-agent doctor` per hook family; no capture run with pgbench.
    #[arg(long)]
    doctor_only: bool,
    /// The host CPU QEMU is pinned to (`taskset -c`).
    #[arg(long, default_value_t = 1)]
    cpu: u32,
    /// Seconds a guest may take from boot to power-off before `timeout` ends it.
    #[arg(long, default_value_t = 300)]
    timeout: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Skip `cargo build --release -p pgmon-agent` (use the binary as it is).
    #[arg(long)]
    no_build: bool,
}

/// What one guest reported about one hook family.
#[derive(Default)]
struct FamilyResult {
    /// The doctor's `hooks` line without its name: `ok    fexit loads and attaches (cost
    /// rank 0)` or `FAIL  no hook family could be attached: …`; `None` when none came back.
    doctor: Option<String>,
    /// The capture run's `@@ ` notes (`agent exited at start` and the agent's last lines).
    capture_note: Option<String>,
    /// `(captured, expected)` calls of pgbench's `SELECT abalance …` by role `bench`, from
    /// the run's status JSON; `None` when the run did not get as far as a status.
    capture: Option<(u64, u64)>,
}

/// What one guest reported.
struct GuestResult {
    kernel: &'static str,
    /// `uname -r` of the guest, e.g. `6.1.0-50-amd64`.
    release: String,
    /// Boot to power-off, as the host measured it.
    wall: Duration,
    /// Guest uptime (s) when the script started, PostgreSQL was up, the doctors were done
    /// and the script ended (`@@ … at uptime` markers; the guest clock runs on TCG's time).
    uptimes: Vec<(String, f64)>,
    /// Per family asked for, in order.
    families: Vec<(String, FamilyResult)>,
    /// Why the guest's report is incomplete, if it is.
    problem: Option<String>,
}

/// Fetches, boots and reports each kernel asked for; fails if a kernel cannot be fetched or
/// booted, or (after the table) if a guest's script did not finish. A hook family a kernel
/// refuses is a result in the table, not a failure.
pub fn run(args: &KernelsArgs) -> Result<()> {
    if !is_root() {
        bail!("cargo xtask kernels needs root (apt-get download, dpkg -x, 9p export of /)");
    }
    let kernels: Vec<&Kernel> = if args.kernel == "all" {
        KERNELS.iter().collect()
    } else {
        vec![
            KERNELS
                .iter()
                .find(|k| k.name == args.kernel)
                .with_context(|| {
                    format!("unknown kernel {:?}: 5.10, 6.1, 6.12 or all", args.kernel)
                })?,
        ]
    };
    for tool in [
        "qemu-system-x86_64",
        "busybox",
        "cpio",
        "taskset",
        "timeout",
        "dpkg",
    ] {
        if which(tool).is_none() {
            bail!(
                "{tool} is not on PATH; install the host packages: apt-get install {}",
                HOST_PACKAGES.join(" ")
            );
        }
    }
    if !args.no_build {
        run_streaming(cargo().args(["build", "--release", "-p", "pgmon-agent"]))?;
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
    let mut results = Vec::new();
    for k in kernels {
        let root = fetch(k)?;
        let release = kernel_release(&root)?;
        let initrd = build_initramfs(k, &root, &release)?;
        let res = boot(args, k, &root, &release, &initrd, &agent)?;
        results.push(res);
    }
    print!("{}", table(&results));
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
    Ok(())
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

/// The guest script: PostgreSQL 15 from the host's files in a tmpfs dir, `doctor` per family
/// of `families`, then (unless `doctor_only`) per family an agent run with `capture.hooks`
/// forced to it while `pgbench -S` runs as role `bench`; each run's status JSON goes to
/// `/run/pgmon-out/status-<family>.json` (the host's `KERNELS_DIR/run/<kernel>/`). Lines
/// starting `@@ ` are markers [`parse`] reads.
fn guest_script(agent: &Path, families: &[&str], doctor_only: bool) -> String {
    let families = families.join(" ");
    let capture = if doctor_only {
        String::new()
    } else {
        format!(
            r#"
$PSQL -c "CREATE ROLE bench LOGIN SUPERUSER" > /dev/null
$PGBIN/pgbench -h $D -U bench -i -q postgres > $D/pgbench-init.log 2>&1 || cat $D/pgbench-init.log
for fam in {families}; do
  echo "@@ capture $fam"
  $AGENT run -c $D/$fam.yaml > $D/agent-$fam.log 2>&1 &
  APID=$!
  i=0
  until $AGENT status --addr $ADDR > /dev/null 2>&1; do
    if ! kill -0 $APID 2> /dev/null; then echo "@@ agent exited at start"; tail -3 $D/agent-$fam.log; continue 2; fi
    i=$((i+1)); if [ $i -gt 240 ]; then echo "@@ agent not up after 120 s"; break; fi; sleep 0.5
  done
  echo "@@ agent up after $((i/2)) s"
  $PGBIN/pgbench -h $D -U bench -S -t {PGBENCH_TRANSACTIONS} postgres 2>&1 | grep -E "transactions actually processed|tps"
  # Up to 15 s for the count (the agent drains every 50 ms), then 1 s more for stragglers.
  i=0
  while [ $i -lt 30 ]; do
    n=$($AGENT status --addr $ADDR --role bench 2>/dev/null | awk -F'|' '/SELECT abalance/ {{gsub(/ /, "", $2); print $2}}')
    [ "${{n:-0}}" -ge {PGBENCH_TRANSACTIONS} ] && break
    i=$((i+1)); sleep 0.5
  done
  sleep 1
  $AGENT status --addr $ADDR --json > /run/pgmon-out/status-$fam.json 2>&1
  $AGENT status --addr $ADDR 2>&1 | grep -E "^capture"
  $AGENT status --addr $ADDR --role bench 2>&1 | grep -E "SELECT abalance"
  kill -TERM $APID; wait $APID
  echo "@@ agent exited $?"
done
"#
        )
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
PSQL="$PGBIN/psql -h $D -U postgres -d postgres -X -q"
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
  $AGENT doctor -c $D/$fam.yaml
done
echo "@@ doctors done at uptime $(cut -d' ' -f1 /proc/uptime) s"
{capture}
runuser -u postgres -- $PGBIN/pg_ctl -D $D/data -w stop -m fast > /dev/null
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
            &args.families.iter().map(String::as_str).collect::<Vec<_>>(),
            args.doctor_only,
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
    if !args.doctor_only {
        for (family, r) in &mut res.families {
            r.capture = captured(&out.join(format!("status-{family}.json")));
        }
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
        } else if let Some(f) = line.strip_prefix("@@ capture ") {
            section = index(f).map_or(Section::None, Section::Capture);
        } else if let Some(m) = line.strip_prefix("@@ ") {
            if let Some((what, t)) = m.split_once(" at uptime ") {
                if let Ok(t) = t.trim_end_matches(" s").parse::<f64>() {
                    res.uptimes.push((what.to_owned(), t));
                }
                section = Section::None;
            } else if let Section::Capture(i) = section
                && (m.starts_with("agent exited at start") || m.starts_with("agent not up"))
            {
                res.families[i].1.capture_note = Some(m.to_owned());
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
                    // The agent's own error line after `agent exited at start`.
                    if let Some(note) = &mut res.families[i].1.capture_note
                        && note.starts_with("agent exited at start")
                        && let Some(error) = line.strip_prefix("pgmon-agent: ")
                    {
                        note.push_str(": ");
                        note.push_str(error.trim());
                    }
                }
                Section::None => {}
            }
        }
    }
    res
}

/// Calls of pgbench's `SELECT abalance …` charged to role `bench` in the agent's status JSON
/// (`roles[].fingerprints[].calls`, as `tests/src/agent.rs` reads them), against
/// [`PGBENCH_TRANSACTIONS`]; `None` without a readable status.
fn captured(status: &Path) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(status).ok()?;
    let json: serde_json::Value = serde_json::from_str(&text).ok()?;
    let calls = json["roles"]
        .as_array()?
        .iter()
        .find(|r| r["role"] == "bench")
        .and_then(|r| {
            r["fingerprints"]
                .as_array()?
                .iter()
                .filter(|f| f.to_string().contains("abalance"))
                .filter_map(|f| f["calls"].as_u64())
                .max()
        })
        .unwrap_or(0);
    Some((calls, u64::from(PGBENCH_TRANSACTIONS)))
}

/// The report: one row per kernel × family (doctor's verdict, the capture count), then the
/// wall time and guest uptimes per kernel.
fn table(results: &[GuestResult]) -> String {
    let mut s = format!(
        "\n{:<7} {:<22} {:<15} {:<26} doctor\n",
        "kernel",
        "release",
        "family",
        format!("capture (of {PGBENCH_TRANSACTIONS})")
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
            let capture = match (f.capture, &f.capture_note) {
                (Some((got, want)), _) if got == want => format!("{got} exact"),
                (Some((got, want)), _) => format!("{got} NOT exact (of {want})"),
                (None, Some(note)) if note.starts_with("agent exited at start") => {
                    "refused (agent exits)".to_owned()
                }
                (None, Some(note)) => note.clone(),
                (None, None) => "-".to_owned(),
            };
            let _ = writeln!(
                s,
                "{:<7} {:<22} {:<15} {:<26} {doctor}",
                r.kernel, r.release, family, capture
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
