//! Project tasks: `cargo xtask setup | build | test | demo | bench | vmtest`.
//!
//! `setup` installs what the eBPF build needs on a fresh Debian machine (see ARCHITECTURE.md,
//! "The kernel side's toolchain"): Debian's rustc-web with the prebuilt BPF `core`, the LLVM that
//! rustc was built with, and bpf-linker linked against that same LLVM; and for the tests,
//! Chromium, bpftrace and the scraper fixture's npm packages (Bun, puppeteer-core). It is
//! idempotent and returns at once when everything is present. Every other task runs it first.

mod bench;
mod vmtest;

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "leaktrace's project tasks")]
struct Xtask {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the eBPF toolchain (apt packages, bpf-linker) if anything is missing.
    Setup,
    /// Build leaktrace (release) with its eBPF programs.
    Build,
    /// Run every test: unit tests, the root integration tests against the real kernel, then the
    /// kernel-side tests on Debian's kernels under qemu (`vmtest`).
    Test {
        /// Skip the qemu matrix (it needs the Debian archive for the kernels, once).
        #[arg(long)]
        no_vm: bool,
    },
    /// Build everything and run `leaktrace demo`: the built-in leaky worker driving Chromium.
    Demo,
    /// Time a memory-syscall storm untraced, under leaktrace and under bpftrace, side by side.
    Bench {
        /// Rounds of the three variants (order alternated each round).
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Cycle counts of the long-trace runs (a fast worker: ~2 ms a cycle), comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "20000,100000")]
        long_cycles: Vec<u64>,
    },
    /// Boot Debian's cloud kernels (and the host's, if readable) under qemu and run leaktrace's
    /// kernel-side checks in each: a table kernel × check; exit 1 if any check failed.
    Vmtest {
        /// Kernels to boot, comma-separated.
        #[arg(
            long,
            value_delimiter = ',',
            value_parser = ["host", "trixie", "bookworm", "bullseye"],
            default_value = "host,trixie,bookworm,bullseye"
        )]
        kernels: Vec<String>,
        /// Checks to run in each, comma-separated (all by default).
        #[arg(
            long,
            value_delimiter = ',',
            value_parser = ["doctor", "ledger", "resident", "kernels", "proc-mode"],
            default_value = "doctor,ledger,resident,kernels,proc-mode"
        )]
        checks: Vec<String>,
        /// Keep the initramfs tree (target/vmtest/initramfs) for debugging.
        #[arg(long)]
        keep: bool,
    },
}

/// Debian's Rust toolchain for the eBPF crate (a prebuilt BPF `core`, and clippy for it).
const EBPF_PACKAGES: [&str; 4] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "rust-web-clippy",
];
/// The LLVM that bpf-linker links; `{llvm}` is the LLVM major of Debian's rustc.
const LLVM_PACKAGES: [&str; 2] = ["llvm-{llvm}-dev", "libpolly-{llvm}-dev"];
/// Also installed: Chromium (the browser tests drive it), bpftrace (the benchmark's yardstick),
/// GNU time (the benchmark times the worker with it) and Prometheus with promtool (the metrics
/// test scrapes leaktrace with it; Debian's package does not start it where services are off,
/// and the test starts its own).
const TOOLS: [&str; 4] = ["chromium", "bpftrace", "time", "prometheus"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn run(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot run {shown}"))?;
    if !status.success() {
        bail!("{shown} failed ({status})");
    }
    Ok(())
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(2) == Some("0"))
        })
        .unwrap_or(false)
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains("install ok installed"))
}

/// The LLVM major of Debian's rustc, once rustc-web is installed.
fn debian_llvm_major() -> Option<String> {
    let out = Command::new("/usr/bin/rustc").arg("-vV").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    Some(version.split('.').next()?.to_string())
}

fn apt_install(packages: &[String]) -> Result<()> {
    if packages.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "setup must install {} and needs root: run `sudo cargo xtask setup`",
            packages.join(" ")
        );
    }
    println!("setup: installing {}", packages.join(" "));
    run(Command::new("apt-get").args(["update", "-qq"]))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(packages)
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// Whether `command --version` runs and succeeds.
fn runs(command: impl AsRef<std::ffi::OsStr>) -> bool {
    Command::new(command)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// The scraper fixture's npm packages (Bun, puppeteer-core), pinned by its package-lock.json.
/// `npm ci` runs only when the installed Bun does not run or the lock file changed since the last
/// install: a copy of the lock file in node_modules records what was installed.
fn scraper_fixture() -> Result<()> {
    let dir = workspace().join("tests/fixtures/scraper");
    let lock = std::fs::read_to_string(dir.join("package-lock.json"))
        .with_context(|| format!("cannot read {}/package-lock.json", dir.display()))?;
    let bun = dir.join("node_modules/.bin/bun");
    let marker = dir.join("node_modules/.leaktrace-setup-lock.json");
    if runs(&bun) && std::fs::read_to_string(&marker).is_ok_and(|m| m == lock) {
        return Ok(());
    }
    println!("setup: installing the scraper fixture's npm packages (Bun, puppeteer-core)");
    run(Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir))?;
    if !runs(&bun) {
        bail!(
            "{} does not run after `npm ci`: Bun's postinstall script puts its binary there \
             (are npm install scripts disabled, e.g. ignore-scripts=true?)",
            bun.display()
        );
    }
    std::fs::write(&marker, lock)?;
    Ok(())
}

fn setup() -> Result<()> {
    // rustc-web first: the LLVM packages follow its LLVM major.
    let base: Vec<String> = EBPF_PACKAGES
        .into_iter()
        .chain(TOOLS)
        .filter(|p| !installed(p))
        .map(String::from)
        .collect();
    apt_install(&base)?;
    // The Node worker test needs node, the scraper fixture npm; the machines have both, a bare
    // Debian may not.
    let node: Vec<String> = [("node", "nodejs"), ("npm", "npm")]
        .into_iter()
        .filter(|(command, _)| !runs(command))
        .map(|(_, package)| package.to_string())
        .collect();
    apt_install(&node)?;
    let llvm = debian_llvm_major()
        .context("Debian's rustc (/usr/bin/rustc) does not report its LLVM version")?;
    let llvm_packages: Vec<String> = LLVM_PACKAGES
        .iter()
        .map(|p| p.replace("{llvm}", &llvm))
        .filter(|p| !installed(p))
        .collect();
    apt_install(&llvm_packages)?;
    scraper_fixture()?;

    // bpf-linker must link the same LLVM major; a marker records which one it was built with.
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo")
        });
    let marker = cargo_home.join("bpf-linker.llvm");
    let linker = cargo_home.join("bin/bpf-linker");
    if linker.is_file() && std::fs::read_to_string(&marker).is_ok_and(|m| m.trim() == llvm) {
        return Ok(());
    }
    if linker.is_file() && !marker.exists() {
        // Installed by hand before this marker existed: trust it once, record it.
        std::fs::write(&marker, &llvm)?;
        return Ok(());
    }
    println!("setup: building bpf-linker against LLVM {llvm}");
    let path = format!(
        "/usr/lib/llvm-{llvm}/bin:{}",
        env::var("PATH").unwrap_or_default()
    );
    run(Command::new("cargo")
        .args([
            "install",
            "--force",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(format!("llvm-{llvm}"))
        .env("PATH", path))?;
    std::fs::write(&marker, &llvm)?;
    Ok(())
}

/// Clippy on the eBPF crate, which the workspace's clippy leaves out (it is not a default
/// member): for its own target, with Debian's toolchain, as tracer/build.rs builds it. Debian's
/// `cargo-clippy` is run by its path: `cargo clippy` would take rustup's from ~/.cargo/bin.
fn ebpf_clippy() -> Result<()> {
    let llvm = debian_llvm_major().context("Debian's rustc is missing: run `cargo xtask setup`")?;
    run(Command::new("/usr/bin/cargo-clippy")
        .current_dir(workspace())
        .env_clear()
        .env("PATH", format!("/usr/lib/llvm-{llvm}/bin:/usr/bin:/bin"))
        .env(
            "HOME",
            env::var_os("HOME").unwrap_or_else(|| "/root".into()),
        )
        .envs(env::var_os("CARGO_HOME").map(|home| ("CARGO_HOME", home)))
        .env("CARGO", "/usr/bin/cargo")
        .env("RUSTC", "/usr/bin/rustc")
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["clippy", "--package", "tracer-ebpf", "--release"])
        .args([
            "--target",
            "bpfel-unknown-none",
            "--target-dir",
            "target/ebpf",
        ])
        .args(["--", "-D", "warnings"]))
}

fn cargo(args: &[&str]) -> Result<()> {
    run(
        Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .args(args)
            .current_dir(workspace()),
    )
}

/// leaktrace and the fixture programs (the demo's worker among them), in release.
pub(crate) fn build_release() -> Result<()> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "tracer",
        "--package",
        "leaktrace-tests",
        "--bins",
    ])
}

/// `cargo test`, passing its output through, then one closing line that counts every test of
/// every binary: cargo's own last line only speaks for the last (often empty) doc-test run.
fn test_with_summary() -> Result<()> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        // Every test binary, even after one fails: the closing count then speaks for all.
        .args(["test", "--no-fail-fast"])
        .current_dir(workspace())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot run cargo test")?;
    let (mut passed, mut failed) = (0u64, 0u64);
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line?;
        println!("{line}");
        if let Some(counts) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                counts
                    .split(['.', ';'])
                    .find_map(|part| part.trim().strip_suffix(word)?.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            };
            passed += count(" passed");
            failed += count(" failed");
        }
    }
    let status = child.wait()?;
    println!("\ntests: {passed} passed, {failed} failed");
    if !status.success() {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}

fn main() -> Result<()> {
    let xtask = Xtask::parse();
    setup()?;
    match xtask.task {
        Task::Setup => println!("setup: the eBPF toolchain is ready"),
        Task::Build => cargo(&["build", "--release", "--package", "tracer"])?,
        Task::Test { no_vm } => {
            cargo(&["fmt", "--all", "--check"])?;
            cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
            ebpf_clippy()?;
            // The integration tests run the leaktrace binary: build it first.
            cargo(&["build", "--package", "tracer", "--bins"])?;
            if !is_root() {
                println!(
                    "test: not root: the eBPF integration tests will skip (in CI, as root, they run)"
                );
            }
            let host = test_with_summary();
            // The VM matrix runs even when a host test failed: its table is worth having.
            let vms = if no_vm {
                Ok(true)
            } else {
                let kernels = ["trixie", "bookworm", "bullseye"].map(String::from);
                vmtest::vmtest(&kernels, &vmtest::all_checks(), false)
            };
            host?;
            if !vms? {
                bail!(
                    "vmtest: a kernel-side check failed on one of Debian's kernels (table above)"
                );
            }
        }
        Task::Demo => {
            build_release()?;
            let bin = workspace().join("target/release/leaktrace");
            let mut leaktrace = Command::new(&bin);
            if !is_root() {
                leaktrace = Command::new("sudo");
                leaktrace.arg(&bin);
            }
            run(leaktrace.arg("demo"))?;
        }
        Task::Bench {
            rounds,
            long_cycles,
        } => bench::run(&workspace(), rounds, &long_cycles)?,
        Task::Vmtest {
            kernels,
            checks,
            keep,
        } => {
            if !vmtest::vmtest(&kernels, &checks, keep)? {
                std::process::exit(1);
            }
        }
    }
    Ok(())
}
