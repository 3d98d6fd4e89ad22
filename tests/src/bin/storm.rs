//! The benchmark workload: a tight, single-threaded loop of the memory syscalls leaktrace counts.
//!
//! Usage: `storm [--iterations N] [--getppid]`
//!
//! With `--getppid` it makes N x 100 `getppid` calls instead, a syscall leaktrace does not trace:
//! what a bystander process pays while leaktrace traces something else.
//!
//! Each iteration makes [`CALLS_PER_ITERATION`] raw syscalls: mmap 64 KiB anonymous read-write,
//! touch one page (so the unmap and madvise have a page to free), mprotect half of it PROT_NONE
//! and back, madvise(MADV_DONTNEED) a quarter, mremap it to 128 KiB and back, munmap it, then
//! brk up one page and back down. At the end it prints one line to stdout,
//! `storm: <calls> syscalls in <secs> s`, timed around the loop only, so `cargo xtask bench`
//! measures the traced workload and not the tracer's start-up or teardown.
//!
//! The loop never allocates: the heap is not part of what is measured, and an allocator taking
//! the break would race our brk calls. The syscalls go through `libc::syscall` rather than the
//! libc wrappers so each step is exactly one syscall, whatever libc does (glibc's sbrk, for one,
//! keeps its own copy of the break).

use std::time::Instant;

use libc::c_long;

const PAGE: usize = 4096;
const LEN: usize = 64 * 1024;
/// mmap, mprotect x2, madvise, mremap x2, munmap, brk x2.
const CALLS_PER_ITERATION: u64 = 9;
/// About 1–2 s untraced on a small 2-core VM; `--iterations` overrides it.
const DEFAULT_ITERATIONS: u64 = 75_000;
const USAGE: &str = "usage: storm [--iterations N] [--getppid]";
/// getppid calls per iteration with `--getppid`.
const GETPPID_PER_ITERATION: u64 = 100;

fn main() {
    let (iterations, getppid) = parse_args();
    if getppid {
        let calls = iterations * GETPPID_PER_ITERATION;
        let start = Instant::now();
        for _ in 0..calls {
            // SAFETY: getppid has no arguments and no effects.
            unsafe { libc::syscall(libc::SYS_getppid) };
        }
        let secs = start.elapsed().as_secs_f64();
        println!("storm: {calls} syscalls in {secs:.6} s");
        return;
    }

    // SAFETY: brk(0) only reports the current break.
    let base = unsafe { libc::syscall(libc::SYS_brk, 0 as c_long) } as usize;

    let start = Instant::now();
    for _ in 0..iterations {
        // SAFETY: each call either creates a fresh mapping the kernel chose or works on that
        // mapping (and on the break above `base`), which nothing else in this process uses.
        unsafe { one_iteration(base) };
    }
    let secs = start.elapsed().as_secs_f64();

    println!(
        "storm: {} syscalls in {secs:.6} s",
        iterations * CALLS_PER_ITERATION
    );
}

fn parse_args() -> (u64, bool) {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let getppid = args.iter().any(|a| a == "--getppid");
    args.retain(|a| a != "--getppid");
    let iterations = match args.as_slice() {
        [] => DEFAULT_ITERATIONS,
        [flag, n] if flag == "--iterations" => match n.parse() {
            Ok(n) => n,
            Err(_) => usage_error(&format!("--iterations wants a number, not {n:?}")),
        },
        _ => usage_error("unexpected arguments"),
    };
    (iterations, getppid)
}

fn usage_error(what: &str) -> ! {
    eprintln!("storm: {what}\n{USAGE}");
    std::process::exit(2)
}

/// Ends the process when a syscall fails: a storm that silently did less work would make the
/// benchmark's ratios meaningless.
fn check(what: &str, ret: c_long) -> c_long {
    if ret < 0 {
        eprintln!("storm: {what} failed: {}", std::io::Error::last_os_error());
        std::process::exit(70);
    }
    ret
}

fn brk_failed(direction: &str) -> ! {
    eprintln!("storm: brk {direction} by a page did not move the break");
    std::process::exit(70)
}

/// # Safety
/// `base` must be the program break, and nothing else may move the break meanwhile.
unsafe fn one_iteration(base: usize) {
    use libc::{
        MADV_DONTNEED, MAP_ANONYMOUS, MAP_PRIVATE, MREMAP_MAYMOVE, PROT_NONE, PROT_READ,
        PROT_WRITE, SYS_brk, SYS_madvise, SYS_mmap, SYS_mprotect, SYS_mremap, SYS_munmap, syscall,
    };
    const RW: c_long = (PROT_READ | PROT_WRITE) as c_long;
    let len = LEN as c_long;
    let half = (LEN / 2) as c_long;
    // SAFETY: the caller vouches for the break; every other call touches only `ptr`'s mapping.
    unsafe {
        let ptr = check(
            "mmap",
            syscall(
                SYS_mmap,
                0 as c_long,
                len,
                RW,
                (MAP_PRIVATE | MAP_ANONYMOUS) as c_long,
                -1 as c_long,
                0 as c_long,
            ),
        );
        // One write faults a page in, so madvise and munmap have something to give back.
        core::ptr::write_volatile(ptr as *mut u8, 1);
        check(
            "mprotect",
            syscall(SYS_mprotect, ptr + half, half, PROT_NONE as c_long),
        );
        check("mprotect", syscall(SYS_mprotect, ptr + half, half, RW));
        check(
            "madvise",
            syscall(SYS_madvise, ptr, half / 2, MADV_DONTNEED as c_long),
        );
        let grown = check(
            "mremap",
            syscall(SYS_mremap, ptr, len, 2 * len, MREMAP_MAYMOVE as c_long),
        );
        let shrunk = check(
            "mremap",
            syscall(SYS_mremap, grown, 2 * len, len, 0 as c_long),
        );
        check("munmap", syscall(SYS_munmap, shrunk, len));

        // The raw brk syscall reports failure by returning the old break, not -1.
        if syscall(SYS_brk, (base + PAGE) as c_long) as usize != base + PAGE {
            brk_failed("up");
        }
        if syscall(SYS_brk, base as c_long) as usize != base {
            brk_failed("down");
        }
    }
}
