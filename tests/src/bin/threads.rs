//! Fixture: a process whose first thread to exit is not its last.
//!
//! `threads [--map MIB]` starts a thread that exits at once and waits for it (plus 200 ms, so
//! the thread's exit has surely passed the `sched_process_exit` tracepoint), then maps and
//! touches `--map` MiB of private anonymous memory and exits with status 3. A tracer that took
//! the thread's exit for the process's would stop counting before the mapping.

use leaktrace_tests::arg_value;

const MIB: usize = 1 << 20;
/// The exit status, so a test can tell the process's own exit from a default.
const STATUS: i32 = 3;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let map_mib: usize = arg_value(&args, "--map").map_or(0, |v| v.parse().expect("MiB"));
    std::thread::spawn(|| ()).join().expect("the thread ran");
    std::thread::sleep(std::time::Duration::from_millis(200));
    if map_mib > 0 {
        let len = map_mib * MIB;
        // SAFETY: a fresh private mapping chosen by the kernel; writes stay inside it.
        unsafe {
            let ptr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(ptr, libc::MAP_FAILED, "mmap failed");
            for page in (0..len).step_by(4096) {
                (ptr as *mut u8).add(page).write(1);
            }
        }
    }
    std::process::exit(STATUS);
}
