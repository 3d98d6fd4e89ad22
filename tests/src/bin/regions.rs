//! Fixture: a worker that grows one kind of region by a known amount every cycle, for the
//! region attribution to be checked against.
//!
//! `regions --grow heap|anon|reserved|stack|memfd --cycles N [--mib M]`: every cycle it makes
//! M MiB (default 4) more resident in
//!
//! - `heap`: malloc's `[heap]` (64 KiB blocks, below malloc's mmap threshold, so from brk);
//! - `anon`: a fresh anonymous mapping;
//! - `reserved`: a 1 GiB PROT_NONE reservation made at start, M MiB more of it made
//!   read-write (mprotect) and touched;
//! - `stack`: a thread's stack (the thread recurses M MiB deeper, touching each frame);
//! - `memfd`: a 1 GiB memfd mapped shared at start, M MiB more of it touched;
//!
//! then marks the cycle on $LEAKTRACE_MARKER and waits for leaktrace's answer, and idles 40 ms
//! (so region readings, which leaktrace spaces by their cost, fall on several cycle ends).

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    sync::mpsc,
    time::Duration,
};

use leaktrace_tests::{
    arg_value,
    sys::{RW, fatal, map_and_touch, mmap_anon, mmap_fd, touch},
};

const MIB: usize = 1 << 20;
const RESERVATION: usize = 1 << 30;
/// One frame of the stack-growing thread.
const FRAME: usize = 64 * 1024;

/// Recurses `frames` deep, touching every page of every frame.
#[inline(never)]
fn descend(frames: usize) {
    let mut frame = [0u8; FRAME];
    for page in (0..FRAME).step_by(4096) {
        // SAFETY: within the array.
        unsafe { frame.as_mut_ptr().add(page).write_volatile(1) };
    }
    std::hint::black_box(&mut frame);
    if frames > 1 {
        descend(frames - 1);
    }
}

/// What grows, set up at start; `grow(k)` makes cycle k's share resident.
enum Grower {
    Heap(Vec<*mut libc::c_void>),
    Anon,
    Reserved(*mut u8),
    Stack(mpsc::Sender<usize>, mpsc::Receiver<()>),
    Memfd(*mut u8),
}

impl Grower {
    fn new(kind: &str) -> Grower {
        match kind {
            "heap" => Grower::Heap(Vec::new()),
            "anon" => Grower::Anon,
            "reserved" => {
                Grower::Reserved(mmap_anon(RESERVATION, libc::PROT_NONE, libc::MAP_NORESERVE))
            }
            "stack" => {
                let (go, orders) = mpsc::channel::<usize>();
                let (done, finished) = mpsc::channel();
                std::thread::Builder::new()
                    .stack_size(256 * MIB)
                    .spawn(move || {
                        for depth in orders {
                            descend(depth);
                            done.send(()).unwrap();
                        }
                    })
                    .unwrap();
                Grower::Stack(go, finished)
            }
            "memfd" => {
                // SAFETY: a NUL-terminated name and no flags.
                let fd = unsafe { libc::memfd_create(c"leaktrace-fixture".as_ptr(), 0) };
                // SAFETY: ftruncate of the fd just made.
                if fd < 0 || unsafe { libc::ftruncate(fd, RESERVATION as i64) } != 0 {
                    fatal("memfd");
                }
                Grower::Memfd(mmap_fd(RESERVATION, RW, libc::MAP_SHARED, fd))
            }
            other => panic!("unknown --grow {other}"),
        }
    }

    /// Makes `mib` MiB more resident, in cycle `k` (1-based).
    fn grow(&mut self, k: usize, mib: usize) {
        let (len, at) = (mib * MIB, (k - 1) * mib * MIB);
        match self {
            Grower::Heap(blocks) => {
                for _ in 0..len / FRAME {
                    // SAFETY: malloc of a small block, touched within its size.
                    let block = unsafe { libc::malloc(FRAME) };
                    // SAFETY: `block` is a live malloc block of FRAME bytes.
                    unsafe { touch(block.cast(), FRAME) };
                    blocks.push(block);
                }
            }
            Grower::Anon => {
                map_and_touch(len);
            }
            Grower::Reserved(base) => {
                // SAFETY: the next part of our own reservation.
                let part = unsafe { base.add(at) };
                // SAFETY: `len` bytes of our own reservation, made readable and writable here.
                if unsafe { libc::mprotect(part.cast(), len, RW) } != 0 {
                    fatal("mprotect");
                }
                // SAFETY: `part` is now `len` readable, writable bytes.
                unsafe { touch(part, len) };
            }
            Grower::Stack(go, finished) => {
                go.send(k * len / FRAME).unwrap();
                finished.recv().unwrap();
            }
            // SAFETY: the memfd mapping spans the whole reservation, and `at + len` stays inside it.
            Grower::Memfd(base) => unsafe { touch(base.add(at), len) },
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let kind = arg_value(&args, "--grow").expect("--grow KIND");
    let cycles: usize = arg_value(&args, "--cycles").map_or(10, |v| v.parse().unwrap());
    let mib: usize = arg_value(&args, "--mib").map_or(4, |v| v.parse().unwrap());
    let path = std::env::var("LEAKTRACE_MARKER").expect("LEAKTRACE_MARKER set by leaktrace");
    let mut socket = BufReader::new(UnixStream::connect(path).expect("the marker socket"));
    let mut grower = Grower::new(&kind);
    for k in 1..=cycles {
        grower.grow(k, mib);
        socket.get_mut().write_all(b"cycle\n").unwrap();
        let mut answer = String::new();
        socket.read_line(&mut answer).unwrap();
        assert_eq!(answer, "ok\n");
        std::thread::sleep(Duration::from_millis(40));
    }
}
