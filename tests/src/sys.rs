//! Thin, allocation-free wrappers over the syscalls the fixtures make.
//!
//! Each wrapper either succeeds or ends the process through [`fatal`]: a panic would allocate
//! (changing the heap the tracer watches) and would unwind through forked children. The fixtures
//! only ever need "this must work", so no wrapper returns an error.

use core::ffi::CStr;
use core::fmt::Write;

use libc::{c_int, c_void, pid_t};

use crate::record::StackBuf;

pub const PAGE: usize = 4096;
pub const KIB: usize = 1024;
pub const MIB: usize = 1024 * KIB;

/// Exit status of a fixture that hit an unexpected syscall failure.
pub const FATAL_STATUS: c_int = 70;

pub const fn page_align_up(addr: usize) -> usize {
    (addr + PAGE - 1) & !(PAGE - 1)
}

fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() }
}

/// Reports `what` failing with the current errno and ends the process at once.
pub fn fatal(what: &str) -> ! {
    let errno = errno();
    let mut msg = StackBuf::<256>::new();
    // Truncation of an overlong message is acceptable: we are dying anyway.
    let _ = writeln!(msg, "leaktrace fixture: {what} failed (errno {errno})");
    die(msg.as_bytes())
}

/// Reports `msg` and ends the process at once.
pub fn fatal_msg(msg: &str) -> ! {
    let mut line = StackBuf::<256>::new();
    let _ = writeln!(line, "leaktrace fixture: {msg}");
    die(line.as_bytes())
}

fn die(msg: &[u8]) -> ! {
    // SAFETY: writing a valid buffer to stderr, then leaving without atexit handlers (which a
    // forked child must not run twice).
    unsafe {
        libc::write(2, msg.as_ptr().cast(), msg.len());
        libc::_exit(FATAL_STATUS)
    }
}

/// mmap(2) at offset 0; `addr` is a hint unless `flags` has MAP_FIXED.
///
/// # Safety
/// With MAP_FIXED, `[addr, addr + len)` must be memory the caller owns and no longer uses.
pub unsafe fn mmap(addr: *mut u8, len: usize, prot: c_int, flags: c_int, fd: c_int) -> *mut u8 {
    // SAFETY: without MAP_FIXED the kernel picks free addresses; with it, the caller vouches.
    let ptr = unsafe { libc::mmap(addr.cast(), len, prot, flags, fd, 0) };
    if ptr == libc::MAP_FAILED {
        fatal("mmap");
    }
    ptr.cast()
}

/// A fresh anonymous private mapping with `prot` and the extra `flags` (never MAP_FIXED).
pub fn mmap_anon(len: usize, prot: c_int, flags: c_int) -> *mut u8 {
    assert_eq!(
        flags & libc::MAP_FIXED,
        0,
        "MAP_FIXED needs the unsafe mmap"
    );
    let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | flags;
    // SAFETY: not MAP_FIXED, so no existing memory is replaced.
    unsafe { mmap(core::ptr::null_mut(), len, prot, flags, -1) }
}

/// A fresh private read-write mapping with every page written, so all of it is resident.
pub fn map_and_touch(len: usize) -> *mut u8 {
    let ptr = mmap_anon(len, libc::PROT_READ | libc::PROT_WRITE, 0);
    // SAFETY: the mapping was just made, writable, and is ours.
    unsafe { touch(ptr, len) };
    ptr
}

/// A fresh mapping of `fd` (from offset 0) with `prot` and `flags` (never MAP_FIXED).
pub fn mmap_fd(len: usize, prot: c_int, flags: c_int, fd: c_int) -> *mut u8 {
    assert_eq!(
        flags & libc::MAP_FIXED,
        0,
        "MAP_FIXED needs the unsafe mmap"
    );
    // SAFETY: not MAP_FIXED, so no existing memory is replaced.
    unsafe { mmap(core::ptr::null_mut(), len, prot, flags, fd) }
}

pub const RW: c_int = libc::PROT_READ | libc::PROT_WRITE;

/// munmap(2).
///
/// # Safety
/// `[addr, addr + len)` must be memory the caller mapped and no longer references.
pub unsafe fn munmap(addr: *mut u8, len: usize) {
    // SAFETY: the caller vouches for the range.
    if unsafe { libc::munmap(addr.cast(), len) } != 0 {
        fatal("munmap");
    }
}

/// mremap(2) with MREMAP_MAYMOVE: the mapping may move, so the old pointer is dead afterwards.
///
/// # Safety
/// `[addr, addr + old_len)` must be one mapping the caller owns; afterwards only the returned
/// pointer may be used, and only for `new_len` bytes.
pub unsafe fn mremap(addr: *mut u8, old_len: usize, new_len: usize) -> *mut u8 {
    // SAFETY: the caller vouches for the mapping.
    let ptr = unsafe { libc::mremap(addr.cast(), old_len, new_len, libc::MREMAP_MAYMOVE) };
    if ptr == libc::MAP_FAILED {
        fatal("mremap");
    }
    ptr.cast()
}

/// mprotect(2).
///
/// # Safety
/// `[addr, addr + len)` must be memory the caller owns and accesses only as `prot` allows.
pub unsafe fn mprotect(addr: *mut u8, len: usize, prot: c_int) {
    // SAFETY: the caller vouches for the range.
    if unsafe { libc::mprotect(addr.cast(), len, prot) } != 0 {
        fatal("mprotect");
    }
}

/// madvise(2).
///
/// # Safety
/// `[addr, addr + len)` must be memory the caller owns; with MADV_DONTNEED its contents are lost.
pub unsafe fn madvise(addr: *mut u8, len: usize, advice: c_int) {
    // SAFETY: the caller vouches for the range.
    if unsafe { libc::madvise(addr.cast(), len, advice) } != 0 {
        fatal("madvise");
    }
}

/// The current program break, by the raw brk syscall with 0 (a query that changes nothing).
pub fn current_break() -> usize {
    // SAFETY: brk(0) only reports the break.
    unsafe { libc::syscall(libc::SYS_brk, 0usize) as usize }
}

/// Moves the break to `target` by the raw brk syscall, failing unless the kernel put it exactly
/// there, and returns it. glibc's brk()/sbrk() would update glibc's cached break; this does not.
///
/// # Safety
/// Below the current break this frees heap memory malloc may be using; and until the break is
/// back where glibc's cache says, the process must not allocate (the next sbrk would be computed
/// from the stale cache). The fixtures restore the break exactly, or exec without allocating.
pub unsafe fn brk_to(target: usize) -> usize {
    // SAFETY: the caller vouches for the target and for not allocating meanwhile.
    let now = unsafe { libc::syscall(libc::SYS_brk, target) as usize };
    if now != target {
        fatal_msg("brk did not move the break where asked");
    }
    now
}

/// Writes one byte to every page of `[ptr, ptr + len)` so the kernel backs them with memory.
///
/// # Safety
/// `[ptr, ptr + len)` must be writable memory the caller owns, whose contents do not matter.
pub unsafe fn touch(ptr: *mut u8, len: usize) {
    for offset in (0..len).step_by(PAGE) {
        // SAFETY: the caller vouches for the range.
        unsafe { ptr.add(offset).write_volatile(1) };
    }
}

pub fn open(path: &CStr, flags: c_int, mode: libc::mode_t) -> c_int {
    // SAFETY: `path` is NUL-terminated.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, mode) };
    if fd < 0 {
        fatal("open");
    }
    fd
}

/// Opens the ledger for appending, creating it: every line is one O_APPEND write, so lines from
/// concurrent processes never interleave.
pub fn open_ledger(path: &CStr) -> c_int {
    open(path, libc::O_WRONLY | libc::O_CREAT | libc::O_APPEND, 0o644)
}

pub fn close(fd: c_int) {
    // SAFETY: callers close descriptors they own and do not use again.
    if unsafe { libc::close(fd) } != 0 {
        fatal("close");
    }
}

/// One write(2) that must take all of `bytes`: a split write could interleave with others.
pub fn write_once(fd: c_int, bytes: &[u8]) {
    // SAFETY: writing a valid buffer.
    let n = unsafe { libc::write(fd, bytes.as_ptr().cast::<c_void>(), bytes.len()) };
    if n < 0 {
        fatal("write");
    }
    if n as usize != bytes.len() {
        fatal_msg("short write");
    }
}

pub fn memfd_create(name: &CStr) -> c_int {
    // SAFETY: `name` is NUL-terminated.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        fatal("memfd_create");
    }
    fd
}

pub fn ftruncate(fd: c_int, len: usize) {
    // SAFETY: plain syscall on an owned descriptor.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
        fatal("ftruncate");
    }
}

pub fn exists(path: &CStr) -> bool {
    // SAFETY: `path` is NUL-terminated.
    unsafe { libc::access(path.as_ptr(), libc::F_OK) == 0 }
}

pub fn sleep_ms(ms: u64) {
    let ts = libc::timespec {
        tv_sec: (ms / 1000) as libc::time_t,
        tv_nsec: ((ms % 1000) * 1_000_000) as libc::c_long,
    };
    // SAFETY: a valid timespec; an early wake-up by a signal only shortens one poll.
    unsafe { libc::nanosleep(&ts, core::ptr::null_mut()) };
}

/// fork(2): `0` in the child, the child's pid in the parent. The fixtures are single-threaded,
/// so the child may keep running Rust code; it must still not allocate before exec or _exit.
pub fn fork() -> pid_t {
    // SAFETY: the fixture processes have one thread, so no lock can be held across the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        fatal("fork");
    }
    pid
}

/// Waits for `pid` and tells whether it exited with status 0.
pub fn wait_success(pid: pid_t) -> bool {
    let mut status = 0;
    loop {
        // SAFETY: `status` is a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            return libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
        }
        if r < 0 && errno() != libc::EINTR {
            fatal("waitpid");
        }
    }
}

/// Ends a forked child without atexit handlers or stdio flushes, which belong to its parent.
pub fn exit_now(status: c_int) -> ! {
    // SAFETY: _exit never returns and has no preconditions.
    unsafe { libc::_exit(status) }
}
