//! The exec stage of the ledger fixture: `ledger` forks a child, which execs this binary (same
//! pid, role `exec`). It maps 5 MiB, then forks 100 short-lived grandchildren at once, each of
//! which maps 64 KiB, writes its line and `_exit`s without unmapping, to exercise the tracer on
//! many concurrent process exits.
//!
//! Usage: `ledger_exec --ledger FILE [--baseline]`
//!
//! As in `ledger`, `--baseline` skips only the ledger's memory syscalls; the processes and the
//! lines they write are the same, and the fixture code never allocates on the heap.

use libc::{c_int, pid_t};

use leaktrace_tests::args::{Cmdline, Options};
use leaktrace_tests::record::write_line;
use leaktrace_tests::sys::{self, KIB, MIB, RW};
use leaktrace_tests::{Class, Flows};

const USAGE: &str = "ledger_exec --ledger FILE [--baseline]";
const GRANDCHILDREN: usize = 100;

fn main() {
    let cmdline = Cmdline::read();
    let opts = Options::parse(&cmdline, USAGE, false);
    let ledger = sys::open_ledger(opts.ledger);

    let mut flows = Flows::new();
    if !opts.baseline {
        let anon = sys::mmap_anon(5 * MIB, RW, 0);
        flows.mapped(Class::Anon, 5 * MIB);
        // SAFETY: our fresh 5 MiB mapping, nobody else's.
        unsafe { sys::touch(anon, 5 * MIB) };
    }

    // All forked before any is waited for, so they run (and exit) concurrently.
    let mut pids: [pid_t; GRANDCHILDREN] = [0; GRANDCHILDREN];
    for slot in &mut pids {
        let pid = sys::fork();
        if pid == 0 {
            grandchild(ledger, opts.baseline);
        }
        *slot = pid;
    }
    let mut all_ok = true;
    for pid in pids {
        all_ok &= sys::wait_success(pid);
    }

    write_line(ledger, "exec", &flows);
    std::process::exit(if all_ok { 0 } else { 1 });
}

/// Map and touch 64 KiB, write the line, leave with the mapping still in place.
fn grandchild(ledger: c_int, baseline: bool) -> ! {
    let mut flows = Flows::new();
    if !baseline {
        let anon = sys::mmap_anon(64 * KIB, RW, 0);
        flows.mapped(Class::Anon, 64 * KIB);
        // SAFETY: our fresh 64 KiB mapping, nobody else's.
        unsafe { sys::touch(anon, 64 * KIB) };
    }
    write_line(ledger, "grandchild", &flows);
    sys::exit_now(0)
}
