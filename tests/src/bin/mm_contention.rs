//! Fixture: many threads mapping and unmapping at once, so that the mm's lock is nearly always
//! held by one of them.
//!
//! `mm_contention [--threads 200] [--rounds 2000] [--halves]`: every thread maps 64 KiB of
//! private anonymous memory, touches its first page and unmaps it, `--rounds` times; with
//! `--halves` it maps 128 KiB and unmaps it in two 64 KiB calls (neither of them a whole
//! mapping, so each needs a VMA walk, which contention makes fail). The threads start
//! together (a barrier) and are never joined: once all are done the process ends with `_exit`,
//! so their stacks are neither freed nor reused, and a run with `--rounds 0` makes exactly the
//! same other calls. Prints `unmapped CALLS BYTES`, what its munmaps removed.

use std::sync::{
    Arc, Barrier,
    atomic::{AtomicUsize, Ordering},
};

use leaktrace_tests::{arg_value, sys};

const LEN: usize = 64 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let number = |name, default| arg_value(&args, name).map_or(default, |v| v.parse().unwrap());
    let (threads, rounds): (usize, usize) = (number("--threads", 200), number("--rounds", 2000));
    let halves = args.iter().any(|a| a == "--halves");
    let (len, unmaps) = if halves { (2 * LEN, 2) } else { (LEN, 1) };
    let start = Arc::new(Barrier::new(threads + 1));
    let done = Arc::new(AtomicUsize::new(0));
    for _ in 0..threads {
        let (start, done) = (start.clone(), done.clone());
        std::thread::spawn(move || {
            start.wait();
            for _ in 0..rounds {
                map_touch_unmap(len, unmaps);
            }
            done.fetch_add(1, Ordering::SeqCst);
            loop {
                std::thread::park();
            }
        });
    }
    start.wait();
    while done.load(Ordering::SeqCst) < threads {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    println!(
        "unmapped {} {}",
        threads * rounds * unmaps,
        threads * rounds * len
    );
    use std::io::Write;
    std::io::stdout().flush().unwrap();
    // SAFETY: ends the process at once, threads and all, without freeing their stacks.
    unsafe { libc::_exit(0) };
}

/// Maps `len` bytes, touches the first page, and unmaps them in `unmaps` equal calls.
fn map_touch_unmap(len: usize, unmaps: usize) {
    let ptr = sys::mmap_anon(len, sys::RW, 0);
    let piece = len / unmaps;
    // SAFETY: a fresh private mapping; the write stays inside it, and the unmapped pieces
    // cover it exactly.
    unsafe {
        ptr.write(1);
        for i in 0..unmaps {
            sys::munmap(ptr.add(i * piece), piece);
        }
    }
}
