//! `leaktrace demo` as a new user runs it, and the short report it prints: the built-in leaky
//! worker (the zoo, `pages`) driving real Chromium, its JSON and HTML left in the directory
//! given, whose paths it prints; the default report on one screen (at most 60 lines of at most
//! 100 columns, the verdict within the first 10), `--full` with every table, and no colour when
//! piped or with NO_COLOR. The page's first screen is kept in `target/tmp/leaktrace-demo.png`.

mod support;

use std::process::Command;

use leaktrace::trace::Trace;
use support::{Scratch, leaktrace, open_html, require_chromium, require_root};

/// An escape sequence: what colour is written with.
const ESCAPE: char = '\x1b';

#[test]
fn the_demo_leaves_its_trace_and_page_and_reports_on_one_screen() {
    let test = "the_demo_leaves_its_trace_and_page_and_reports_on_one_screen";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("demo");
    let dir = scratch.path("out");
    std::fs::create_dir_all(&dir).unwrap();
    let output = Command::new(leaktrace())
        .args(["demo", "--dir"])
        .arg(&dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let (json, html) = (
        dir.join("leaktrace-demo.json"),
        dir.join("leaktrace-demo.html"),
    );
    for file in [&json, &html] {
        assert!(
            stdout.contains(&file.display().to_string()),
            "the demo names {}: {stdout}",
            file.display()
        );
    }
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.analysis.verdict.source, "page-accumulation");

    // The default report of the demo trace, as `report` prints it piped.
    let report = |args: &[&str], env: &[(&str, &str)]| {
        let output = Command::new(leaktrace())
            .arg("report")
            .args(args)
            .arg(&json)
            .envs(env.iter().copied())
            .output()
            .unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let short = report(&[], &[]);
    let lines: Vec<&str> = short.lines().collect();
    assert!(lines.len() <= 60, "{} lines:\n{short}", lines.len());
    let widest = lines.iter().map(|l| l.chars().count()).max().unwrap();
    assert!(widest <= 100, "a line of {widest} columns:\n{short}");
    let verdict = lines
        .iter()
        .position(|l| l.starts_with("VERDICT  page-accumulation"));
    assert!(
        verdict.is_some_and(|at| at < 10),
        "the verdict first:\n{short}"
    );
    assert!(!short.contains(ESCAPE), "no colour when piped:\n{short}");
    // The demo printed the same report (its worker's own lines around it).
    assert!(stdout.contains(&short), "the demo's report:\n{stdout}");

    // Colour is there when asked for (the stripping above is anstream's doing, not an absence
    // of styles), and NO_COLOR wins over it.
    assert!(report(&[], &[("CLICOLOR_FORCE", "1")]).contains(ESCAPE));
    assert!(!report(&[], &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")]).contains(ESCAPE));

    // --full: every table of the full report.
    let full = report(&["--full"], &[]);
    for table in [
        "ANSWERS",
        "RESIDENT MEMORY",
        "CYCLES:",
        "BROWSER (DevTools",
        "RESIDENT BY PROCESS",
        "ADDRESS SPACE BY PROCESS",
        "ADDRESS SPACE BY REGION CLASS",
    ] {
        assert!(full.contains(table), "--full has {table}:\n{full}");
    }
    assert!(full.lines().count() > lines.len());

    // The page opens in Chromium without errors or requests; its screenshot is kept.
    let opened = open_html(&html, &scratch.path("reader-profile"));
    assert!(opened.requests.is_empty(), "{:?}", opened.requests);
    assert_eq!(opened.errors, 0);
    assert!(!opened.plots.is_empty());
    // The first screen is what the README shows (docs/leaktrace-demo.png is a copy).
    let artifact = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("leaktrace-demo.png");
    std::fs::write(artifact, &opened.first_screen).unwrap();
}
