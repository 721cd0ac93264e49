//! The guest kernels' files: Debian's kernel image fetched through a private apt
//! configuration and unpacked (never installed), and the busybox initramfs that boots it
//! over the host's root.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};

use super::{GUEST_MODULES, KERNELS_DIR, Kernel};
use crate::util::{run_capture, run_streaming, which};

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
pub(super) fn fetch(k: &Kernel) -> Result<PathBuf> {
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
pub(super) fn kernel_release(root: &Path) -> Result<String> {
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
pub(super) fn build_initramfs(k: &Kernel, root: &Path, release: &str) -> Result<PathBuf> {
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
