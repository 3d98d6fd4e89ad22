//! A real scraper, traced the way its team would: a Bun + puppeteer-core worker (from npm,
//! installed by `cargo xtask setup`) driving Debian's `/usr/bin/chromium` wrapper, marking its
//! cycles and phases with log lines only, and closing its browser and exiting right after its
//! last `cycle N done`. Each leak must get the right verdict, and the tree's growth rate must
//! match the worker's own reading of its tree (Pss_Anon + Pss_Shmem from /proc, printed as a
//! `truth` line just before each marker) within 15%. A last cycle measured on a tearing-down
//! tree is marked `teardown` and left out, never fitted.
//!
//! The C-style check (a plain process keeping memory per cycle and exiting right after its
//! last marker) and the DevTools observer check (no process of leaktrace's own in the browser)
//! are here too.

mod support;

use std::{os::unix::process::CommandExt, path::PathBuf, process::Command};

use leaktrace::{analysis::theil_sen, trace::Trace};
use support::{Scratch, fixture, leaktrace, require_chromium, require_root, succeeded};

const MIB: f64 = 1048576.0;
const CYCLES: usize = 20;
const MARKERS: [&str; 4] = [
    "--cycle-regex",
    r"cycle \d+ done",
    "--phase-regex",
    r"^phase (\w+)",
];
/// The worker's `process.memoryUsage()` line, as real workers log it (`--memlog`).
const FIGURES: [&str; 2] = [
    "--figures-regex",
    r"^mem .*heapUsed=(?P<heapUsed>\S+) .*external=(?P<external>\S+) arrayBuffers=(?P<arrayBuffers>\S+)",
];

/// The worker's folder, with Bun and puppeteer-core installed: None (a loud skip) outside CI
/// when they are missing; in CI a failure.
fn scraper_dir(test: &str) -> Option<PathBuf> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/scraper");
    if dir.join("node_modules/.bin/bun").exists() {
        return Some(dir);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
        panic!("{test}: Bun and puppeteer-core are missing; `cargo xtask setup` installs them");
    }
    eprintln!("SKIPPED {test}: Bun and puppeteer-core missing (run `cargo xtask setup`)");
    None
}

/// One `truth owned=… pages=… browsers=…` line of the worker.
#[derive(Debug, Clone, Copy)]
struct Truth {
    owned: f64,
}

fn truths(stdout: &str) -> Vec<Truth> {
    stdout
        .lines()
        .filter_map(|line| line.strip_prefix("truth owned="))
        .map(|rest| Truth {
            owned: rest.split_whitespace().next().unwrap().parse().unwrap(),
        })
        .collect()
}

struct Traced {
    trace: Trace,
    truth: Vec<Truth>,
    stderr: String,
}

/// The worker with `leak` over 20 cycles, traced with log-line markers (and its memory log
/// line read with --figures-regex when `memlog`).
fn scraper(test: &str, leak: &str, memlog: bool, extra: &[&str]) -> Option<Traced> {
    if !require_root(test) || !require_chromium(test) {
        return None;
    }
    let dir = scraper_dir(test)?;
    let scratch = Scratch::new(test);
    let json = scratch.path("t.json");
    let cycles = CYCLES.to_string();
    let mut command = Command::new(leaktrace());
    command
        .args(["run", "-q", "--cycles", &cycles, "-o"])
        .arg(&json)
        .args(MARKERS)
        .args(extra);
    if memlog {
        command.args(FIGURES);
    }
    command
        .arg("--")
        .arg(dir.join("node_modules/.bin/bun"))
        .args(["run", "worker.ts", "--leak", leak, "--cycles", &cycles])
        .current_dir(&dir);
    if memlog {
        command.arg("--memlog");
    }
    let output = succeeded(&mut command);
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let truth = truths(&stdout);
    assert_eq!(truth.len(), CYCLES, "the worker's truth lines:\n{stdout}");
    Some(Traced {
        trace: Trace::read(&json).unwrap(),
        truth,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

impl Traced {
    fn verdict_is(&self, source: &str) {
        let verdict = &self.trace.analysis.verdict;
        assert_eq!(verdict.source, source, "{verdict:?}\n{}", self.stderr);
    }

    /// All 20 cycles are there; only the last may be a teardown, and it is then left out.
    fn cycles_are_whole(&self) {
        let cycles = &self.trace.cycles;
        let complete: Vec<_> = cycles.iter().filter(|c| !c.cut).collect();
        assert_eq!(complete.len(), CYCLES, "{}", self.stderr);
        for cycle in &complete[..CYCLES - 1] {
            assert!(!cycle.teardown, "cycle {} is a teardown", cycle.index);
        }
    }

    /// The tree's owned-PSS growth per cycle (leaktrace's fit) against the slope of the
    /// worker's own readings over the same cycles: within 15% (and 256 KiB for slow leaks).
    fn growth_matches_the_workers_reading(&self) -> f64 {
        let tree = self.trace.analysis.tree().expect("a tree fit");
        let measured: Vec<f64> = self
            .trace
            .cycles
            .iter()
            .filter(|c| !c.cut)
            .zip(&self.truth)
            .filter(|(c, _)| c.is_measured())
            .map(|(_, t)| t.owned)
            .skip(tree.warmup_cycles)
            .collect();
        let (truth, _) = theil_sen(&measured).unwrap();
        assert!(
            (tree.per_cycle - truth).abs() <= 0.15 * truth.abs() + 256.0 * 1024.0,
            "tree owned PSS {:.0} B/cycle against the worker's own {truth:.0} B/cycle\n{}",
            tree.per_cycle,
            self.stderr
        );
        truth
    }
}

#[test]
fn scraper_without_a_leak_is_none() {
    let Some(run) = scraper("scraper-none", "none", true, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("none");
}

#[test]
fn scraper_worker_heap_with_its_memory_log_is_worker_heap() {
    let Some(run) = scraper("scraper-worker-heap", "worker-heap", true, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("worker-heap");
    let truth = run.growth_matches_the_workers_reading();
    assert!(
        truth > 2.0 * MIB,
        "the worker keeps ~4 MiB a cycle: {truth}"
    );
}

#[test]
fn scraper_worker_heap_without_figures_is_the_worker_and_says_what_would_split_it() {
    let Some(run) = scraper("scraper-worker-heap-bare", "worker-heap", false, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("worker");
    let evidence = run.trace.analysis.verdict.evidence.join(" ");
    assert!(evidence.contains("--figures-regex"), "{evidence}");
    run.growth_matches_the_workers_reading();
}

#[test]
fn scraper_buffers_with_its_memory_log_are_worker_external() {
    let Some(run) = scraper("scraper-worker-external", "worker-external", true, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("worker-external");
    let truth = run.growth_matches_the_workers_reading();
    assert!(truth > 2.0 * MIB, "the worker keeps 4 MiB a cycle: {truth}");
}

#[test]
fn scraper_buffers_without_figures_are_the_worker() {
    let Some(run) = scraper(
        "scraper-worker-external-bare",
        "worker-external",
        false,
        &[],
    ) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("worker");
    run.growth_matches_the_workers_reading();
}

#[test]
fn scraper_pages_never_closed_are_page_accumulation() {
    let Some(run) = scraper("scraper-pages", "pages", false, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("page-accumulation");
    run.growth_matches_the_workers_reading();
    let pages = run
        .trace
        .analysis
        .series
        .iter()
        .find(|s| s.name == "browser.pages")
        .unwrap();
    assert_eq!(pages.per_cycle, 1.0);
}

#[test]
fn scraper_contexts_never_closed_are_context_accumulation() {
    let Some(run) = scraper("scraper-contexts", "contexts", true, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("context-accumulation");
    run.growth_matches_the_workers_reading();
}

#[test]
fn scraper_page_js_keeping_objects_is_in_page_js() {
    let Some(run) = scraper("scraper-in-page", "in-page", false, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("in-page-js");
    run.growth_matches_the_workers_reading();
}

#[test]
fn scraper_relaunching_browsers_is_browser_accumulation() {
    let Some(run) = scraper("scraper-browsers", "browsers", true, &[]) else {
        return;
    };
    run.cycles_are_whole();
    run.verdict_is("browser-accumulation");
    run.growth_matches_the_workers_reading();
    let answers = &run.trace.analysis.answers;
    assert!(
        answers.browsers_alive.unwrap() >= answers.browsers_at_start.unwrap() + 15,
        "{answers:?}"
    );
}

#[test]
fn the_wrapper_launched_browser_has_the_browser_role() {
    let Some(run) = scraper("scraper-roles", "none", false, &["--cdp", "off"]) else {
        return;
    };
    // Debian's /usr/bin/chromium is a shell script the worker forks; it execs the browser.
    let browsers: Vec<_> = run
        .trace
        .processes
        .iter()
        .filter(|p| p.comm == "chromium" && p.ppid == run.trace.root_pid)
        .collect();
    assert_eq!(browsers.len(), 1, "{:?}", run.trace.processes);
    assert_eq!(browsers[0].role, "browser");
}

#[test]
fn reading_devtools_starts_nothing_in_the_browser() {
    let (Some(on), Some(off)) = (
        scraper("scraper-cdp-on", "pages", false, &[]),
        scraper("scraper-cdp-off", "pages", false, &["--cdp", "off"]),
    ) else {
        return;
    };
    assert!(on.trace.browser.connects >= 1, "{:?}", on.trace.browser);
    let roles = |run: &Traced| {
        let mut roles: Vec<String> = run
            .trace
            .processes
            .iter()
            .map(|p| p.role.to_string())
            .collect();
        roles.sort();
        roles
    };
    assert!(
        !roles(&on).iter().any(|r| r == "utility:tracing"),
        "{:?}",
        roles(&on)
    );
    assert_eq!(
        on.trace.processes.len(),
        off.trace.processes.len(),
        "the same processes with DevTools read as without"
    );
}

/// A plain process keeping memory every cycle and exiting right after its 12th marker: its
/// last cycle is either right or a teardown, and the growth is found.
#[test]
fn a_worker_exiting_right_after_its_last_marker_keeps_its_growth() {
    if !require_root("a_worker_exiting_right_after_its_last_marker_keeps_its_growth") {
        return;
    }
    let scratch = Scratch::new("exit-after-marker");
    let json = scratch.path("t.json");
    succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .args([
                "--cycle-regex",
                r"cycle \d+ done",
                "--phase-regex",
                r"^phase (\w+)",
            ])
            .arg("--")
            .arg(fixture("cycler"))
            .args(["--cycles", "12", "--markers", "stdout", "--pause-ms", "100"])
            .arg("--exit-at-once"),
    );
    let trace = Trace::read(&json).unwrap();
    let complete = trace.cycles.iter().filter(|c| !c.cut).count();
    assert_eq!(complete, 12);
    // The script keeps 1 MiB a cycle and its child 1 MiB every other cycle.
    let tree = trace.analysis.tree().unwrap();
    assert!(
        (tree.per_cycle - 1.5 * MIB).abs() <= 0.15 * 1.5 * MIB,
        "{} B/cycle",
        tree.per_cycle
    );
    assert_ne!(trace.analysis.verdict.source, "none");
}

/// The scraper restarted by a shell loop, as a supervisor would, and followed by command line
/// with its markers from the log the loop appends its output to: each instance a segment,
/// DevTools reconnected to each instance's own browser (its page count starts over), and
/// each instance's pages leak named on its own cycles.
#[test]
fn a_restarted_scraper_is_followed_into_its_new_browser() {
    let test = "a_restarted_scraper_is_followed_into_its_new_browser";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let Some(dir) = scraper_dir(test) else { return };
    let scratch = Scratch::new("scraper-follow");
    let (log, json) = (scratch.path("worker.log"), scratch.path("t.json"));
    let bun = dir.join("node_modules/.bin/bun");
    let per_instance = 10;
    let mut supervisor = Command::new("sh");
    supervisor
        .args([
            "-c",
            r#"for n in 10 12; do "$0" run worker.ts --leak pages --cycles $n >> "$1"; done"#,
        ])
        .arg(&bun)
        .arg(&log)
        .current_dir(&dir)
        .process_group(0);
    let supervisor = Supervisor(supervisor.spawn().unwrap());
    let rule = r"^\S*/bun run worker\.ts --leak pages";
    let up = std::time::Instant::now();
    while !std::fs::read_dir("/proc").unwrap().flatten().any(|p| {
        std::fs::read(p.path().join("cmdline"))
            .is_ok_and(|c| String::from_utf8_lossy(&c).contains("worker.ts\0--leak\0pages"))
    }) {
        assert!(up.elapsed().as_secs() < 10, "the first instance started");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let output = succeeded(
        Command::new(leaktrace())
            .args(["attach", "-q", "--follow-cmdline", rule, "--cycle-log"])
            .arg(&log)
            .args(MARKERS)
            .args(["--cycles", &(2 * per_instance).to_string(), "-o"])
            .arg(&json),
    );
    // The second instance goes on to its last cycle, closes its browser and exits.
    supervisor.finish();
    let trace = Trace::read(&json).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(trace.segments.len(), 2, "{:?}\n{stderr}", trace.segments);
    assert_ne!(trace.segments[0].root_pid, trace.segments[1].root_pid);
    // Pages at each cycle end, per instance: one more each cycle, from the instance's own
    // browser (a reading of the first browser would go on from where it was). The first
    // instance's last cycle is left out: the worker closes its browser right after its last
    // marker, and the view may be read while it closes. The second runs two cycles more than
    // the trace takes, so its last is whole.
    let pages = |segment: u32| -> Vec<u32> {
        let mut pages: Vec<u32> = trace
            .cycles
            .iter()
            .filter(|c| c.segment == segment && c.is_measured())
            .filter_map(|c| c.browser.as_ref().map(|v| v.pages))
            .collect();
        if segment == 0 {
            pages.pop();
        }
        pages
    };
    let (first, second) = (pages(0), pages(1));
    // The second instance's first cycle has its view, of as many pages as the first's first:
    // DevTools is reconnected to the new browser as soon as it shows up (before, the back-off
    // its refusals built up while the first browser closed left the second instance's first
    // cycles without a view, and its pages leak read as renderer-native). A view may still
    // miss its deadline on a busy machine.
    assert_eq!(second[0], first[0], "{first:?} then {second:?}");
    assert!(second.len() >= per_instance - 1, "{second:?}");
    for pages in [&first, &second] {
        assert!(pages.len() >= per_instance - 3, "{pages:?}");
        assert!(pages.windows(2).all(|w| w[1] == w[0] + 1), "{pages:?}");
    }
    assert!(
        second[0] < *first.last().unwrap(),
        "{first:?} then {second:?}"
    );
    assert!(trace.browser.connects >= 2, "{:?}", trace.browser);
    // Each instance's leak, named on its own cycles; the analysis is of the second.
    let fits = &trace.analysis.segments;
    assert_eq!(fits.len(), 2, "{fits:?}");
    for fit in fits {
        assert_eq!(fit.verdict.source, "page-accumulation", "{fit:?}");
    }
    assert_eq!(trace.analysis.verdict.source, fits[1].verdict.source);
}

/// A supervisor in a process group of its own, killed with whatever it started.
/// A supervisor in a process group of its own. Puppeteer starts Chromium in a group of its own
/// too: a worker killed outright leaves its browser running, so a supervisor that must be
/// stopped gets SIGTERM first (puppeteer closes its browser on it), and SIGKILL only after.
struct Supervisor(std::process::Child);

impl Supervisor {
    /// Waits (a minute at most) for the supervisor to end by itself.
    fn finish(mut self) {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while self.0.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < until, "the supervisor ended");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        if self.0.try_wait().is_ok_and(|status| status.is_some()) {
            return;
        }
        let group = -(self.0.id() as i32);
        // SAFETY: signalling the process group the supervisor leads.
        unsafe { libc::kill(group, libc::SIGTERM) };
        std::thread::sleep(std::time::Duration::from_secs(3));
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}
