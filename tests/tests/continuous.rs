//! A trace that runs for days: leaktrace's own memory after 10,000 cycles is what it was after
//! 1,000 (older cycles on disk, the fits on a bounded digest, what the periodic fits free given
//! back), with the metrics endpoint's fits running all along, and the growth answer still
//! right at the end.

mod support;

use std::{
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::Trace;
use support::{Scratch, fixture, free_port, leaktrace, metric, require_root, spawn};

fn vm_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace()
        .nth(1)?
        .parse::<u64>()
        .ok()
        .map(|kib| kib * 1024)
}

#[test]
fn memory_after_10000_cycles_is_what_it_was_after_1000() {
    if !require_root("memory_after_10000_cycles_is_what_it_was_after_1000") {
        return;
    }
    let scratch = Scratch::new("continuous");
    let json = scratch.path("t.json");
    let port = free_port();
    // A worker that keeps 16 KiB more every cycle, a few milliseconds a cycle.
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
            .arg(&json)
            .arg("--")
            .arg(fixture("cycler"))
            .args(["--fixed", "--leak-kib", "16", "--cycles", "11000"])
            .args(["--markers", "socket"]),
    );
    let pid = traced.pid();
    let (mut at_1000, mut at_10000) = (None, None);
    let started = Instant::now();
    while at_10000.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(600),
            "10,000 cycles in ten minutes"
        );
        assert!(
            traced.child().try_wait().unwrap().is_none(),
            "still tracing"
        );
        let Some(cycle) = metric(port, "leaktrace_last_cycle") else {
            std::thread::sleep(Duration::from_millis(20));
            continue;
        };
        if cycle >= 1000.0 && at_1000.is_none() {
            at_1000 = vm_rss(pid);
        }
        if cycle >= 10000.0 {
            at_10000 = vm_rss(pid);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let output = traced.wait_output();
    assert!(output.status.success(), "{output:?}");
    let (early, late) = (at_1000.unwrap() as f64, at_10000.unwrap() as f64);
    eprintln!("leaktrace's RSS: {early} B after 1,000 cycles, {late} B after 10,000");
    assert!(
        (late - early).abs() <= 0.10 * early,
        "leaktrace's RSS: {early} B after 1,000 cycles, {late} B after 10,000"
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.cycles.count(), 11000);
    let tree = trace.analysis.tree().unwrap();
    assert_eq!(tree.per_cycle, 16384.0, "{tree:?}");
    assert_eq!(trace.analysis.verdict.source, "worker");
}
