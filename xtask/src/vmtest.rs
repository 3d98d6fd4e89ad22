//! `cargo xtask vmtest`: leaktrace's kernel-side checks on the kernels people run, under qemu.
//!
//! The eBPF programs depend on the kernel (tracepoint fields, helpers, BTF), and the machine that
//! builds leaktrace runs one kernel only. So this task boots Debian's own cloud kernels (bullseye
//! 5.10, bookworm 6.1, trixie 6.12; they have BTF built in) and, when its image is readable, the
//! host's kernel, each in a throwaway qemu VM, and runs the same few checks inside each (the
//! `CHECKS` table). It prints a table kernel × check, then the output of each failing check, and
//! fails when any check failed. The README's "Kernels" section says what each kernel lacks.
//!
//! - Kernels come from the Debian archive through apt itself, with a private sources list, lists
//!   and cache per suite under target/vmtest/SUITE/, so the host's apt state is never touched.
//!   Only the kernel image (vmlinuz) of the `linux-image-*-cloud-amd64-unsigned` package is kept;
//!   once it is there nothing is downloaded again (remove target/vmtest/SUITE to refresh).
//! - The VM needs no disk: one initramfs (the same for every kernel) holds busybox-static, the
//!   leaktrace binary, the test fixtures and every library `ldd` lists at the same paths, plus an
//!   /init script that mounts what leaktrace needs, runs the checks and powers off.
//! - /init prints machine-parsable lines on the serial console (qemu's stdout): each check's output
//!   framed by `VMTEST-BEGIN`/`VMTEST-END` lines, then `VMTEST check=NAME status=ok|fail exit=N`.
//!   Each check runs under busybox `timeout`, so a hung check costs its own result only; the whole
//!   boot has a timeout too, after which qemu is killed. Each console is kept in
//!   target/vmtest/logs/.
//! - A kernel that locks up (a soft lockup, which once hung Debian 12's kernel under TCG for the
//!   whole boot) panics at once with its backtraces on the console, and the checks left without a
//!   result run again in a second boot of the same kernel (the kernel command line names them).
//!   The table marks what passed only there, and the first boot's lockup is shown under it.
//! - qemu runs with TCG: KVM fails on this machine ("emulation failure" on cmpxchg16b), and TCG
//!   boots to /init in seconds. Single-threaded TCG (see `boot`): the multi-threaded one races
//!   with the kernel's own code patching.

use std::{
    fmt::Write as _,
    fs,
    io::Read,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{apt_install, installed, is_root, run, workspace};

/// What a check runs inside the VM, as root, with the host's target/debug on PATH.
enum Run {
    /// A shell script run by busybox `sh`; passes when it exits 0.
    Shell(&'static str),
    /// An integration test binary of `tests/tests/NAME.rs`, every test in it, one at a time, with
    /// `CI=true` so that nothing skips.
    Test(&'static str),
}

/// One check run inside every VM.
struct Check {
    name: &'static str,
    run: Run,
    /// Seconds before busybox `timeout` ends it: TCG is several times slower than the host.
    timeout: u32,
}

/// The checks, in the order they run; each runs whatever the others did. main.rs lists the same
/// names for `--checks`.
const CHECKS: [Check; 5] = [
    // Every hook the kernel supports really loads and attaches; on 5.10 it names what is off.
    Check {
        name: "doctor",
        run: Run::Shell("leaktrace doctor"),
        timeout: 120,
    },
    // Every class and counter of 102 processes equal to the fixture's ledger, to the byte;
    // a pid reused within a millisecond keeps two processes' counters apart; and totals stay
    // exact with 200 threads contending for the mm's lock.
    Check {
        name: "ledger",
        run: Run::Test("ledger"),
        timeout: 600,
    },
    // The kernel's resident counters against /proc/PID/status, through fork and exec.
    Check {
        name: "resident",
        run: Run::Test("resident"),
        timeout: 600,
    },
    // The fallbacks (no group_dead before 6.16, no bpf_find_vma before 5.17).
    Check {
        name: "kernels",
        run: Run::Test("kernels"),
        timeout: 600,
    },
    // The /proc fallback, which must work on any kernel.
    Check {
        name: "proc-mode",
        run: Run::Shell("leaktrace run -q --no-ebpf -o $TMPDIR/p.json -- sleep 1"),
        timeout: 60,
    },
];

/// Every check's name, for running them all.
pub(crate) fn all_checks() -> Vec<String> {
    CHECKS.iter().map(|c| c.name.to_string()).collect()
}

/// Kernels to boot, in table order: the host's, then Debian's newest first. main.rs lists the
/// same names for `--kernels`.
const KERNELS: [&str; 4] = ["host", "trixie", "bookworm", "bullseye"];

/// Fixture programs the tests run, from target/debug (ledger execs its sibling ledger_exec).
const FIXTURES: [&str; 8] = [
    "leaktrace",
    "ledger",
    "ledger_exec",
    "resident",
    "threads",
    "cycler",
    "pid_reuse",
    "mm_contention",
];

/// Busybox applets, as links in /bin: what /init and the checks use, and ls and dmesg for
/// debugging a kept initramfs or a new check.
const APPLETS: [&str; 12] = [
    "sh", "mount", "cat", "poweroff", "mkdir", "echo", "ls", "sleep", "timeout", "grep", "head",
    "dmesg",
];

/// What the task itself needs on the host.
const PACKAGES: [&str; 3] = ["qemu-system-x86", "busybox-static", "cpio"];

/// Boot to /init takes seconds; this margin covers it and the slowest boot seen, plus poweroff.
const BOOT_MARGIN: Duration = Duration::from_secs(60);

/// Lines of a failing check's output shown under the table (the whole output is in the log).
const EXCERPT_LINES: usize = 10;

/// Lines shown from a kernel lockup or panic: enough for the stuck tasks' backtraces.
const KERNEL_EXCERPT_LINES: usize = 60;

/// Where a kernel comes from and, once fetched, its image.
struct Kernel {
    /// `host` or the Debian suite.
    key: &'static str,
    /// For the table, e.g. `6.12.117 (trixie)`.
    label: String,
    /// The kernel image, or why there is none.
    image: Result<PathBuf, String>,
    /// Seconds spent downloading it: 0 when cached, `None` for the host's.
    fetched: Option<f64>,
}

/// A check's result in one VM.
struct Outcome {
    ok: bool,
    /// False when the VM ended or was killed before the check finished.
    finished: bool,
    /// `exit N`, or why there is no result.
    summary: String,
    output: Vec<String>,
    /// When the check ran again in a second boot: why the first gave no result, and its output.
    first_boot: Option<(String, Vec<String>)>,
}

/// One VM's results, in `CHECKS` order (of the checks it ran), and how long the boot took.
struct Boot {
    outcomes: Vec<Outcome>,
    seconds: f64,
}

impl Boot {
    /// Takes a second boot's results for the checks that had none in this one.
    fn retried(&mut self, again: Boot) {
        self.seconds += again.seconds;
        let unfinished = self.outcomes.iter_mut().filter(|o| !o.finished);
        for (outcome, second) in unfinished.zip(again.outcomes) {
            let first = std::mem::replace(outcome, second);
            outcome.first_boot = Some((first.summary, first.output));
        }
    }
}

/// Runs the task for `kernels` (names from `KERNELS`, which clap checks); true when every check
/// passed wherever it could run. A host kernel without a readable image is shown and skipped, not
/// a failure: the normal tests cover the host's kernel.
pub(crate) fn vmtest(kernels: &[String], checks: &[String], keep: bool) -> Result<bool> {
    let checks: Vec<&Check> = CHECKS
        .iter()
        .filter(|c| checks.iter().any(|n| n == c.name))
        .collect();
    host_packages()?;
    let dir = workspace().join("target/vmtest");
    fs::create_dir_all(dir.join("logs"))?;

    // Build first: a compile error should stop the task before any download.
    let tests = build()?;
    let initrd = dir.join("initrd.gz");
    let root = dir.join("initramfs");
    initramfs(&root, &initrd, &tests)?;
    if !keep {
        fs::remove_dir_all(&root)?;
    }

    let mut rows = Vec::new();
    for key in KERNELS
        .into_iter()
        .filter(|k| kernels.iter().any(|n| n == k))
    {
        let kernel = if key == "host" {
            host_kernel()
        } else {
            debian_kernel(&dir.join(key), key)
        };
        let boot = match &kernel.image {
            Ok(image) => {
                println!("vmtest: booting {}", kernel.label);
                let log = dir.join(format!("logs/{key}.log"));
                let mut first = boot(image, &initrd, &log, &checks)?;
                println!("vmtest: {} done in {:.1} s", kernel.label, first.seconds);
                let unfinished: Vec<&Check> = checks
                    .iter()
                    .zip(&first.outcomes)
                    .filter(|(_, o)| !o.finished)
                    .map(|(c, _)| *c)
                    .collect();
                if !unfinished.is_empty() {
                    let names: Vec<&str> = unfinished.iter().map(|c| c.name).collect();
                    println!(
                        "vmtest: {}: no result for {}; booting again for them",
                        kernel.label,
                        names.join(", ")
                    );
                    let log = dir.join(format!("logs/{key}-again.log"));
                    let again = boot(image, &initrd, &log, &unfinished)?;
                    println!(
                        "vmtest: {} again done in {:.1} s",
                        kernel.label, again.seconds
                    );
                    first.retried(again);
                }
                Some(first)
            }
            Err(why) => {
                println!("vmtest: {}: {why}", kernel.label);
                None
            }
        };
        rows.push((kernel, boot));
    }

    let (table, passed) = report(&rows, &checks);
    print!("{table}");
    if keep {
        println!("initramfs kept in {}", root.display());
    }
    println!("consoles in {}", dir.join("logs").display());
    Ok(passed)
}

/// Installs qemu, busybox-static and cpio when missing (they are needed here only, so `setup`
/// leaves them out).
fn host_packages() -> Result<()> {
    let missing: Vec<String> = PACKAGES
        .into_iter()
        .filter(|p| !installed(p))
        .map(String::from)
        .collect();
    if !missing.is_empty() && !is_root() {
        bail!(
            "vmtest needs {} installed: run `sudo cargo xtask vmtest` once",
            missing.join(" ")
        );
    }
    apt_install(&missing)
}

/// The running kernel, if its image is readable (it often is not: cloud VMs boot a kernel that
/// is not in /boot, and some distributions make /boot/vmlinuz-* readable by root only).
fn host_kernel() -> Kernel {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let release = release.trim();
    let image = PathBuf::from(format!("/boot/vmlinuz-{release}"));
    let image = match fs::File::open(&image) {
        Ok(_) => Ok(image),
        Err(e) => Err(format!(
            "{} is not available ({e}); `cargo xtask test` covers the host's kernel",
            image.display()
        )),
    };
    Kernel {
        key: "host",
        label: format!("{} (host)", short_version(release)),
        image,
        fetched: None,
    }
}

/// `6.12.117` of `6.12.117-1` or `6.18.44-fc-v1045`.
fn short_version(version: &str) -> &str {
    version.split(['-', '+']).next().unwrap_or(version)
}

/// Debian's cloud kernel of `suite`, downloaded into `dir` once. A download failure is shown in
/// the table (and fails the run) rather than ending the task, so other kernels still run.
fn debian_kernel(dir: &Path, suite: &'static str) -> Kernel {
    let started = Instant::now();
    let fetched = fetch_debian(dir, suite);
    let seconds = started.elapsed().as_secs_f64();
    match fetched {
        Ok((image, version)) => Kernel {
            key: suite,
            label: format!("{} ({suite})", short_version(&version)),
            image: Ok(image),
            fetched: Some(seconds),
        },
        Err(e) => Kernel {
            key: suite,
            label: format!("? ({suite})"),
            image: Err(format!("cannot download Debian's kernel: {e:#}")),
            fetched: Some(seconds),
        },
    }
}

/// The cached image and package version, or apt's download of them. The cache is
/// `dir/vmlinuz` plus `dir/version`, written last, so a half-done download is never taken for
/// a cached one.
fn fetch_debian(dir: &Path, suite: &str) -> Result<(PathBuf, String)> {
    let (image, version_file) = (dir.join("vmlinuz"), dir.join("version"));
    if let Ok(version) = fs::read_to_string(&version_file) {
        return Ok((image, version.trim().to_string()));
    }
    println!("vmtest: downloading Debian {suite}'s cloud kernel");
    // apt with a private sources list, lists and cache: the host's apt state stays as it is.
    let lists = dir.join("apt/lists");
    let cache = dir.join("apt/cache");
    fs::create_dir_all(lists.join("partial"))?;
    fs::create_dir_all(cache.join("archives/partial"))?;
    let sources = dir.join("sources.list");
    fs::write(
        &sources,
        format!("deb http://deb.debian.org/debian {suite} main\n"),
    )?;
    let options = [
        format!("Dir::Etc::sourcelist={}", sources.display()),
        "Dir::Etc::sourceparts=/nonexistent".into(),
        format!("Dir::State::Lists={}", lists.display()),
        format!("Dir::Cache={}", cache.display()),
        // Root's apt would download as `_apt`, which cannot write into target/.
        "APT::Sandbox::User=root".into(),
    ];
    let apt = |program: &str| {
        let mut command = Command::new(program);
        for option in &options {
            command.args(["-o", option]);
        }
        command.current_dir(dir);
        command
    };
    run(apt("apt-get").args(["-qq", "update"]))?;
    // The metapackage depends on the suite's current kernel, e.g. linux-image-6.12.117+deb13-
    // cloud-amd64; the unsigned package has the same image without the Secure Boot signature.
    let depends = output(apt("apt-cache").args(["depends", "linux-image-cloud-amd64"]))?;
    let package = depends
        .lines()
        .filter_map(|l| l.trim().strip_prefix("Depends: "))
        .find(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("linux-image-cloud-amd64 has no kernel dependency:\n{depends}"))?;
    let package = format!("{package}-unsigned");
    run(apt("apt-get").args(["-qq", "download", &package]))?;

    let version = unpack_kernel(dir, &package, &image)?;
    fs::remove_dir_all(dir.join("apt"))?;
    fs::write(&version_file, format!("{}\n", version.trim()))?;
    Ok((image, version.trim().to_string()))
}

/// Copies the kernel image out of the downloaded `package` .deb in `dir` to `image`, removing
/// the .deb and what was unpacked; the package's version.
fn unpack_kernel(dir: &Path, package: &str, image: &Path) -> Result<String> {
    let deb = fs::read_dir(dir)?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.extension().is_some_and(|e| e == "deb")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(package))
        })
        .with_context(|| {
            format!(
                "apt-get download left no {package} .deb in {}",
                dir.display()
            )
        })?;
    let version = output(
        Command::new("dpkg-deb")
            .args(["-f"])
            .arg(&deb)
            .arg("Version"),
    )?;
    let extracted = dir.join("deb");
    let _ = fs::remove_dir_all(&extracted);
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&extracted))?;
    let vmlinuz = fs::read_dir(extracted.join("boot"))?
        .filter_map(|e| Some(e.ok()?.path()))
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
    fs::copy(&vmlinuz, image)?;
    // Only the image is kept: the modules, the .deb and apt's lists are ~40 MB per suite, and a
    // refresh (removing dir) starts over anyway.
    fs::remove_dir_all(&extracted)?;
    fs::remove_file(&deb)?;
    Ok(version)
}

/// The stdout of a command that must succeed.
fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .output()
        .with_context(|| format!("cannot run {shown}"))?;
    if !out.status.success() {
        bail!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Builds leaktrace, the fixtures and the test binaries the checks run (debug, as `cargo xtask
/// test` does); returns the test binaries' paths by name.
fn build() -> Result<Vec<(&'static str, PathBuf)>> {
    crate::cargo(&[
        "build",
        "--package",
        "tracer",
        "--package",
        "leaktrace-tests",
        "--bins",
    ])?;
    let mut command = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    command
        .args(["test", "--package", "leaktrace-tests", "--no-run"])
        .current_dir(workspace());
    let names: Vec<&'static str> = CHECKS
        .iter()
        .filter_map(|c| match c.run {
            Run::Test(name) => Some(name),
            Run::Shell(_) => None,
        })
        .collect();
    for name in &names {
        command.args(["--test", name]);
    }
    let out = command.output().context("cannot run cargo test --no-run")?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("cargo test --no-run failed:\n{stderr}");
    }
    // cargo says `Executable tests/ledger.rs (target/debug/deps/ledger-0123abcd)` per binary.
    names
        .into_iter()
        .map(|name| {
            let needle = format!("Executable tests/{name}.rs (");
            let path = stderr
                .lines()
                .find_map(|l| l[l.find(&needle)? + needle.len()..].strip_suffix(')'))
                .with_context(|| format!("cargo test --no-run did not name tests/{name}.rs"))?;
            Ok((name, workspace().join(path)))
        })
        .collect()
}

/// Builds the initramfs tree in `root` and packs it into `initrd`. The binaries keep their host
/// paths (the tests find the fixtures and `CARGO_TARGET_TMPDIR` by absolute path), stripped of
/// debug information to keep the archive small.
fn initramfs(root: &Path, initrd: &Path, tests: &[(&str, PathBuf)]) -> Result<()> {
    let _ = fs::remove_dir_all(root);
    for sub in ["bin", "proc", "sys", "dev", "tmp", "scratch", "checks"] {
        fs::create_dir_all(root.join(sub))?;
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).is_file())
        .context("busybox-static is installed but /bin/busybox is missing")?;
    fs::copy(busybox, root.join("bin/busybox"))?;
    for applet in APPLETS {
        symlink("busybox", root.join("bin").join(applet))?;
    }

    let debug = workspace().join("target/debug");
    let binaries = FIXTURES
        .iter()
        .map(|name| debug.join(name))
        .chain(tests.iter().map(|(_, path)| path.clone()));
    for binary in binaries {
        let inside = root.join(binary.strip_prefix("/")?);
        fs::create_dir_all(inside.parent().unwrap())?;
        run(Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(&inside)
            .arg(&binary))?;
        // glibc and the dynamic loader, at the paths the binary asks for.
        for library in libraries(&binary)? {
            let inside = root.join(library.strip_prefix("/")?);
            if !inside.exists() {
                fs::create_dir_all(inside.parent().unwrap())?;
                fs::copy(&library, &inside)
                    .with_context(|| format!("cannot copy {}", library.display()))?;
            }
        }
    }
    // The tests' CARGO_TARGET_TMPDIR: files whose page cache must not be tmpfs.
    fs::create_dir_all(root.join(workspace().join("target/tmp").strip_prefix("/")?))?;

    for check in &CHECKS {
        let script = match check.run {
            Run::Shell(script) => script.to_string(),
            Run::Test(name) => {
                let (_, path) = tests.iter().find(|(n, _)| *n == name).unwrap();
                format!("{} --test-threads=1", path.display())
            }
        };
        fs::write(
            root.join("checks").join(format!("{}.sh", check.name)),
            format!("{script}\n"),
        )?;
    }
    let init = root.join("init");
    fs::write(&init, init_script(&debug))?;
    run(Command::new("chmod").arg("755").arg(&init))?;

    // bash for pipefail: a failing cpio must not leave a silently truncated archive.
    run(Command::new("bash")
        .args([
            "-c",
            "set -o pipefail; find . | cpio --quiet -o -H newc | gzip -1 > \"$0\"",
        ])
        .arg(initrd)
        .current_dir(root))
}

/// The absolute paths `ldd` lists for `binary` (none for a static binary).
fn libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot run ldd")?;
    // Lines are `name => /path (addr)`, `/lib64/ld-linux-x86-64.so.2 (addr)` for the loader, or
    // `linux-vdso.so.1 (addr)`, which the kernel provides.
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect())
}

/// /init: mount what leaktrace needs, run every check with its output framed on the console,
/// power off. Results are printed as they come, so a VM that dies midway still reports the
/// checks it finished.
fn init_script(debug: &Path) -> String {
    let mut script = format!(
        "#!/bin/sh
# Written by `cargo xtask vmtest` (xtask/src/vmtest.rs).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
# The archive has no /dev/console, so the kernel may have started /init without a console.
exec 0</dev/console 1>/dev/console 2>&1
# Scratch space on its own tmpfs, not over /tmp: the workspace (and so the binaries, at their
# host paths in this archive) may itself live under /tmp.
mount -t tmpfs tmpfs /scratch
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
export PATH=/bin:{} HOME=/scratch TMPDIR=/scratch CI=true RUST_BACKTRACE=1
echo \"VMTEST kernel=$(cat /proc/sys/kernel/osrelease)\"
# The checks to run, `vmtest.checks=a,b` on the kernel command line (all when it is not there).
only=all
for word in $(cat /proc/cmdline); do
    case $word in vmtest.checks=*) only=${{word#vmtest.checks=}} ;; esac
done
",
        debug.display()
    );
    for check in &CHECKS {
        let (name, timeout) = (check.name, check.timeout);
        let _ = write!(
            script,
            "case \",$only,\" in *,all,*|*,{name},*)
echo VMTEST-BEGIN check={name}
timeout {timeout} sh /checks/{name}.sh </dev/null 2>&1
rc=$?
echo VMTEST-END check={name}
if [ $rc = 0 ]; then status=ok; else status=fail; fi
echo \"VMTEST check={name} status=$status exit=$rc\"
;; esac
"
        );
    }
    script.push_str("echo VMTEST-DONE\npoweroff -f\n");
    script
}

/// qemu booting `image` with `initrd` and the kernel command line `append`, its console and
/// errors piped.
fn start_qemu(image: &Path, initrd: &Path, append: &str) -> Result<std::process::Child> {
    Command::new("qemu-system-x86_64")
        // thread=single: both vCPUs on one host thread. With a thread per vCPU (MTTCG), a vCPU
        // could run stale translated code while the other patched kernel text (a static key
        // flipped as a tracepoint is attached): Debian 13's kernel died of an `int3` Oops in
        // mm_trace_rss_stat in CI, and Debian 12's locked up on both CPUs.
        .args([
            "-accel",
            "tcg,thread=single",
            "-cpu",
            "max",
            "-m",
            "4096",
            "-smp",
            "2",
        ])
        .arg("-kernel")
        .arg(image)
        .arg("-initrd")
        .arg(initrd)
        // panic=-1 with -no-reboot: if /init dies, the kernel panics and qemu exits at once.
        // root= (any name) makes the initramfs a ramfs rather than a tmpfs, so the fixtures'
        // own executables map as files, not as shared memory, as they do from a disk.
        .arg("-append")
        .arg(append)
        // No network: none is needed, and a NIC wants option ROMs a minimal qemu may lack.
        .args(["-nographic", "-no-reboot", "-nic", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot run qemu-system-x86_64")
}

/// Reads qemu's console and errors until it exits or `limit` has passed since `started` (then
/// it is killed): the console, the errors, and whether it was killed.
fn wait_for_qemu(
    qemu: &mut std::process::Child,
    started: Instant,
    limit: Duration,
) -> Result<(String, String, bool)> {
    // Read both pipes on threads so a chatty console can never block qemu while we wait.
    let mut stdout = qemu.stdout.take().unwrap();
    let mut stderr = qemu.stderr.take().unwrap();
    let console = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stdout.read_to_end(&mut text);
        text
    });
    let errors = std::thread::spawn(move || {
        let mut text = Vec::new();
        let _ = stderr.read_to_end(&mut text);
        text
    });
    let timed_out = loop {
        if qemu.try_wait()?.is_some() {
            break false;
        }
        if started.elapsed() > limit {
            let _ = qemu.kill();
            let _ = qemu.wait();
            break true;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The serial console ends lines with \r\n.
    let console = String::from_utf8_lossy(&console.join().unwrap()).replace('\r', "");
    let errors = String::from_utf8_lossy(&errors.join().unwrap()).into_owned();
    Ok((console, errors, timed_out))
}

/// Boots `image` with the initramfs to run `checks` and reads their results from its console,
/// which is also written to `log`. qemu is killed when the boot takes longer than the checks'
/// timeouts plus a margin.
fn boot(image: &Path, initrd: &Path, log: &Path, checks: &[&Check]) -> Result<Boot> {
    let started = Instant::now();
    let limit = BOOT_MARGIN
        + checks
            .iter()
            .map(|c| Duration::from_secs(c.timeout.into()))
            .sum();
    let names: Vec<&str> = checks.iter().map(|c| c.name).collect();
    // loglevel=5 rather than quiet: warnings and the backtraces of a lockup reach the console.
    // softlockup_panic: a kernel that locks up ends the boot at once (panic=-1, -no-reboot)
    // instead of holding it until its time is up, with every CPU's backtrace.
    let append = format!(
        "console=ttyS0 loglevel=5 panic=-1 softlockup_panic=1 softlockup_all_cpu_backtrace=1 \
         root=/dev/vmtest-ramfs vmtest.checks={}",
        names.join(",")
    );
    let mut qemu = start_qemu(image, initrd, &append)?;
    let (console, errors, timed_out) = wait_for_qemu(&mut qemu, started, limit)?;
    let seconds = started.elapsed().as_secs_f64();
    fs::write(log, format!("{console}\n--- qemu stderr ---\n{errors}"))?;

    let why_missing = if timed_out {
        format!("no result: the VM was killed after {} s", limit.as_secs())
    } else {
        let tail: Vec<&str> = console.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(
            "no result: the VM ended first; console ends with:\n{}\n{}",
            tail.join("\n"),
            errors.trim()
        )
    };
    let outcomes = checks
        .iter()
        .map(|check| parse(&console, check.name, &why_missing))
        .collect();
    Ok(Boot { outcomes, seconds })
}

/// The result of check `name` in a console, and its framed output.
fn parse(console: &str, name: &str, why_missing: &str) -> Outcome {
    let (begin, end) = (
        format!("VMTEST-BEGIN check={name}"),
        format!("VMTEST-END check={name}"),
    );
    let output: Vec<String> = console
        .lines()
        .skip_while(|l| !l.contains(&begin))
        .skip(1)
        .take_while(|l| !l.contains(&end))
        .map(String::from)
        .collect();
    let prefix = format!("VMTEST check={name} ");
    // `find` rather than `starts_with`: a kernel message can land at the start of a line.
    let result = console
        .lines()
        .find_map(|l| Some(&l[l.find(&prefix)? + prefix.len()..]));
    match result {
        Some(fields) => {
            let field = |key: &str| {
                fields
                    .split_whitespace()
                    .find_map(|f| f.strip_prefix(key)?.strip_prefix('='))
                    .unwrap_or("?")
                    .to_string()
            };
            let exit = field("exit");
            Outcome {
                ok: field("status") == "ok",
                finished: true,
                first_boot: None,
                summary: match exit.as_str() {
                    "143" => "exit 143 (ended by its timeout?)".into(),
                    _ => format!("exit {exit}"),
                },
                output,
            }
        }
        None => Outcome {
            ok: false,
            finished: false,
            first_boot: None,
            summary: why_missing.to_string(),
            output,
        },
    }
}

/// The table, then each failure's first lines; and whether everything that ran passed.
fn report(rows: &[(Kernel, Option<Boot>)], checks: &[&Check]) -> (String, bool) {
    let width = rows
        .iter()
        .map(|(k, _)| k.label.len())
        .chain([6])
        .max()
        .unwrap()
        + 2;
    let mut out = format!("\n{:<width$}", "kernel");
    for check in checks {
        let _ = write!(out, "{:<13}", check.name);
    }
    out.push_str("boot     download\n");
    let mut passed = true;
    let mut details = String::new();
    for (kernel, boot) in rows {
        let _ = write!(out, "{:<width$}", kernel.label);
        let download = match kernel.fetched {
            None => "-".into(),
            // A cached kernel costs a directory read.
            Some(seconds) if seconds < 0.5 => "cached".into(),
            Some(seconds) => format!("{seconds:.1} s"),
        };
        match (boot, &kernel.image) {
            (Some(boot), _) => {
                for (check, outcome) in checks.iter().zip(&boot.outcomes) {
                    let cell = match (outcome.ok, &outcome.first_boot) {
                        (true, None) => "ok",
                        (true, Some(_)) => "ok (again)",
                        (false, _) => "FAIL",
                    };
                    let _ = write!(out, "{cell:<13}");
                    if let Some((summary, output)) = &outcome.first_boot {
                        let _ = writeln!(
                            details,
                            "\n--- {} {}, first boot: {summary}",
                            kernel.label, check.name
                        );
                        excerpt(&mut details, output);
                    }
                    if outcome.ok {
                        continue;
                    }
                    passed = false;
                    let _ = writeln!(
                        details,
                        "\n--- {} {}: {}",
                        kernel.label, check.name, outcome.summary
                    );
                    excerpt(&mut details, &outcome.output);
                }
                let boot = format!("{:.1} s", boot.seconds);
                let _ = writeln!(out, "{boot:<9}{download}");
            }
            (None, image) => {
                for _ in checks {
                    let _ = write!(out, "{:<13}", "n/a");
                }
                let _ = writeln!(out, "{:<9}{download}", "-");
                let why = image.as_ref().err().map(String::as_str).unwrap_or("");
                let _ = writeln!(details, "\n--- {}: not booted: {why}", kernel.label);
                // Only the host kernel may be missing: the other tests cover it.
                if kernel.key != "host" {
                    passed = false;
                }
            }
        }
    }
    out.push_str(&details);
    out.push('\n');
    (out, passed)
}

/// The lines of a check's output worth showing: from a kernel lockup or panic when there is one
/// (the check's own lines before it are beside the point), else the first ones, leaving out the
/// `ok ...` lines doctor lists its passing checks with.
fn excerpt(details: &mut String, output: &[String]) {
    let kernel_trouble = output
        .iter()
        .position(|l| l.contains("BUG: ") || l.contains("Kernel panic"));
    let (from, lines) = match kernel_trouble {
        Some(at) => (at, KERNEL_EXCERPT_LINES),
        None => (0, EXCERPT_LINES),
    };
    for line in output[from..]
        .iter()
        .filter(|l| !l.starts_with("ok "))
        .take(lines)
    {
        let _ = writeln!(details, "    {line}");
    }
}
