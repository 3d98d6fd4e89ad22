//! Fixture: holds known amounts of resident memory, then waits to be read.
//!
//! `resident --anon MIB [--shared MIB] [--file PATH --file-mib MIB] [--child-anon MIB]
//!  [--exec-child-anon MIB]`
//!
//! Touches `--anon` MiB of private anonymous memory, `--shared` MiB of a memfd (shmem), and
//! `--file-mib` MiB of a file it creates at PATH (page cache, mapped shared and read). With
//! `--child-anon`, forks a child that touches that much more anonymous memory of its own; with
//! `--exec-child-anon`, the child instead execs this fixture with `--anon N`. Every process
//! prints `ready <pid>` once its memory is in place, then sleeps until killed.

use leaktrace_tests::arg_value;
use std::{
    ffi::CString,
    io::Write,
    os::unix::{ffi::OsStrExt, fs::FileExt},
};

const MIB: usize = 1 << 20;
const PAGE: usize = 4096;

fn mib(args: &[String], name: &str) -> usize {
    arg_value(args, name).map_or(0, |v| v.parse::<usize>().expect("a number of MiB")) * MIB
}

fn check(ok: bool, what: &str) {
    if !ok {
        eprintln!("resident: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(70);
    }
}

/// Maps `len` bytes and writes one byte per page, so every page is resident.
fn touch(len: usize, prot_flags: i32, fd: i32) -> *mut u8 {
    if len == 0 {
        return std::ptr::null_mut();
    }
    // SAFETY: a fresh mapping chosen by the kernel; writes stay inside it.
    unsafe {
        let ptr = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            prot_flags,
            fd,
            0,
        );
        check(ptr != libc::MAP_FAILED, "mmap");
        let ptr = ptr as *mut u8;
        for offset in (0..len).step_by(PAGE) {
            std::ptr::write_volatile(ptr.add(offset), 1);
        }
        ptr
    }
}

fn ready_and_wait() -> ! {
    println!("ready {}", std::process::id());
    std::io::stdout().flush().unwrap();
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let anon = mib(&args, "--anon");
    touch(anon, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1);

    let shared = mib(&args, "--shared");
    if shared > 0 {
        // SAFETY: memfd_create with a constant name.
        let fd = unsafe { libc::memfd_create(c"leaktrace-resident".as_ptr(), 0) };
        check(
            // SAFETY: ftruncate of the fd just made.
            fd >= 0 && unsafe { libc::ftruncate(fd, shared as i64) } == 0,
            "memfd",
        );
        touch(shared, libc::MAP_SHARED, fd);
    }

    if let Some(path) = arg_value(&args, "--file") {
        let len = mib(&args, "--file-mib");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .expect("create the file");
        file.write_all_at(&vec![7u8; len], 0)
            .expect("write the file");
        file.sync_all().expect("sync");
        // SAFETY: a read-only shared mapping of the file just written; reads only.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(&file),
                0,
            );
            check(ptr != libc::MAP_FAILED, "mmap file");
            for offset in (0..len).step_by(PAGE) {
                std::ptr::read_volatile((ptr as *const u8).add(offset));
            }
        }
    }

    let child_anon = mib(&args, "--child-anon");
    let exec_anon = arg_value(&args, "--exec-child-anon");
    if child_anon > 0 || exec_anon.is_some() {
        let exe = CString::new(std::env::current_exe().unwrap().as_os_str().as_bytes()).unwrap();
        let exec_args: Vec<CString> = ["resident", "--anon", exec_anon.as_deref().unwrap_or("0")]
            .iter()
            .map(|a| CString::new(*a).unwrap())
            .collect();
        std::io::stdout().flush().unwrap();
        // SAFETY: single-threaded here; the child only maps memory, prints and sleeps, or execs.
        let pid = unsafe { libc::fork() };
        check(pid >= 0, "fork");
        if pid == 0 {
            if exec_anon.is_some() {
                let mut argv: Vec<*const libc::c_char> =
                    exec_args.iter().map(|a| a.as_ptr()).collect();
                argv.push(std::ptr::null());
                // SAFETY: argv is NULL-terminated and its strings outlive the call.
                unsafe { libc::execv(exe.as_ptr(), argv.as_ptr()) };
                check(false, "execv");
            }
            touch(child_anon, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1);
            ready_and_wait();
        }
    }
    ready_and_wait();
}
