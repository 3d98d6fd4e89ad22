//! What leaktrace does on kernels that lack a feature: each fallback, tried on this kernel by
//! treating the feature as missing (`LEAKTRACE_PRETEND_MISSING`). `cargo xtask vmtest` runs the
//! same tests on Debian's kernels, which really lack some (6.1 and 6.12 have no `group_dead`;
//! 5.10 has no `bpf_find_vma` either, and walks `mm_rb` instead, which the second test also
//! takes away to reach the mode without flows).

mod support;

use std::process::Command;

use leaktrace::trace::{EndReason, Trace};
use leaktrace_tests::read_ledger;
use support::{Scratch, fixture, leaktrace, require_root};

const MIB: u64 = 1 << 20;

/// `leaktrace run -q -o JSON -- ARGS` with `missing` treated as missing; its stdout+stderr.
fn run_without(missing: &str, json: &std::path::Path, args: &[&str]) -> (Trace, String) {
    let output = Command::new(leaktrace())
        .env("LEAKTRACE_PRETEND_MISSING", missing)
        .args(["run", "-q", "-o", json.to_str().unwrap(), "--"])
        .args(args)
        .output()
        .expect("run leaktrace");
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "leaktrace failed:\n{text}");
    (Trace::read(json).unwrap(), text)
}

/// The fixture's mapped private anonymous bytes as the trace counted them (0 without flows),
/// and its peak resident anonymous memory.
fn anon(trace: &Trace) -> (u64, u64) {
    let root = trace
        .processes
        .iter()
        .find(|p| p.pid == trace.root_pid)
        .unwrap();
    assert!(root.exited, "the fixture's exit was seen");
    assert_eq!(root.exit_code, Some(3), "the process's own exit status");
    (root.address_space["anon"].mapped, root.resident_peak.anon)
}

#[test]
fn without_group_dead_a_thread_exit_is_not_the_process_exit() {
    if !require_root("without_group_dead_a_thread_exit_is_not_the_process_exit") {
        return;
    }
    let scratch = Scratch::new("no-group-dead");
    let threads = fixture("threads");
    let threads = threads.to_str().unwrap();
    let (json, base_json) = (scratch.path("t.json"), scratch.path("base.json"));
    let (base, _) = run_without("group_dead", &base_json, &[threads, "--map", "0"]);
    let (traced, _) = run_without("group_dead", &json, &[threads, "--map", "8"]);
    // The 8 MiB are mapped and touched after the first thread's exit: only counted if the
    // process stayed tracked. The runtime's own mappings are the same in both runs; its
    // resident pages nearly so (a few stack and allocator pages).
    let ((mapped, peak), (base_mapped, base_peak)) = (anon(&traced), anon(&base));
    if traced.flows {
        assert_eq!(mapped - base_mapped, 8 * MIB);
    }
    let grown = peak.saturating_sub(base_peak);
    assert!(
        grown.abs_diff(8 * MIB) <= 256 * 1024,
        "resident anon grew by {grown}, not 8 MiB: peak {peak} against {base_peak} without the \
         mapping\nwith it: {:?}\nlost: {:?}\nwithout it: {:?}\nlost: {:?}",
        traced.processes,
        traced.events_lost,
        base.processes,
        base.events_lost,
    );
    assert_eq!(traced.exit_code, Some(3));
    assert_eq!(traced.processes.len(), 1, "{:?}", traced.processes);
}

#[test]
fn without_bpf_find_vma_processes_and_resident_memory_are_traced_and_flows_are_not() {
    if !require_root(
        "without_bpf_find_vma_processes_and_resident_memory_are_traced_and_flows_are_not",
    ) {
        return;
    }
    let scratch = Scratch::new("no-find-vma");
    let (json, ledger) = (scratch.path("t.json"), scratch.path("ledger.jsonl"));
    let ledger_bin = fixture("ledger");
    let (trace, _) = run_without(
        "bpf_find_vma,mm_rb,group_dead",
        &json,
        &[
            ledger_bin.to_str().unwrap(),
            "--ledger",
            ledger.to_str().unwrap(),
        ],
    );
    assert!(trace.ebpf);
    assert!(!trace.flows, "flows are not claimed");
    assert_eq!(trace.resident_source, "kernel");
    assert!(
        trace
            .warnings
            .iter()
            .any(|w| w.contains("bpf_find_vma") && w.contains("not counted")),
        "{:?}",
        trace.warnings
    );
    assert_eq!(trace.ended_by, EndReason::CommandExited);
    assert_eq!(trace.exit_code, Some(0));

    // Every process the fixture forked or exec'd, followed in the kernel, once, with its parent
    // and its exit; and no flows counted for any.
    let lines = read_ledger(&ledger);
    let pids: std::collections::BTreeSet<u32> = lines.iter().map(|l| l.pid).collect();
    assert_eq!(pids.len(), 102, "root, child and 100 grandchildren");
    for line in &lines {
        let found: Vec<_> = trace
            .processes
            .iter()
            .filter(|p| p.pid == line.pid)
            .collect();
        assert_eq!(found.len(), 1, "pid {} once in the trace", line.pid);
        let process = found[0];
        assert_eq!(process.ppid, line.ppid, "{} ppid", line.role);
        assert!(process.exited, "{} {} exited", line.role, line.pid);
        assert_eq!(process.exit_code, Some(0), "{} {}", line.role, line.pid);
        assert!(
            process.address_space.values().all(|f| f.calls == 0),
            "{} has flows",
            line.pid
        );
    }
    // The kernel's resident counters were kept: the root touched memory and held some at exit.
    let root = trace
        .processes
        .iter()
        .find(|p| p.pid == trace.root_pid)
        .unwrap();
    assert!(root.resident_peak.anon > 0, "{:?}", root.resident_peak);

    // The report says why there is no address-space section.
    let report = Command::new(leaktrace())
        .args(["report", "--full", json.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(
        text.contains("warning: this kernel lacks a VMA lookup: bpf_find_vma"),
        "{text}"
    );
    assert!(!text.contains("ADDRESS SPACE BY PROCESS"), "{text}");
}
