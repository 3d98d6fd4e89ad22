//! The root fixture: a scripted ledger of memory syscalls, one of each kind the tracer classifies,
//! then a child that maps, grows its break and execs `ledger_exec` (which forks grandchildren).
//!
//! Usage: `ledger --ledger FILE [--baseline] [--wait-file PATH]`
//!
//! Every process appends one JSON line to FILE saying exactly what it did (see
//! `leaktrace_tests::record`). With `--baseline` the process tree, file descriptors and ledger
//! writes are the same but none of the ledger's memory syscalls happen, so the difference between
//! a traced normal run and a traced baseline run must equal the ledger to the byte. Everything
//! both modes share (argument parsing, paths, descriptors) is done before the first ledger
//! syscall, and the fixture code never allocates on the heap, so the Rust runtime's own
//! allocations and syscalls are the same in both modes.

use core::ffi::{CStr, c_char};
use core::fmt::Write;

use libc::c_int;

use leaktrace_tests::args::{Cmdline, Options, StackPath};
use leaktrace_tests::record::{StackBuf, write_line};
use leaktrace_tests::sys::{self, KIB, MIB, PAGE, RW};
use leaktrace_tests::{Class, Flows};

const USAGE: &str = "ledger --ledger FILE [--baseline] [--wait-file PATH]";

/// Descriptors the `shared` and `file` steps map; opened in both modes so only the mmap differs.
struct Fds {
    memfd: c_int,
    exe: c_int,
}

fn main() {
    let cmdline = Cmdline::read();
    let opts = Options::parse(&cmdline, USAGE, true);

    // The child's execv arguments, built now so the child does nothing but its ledger and exec.
    let exec_path = StackPath::sibling_of_exe(c"ledger_exec");
    // In normal mode this NULL ends argv early, so argv has the same shape in both modes.
    let baseline_arg = if opts.baseline {
        c"--baseline".as_ptr()
    } else {
        core::ptr::null()
    };
    let argv: [*const c_char; 5] = [
        exec_path.as_cstr().as_ptr(),
        c"--ledger".as_ptr(),
        opts.ledger.as_ptr(),
        baseline_arg,
        core::ptr::null(),
    ];

    let ledger = sys::open_ledger(opts.ledger);
    let memfd = sys::memfd_create(c"leaktrace-ledger");
    sys::ftruncate(memfd, MIB);
    // The fixture's own executable: a regular file, on disk as long as cargo's target dir is
    // (tmpfs would make the mapping `shared`, not `file`).
    let exe = sys::open(c"/proc/self/exe", libc::O_RDONLY, 0);
    let fds = Fds { memfd, exe };

    if let Some(path) = opts.wait_file {
        announce_and_wait(path);
    }

    let mut flows = Flows::new();
    if !opts.baseline {
        root_ledger(&mut flows, &fds);
    }
    sys::close(fds.memfd);
    sys::close(fds.exe);

    let child = sys::fork();
    if child == 0 {
        child_then_exec(ledger, opts.baseline, &argv);
    }
    let child_ok = sys::wait_success(child);
    // Written only now, so the root's line (and its exit) mean the whole tree has finished.
    write_line(ledger, "root", &flows);
    std::process::exit(if child_ok { 0 } else { 1 });
}

/// Attach mode: tell the test our pid, then let it attach the tracer before the script runs.
fn announce_and_wait(path: &CStr) {
    let mut line = StackBuf::<64>::new();
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    if writeln!(line, "ready {pid}").is_err() {
        sys::fatal_msg("ready line does not fit");
    }
    // A raw write: nothing buffered to flush, and no stdout lock or buffer to allocate.
    sys::write_once(1, line.as_bytes());
    while !sys::exists(path) {
        sys::sleep_ms(10);
    }
}

/// The root's ledger, steps 1-10; mappings the steps do not unmap stay until exit.
fn root_ledger(flows: &mut Flows, fds: &Fds) {
    anon_and_hole(flows);
    reserve_commit_release(flows);

    // 3. MAP_NORESERVE: writable but uncharged, so the tracer calls it reserved.
    sys::mmap_anon(8 * MIB, RW, libc::MAP_NORESERVE);
    flows.mapped(Class::Reserved, 8 * MIB);

    brk_up_down_restore(flows);

    // 5. shared: MAP_SHARED|MAP_ANONYMOUS (shmem-backed) and a memfd.
    let shared = sys::mmap_fd(2 * MIB, RW, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1);
    flows.mapped(Class::Shared, 2 * MIB);
    // SAFETY: our fresh 2 MiB shared mapping, nobody else's.
    unsafe { sys::touch(shared, 2 * MIB) };
    sys::mmap_fd(MIB, RW, libc::MAP_SHARED, fds.memfd);
    flows.mapped(Class::Shared, MIB);

    // 6. file: two pages of our own executable.
    sys::mmap_fd(2 * PAGE, libc::PROT_READ, libc::MAP_PRIVATE, fds.exe);
    flows.mapped(Class::File, 2 * PAGE);

    // 7. exec: an executable anonymous mapping.
    sys::mmap_anon(64 * KIB, RW | libc::PROT_EXEC, 0);
    flows.mapped(Class::Exec, 64 * KIB);

    // 8. stack: a grows-down mapping.
    sys::mmap_anon(128 * KIB, RW, libc::MAP_GROWSDOWN);
    flows.mapped(Class::Stack, 128 * KIB);

    remap_grow_shrink(flows);
    fixed_replacement(flows);
}

/// 1. anon: map and touch 4 MiB, then punch a 1 MiB hole at offset 1 MiB.
fn anon_and_hole(flows: &mut Flows) {
    let anon = sys::mmap_anon(4 * MIB, RW, 0);
    flows.mapped(Class::Anon, 4 * MIB);
    // SAFETY: all within our fresh 4 MiB mapping, which nothing else references.
    unsafe {
        sys::touch(anon, 4 * MIB);
        sys::munmap(anon.add(MIB), MIB);
    }
    flows.unmapped(Class::Anon, MIB);
}

/// 2. reserve 16 MiB, commit the first 4, release from both classes, unmap the lot.
fn reserve_commit_release(flows: &mut Flows) {
    let region = sys::mmap_anon(16 * MIB, libc::PROT_NONE, 0);
    flows.mapped(Class::Reserved, 16 * MIB);
    // SAFETY: all within our fresh 16 MiB mapping, which nothing else references; only the
    // committed first 4 MiB are touched.
    unsafe {
        sys::mprotect(region, 4 * MIB, RW);
        flows.moved(Class::Reserved, Class::Anon, 4 * MIB);
        sys::touch(region, 4 * MIB);
        sys::madvise(region, 2 * MIB, libc::MADV_DONTNEED);
        flows.released(Class::Anon, 2 * MIB);
        sys::madvise(region.add(8 * MIB), MIB, libc::MADV_DONTNEED);
        flows.released(Class::Reserved, MIB);
        sys::munmap(region, 16 * MIB);
    }
    // One munmap spanning both classes: a call in each.
    flows.unmapped(Class::Anon, 4 * MIB);
    flows.unmapped(Class::Reserved, 12 * MIB);
}

/// 4. brk: grow, shrink, then restore exactly, so glibc's cached break is true again.
fn brk_up_down_restore(flows: &mut Flows) {
    let b0 = sys::current_break();
    // SAFETY: the break only moves above b0, where malloc has nothing, and nothing allocates
    // before it is back at b0.
    unsafe {
        let grown = sys::brk_to(b0 + MIB + 100);
        flows.brk(b0, grown);
        let shrunk = sys::brk_to(b0 + 256 * KIB);
        flows.brk(grown, shrunk);
        let restored = sys::brk_to(b0);
        flows.brk(shrunk, restored);
    }
}

/// 9. mremap: grow 1 -> 3 MiB (it may move), then shrink 3 -> 2 MiB.
fn remap_grow_shrink(flows: &mut Flows) {
    let small = sys::mmap_anon(MIB, RW, 0);
    flows.mapped(Class::Anon, MIB);
    // SAFETY: our fresh mapping; each pointer is dropped once mremap hands back its successor.
    unsafe {
        let grown = sys::mremap(small, MIB, 3 * MIB);
        flows.mapped(Class::Anon, 2 * MIB);
        sys::mremap(grown, 3 * MIB, 2 * MIB);
    }
    flows.unmapped(Class::Anon, MIB);
}

/// 10. MAP_FIXED PROT_NONE over the middle of an anon mapping: unmaps anon, maps reserved.
fn fixed_replacement(flows: &mut Flows) {
    let x = sys::mmap_anon(MIB, RW, 0);
    flows.mapped(Class::Anon, MIB);
    // SAFETY: the 256 KiB at offset 256 KiB lie inside our fresh, unreferenced 1 MiB mapping.
    unsafe {
        let fixed = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED;
        sys::mmap(x.add(256 * KIB), 256 * KIB, libc::PROT_NONE, fixed, -1);
    }
    flows.unmapped(Class::Anon, 256 * KIB);
    flows.mapped(Class::Reserved, 256 * KIB);
}

/// The forked child: map, grow the break and leave both, write its line, exec `ledger_exec`.
/// Nothing may allocate after the brk: glibc's cached break is stale from then on.
fn child_then_exec(ledger: c_int, baseline: bool, argv: &[*const c_char; 5]) -> ! {
    let mut flows = Flows::new();
    if !baseline {
        let anon = sys::mmap_anon(3 * MIB, RW, 0);
        flows.mapped(Class::Anon, 3 * MIB);
        // SAFETY: our fresh 3 MiB mapping. The break grows above where malloc has anything,
        // and nothing allocates from here to execv (write_line uses the stack only).
        unsafe {
            sys::touch(anon, 3 * MIB);
            let b0 = sys::current_break();
            let grown = sys::brk_to(b0 + 512 * KIB + 100);
            flows.brk(b0, grown);
        }
    }
    write_line(ledger, "child", &flows);
    // SAFETY: argv is a NULL-terminated array of NUL-terminated strings that outlive the call.
    unsafe { libc::execv(argv[0], argv.as_ptr()) };
    sys::fatal("execv ledger_exec")
}
