//! A trace that runs for days: leaktrace's own memory after 10,000 cycles is what it was after
//! 2,000 (older cycles on disk, the fits on a bounded digest, the region readings thinned, what
//! the periodic fits free given back), with the metrics endpoint's fits running all along, and
//! the growth answer still right at the end: for a plain worker, and for the zoo's worker with
//! its Chromium.

mod support;

use std::{
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::Trace;
use support::{
    Scratch, fixture, free_port, leaktrace, metric, require_chromium, require_root, spawn,
};

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

/// Traces `worker` (11,000 cycles, keeping 16 KiB more each) with `--continuous` and the
/// metrics endpoint; checks leaktrace's RSS after 2,000 and after 10,000 cycles are within 10%
/// of each other, and returns the trace.
fn watched(worker: &[&std::ffi::OsStr], json: &Path) -> Trace {
    let port = free_port();
    let mut traced = spawn(
        Command::new(leaktrace())
            .args([
                "run",
                "-q",
                "--continuous",
                "--metrics-addr",
                &port.to_string(),
            ])
            .arg("-o")
            .arg(json)
            .arg("--")
            .args(worker),
    );
    let pid = traced.pid();
    // The worker's output passes through leaktrace: read it, or the worker blocks on a full
    // pipe (the zoo writes a line a cycle).
    let mut stdout = traced.child().stdout.take().unwrap();
    std::thread::spawn(move || std::io::copy(&mut stdout, &mut std::io::sink()));
    // leaktrace's RSS at the first reading past each thousand cycles.
    let mut by_thousand: Vec<(u64, u64)> = Vec::new();
    let started = Instant::now();
    while by_thousand.last().is_none_or(|l| l.0 < 10) {
        assert!(
            started.elapsed() < Duration::from_secs(900),
            "10,000 cycles in fifteen minutes"
        );
        assert!(
            traced.child().try_wait().unwrap().is_none(),
            "still tracing"
        );
        let Some(cycle) = metric(port, "leaktrace_last_cycle") else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        let thousands = (cycle / 1000.0) as u64;
        if thousands > by_thousand.last().map_or(0, |l| l.0)
            && let Some(rss) = vm_rss(pid)
        {
            by_thousand.push((thousands, rss));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = traced.wait_output();
    assert!(output.status.success(), "{output:?}");
    // From 2,000 cycles on: until then leaktrace's own digests, spill and region readings fill
    // up (measured on the zoo: 30.5 MB at 1,000, 31.7 at 2,000, then up to 33.8 at 6,000 and
    // flat: 33.5, 33.5, 33.6, 33.4).
    let rss_at = |k: u64| by_thousand.iter().find(|r| r.0 >= k).unwrap().1 as f64;
    let (early, late) = (rss_at(2), rss_at(10));
    assert!(
        (late - early).abs() <= 0.10 * early,
        "leaktrace's RSS: {early} B after 2,000 cycles, {late} B after 10,000 (by thousand \
         cycles: {by_thousand:?})"
    );
    let trace = Trace::read(json).unwrap();
    // Every cycle whole (a worker that closes its browser after its last marker leaves a cut
    // stub after them).
    assert_eq!(trace.cycles.iter().filter(|c| !c.cut).count(), 11000);
    trace
}

#[test]
fn memory_after_10000_cycles_is_what_it_was_after_2000() {
    if !require_root("memory_after_10000_cycles_is_what_it_was_after_2000") {
        return;
    }
    let scratch = Scratch::new("continuous");
    // A worker that keeps 16 KiB more every cycle, a few milliseconds a cycle.
    let cycler = fixture("cycler");
    let args = [
        "--fixed",
        "--leak-kib",
        "16",
        "--cycles",
        "11000",
        "--markers",
        "socket",
    ];
    let worker: Vec<&std::ffi::OsStr> = std::iter::once(cycler.as_os_str())
        .chain(args.iter().map(std::ffi::OsStr::new))
        .collect();
    let trace = watched(&worker, &scratch.path("t.json"));
    let tree = trace.analysis.tree().unwrap();
    assert_eq!(tree.per_cycle, 16384.0, "{tree:?}");
    assert_eq!(trace.analysis.verdict.source, "worker");
}

/// The zoo's worker with its Chromium (a dozen processes, DevTools read at every cycle end,
/// their regions read as the budget allows), keeping 16 KiB of its heap a cycle and saying so.
#[test]
fn a_zoo_worker_watched_for_10000_cycles_leaves_leaktrace_flat() {
    let name = "a_zoo_worker_watched_for_10000_cycles_leaves_leaktrace_flat";
    if !require_root(name) || !require_chromium(name) {
        return;
    }
    let scratch = Scratch::new("continuous-zoo");
    let zoo = fixture("zoo");
    let profile = scratch.path("profile");
    let args = [
        "--leak",
        "worker-heap",
        "--keep-kib",
        "16",
        "--idle-ms",
        "1",
        "--cycles",
        "11000",
        "--profile",
    ];
    let worker: Vec<&std::ffi::OsStr> = std::iter::once(zoo.as_os_str())
        .chain(args.iter().map(std::ffi::OsStr::new))
        .chain([profile.as_os_str()])
        .collect();
    let trace = watched(&worker, &scratch.path("t.json"));
    assert_eq!(trace.analysis.verdict.source, "worker-heap");
    let worker = trace
        .analysis
        .series
        .iter()
        .find(|s| s.name == "role.worker.owned")
        .unwrap();
    assert!(
        (worker.per_cycle - 16384.0).abs() <= 0.15 * 16384.0,
        "{worker:?}"
    );
}
