//! One guest: its script (doctor per family, then the capture suite), the QEMU boot, and
//! the reading of what it reported.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};

use super::{CAPTURE_TEST, FamilyResult, GuestResult, Kernel, KernelsArgs};
use crate::util::describe;

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
pub(super) fn boot(
    args: &KernelsArgs,
    k: &Kernel,
    root: &Path,
    release: &str,
    initrd: &Path,
    agent: &Path,
    suite: Option<&Path>,
) -> Result<GuestResult> {
    let out = super::run_dir(k.name);
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
pub(super) fn parse(
    kernel: &'static str,
    output: &str,
    wall: Duration,
    families: &[String],
) -> GuestResult {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::suite_verdict;

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
