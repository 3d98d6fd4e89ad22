//! A worker its supervisor restarts with a new pid, followed by `attach --follow-cmdline`: each
//! instance is a segment of the trace with its own fit, and the analysis is of the latest.
//!
//! The supervisor is a shell loop (as a user's `while true; do node worker.js; done`, or
//! systemd's `Restart=always`) starting the cycler three times, 10 cycles each, with its markers
//! on stdout appended to a log that leaktrace follows. Each instance waits for a file before its
//! first cycle, which the test makes once leaktrace says it follows that instance, so every
//! cycle of every instance is in the trace whole.

mod support;

use std::{
    io::BufRead,
    os::unix::process::CommandExt,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace::trace::{EndReason, Trace};
use support::{
    CYCLER_REGEX, Guard, Scratch, fixture, free_port, leaktrace, metric, require_root, spawn,
    wait_for_line,
};

const MIB: f64 = 1048576.0;
const INSTANCES: usize = 3;
const CYCLES: usize = 10;
/// What each cycle of `cycler --leak-kib 4096` keeps: 1 MiB of its script, 4 MiB of leak,
/// and its child's 1 MiB in odd cycles.
const PER_CYCLE: f64 = 5.5 * MIB;

/// The supervisor, in a process group of its own: on any failure, the instance waiting for
/// its file goes with it.
struct Supervisor(Guard);

impl Drop for Supervisor {
    fn drop(&mut self) {
        // SAFETY: signalling the process group the supervisor leads.
        unsafe { libc::kill(-(self.0.pid() as i32), libc::SIGKILL) };
    }
}

/// The pids the instances said they have (`ready PID`, the cycler's first line), in order.
fn ready_pids(log: &Path) -> Vec<u32> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("ready ")?.parse().ok())
        .collect()
}

#[test]
fn a_restarted_worker_is_followed_and_each_instance_fitted_on_its_own() {
    if !require_root("a_restarted_worker_is_followed_and_each_instance_fitted_on_its_own") {
        return;
    }
    let scratch = Scratch::new("follow");
    let (log, json) = (scratch.path("worker.log"), scratch.path("t.json"));
    let go = |n: usize| scratch.path(&format!("go{n}"));
    let cycler = fixture("cycler");
    let port = free_port();
    let supervisor = Supervisor(spawn(
        Command::new("sh")
            .args([
                "-c",
                r#"for i in 1 2 3; do "$0" --cycles 10 --markers stdout --pause-ms 100 \
                   --leak-kib 4096 --wait-file "$1$i" >> "$2"; done"#,
            ])
            .arg(&cycler)
            .arg(scratch.path("go"))
            .arg(&log)
            .process_group(0),
    ));
    let up = Instant::now();
    while ready_pids(&log).is_empty() {
        assert!(up.elapsed() < Duration::from_secs(10), "the first instance");
        std::thread::sleep(Duration::from_millis(10));
    }
    // No --pid: the one process the rule matches. The supervisor's own command line names
    // the cycler too, but not at its start.
    let escaped: String = cycler
        .to_str()
        .unwrap()
        .chars()
        .flat_map(|c| {
            r".+*?()[]{}|^$\"
                .contains(c)
                .then_some('\\')
                .into_iter()
                .chain([c])
        })
        .collect();
    let rule = format!("^{escaped} --cycles");
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["attach", "--follow-cmdline", &rule, "--metrics-addr"])
            .arg(port.to_string())
            .arg("--cycle-log")
            .arg(&log)
            .args(CYCLER_REGEX)
            .args(["--cycles", &(INSTANCES * CYCLES).to_string(), "-o"])
            .arg(&json)
            .stdout(Stdio::null()),
    );
    let mut stderr = wait_for_line(
        tracer.child().stderr.take().unwrap(),
        "leaktrace: tracing pid",
    );
    std::fs::write(go(1), b"").unwrap();
    let mut said = String::new();
    for n in 2..=INSTANCES {
        // The last instance exited, then leaktrace found the next: it may start.
        loop {
            let mut line = String::new();
            assert!(stderr.read_line(&mut line).unwrap() > 0, "{said}");
            said += &line;
            if line.contains(&format!("(instance {n} of the worker)")) {
                break;
            }
        }
        std::fs::write(go(n), b"").unwrap();
    }
    assert_eq!(
        metric(port, "leaktrace_worker_exits_total"),
        Some((INSTANCES - 1) as f64),
        "/metrics counts the instances that exited"
    );
    let rest = std::io::read_to_string(stderr).unwrap();
    let output = tracer.wait_output();
    assert!(output.status.success(), "{said}{rest}");
    drop(supervisor);

    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.ended_by, EndReason::CyclesDone);
    let pids: Vec<u32> = trace.segments.iter().map(|s| s.root_pid).collect();
    assert_eq!(pids, ready_pids(&log), "one segment per instance, in order");
    assert!(
        trace.segments[..INSTANCES - 1]
            .iter()
            .all(|s| s.end_s.is_some())
    );
    // Every cycle whole, in its instance's segment, with the instance's own figures.
    let whole: Vec<(u32, f64)> = trace
        .cycles
        .iter()
        .filter(|c| !c.cut)
        .map(|c| (c.segment, c.worker["heapUsed"]))
        .collect();
    let expected: Vec<(u32, f64)> = (0..INSTANCES as u32)
        .flat_map(|s| (1..=CYCLES).map(move |k| (s, k as f64 * 1000.0)))
        .collect();
    assert_eq!(whole, expected);
    for (n, segment) in trace.segments.iter().enumerate() {
        assert_eq!(
            segment.first_cycle,
            trace
                .cycles
                .iter()
                .find(|c| c.segment == n as u32)
                .unwrap()
                .index
        );
    }
    // Each instance's own rate; the analysis is of the last. Over all thirty cycles at once,
    // two restarts giving 50 MiB back would pull the slope far down.
    let fits = &trace.analysis.segments;
    assert_eq!(fits.len(), INSTANCES, "{fits:?}");
    for fit in fits {
        let rate = fit.tree.as_ref().unwrap().per_cycle;
        assert!(
            (rate - PER_CYCLE).abs() <= 0.15 * PER_CYCLE,
            "segment {}: {rate} B/cycle against {PER_CYCLE}",
            fit.segment
        );
    }
    let tree = trace.analysis.tree().unwrap();
    assert_eq!(
        tree.warmup_cycles + tree.cycles,
        fits[INSTANCES - 1].cycles,
        "the fit is of the last instance's cycles alone"
    );
    assert_eq!(
        trace.analysis.verdict.source,
        fits[INSTANCES - 1].verdict.source
    );
    assert!((tree.per_cycle - PER_CYCLE).abs() <= 0.15 * PER_CYCLE);
    // The report lists the instances.
    let report = Command::new(leaktrace())
        .args(["report", "--full"])
        .arg(&json)
        .output()
        .unwrap();
    let report = String::from_utf8(report.stdout).unwrap();
    assert!(
        report.contains("INSTANCES of the followed worker: 3"),
        "{report}"
    );
    for pid in pids {
        assert!(report.contains(&format!(" {pid} ")), "{pid} in {report}");
    }
}

/// Without --pid, the rule must find exactly one process: none, or several, is a usage error
/// (exit 2) that says which.
#[test]
fn following_without_a_pid_needs_exactly_one_match() {
    let attach = || {
        Command::new(leaktrace())
            .args([
                "attach",
                "--follow-cmdline",
                r"^sleep 31\.4159$",
                "--duration",
                "1",
            ])
            .output()
            .unwrap()
    };
    let output = attach();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("no running process whose command line matches"),
        "{stderr}"
    );
    let sleeps: Vec<Guard> = (0..2)
        .map(|_| spawn(Command::new("sleep").arg("31.4159")))
        .collect();
    let output = attach();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("2 processes whose command line matches"),
        "{stderr}"
    );
    for sleep in &sleeps {
        assert!(stderr.contains(&sleep.pid().to_string()), "{stderr}");
    }
    let output = Command::new(leaktrace())
        .args(["attach", "--follow-name", "("])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2), "a bad regex");
}
