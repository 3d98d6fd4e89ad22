//! The HTML report of a real trace, opened in real headless Chromium: no console errors, no
//! network requests, one plot per role with a point per cycle, and a screenshot kept in
//! `target/tmp/leaktrace-report.png`.

mod support;

use std::process::Command;

use leaktrace::trace::Trace;
use support::{Scratch, fixture, leaktrace, open_html, require_chromium, require_root, succeeded};

#[test]
fn the_html_report_is_self_contained_with_a_point_per_cycle_for_every_role() {
    let test = "the_html_report_is_self_contained_with_a_point_per_cycle_for_every_role";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("html");
    let (json, html) = (scratch.path("t.json"), scratch.path("report.html"));
    succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "--cycle-regex", r"cycle \d+ done", "-o"])
            .arg(&json)
            .arg("--")
            .arg(fixture("browser_worker"))
            .args([
                "--contexts",
                "1",
                "--pages",
                "2",
                "--cycles",
                "4",
                "--retain-mb",
                "4",
                "--profile",
            ])
            .arg(scratch.path("worker-profile")),
    );
    succeeded(
        Command::new(leaktrace())
            .arg("report")
            .arg(&json)
            .arg("--html")
            .arg(&html),
    );
    let trace = Trace::read(&json).unwrap();
    let complete: Vec<_> = trace.cycles.iter().filter(|c| !c.cut).collect();
    let roles: std::collections::BTreeSet<&leaktrace::trace::Role> =
        complete.iter().flat_map(|c| c.by_role.keys()).collect();

    let opened = open_html(&html, &scratch.path("reader-profile"));
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaktrace-report.png");
    std::fs::write(&artifact, &opened.screenshot).unwrap();
    let (requests, console_errors, plots) = (opened.requests, opened.errors, opened.plots);
    assert!(requests.is_empty(), "the page loads nothing: {requests:?}");
    assert_eq!(console_errors, 0);
    let role_plots: Vec<&(String, u64)> = plots
        .iter()
        .filter(|(s, _)| s.starts_with("role."))
        .collect();
    assert_eq!(
        role_plots.len(),
        roles.len(),
        "one plot per role: {plots:?}"
    );
    for (series, points) in role_plots {
        assert_eq!(
            *points as usize,
            complete.len(),
            "{series}: a point per cycle"
        );
    }
}
