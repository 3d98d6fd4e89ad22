//! Builds `tracer-ebpf` for bpfel-unknown-none and leaves the object in OUT_DIR for
//! `kernel::EBPF_OBJECT`.
//!
//! The eBPF crate needs Debian's rustc (it ships a prebuilt `core` for the BPF targets) and
//! bpf-linker on the same LLVM major; `cargo xtask setup` installs both. The nested build runs
//! from a cleaned environment with its own target directory, so the two toolchains never share
//! fingerprints.
//!
//! Without that toolchain the object is left empty, with a warning, so that `cargo check`,
//! clippy and rust-analyzer work on any machine (leaktrace built so says so when it would load
//! the programs, and `--no-ebpf` works). In CI (`CI` set) a missing toolchain is an error.

use std::{
    env,
    path::{Path, PathBuf},
    process::{Command, exit},
};

const DEBIAN_RUSTC: &str = "/usr/bin/rustc";
const DEBIAN_CARGO: &str = "/usr/bin/cargo";
const TARGET: &str = "bpfel-unknown-none";

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    exit(1);
}

/// The LLVM major of Debian's rustc ("LLVM version: 22.1.8" -> "22").
fn llvm_major() -> Option<String> {
    let out = Command::new(DEBIAN_RUSTC).arg("-vV").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))?;
    Some(version.split('.').next()?.to_string())
}

fn find_bpf_linker(cargo_home: &Path) -> Option<PathBuf> {
    let in_cargo_home = cargo_home.join("bin/bpf-linker");
    if in_cargo_home.is_file() {
        return Some(in_cargo_home);
    }
    env::split_paths(&env::var_os("PATH")?)
        .map(|dir| dir.join("bpf-linker"))
        .find(|p| p.is_file())
}

const MISSING: &str = "the eBPF toolchain is missing: run `cargo xtask setup` once (it installs Debian's rustc-web with the BPF core, LLVM and bpf-linker)";

/// Leaves an empty object for `kernel::EBPF_OBJECT` (see the module's doc); an error in CI.
fn without_toolchain(out_dir: &Path, cargo_home: &Path) {
    if env::var_os("CI").is_some() {
        fail(MISSING);
    }
    println!(
        "cargo:warning={MISSING}; this build of leaktrace has no eBPF programs (--no-ebpf works)"
    );
    // Built again once `cargo xtask setup` has installed them (cargo reruns a build script
    // while a path it watches does not exist).
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-changed={DEBIAN_RUSTC}");
    println!(
        "cargo:rerun-if-changed={}",
        cargo_home.join("bin/bpf-linker").display()
    );
    std::fs::write(out_dir.join("tracer-ebpf"), b"")
        .unwrap_or_else(|e| fail(&format!("cannot write the empty eBPF object: {e}")));
}

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap().to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap());
    for watched in [
        "tracer-ebpf/src",
        "tracer-ebpf/Cargo.toml",
        "tracer-common/src",
        "tracer-common/Cargo.toml",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }

    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| home.join(".cargo"));
    let Some(llvm) = llvm_major() else {
        return without_toolchain(&out_dir, &cargo_home);
    };
    let llvm_bin = PathBuf::from(format!("/usr/lib/llvm-{llvm}/bin"));
    let linker = find_bpf_linker(&cargo_home);
    let core = Path::new("/usr/lib/rustlib").join(TARGET);
    if linker.is_none()
        || !llvm_bin.is_dir()
        || !core.is_dir()
        || !Path::new(DEBIAN_CARGO).is_file()
    {
        return without_toolchain(&out_dir, &cargo_home);
    }
    let linker_dir = linker.unwrap().parent().unwrap().to_path_buf();

    let path = env::join_paths([
        llvm_bin,
        linker_dir,
        PathBuf::from("/usr/bin"),
        PathBuf::from("/bin"),
    ])
    .unwrap();
    let target_dir = workspace.join("target/ebpf");
    let status = Command::new(DEBIAN_CARGO)
        .current_dir(&workspace)
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("CARGO_HOME", &cargo_home)
        .env("RUSTC", DEBIAN_RUSTC)
        // aya-ebpf uses #![feature(asm_experimental_arch)]; Debian's rustc is a stable build.
        .env("RUSTC_BOOTSTRAP", "1")
        // BTF for the callbacks bpf_find_vma calls; the verifier needs their func_info.
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf",
        )
        .args([
            "build",
            "--package",
            "tracer-ebpf",
            "--release",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(&target_dir)
        .status()
        .unwrap_or_else(|e| fail(&format!("cannot run {DEBIAN_CARGO}: {e}")));
    if !status.success() {
        fail("building the eBPF programs (tracer-ebpf) failed; see the errors above");
    }
    let object = target_dir.join(TARGET).join("release/tracer-ebpf");
    std::fs::copy(&object, out_dir.join("tracer-ebpf"))
        .unwrap_or_else(|e| fail(&format!("cannot copy {}: {e}", object.display())));
}
