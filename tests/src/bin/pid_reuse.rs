//! Fixture: a child's pid taken by the next child within a millisecond of its exit.
//!
//! `pid_reuse [--pairs N]` (default 3) forks child A, which maps 4 MiB of private anonymous
//! memory in two calls and exits; as soon as A is reaped it writes A's pid minus one to
//! `/proc/sys/kernel/ns_last_pid` (root only) and forks child B, which gets A's pid unless
//! another process on the host forked in between (then B exits at once and the pair is tried
//! again). B maps 1 MiB in one call and exits. For each pair it prints `reused PID`.
//!
//! A tracer that keys a process's counters by pid alone, and collects an exited one's a moment
//! later, adds B's mapping to A's.

use std::io::Write;

use leaktrace_tests::{arg_value, sys};

const MIB: usize = 1 << 20;
/// Attempts per pair before giving up: the host's other processes rarely fork in between.
const ATTEMPTS: usize = 100;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let pairs: usize = arg_value(&args, "--pairs").map_or(3, |v| v.parse().expect("a count"));
    for _ in 0..pairs {
        let pid = (0..ATTEMPTS)
            .find_map(|_| one_pair())
            .expect("no child got its predecessor's pid");
        println!("reused {pid}");
        std::io::stdout().flush().expect("stdout");
    }
}

/// Forks A, then B onto A's pid; B's pid when it got it.
fn one_pair() -> Option<i32> {
    let a = fork_child(|| map(&[2 * MIB, 2 * MIB]));
    wait(a);
    std::fs::write("/proc/sys/kernel/ns_last_pid", (a - 1).to_string())
        .expect("write ns_last_pid (needs root)");
    let reused = std::cell::Cell::new(false);
    let b = fork_child(|| {
        // SAFETY: getpid has no preconditions.
        if unsafe { libc::getpid() } == a {
            map(&[MIB]);
        }
    });
    reused.set(b == a);
    wait(b);
    reused.get().then_some(a)
}

/// Forks a child that runs `body` and exits with `_exit` (nothing of the parent's runs in it).
fn fork_child(body: impl FnOnce()) -> i32 {
    // SAFETY: the fixture is single-threaded, so the child may run ordinary code.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        body();
        // SAFETY: ends the child without running the parent's exit handlers.
        unsafe { libc::_exit(0) };
    }
    pid
}

fn wait(pid: i32) {
    let mut status = 0;
    // SAFETY: waits for our own child with a valid status pointer.
    let waited = unsafe { libc::waitpid(pid, &mut status, 0) };
    assert_eq!(waited, pid, "waitpid");
}

/// Maps (and leaves mapped, untouched) one private anonymous region per length.
fn map(lengths: &[usize]) {
    for &len in lengths {
        sys::mmap_anon(len, sys::RW, 0);
    }
}
