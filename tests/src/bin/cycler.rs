//! Fixture: a worker with a scripted per-cycle pattern, marking its cycles and phases.
//!
//! `cycler --cycles N --markers stdout|socket|log|interval [--log PATH] [--pause-ms MS]
//!  [--period-ms MS] [--wait-file PATH] [--send-junk] [--fixed] [--leak-kib K] [--exit-at-once]`
//!
//! Every cycle k: in `scrape` it maps and touches 2 MiB of anonymous memory, and in odd cycles
//! its child maps and touches 1 MiB of its own; in `cleanup` it unmaps 1 MiB of the 2; `idle`
//! does nothing. The cycle ends with the figures `heapUsed=<k*1000> external=<k*7>`.
//!
//! Markers: `stdout` prints `phase NAME` and `cycle k done ...` lines; `socket` writes the
//! protocol to $LEAKTRACE_MARKER and waits for each `ok`; `log` appends protocol lines to
//! `--log` (and rotates it after cycle 2); `interval` prints nothing and does each cycle's work
//! in the middle of each `--period-ms` (matching `--cycle-every`). Without the socket's answer,
//! the worker pauses `--pause-ms` after each marker so the tracer's snapshot comes first.
//! `--wait-file` prints `ready <pid>` and waits for PATH to exist before starting (for attach);
//! `--send-junk` first sends two malformed socket lines (and reads their `error:` answers); `--fixed` runs the same script without
//! its leak (cleanup unmaps all 2 MiB, the child keeps nothing); `--exit-at-once` exits right
//! after its last marker, without the pause; `--leak-kib K` keeps K KiB more each cycle.

use leaktrace_tests::{arg_value, sys::map_and_touch};
use std::{
    fs::OpenOptions,
    io::{BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    time::{Duration, Instant},
};

const MIB: usize = 1 << 20;

fn check(ok: bool, what: &str) {
    if !ok {
        eprintln!("cycler: {what}: {}", std::io::Error::last_os_error());
        std::process::exit(70);
    }
}

enum Markers {
    Stdout,
    Socket(BufReader<UnixStream>),
    Log(String),
    Interval,
}

struct Worker {
    markers: Markers,
    pause: Duration,
    /// Reused for every line, so marking allocates nothing after the first cycle.
    line: String,
}

impl Worker {
    fn mark(&mut self) {
        let line = &self.line;
        match &mut self.markers {
            Markers::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(line.as_bytes()).unwrap();
                out.flush().unwrap();
                std::thread::sleep(self.pause);
            }
            Markers::Socket(stream) => {
                stream.get_mut().write_all(line.as_bytes()).unwrap();
                let mut answer = [0u8; 3];
                stream.read_exact(&mut answer).unwrap();
                assert_eq!(&answer, b"ok\n", "leaktrace answers each marker");
            }
            Markers::Log(path) => {
                let mut log = OpenOptions::new()
                    .append(true)
                    .create(true)
                    .open(&*path)
                    .unwrap();
                log.write_all(line.as_bytes()).unwrap();
                std::thread::sleep(self.pause);
            }
            Markers::Interval => {}
        }
    }

    fn phase(&mut self, name: &str) {
        self.line.clear();
        self.line.push_str("phase ");
        self.line.push_str(name);
        self.line.push('\n');
        self.mark();
    }

    fn cycle_end(&mut self, k: usize) {
        use std::fmt::Write as _;
        self.line.clear();
        let prefix = if matches!(self.markers, Markers::Stdout) {
            format!("cycle {k} done")
        } else {
            "cycle".to_string()
        };
        let _ = writeln!(
            self.line,
            "{prefix} heapUsed={} external={}",
            k * 1000,
            k * 7
        );
        self.mark();
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let cycles: usize = arg_value(&args, "--cycles").map_or(3, |v| v.parse().unwrap());
    let pause =
        Duration::from_millis(arg_value(&args, "--pause-ms").map_or(300, |v| v.parse().unwrap()));
    let period =
        Duration::from_millis(arg_value(&args, "--period-ms").map_or(1000, |v| v.parse().unwrap()));
    let markers = match arg_value(&args, "--markers").as_deref() {
        Some("stdout") | None => Markers::Stdout,
        Some("socket") => {
            let path =
                std::env::var("LEAKTRACE_MARKER").expect("LEAKTRACE_MARKER set by leaktrace");
            Markers::Socket(BufReader::new(
                UnixStream::connect(path).expect("connect to the marker socket"),
            ))
        }
        Some("log") => Markers::Log(arg_value(&args, "--log").expect("--log PATH")),
        Some("interval") => Markers::Interval,
        Some(other) => panic!("unknown --markers {other}"),
    };
    if let Some(path) = arg_value(&args, "--wait-file") {
        println!("ready {}", std::process::id());
        std::io::stdout().flush().unwrap();
        while !std::path::Path::new(&path).exists() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut markers = markers;
    if args.iter().any(|a| a == "--send-junk")
        && let Markers::Socket(stream) = &mut markers
    {
        stream
            .get_mut()
            .write_all(b"hello there\ncycle heapUsed=lots\n")
            .unwrap();
        // Each gets its answer, an error saying why.
        for _ in 0..2 {
            let mut answer = String::new();
            stream.read_line(&mut answer).unwrap();
            assert!(answer.starts_with("error: "), "{answer:?}");
        }
    }
    let started = Instant::now();

    // The child grows only when told to (odd cycles), and says when it is done.
    let (mut to_child, mut from_child) = ([0; 2], [0; 2]);
    // SAFETY: pipe(2) into two-element arrays.
    check(
        unsafe {
            libc::pipe(to_child.as_mut_ptr()) == 0 && libc::pipe(from_child.as_mut_ptr()) == 0
        },
        "pipe",
    );
    // SAFETY: single-threaded; the child only reads, maps, and writes on its pipes.
    let child = unsafe { libc::fork() };
    check(child >= 0, "fork");
    if child == 0 {
        // SAFETY: closing the ends this side does not use, so the parent's close ends our read.
        unsafe {
            libc::close(to_child[1]);
            libc::close(from_child[0]);
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads and writes of one byte on the pipes.
        while unsafe { libc::read(to_child[0], byte.as_mut_ptr().cast(), 1) } == 1 {
            map_and_touch(MIB);
            // SAFETY: a write of a live one-byte buffer.
            unsafe { libc::write(from_child[1], byte.as_ptr().cast(), 1) };
        }
        std::process::exit(0);
    }

    // SAFETY: the child's ends, unused here.
    unsafe {
        libc::close(to_child[0]);
        libc::close(from_child[1]);
    }
    let mut worker = Worker {
        markers,
        pause,
        line: String::with_capacity(256),
    };
    // `--fixed`: the same worker without its leak (cleanup unmaps all, the child keeps nothing).
    let fixed = args.iter().any(|a| a == "--fixed");
    // `--leak-kib K`: K KiB more kept every cycle (a slow leak for long runs).
    let leak_kib: usize = arg_value(&args, "--leak-kib").map_or(0, |v| v.parse().unwrap());
    for k in 1..=cycles {
        if matches!(worker.markers, Markers::Interval) {
            let due = period * (k as u32 - 1) + period / 2;
            std::thread::sleep(due.saturating_sub(started.elapsed()));
        }
        worker.phase("scrape");
        let block = map_and_touch(2 * MIB);
        if leak_kib > 0 {
            map_and_touch(leak_kib * 1024);
        }
        if k % 2 == 1 && !fixed {
            let mut byte = [1u8; 1];
            // SAFETY: one-byte writes and reads on the pipes.
            unsafe {
                check(
                    libc::write(to_child[1], byte.as_ptr().cast(), 1) == 1,
                    "tell the child",
                );
                check(
                    libc::read(from_child[0], byte.as_mut_ptr().cast(), 1) == 1,
                    "hear from the child",
                );
            }
        }
        worker.phase("cleanup");
        // The second half of the block mapped above (all of it, `--fixed`).
        let (start, len) = if fixed {
            (block, 2 * MIB)
        } else {
            // SAFETY: `block` is 2 MiB long, so one MiB in stays inside it.
            (unsafe { block.add(MIB) }, MIB)
        };
        // SAFETY: unmaps part of the mapping this loop made, which nothing else uses.
        check(unsafe { libc::munmap(start.cast(), len) } == 0, "munmap");
        worker.phase("idle");
        if k == cycles && args.iter().any(|a| a == "--exit-at-once") {
            worker.pause = Duration::ZERO;
        }
        worker.cycle_end(k);
        if let Markers::Log(path) = &worker.markers
            && k == 2
        {
            std::fs::rename(path, format!("{path}.1")).unwrap();
        }
    }
    // SAFETY: closing our end ends the child's loop; then reap it.
    unsafe {
        libc::close(to_child[1]);
        libc::waitpid(child, std::ptr::null_mut(), 0);
    }
}
