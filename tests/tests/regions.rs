//! Resident growth by region, against a fixture that grows one kind of region by 4 MiB a
//! cycle: malloc's `[heap]`, a fresh anonymous mapping, pages committed inside a PROT_NONE
//! reservation, a thread's stack, a memfd. The top-growing region of the worker is that one,
//! named so, and its growth between the two readings is what the fixture touched in the cycles
//! between them, within 5%.

mod support;

use leaktrace::{collect::regions::RegionKind, trace::Role};
use support::{Scratch, assert_evidence_mentions, fixture, leaktrace_run, require_root};

const MIB: f64 = 1048576.0;
const PER_CYCLE: f64 = 4.0 * MIB;

/// Traces the fixture growing `grow`; checks its top region and returns its name.
fn top_region(grow: &str, kind: RegionKind) -> String {
    let scratch = Scratch::new(&format!("regions-{grow}"));
    let json = scratch.path("t.json");
    let fixture = fixture("regions");
    let (_, trace) = leaktrace_run(
        &[
            "run",
            "-q",
            "-o",
            json.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
            "--grow",
            grow,
            "--cycles",
            "12",
        ],
        &json,
    );
    let worker = trace
        .processes
        .iter()
        .find(|p| p.pid == trace.root_pid)
        .unwrap();
    let top = worker
        .regions
        .first()
        .unwrap_or_else(|| panic!("{grow}: no region grew: {:?}", worker.regions));
    assert_eq!(top.kind, kind, "{grow}: {:?}", worker.regions);
    let cycles = top.to_cycle - top.from_cycle;
    assert!(cycles >= 2, "{grow}: readings far enough apart: {top:?}");
    let touched = PER_CYCLE * f64::from(cycles);
    assert!(
        (top.growth as f64 - touched).abs() <= 0.05 * touched,
        "{grow}: {} B over cycles {} to {}, against {touched} touched",
        top.growth,
        top.from_cycle,
        top.to_cycle
    );
    // Per role too, and named in the verdict's evidence.
    let role = &trace.analysis.regions[0];
    assert_eq!(
        (role.role.as_str(), role.kind, role.processes),
        (Role::Worker.as_str(), kind, 1)
    );
    assert_evidence_mentions(&trace, "the region that grew most");
    // The report and the HTML page show it.
    let html = scratch.path("r.html");
    let report = std::process::Command::new(support::leaktrace())
        .args(["report", "--full"])
        .arg(&json)
        .arg("--html")
        .arg(&html)
        .output()
        .unwrap();
    let report = String::from_utf8(report.stdout).unwrap();
    assert!(
        report.contains("REGIONS THAT GREW") && report.contains(&top.name),
        "{report}"
    );
    let html = std::fs::read_to_string(html).unwrap();
    assert!(html.contains("Regions that grew") && html.contains(&role.name));
    top.name.clone()
}

#[test]
fn the_region_that_grows_is_found_for_each_kind() {
    if !require_root("the_region_that_grows_is_found_for_each_kind") {
        return;
    }
    assert_eq!(top_region("heap", RegionKind::Heap), "[heap]");
    assert!(top_region("anon", RegionKind::Anonymous).starts_with("anonymous region at 0x"));
    assert!(top_region("reserved", RegionKind::Anonymous).starts_with("anonymous region at 0x"));
    assert!(top_region("stack", RegionKind::ThreadStack).starts_with("stack of thread "));
    assert_eq!(
        top_region("memfd", RegionKind::SharedMemory),
        "memfd: leaktrace-fixture"
    );
}

/// A Node worker (Debian's nodejs) keeping Buffers, then keeping JS objects, 4 MiB a cycle,
/// marking its cycles with log lines and giving no figures: the top region differs (malloc's
/// anonymous memory, V8's heap pages), the report names it, and the verdict says which side of
/// the JS heap grew.
#[test]
fn a_node_worker_keeping_buffers_or_objects_grows_different_regions() {
    if !require_root("a_node_worker_keeping_buffers_or_objects_grows_different_regions") {
        return;
    }
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/node_keeper.js");
    let traced = |kind: &str| {
        let scratch = Scratch::new(&format!("regions-node-{kind}"));
        let json = scratch.path("t.json");
        let (_, trace) = leaktrace_run(
            &[
                "run",
                "-q",
                "--cycle-regex",
                r"cycle \d+ done",
                "-o",
                json.to_str().unwrap(),
                "--",
                "node",
                script.to_str().unwrap(),
                kind,
                "12",
                "4",
            ],
            &json,
        );
        trace
    };
    let buffers = traced("buffers");
    let objects = traced("objects");
    let top = |trace: &leaktrace::trace::Trace| trace.analysis.regions[0].clone();
    let (kept_buffers, kept_objects) = (top(&buffers), top(&objects));
    assert_eq!(kept_buffers.name, "anonymous region", "{kept_buffers:?}");
    assert_eq!(
        kept_objects.name, "V8 heap pages (likely)",
        "{kept_objects:?}"
    );
    assert_eq!(buffers.analysis.verdict.source, "worker-external");
    assert_eq!(objects.analysis.verdict.source, "worker-heap");
    // At least what the worker kept between the two readings, less 15% (V8 takes more than
    // the objects' own bytes: headers, the arrays that hold them, old space's slack).
    for (trace, region) in [(&buffers, &kept_buffers), (&objects, &kept_objects)] {
        let worker = trace
            .processes
            .iter()
            .find(|p| p.pid == trace.root_pid)
            .unwrap();
        let first = &worker.regions[0];
        let touched = PER_CYCLE * f64::from(first.to_cycle - first.from_cycle);
        assert!(
            region.growth as f64 >= 0.85 * touched,
            "{}: {} B against {touched} kept",
            region.name,
            region.growth
        );
    }
}
