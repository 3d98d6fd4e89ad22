//! Reports written while the trace goes on: `--report-every` keeps at most `--keep` whole
//! reports in `--report-dir`, each the trace so far (its cycles those of the final trace, to
//! the byte); SIGUSR1 writes one now and the trace goes on; `kill -9` of leaktrace leaves the
//! last report readable and nothing half-written.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::{EndReason, Trace};
use support::{CYCLER_REGEX, Guard, Scratch, fixture, leaktrace, require_root, spawn};

/// The cycler traced, its cycles about 1.2 s each (four markers, 300 ms pauses).
fn traced(scratch: &Scratch, cycles: &str, reports: &[&str]) -> (Guard, PathBuf, PathBuf) {
    let (dir, json) = (scratch.path("reports"), scratch.path("final.json"));
    std::fs::create_dir_all(&dir).unwrap();
    let guard = spawn(
        Command::new(leaktrace())
            .args(["run", "-q", "--report-dir"])
            .arg(&dir)
            .args(reports)
            .args(CYCLER_REGEX)
            .arg("-o")
            .arg(&json)
            .arg("--")
            .arg(fixture("cycler"))
            .args([
                "--cycles",
                cycles,
                "--markers",
                "stdout",
                "--pause-ms",
                "300",
            ]),
    );
    (guard, dir, json)
}

/// The files in the report directory, by name.
fn listed(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    files
}

fn json_reports(dir: &Path) -> Vec<PathBuf> {
    listed(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect()
}

/// A report is the trace so far: ended_by `running`, and its cycles are the final trace's.
fn assert_prefix_of(report: &Trace, last: &Trace) {
    assert_eq!(report.ended_by, EndReason::Running);
    assert!(report.cycles.len() <= last.cycles.len());
    for (early, late) in report.cycles.iter().zip(last.cycles.iter()) {
        // The last cycle may be marked as the tree's teardown only after the worker exits.
        let mut late = late.clone();
        (late.teardown, late.teardown_reason) = (early.teardown, early.teardown_reason.clone());
        assert_eq!(*early, late, "cycle {} as reported on the way", early.index);
    }
}

#[test]
fn reports_every_second_keep_the_last_three_each_the_trace_so_far() {
    let name = "reports_every";
    if !require_root(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let page = scratch.path("final.html");
    let (mut guard, dir, json) = traced(
        &scratch,
        "8",
        &[
            "--report-every",
            "1s",
            "--keep",
            "3",
            "--html",
            page.to_str().unwrap(),
        ],
    );
    let mut seen: Vec<(PathBuf, Trace)> = Vec::new();
    while guard.child().try_wait().unwrap().is_none() {
        let files = listed(&dir);
        let reports = json_reports(&dir);
        assert!(reports.len() <= 3, "at most three reports: {files:?}");
        // Pages only beside reports (one more while a new pair is being named).
        assert!(files.len() <= 2 * reports.len() + 1, "{files:?}");
        for report in reports {
            if !seen.iter().any(|(path, _)| *path == report) {
                let trace = Trace::read(&report).unwrap_or_else(|e| panic!("{report:?}: {e}"));
                seen.push((report, trace));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let output = guard.wait_output();
    assert!(output.status.success(), "{output:?}");
    let last = Trace::read(&json).unwrap();
    assert_eq!(last.cycles.len(), 8);
    assert!(
        seen.len() >= 6,
        "a report a second over ~10 s: {}",
        seen.len()
    );
    let mut cycles_before = 0;
    for (_, report) in &seen {
        assert_prefix_of(report, &last);
        // Analysed as the final trace is.
        if !report.cycles.is_empty() {
            assert!(report.analysis.tree().is_some(), "{:?}", report.analysis);
        }
        assert!(
            report.cycles.len() >= cycles_before,
            "reports only go forward"
        );
        cycles_before = report.cycles.len();
    }
    assert!(
        cycles_before >= 6,
        "the last report seen had {cycles_before} cycles"
    );
    assert_eq!(json_reports(&dir).len(), 3, "the last three stay");
    for report in json_reports(&dir) {
        let page = std::fs::read_to_string(report.with_extension("html")).unwrap();
        assert!(page.starts_with("<!DOCTYPE html>"), "{report:?}'s page");
    }
    let page = std::fs::read_to_string(&page).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>"),
        "the final page: {page:.80}"
    );
}

#[test]
fn sigusr1_writes_a_report_now_and_the_trace_goes_on() {
    let name = "reports_usr1";
    if !require_root(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let (mut guard, dir, json) = traced(&scratch, "6", &[]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(listed(&dir).is_empty(), "no report before it is asked for");
    // SAFETY: signalling our own child, not yet reaped.
    unsafe { libc::kill(guard.pid() as i32, libc::SIGUSR1) };
    let asked = Instant::now();
    while json_reports(&dir).is_empty() {
        assert!(
            asked.elapsed() < Duration::from_secs(5),
            "a report within 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let report = Trace::read(&json_reports(&dir)[0]).unwrap();
    assert!(
        guard.child().try_wait().unwrap().is_none(),
        "SIGUSR1 must not end the trace"
    );
    let output = guard.wait_output();
    assert!(output.status.success(), "{output:?}");
    let last = Trace::read(&json).unwrap();
    assert_eq!(last.cycles.len(), 6, "the trace went on to the end");
    assert!(
        (1..6).contains(&report.cycles.len()),
        "{}",
        report.cycles.len()
    );
    assert_prefix_of(&report, &last);
}

#[test]
fn kill_9_of_leaktrace_leaves_the_last_report_whole() {
    let name = "reports_kill9";
    if !require_root(name) {
        return;
    }
    let scratch = Scratch::new(name);
    let (mut guard, dir, _) = traced(&scratch, "30", &["--report-every", "500ms"]);
    let started = Instant::now();
    while json_reports(&dir).len() < 3 {
        assert!(started.elapsed() < Duration::from_secs(20), "three reports");
        std::thread::sleep(Duration::from_millis(20));
    }
    // SAFETY: killing our own child, not yet reaped.
    unsafe { libc::kill(guard.pid() as i32, libc::SIGKILL) };
    guard.child().wait().unwrap();
    // Every file there is a whole report; the last has the most cycles.
    let reports = json_reports(&dir);
    assert_eq!(listed(&dir), reports, "nothing half-written");
    let cycles: Vec<usize> = reports
        .iter()
        .map(|report| {
            Trace::read(report)
                .unwrap_or_else(|e| panic!("{report:?}: {e}"))
                .cycles
                .len()
        })
        .collect();
    assert!(cycles.windows(2).all(|w| w[0] <= w[1]), "{cycles:?}");
}
