//! Cycles and phases from every marker source, against the cycler fixture's script: per cycle
//! k, `scrape` maps and touches 2 MiB (and the child 1 MiB more in odd cycles), `cleanup` unmaps
//! 1 MiB, `idle` does nothing, and the cycle ends with `heapUsed=k*1000 external=k*7`.
//! Flows must match exactly, resident memory to the page.

mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace::trace::{Cycle, EndReason, Role, Trace};
use support::{
    CYCLER_REGEX, Scratch, diff_within_5mib_a_day, fixture, leaktrace, leaktrace_run, require_root,
    spawn, wait_for_line,
};

const MIB: u64 = 1 << 20;

/// Checks cycle `cycle.index` against the script. The first cycle also holds the worker's own
/// start-up (its runtime, its child's birth), so only its phases are checked.
fn assert_scripted(cycle: &Cycle, phases: bool) {
    let k = cycle.index as u64;
    let child = if k % 2 == 1 { MIB } else { 0 };
    let worker = &cycle.growth[&Role::Worker];
    let anon = worker.address_space["anon"];
    let context = format!("cycle {k}: {worker:?}");
    if k >= 2 {
        assert_eq!(
            (anon.mapped, anon.unmapped),
            (2 * MIB + child, MIB),
            "{context}"
        );
        assert_eq!(anon.calls, 2 + u64::from(child > 0), "{context}");
        for (class, flow) in &worker.address_space {
            if class != "anon" {
                assert_eq!(
                    flow.mapped + flow.unmapped + flow.released + flow.committed,
                    0,
                    "{class} in {context}"
                );
            }
        }
        assert_eq!(worker.resident.anon, (MIB + child) as i64, "{context}");
    }
    assert_eq!(cycle.worker["heapUsed"], (k * 1000) as f64);
    assert_eq!(cycle.worker["external"], (k * 7) as f64);
    if !phases {
        assert!(cycle.phases.is_empty());
        return;
    }
    let names: Vec<&str> = cycle.phases.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["scrape", "cleanup", "idle"], "cycle {k}");
    let [scrape, cleanup, idle] = [0, 1, 2].map(|i| &cycle.phases[i].growth[&Role::Worker]);
    assert_eq!(
        scrape.address_space["anon"].mapped,
        2 * MIB + child,
        "scrape of cycle {k}"
    );
    assert_eq!(
        scrape.resident.anon,
        (2 * MIB + child) as i64,
        "scrape of cycle {k}"
    );
    assert_eq!(
        cleanup.address_space["anon"].unmapped, MIB,
        "cleanup of cycle {k}"
    );
    assert_eq!(
        cleanup.address_space["anon"].mapped, 0,
        "cleanup of cycle {k}"
    );
    assert_eq!(cleanup.resident.anon, -(MIB as i64), "cleanup of cycle {k}");
    assert!(
        idle.address_space.values().all(|f| f.calls == 0),
        "idle of cycle {k}: {idle:?}"
    );
    assert_eq!(idle.resident.anon, 0, "idle of cycle {k}");
}

fn assert_all_complete(trace: &Trace, cycles: usize, phases: bool) {
    let summary: Vec<(u32, bool)> = trace.cycles.iter().map(|c| (c.index, c.cut)).collect();
    let expected: Vec<(u32, bool)> = (1..=cycles as u32).map(|i| (i, false)).collect();
    assert_eq!(summary, expected);
    trace.cycles.iter().for_each(|c| assert_scripted(c, phases));
    assert_eq!(trace.markers.malformed, 0);
}

/// Runs the cycler under leaktrace; returns the trace and what came out on stdout.
fn run_cycler(scratch: &Scratch, leaktrace_args: &[&str], cycler_args: &[&str]) -> (Trace, String) {
    let json = scratch.path("t.json");
    let cycler = fixture("cycler");
    let mut args = vec!["run", "-q", "-o", json.to_str().unwrap()];
    args.extend(leaktrace_args);
    args.extend(["--", cycler.to_str().unwrap()]);
    args.extend(cycler_args);
    let (output, trace) = leaktrace_run(&args, &json);
    (trace, String::from_utf8(output.stdout).unwrap())
}

#[test]
fn regex_markers_cut_cycles_and_phases_exactly() {
    if !require_root("regex_markers_cut_cycles_and_phases_exactly") {
        return;
    }
    let scratch = Scratch::new("cycles-regex");
    let (trace, stdout) = run_cycler(
        &scratch,
        &[&CYCLER_REGEX[..], &["--warmup", "1"]].concat(),
        &["--cycles", "4", "--markers", "stdout"],
    );
    assert_all_complete(&trace, 4, true);
    // The worker's output passed through unchanged while it was scanned.
    let expected: String = (1..=4)
        .map(|k| {
            let figures = format!("heapUsed={} external={}", k * 1000, k * 7);
            format!("phase scrape\nphase cleanup\nphase idle\ncycle {k} done {figures}\n")
        })
        .collect();
    assert_eq!(stdout, expected);
    assert_eq!(trace.markers.sources, ["regex", "socket"]);
    assert_eq!(
        (trace.markers.cycles_seen, trace.markers.phases_seen),
        (4, 12)
    );
    let warmup: Vec<bool> = trace.cycles.iter().map(|c| c.warmup).collect();
    assert_eq!(warmup, [true, false, false, false]);
}

#[test]
fn socket_markers_are_answered_and_junk_is_counted_once() {
    if !require_root("socket_markers_are_answered_and_junk_is_counted_once") {
        return;
    }
    let scratch = Scratch::new("cycles-socket");
    let json = scratch.path("t.json");
    let output = Command::new(leaktrace())
        .args(["run", "-o"])
        .arg(&json)
        .arg("--")
        .arg(fixture("cycler"))
        .args(["--cycles", "4", "--markers", "socket", "--send-junk"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr.matches("ignored a marker").count(),
        1,
        "warned once: {stderr}"
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.markers.malformed, 2);
    assert_eq!(trace.markers.sources, ["socket"]);
    let summary: Vec<(u32, bool)> = trace.cycles.iter().map(|c| (c.index, c.cut)).collect();
    assert_eq!(summary, [(1, false), (2, false), (3, false), (4, false)]);
    trace.cycles.iter().for_each(|c| assert_scripted(c, true));
}

/// The cycler writing its markers to a log it rotates after cycle 2, attached to with
/// `reader` following that log (the log's path is appended to it, or put in place of `{}`).
fn attached_log_worker(name: &str, reader: &[&str]) -> Trace {
    if !require_root(name) {
        panic!("needs root");
    }
    let scratch = Scratch::new(name);
    let (log, go, json) = (
        scratch.path("worker.log"),
        scratch.path("go"),
        scratch.path("t.json"),
    );
    std::fs::write(&log, "worker starting\n").unwrap();
    let mut worker = spawn(
        Command::new(fixture("cycler"))
            .args(["--cycles", "4", "--markers", "log", "--log"])
            .arg(&log)
            .arg("--wait-file")
            .arg(&go),
    );
    let mut ready = String::new();
    BufReader::new(worker.child().stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let pid = ready.trim().strip_prefix("ready ").unwrap().to_string();
    let log_path = log.to_str().unwrap();
    let reader: Vec<String> = reader.iter().map(|a| a.replace("{}", log_path)).collect();
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["attach", "--pid", &pid])
            .args(&reader)
            .arg("-o")
            .arg(&json),
    );
    let rest = wait_for_line(
        tracer.child().stderr.take().unwrap(),
        "leaktrace: tracing pid",
    );
    let drain = std::thread::spawn(move || std::io::read_to_string(rest.into_inner()));
    // A command reading the log starts on its own time: the worker goes once it has the log
    // open (with --cycle-log, leaktrace has it open before it says it is tracing).
    if reader.iter().any(|a| a == "--cycle-cmd") {
        let started = std::time::Instant::now();
        while !log_is_open_elsewhere(&log) {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "the cycle command opened the log"
            );
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
    std::fs::write(&go, b"").unwrap();
    assert!(worker.wait_output().status.success());
    let output = tracer.wait_output();
    let stderr = drain.join().unwrap().unwrap();
    assert!(output.status.success(), "{stderr}");
    assert!(
        scratch.path("worker.log.1").exists(),
        "the worker rotated its log after cycle 2"
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.ended_by, EndReason::TargetExited);
    assert_all_complete(&trace, 4, true);
    for cycle in trace.cycles.iter() {
        let k = f64::from(cycle.index);
        assert_eq!(cycle.worker["heapUsed"], k * 1000.0, "cycle {k}'s figures");
        assert_eq!(cycle.worker["external"], k * 7.0, "cycle {k}'s figures");
    }
    trace
}

/// Whether a process other than leaktrace has `path` open (the cycle command's `tail`).
fn log_is_open_elsewhere(path: &std::path::Path) -> bool {
    let Ok(processes) = std::fs::read_dir("/proc") else {
        return false;
    };
    processes.flatten().any(|process| {
        let comm = std::fs::read_to_string(process.path().join("comm")).unwrap_or_default();
        comm.trim() != "leaktrace"
            && std::fs::read_dir(process.path().join("fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|target| target == path))
            })
    })
}

#[test]
fn a_followed_log_marks_cycles_in_attach_mode_across_rotation() {
    if !require_root("a_followed_log_marks_cycles_in_attach_mode_across_rotation") {
        return;
    }
    let trace = attached_log_worker("cycles-log", &["--cycle-log", "{}"]);
    assert_eq!(trace.markers.sources, ["log"]);
}

/// The same log read through `--cycle-cmd 'tail -n0 -F LOG'`, as a user whose worker logs to
/// journald or docker reads it: the same cycles, phases and figures; and the command does not
/// outlive the trace.
#[test]
fn a_cycle_command_marks_the_same_cycles_as_the_log_it_reads() {
    if !require_root("a_cycle_command_marks_the_same_cycles_as_the_log_it_reads") {
        return;
    }
    let trace = attached_log_worker("cycles-cmd", &["--cycle-cmd", "tail -n0 -F {}"]);
    assert_eq!(trace.markers.sources, ["command"]);
    // The shell and its tail name the log, in this test's scratch directory; leaktrace's own
    // copy that holds its links for a moment after it exits names it too, and is not one.
    let left: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|process| {
            let cmdline = std::fs::read(process.path().join("cmdline")).ok()?;
            let comm = std::fs::read_to_string(process.path().join("comm")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("leaktrace-cycles-cmd-") && comm.trim() != "leaktrace")
                .then_some(cmdline)
        })
        .collect();
    assert!(
        left.is_empty(),
        "the cycle command was left running: {left:?}"
    );
}

#[test]
fn cycle_every_cuts_by_time_and_cycles_stops_after_exactly_n() {
    if !require_root("cycle_every_cuts_by_time_and_cycles_stops_after_exactly_n") {
        return;
    }
    let scratch = Scratch::new("cycles-interval");
    let (trace, _) = run_cycler(
        &scratch,
        &["--cycle-every", "1s", "--cycles", "3"],
        &[
            "--cycles",
            "10",
            "--markers",
            "interval",
            "--period-ms",
            "1000",
        ],
    );
    assert_eq!(trace.ended_by, EndReason::CyclesDone);
    assert_eq!(
        trace.exit_code,
        Some(128 + libc::SIGTERM),
        "the worker was stopped after cycle 3"
    );
    assert_eq!(trace.markers.sources, ["socket", "interval"]);
    // The worker's figures ride on markers, which interval mode has none of.
    let mut cycles = trace.cycles.to_vec();
    for cycle in &mut cycles {
        cycle.worker = [
            ("heapUsed".to_string(), (cycle.index * 1000) as f64),
            ("external".to_string(), (cycle.index * 7) as f64),
        ]
        .into();
    }
    let summary: Vec<(u32, bool)> = cycles.iter().map(|c| (c.index, c.cut)).collect();
    assert_eq!(summary, [(1, false), (2, false), (3, false)]);
    cycles.iter().for_each(|c| assert_scripted(c, false));
}

#[test]
fn cycles_n_ends_the_trace_with_the_worker_figures_sent() {
    if !require_root("cycles_n_ends_the_trace_with_the_worker_figures_sent") {
        return;
    }
    let scratch = Scratch::new("cycles-n");
    let (trace, _) = run_cycler(
        &scratch,
        &[&CYCLER_REGEX[..], &["--cycles", "5"]].concat(),
        &["--cycles", "10", "--markers", "stdout"],
    );
    assert_eq!(trace.ended_by, EndReason::CyclesDone);
    assert_all_complete(&trace, 5, true);
    let heap_used: Vec<f64> = trace.cycles.iter().map(|c| c.worker["heapUsed"]).collect();
    assert_eq!(heap_used, [1000.0, 2000.0, 3000.0, 4000.0, 5000.0]);
}

#[test]
fn sigint_in_cycle_3_keeps_two_complete_cycles_and_marks_the_third_cut() {
    if !require_root("sigint_in_cycle_3_keeps_two_complete_cycles_and_marks_the_third_cut") {
        return;
    }
    let scratch = Scratch::new("cycles-sigint");
    let json = scratch.path("t.json");
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .args(CYCLER_REGEX)
            .arg("--")
            .arg(fixture("cycler"))
            .args(["--cycles", "10", "--markers", "stdout"])
            .stdout(Stdio::piped()),
    );
    // The worker's output passes through leaktrace: wait for cycle 3 to be under way.
    let mut lines = BufReader::new(tracer.child().stdout.take().unwrap()).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen_cycle_2 = false;
    loop {
        let line = lines.next().expect("worker output").unwrap();
        seen_cycle_2 |= line.starts_with("cycle 2 done");
        if seen_cycle_2 && line == "phase cleanup" {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(tracer.pid() as i32, libc::SIGINT) };
    let output = tracer.wait_output();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.ended_by, EndReason::Interrupted);
    let summary: Vec<(u32, bool)> = trace.cycles.iter().map(|c| (c.index, c.cut)).collect();
    assert_eq!(summary, [(1, false), (2, false), (3, true)]);
    trace.cycles[..2]
        .iter()
        .for_each(|c| assert_scripted(c, true));
    let cut: Vec<&str> = trace.cycles[2]
        .phases
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(
        cut,
        ["scrape", "cleanup"],
        "the cut cycle keeps the phases it had"
    );
}

#[test]
fn a_budget_gates_the_exit_code_on_the_fitted_growth() {
    if !require_root("a_budget_gates_the_exit_code_on_the_fitted_growth") {
        return;
    }
    let scratch = Scratch::new("cycles-budget");
    let json = scratch.path("t.json");
    let run = |budget: &str| {
        let output = Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .args(CYCLER_REGEX)
            .args(["--budget", budget, "--"])
            .arg(fixture("cycler"))
            .args(["--cycles", "7", "--markers", "stdout", "--pause-ms", "150"])
            .output()
            .unwrap();
        (output.status.code(), Trace::read(&json).unwrap())
    };
    // The script keeps 1 MiB per cycle, and its child 1 MiB every other cycle: 1.5 MiB a cycle.
    let (code, trace) = run("5MiB/day");
    assert_eq!(code, Some(3), "growth over budget exits 3");
    let tree = trace.analysis.tree().unwrap();
    assert!(
        (tree.per_cycle - 1.5 * MIB as f64).abs() < 0.2 * MIB as f64,
        "{} per cycle",
        tree.per_cycle
    );
    assert!(!trace.analysis.budget.as_ref().unwrap().pass);
    // The worker's own processes carry the growth, its cleanup gives 1 MiB back, scrape grows.
    // Its heapUsed figure grows 1000 B a cycle: that does not explain 1.5 MiB, so the verdict
    // names the worker without claiming its heap.
    let verdict = &trace.analysis.verdict;
    assert_eq!(verdict.source, "worker", "{verdict:?}");
    assert!(verdict.evidence[1].contains("heapUsed"), "{verdict:?}");
    let answers = &trace.analysis.answers;
    assert_eq!(answers.growth_phase.as_deref(), Some("scrape"));
    assert_eq!(answers.cleanup_helps, Some(true));
    let cleanup = answers.cleanup_change.unwrap();
    assert!(
        (cleanup + MIB as f64).abs() < 0.1 * MIB as f64,
        "cleanup {cleanup}"
    );
    let (code, trace) = run("100MiB/cycle");
    assert_eq!(code, Some(0));
    assert!(trace.analysis.budget.unwrap().pass);
}

#[test]
fn an_interim_analysis_is_printed_every_k_cycles() {
    if !require_root("an_interim_analysis_is_printed_every_k_cycles") {
        return;
    }
    let scratch = Scratch::new("cycles-interim");
    let output = Command::new(leaktrace())
        .args(["run", "--analyze-every", "3", "-o"])
        .arg(scratch.path("t.json"))
        .args(CYCLER_REGEX)
        .arg("--")
        .arg(fixture("cycler"))
        .args(["--cycles", "7", "--markers", "stdout", "--pause-ms", "150"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let interim: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("leaktrace: after "))
        .collect();
    assert_eq!(interim.len(), 2, "after cycles 3 and 6: {stderr}");
    // Three cycles cannot tell growth from noise, and say so rather than extrapolate a day.
    assert_eq!(
        interim[0],
        "leaktrace: after 3 cycles: tree owned PSS not known yet: 3 cycles after warm-up, \
         a trend needs 6; likely source: too-few-cycles"
    );
    assert!(
        interim[1].contains("tree owned PSS grows +") && interim[1].contains("/day if it went on"),
        "{}",
        interim[1]
    );
    assert!(
        interim[1].ends_with("likely source: worker"),
        "{}",
        interim[1]
    );
}

#[test]
fn diff_says_fixed_for_the_fix_and_new_growth_the_other_way() {
    if !require_root("diff_says_fixed_for_the_fix_and_new_growth_the_other_way") {
        return;
    }
    let scratch = Scratch::new("cycles-diff");
    let trace_of = |name: &str, extra: &[&str]| {
        let json = scratch.path(name);
        let mut args = vec!["--cycles", "7", "--markers", "stdout", "--pause-ms", "150"];
        args.extend(extra);
        let output = Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .args(CYCLER_REGEX)
            .arg("--")
            .arg(fixture("cycler"))
            .args(&args)
            .output()
            .unwrap();
        assert!(output.status.success());
        json
    };
    let (leaking, fixed) = (
        trace_of("before.json", &[]),
        trace_of("after.json", &["--fixed"]),
    );
    let (code, text) = diff_within_5mib_a_day(&leaking, &fixed);
    assert_eq!(code, Some(0), "the fixed worker is within budget: {text}");
    assert!(text.contains("overall (tree owned PSS): fixed"), "{text}");
    let tree = text.lines().find(|l| l.starts_with("tree.owned")).unwrap();
    assert!(
        tree.contains("+") && tree.ends_with("fixed"),
        "both rates shown: {tree}"
    );
    assert!(
        text.contains("warning: the traces ran different commands"),
        "{text}"
    );
    let (code, text) = diff_within_5mib_a_day(&fixed, &leaking);
    assert!(
        text.contains("overall (tree owned PSS): new growth"),
        "{text}"
    );
    assert_eq!(code, Some(3), "the leaking AFTER exceeds the budget");
}

#[test]
fn trace_events_open_in_perfetto_shape_and_end_on_the_reports_figures() {
    if !require_root("trace_events_open_in_perfetto_shape_and_end_on_the_reports_figures") {
        return;
    }
    let scratch = Scratch::new("cycles-trace-events");
    let (json, events) = (scratch.path("t.json"), scratch.path("events.json"));
    let output = Command::new(leaktrace())
        .args(["run", "-q", "--interval", "100ms", "-o"])
        .arg(&json)
        .arg("--trace-events")
        .arg(&events)
        .args(CYCLER_REGEX)
        .arg("--")
        .arg(fixture("cycler"))
        .args(["--cycles", "3", "--markers", "stdout", "--pause-ms", "150"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let trace = Trace::read(&json).unwrap();
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&events).unwrap()).unwrap();
    let events = document["traceEvents"].as_array().unwrap();
    let counters: Vec<&serde_json::Value> = events.iter().filter(|e| e["ph"] == "C").collect();
    assert!(counters.len() > 3);
    for counter in &counters {
        assert!(
            counter["pid"].is_u64() && counter["ts"].is_number(),
            "{counter}"
        );
        let args = counter["args"].as_object().unwrap();
        assert!(
            !args.is_empty() && args.values().all(serde_json::Value::is_number),
            "{counter}"
        );
    }
    // Every role track ends on the report's figure.
    for (role, totals) in &trace.totals.by_role {
        let last = counters
            .iter()
            .rev()
            .find(|e| e["name"] == format!("{role} PSS"))
            .unwrap();
        assert_eq!(
            last["args"]["owned"].as_u64(),
            Some(totals.owned()),
            "{role}"
        );
        assert_eq!(last["args"]["file"].as_u64(), Some(totals.file), "{role}");
    }
    for process in &trace.processes {
        let last = counters
            .iter()
            .rev()
            .find(|e| e["pid"] == process.pid && e["name"] == "resident")
            .unwrap();
        assert_eq!(last["args"]["anon"].as_u64(), Some(process.resident.anon));
    }
    let instants = events.iter().filter(|e| e["ph"] == "i").count();
    let phases: usize = trace.cycles.iter().map(|c| c.phases.len()).sum();
    assert_eq!(
        instants,
        trace.cycles.len() + phases,
        "an instant per cycle end and phase start"
    );
}

/// A cycle command that exits is started again (a second later): `echo cycle` three times
/// makes three cycles of a worker that gives no markers of its own.
#[test]
fn a_cycle_command_that_exits_is_started_again() {
    if !require_root("a_cycle_command_that_exits_is_started_again") {
        return;
    }
    let scratch = Scratch::new("cycles-cmd-restart");
    let json = scratch.path("t.json");
    let started = std::time::Instant::now();
    let (_, trace) = leaktrace_run(
        &[
            "run",
            "-q",
            "--cycle-cmd",
            "echo cycle n=1",
            "--cycles",
            "3",
            "-o",
            json.to_str().unwrap(),
            "--",
            "sleep",
            "60",
        ],
        &json,
    );
    assert_eq!(trace.ended_by, EndReason::CyclesDone);
    assert_eq!(trace.cycles.iter().filter(|c| !c.cut).count(), 3);
    assert!(trace.cycles.iter().all(|c| c.worker.get("n") == Some(&1.0)));
    assert!(
        started.elapsed() >= std::time::Duration::from_secs(2),
        "a second between runs"
    );
}
