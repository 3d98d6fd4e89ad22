//! The browser's view over DevTools, against a real Chromium driven by the `browser_worker`
//! fixture (chromiumoxide, as a scraper would): pages and contexts counted exactly, a page's
//! JS heap growing by what it retains, its renderer matching /proc, a killed browser, a browser
//! in pipe mode, and a worker that sees the same pages whether leaktrace watches or not.

mod support;

use std::{collections::BTreeSet, process::Command};

use leaktrace::trace::{EndReason, Trace};
use support::{Scratch, fixture, leaktrace, require_chromium, require_root, succeeded};

const CYCLE: [&str; 2] = ["--cycle-regex", r"cycle \d+ done"];

/// Runs the worker under leaktrace; returns the trace, the worker's stdout and leaktrace's stderr.
fn traced(scratch: &Scratch, worker_args: &[&str]) -> (Trace, String, String) {
    traced_with(scratch, &[], worker_args)
}

fn traced_with(
    scratch: &Scratch,
    leaktrace_args: &[&str],
    worker_args: &[&str],
) -> (Trace, String, String) {
    let json = scratch.path("t.json");
    let profile = scratch.path("profile");
    let output = Command::new(leaktrace())
        .args(["run", "-o"])
        .arg(&json)
        .args(CYCLE)
        .args(leaktrace_args)
        .arg("--")
        .arg(fixture("browser_worker"))
        .args(worker_args)
        .arg("--profile")
        .arg(&profile)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    (
        Trace::read(&json).unwrap(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
    )
}

fn ops(stdout: &str) -> Vec<String> {
    let mut ops: Vec<String> = stdout
        .lines()
        .filter(|l| l.starts_with("ops "))
        .map(String::from)
        .collect();
    ops.sort();
    ops
}

#[test]
fn devtools_counts_pages_and_contexts_exactly_and_lists_their_urls() {
    let test = "devtools_counts_pages_and_contexts_exactly_and_lists_their_urls";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("cdp-pages");
    let (trace, stdout, _) = traced(
        &scratch,
        &["--contexts", "3", "--pages", "2", "--cycles", "2"],
    );
    assert_eq!(ops(&stdout).len(), 6, "the worker opened 6 pages");
    let view = trace.cycles[0]
        .browser
        .as_ref()
        .expect("a view at the end of cycle 1");
    assert_eq!((view.pages, view.contexts), (6, 3));
    assert!(
        view.targets_by_type["page"] >= 6,
        "{:?}",
        view.targets_by_type
    );
    let urls: BTreeSet<&str> = view.urls.iter().map(String::as_str).collect();
    let expected: Vec<String> = (0..3)
        .flat_map(|c| {
            (0..2).map(move |p| {
                format!("data:text/html,<title>c{c}p{p}</title><p>page {p} of context {c}</p>")
            })
        })
        .collect();
    assert_eq!(
        urls,
        expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
    );
    assert_eq!(trace.browser.connects, 1);
    // Chromium's own list of its processes agrees with the roles from /proc.
    for process in &view.processes {
        let expected = match process.cdp_type.as_str() {
            "browser" => "browser",
            "renderer" => "renderer",
            "GPU" => "gpu",
            "network.mojom.NetworkService" => "utility:network",
            "storage.mojom.StorageService" => "utility:storage",
            _ => continue,
        };
        assert_eq!(
            process.role.as_ref().map(|r| r.as_str()),
            Some(expected),
            "pid {} ({})",
            process.pid,
            process.cdp_type
        );
    }
}

#[test]
fn a_page_retaining_js_data_shows_its_heap_growing_and_its_renderer() {
    let test = "a_page_retaining_js_data_shows_its_heap_growing_and_its_renderer";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("cdp-heap");
    let retained: u64 = 8 << 20;
    let (trace, _, _) = traced_with(
        &scratch,
        &["--page-renderers"],
        &[
            "--contexts",
            "1",
            "--pages",
            "2",
            "--cycles",
            "4",
            "--retain-mb",
            "8",
        ],
    );
    let first_page = |cycle: usize| {
        let view = trace.cycles[cycle].browser.as_ref().expect("a view");
        view.page_list
            .iter()
            .find(|p| p.url.contains("<title>c0p0</title>"))
            .expect("page c0p0")
            .clone()
    };
    for cycle in 1..3 {
        let (before, after) = (first_page(cycle - 1), first_page(cycle));
        assert!(
            after.js_heap_used >= before.js_heap_used + retained,
            "cycle {}: JS heap {} -> {}, retained {retained} more",
            cycle + 1,
            before.js_heap_used,
            after.js_heap_used
        );
    }
    let page = first_page(2);
    let pid = page.renderer_pid.expect("the page's renderer was found");
    let process = trace
        .processes
        .iter()
        .find(|p| p.pid == pid)
        .expect("the renderer is traced");
    assert_eq!(process.role, "renderer");
}

#[test]
fn killing_the_browser_mid_trace_is_recorded_and_the_trace_goes_on() {
    let test = "killing_the_browser_mid_trace_is_recorded_and_the_trace_goes_on";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("cdp-kill");
    let (trace, _, _) = traced(
        &scratch,
        &[
            "--contexts",
            "1",
            "--pages",
            "1",
            "--cycles",
            "4",
            "--kill-browser-after",
            "2",
        ],
    );
    assert_eq!(trace.ended_by, EndReason::CommandExited);
    assert_eq!(trace.exit_code, Some(0));
    let complete: Vec<u32> = trace
        .cycles
        .iter()
        .filter(|c| !c.cut)
        .map(|c| c.index)
        .collect();
    assert_eq!(
        complete,
        [1, 2, 3, 4],
        "the trace went on after the browser died"
    );
    assert!(trace.cycles[0].browser.is_some());
    assert!(trace.cycles[2].browser.is_none() && trace.cycles[3].browser.is_none());
    assert!(trace.browser.disconnects >= 1, "{:?}", trace.browser);
}

#[test]
fn a_browser_in_pipe_mode_is_named_once_and_the_kernel_view_goes_on() {
    let test = "a_browser_in_pipe_mode_is_named_once_and_the_kernel_view_goes_on";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("cdp-pipe");
    let (trace, _, stderr) = traced(&scratch, &["--pipe", "--cycles", "3"]);
    let warnings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("leaktrace: browser "))
        .collect();
    assert_eq!(warnings.len(), 1, "said once: {stderr}");
    assert!(warnings[0].contains("--remote-debugging-pipe"), "{stderr}");
    assert!(
        stderr.contains("--remote-debugging-port=0"),
        "names the launch change: {stderr}"
    );
    assert_eq!(trace.browser.endpoint, None);
    assert_eq!(trace.browser.notes.len(), 1);
    assert!(trace.ebpf && trace.cycles.iter().filter(|c| !c.cut).count() == 3);
    let roles: BTreeSet<&str> = trace.processes.iter().map(|p| p.role.as_str()).collect();
    assert!(
        roles.contains("browser") && roles.contains("renderer"),
        "{roles:?}"
    );
    let browser = trace
        .processes
        .iter()
        .find(|p| p.role == "browser")
        .unwrap();
    assert!(
        browser.address_space["anon"].mapped > 0,
        "the kernel view of the browser is complete"
    );
}

#[test]
fn the_worker_sees_the_same_pages_with_and_without_leaktrace() {
    let test = "the_worker_sees_the_same_pages_with_and_without_leaktrace";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("cdp-readonly");
    let args = [
        "--contexts",
        "2",
        "--pages",
        "2",
        "--cycles",
        "2",
        "--retain-mb",
        "1",
    ];
    let alone = Command::new(fixture("browser_worker"))
        .args(args)
        .arg("--profile")
        .arg(scratch.path("alone"))
        .output()
        .unwrap();
    assert!(alone.status.success());
    let (trace, stdout, _) = traced(&scratch, &args);
    assert!(
        trace.browser.connects >= 1,
        "leaktrace did read the browser"
    );
    let alone = ops(&String::from_utf8_lossy(&alone.stdout));
    assert_eq!(alone.len(), 4);
    assert_eq!(ops(&stdout), alone);
}

/// A free TCP port on loopback, for a Node inspector.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn a_node_workers_own_heap_comes_through_its_inspector() {
    if !require_root("a_node_workers_own_heap_comes_through_its_inspector") {
        return;
    }
    let scratch = Scratch::new("node-inspect");
    let json = scratch.path("t.json");
    let port = free_port();
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/node_worker.js");
    succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .args(CYCLE)
            .args([
                "--worker-inspect",
                &format!("http://127.0.0.1:{port}"),
                "--",
            ])
            .args([
                "node",
                "--expose-gc",
                &format!("--inspect=127.0.0.1:{port}"),
            ])
            .arg(&script)
            .args(["8", "4"]),
    );
    let trace = Trace::read(&json).unwrap();
    let complete: Vec<_> = trace.cycles.iter().filter(|c| !c.cut).collect();
    assert_eq!(complete.len(), 4);
    for cycle in &complete {
        // The worker's own figure and the inspector's, read a moment apart after a GC.
        let (own, inspected) = (cycle.worker["heapUsed"], cycle.worker["inspect.heapUsed"]);
        assert!(
            (inspected - own).abs() < 2.0 * 1048576.0,
            "cycle {}: {own} vs {inspected}",
            cycle.index
        );
    }
    for pair in complete.windows(2) {
        let growth = pair[1].worker["inspect.heapUsed"] - pair[0].worker["inspect.heapUsed"];
        assert!(
            growth >= 8.0 * 1048576.0,
            "cycle {}: grew {growth}",
            pair[1].index
        );
    }
}
