//! leaktrace's kernel counters against the ledger fixture, to the byte.
//!
//! Each test traces the fixture twice, once with `--baseline` (same process tree and runtime,
//! no ledger syscalls) and once for real; per process, the traced difference must equal what the
//! fixture says it did, in every class and every counter. The dynamic loader's and Rust
//! runtime's own mappings are the same in both runs and cancel out.

mod support;

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader},
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::{ClassFlow, EndReason, Process, Trace};
use leaktrace_tests::{LedgerLine, read_ledger};
use support::{Scratch, fixture, leaktrace, leaktrace_run, require_root, spawn, wait_for_line};
use tracer_common::RegionClass;

/// Grandchildren the fixture forks (from the exec'd child).
const GRANDCHILDREN: usize = 100;

struct Traced {
    trace: Trace,
    ledger: Vec<LedgerLine>,
}

impl Traced {
    fn lines(&self, role: &str) -> Vec<&LedgerLine> {
        self.ledger.iter().filter(|l| l.role == role).collect()
    }

    fn pid(&self, role: &str) -> u32 {
        self.lines(role)
            .first()
            .unwrap_or_else(|| panic!("no {role} line in the ledger"))
            .pid
    }

    fn process(&self, pid: u32) -> &Process {
        let found: Vec<&Process> = self
            .trace
            .processes
            .iter()
            .filter(|p| p.pid == pid)
            .collect();
        assert_eq!(
            found.len(),
            1,
            "pid {pid} should appear once in the trace, found {}",
            found.len()
        );
        found[0]
    }
}

/// `leaktrace run` of the fixture.
fn run_fixture(scratch: &Scratch, name: &str, baseline: bool) -> Traced {
    let (json, ledger) = (
        scratch.path(&format!("{name}.json")),
        scratch.path(&format!("{name}.jsonl")),
    );
    let ledger_bin = fixture("ledger");
    let mut args = vec![
        "run",
        "-q",
        "-o",
        json.to_str().unwrap(),
        "--",
        ledger_bin.to_str().unwrap(),
    ];
    args.extend(["--ledger", ledger.to_str().unwrap()]);
    if baseline {
        args.push("--baseline");
    }
    let (_, trace) = leaktrace_run(&args, &json);
    assert_eq!(trace.ended_by, EndReason::CommandExited);
    assert_eq!(trace.exit_code, Some(0));
    Traced {
        trace,
        ledger: read_ledger(&ledger),
    }
}

/// `leaktrace attach` to the fixture while it waits, then let it run.
fn attach_fixture(scratch: &Scratch, name: &str, baseline: bool) -> Traced {
    let (json, ledger) = (
        scratch.path(&format!("{name}.json")),
        scratch.path(&format!("{name}.jsonl")),
    );
    let go = scratch.path(&format!("{name}.go"));
    let mut command = Command::new(fixture("ledger"));
    command
        .arg("--ledger")
        .arg(&ledger)
        .arg("--wait-file")
        .arg(&go);
    if baseline {
        command.arg("--baseline");
    }
    let mut target = spawn(&mut command);
    let mut ready = String::new();
    BufReader::new(target.child().stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let pid: u32 = ready
        .trim()
        .strip_prefix("ready ")
        .expect("ready line")
        .parse()
        .unwrap();
    assert_eq!(pid, target.pid());

    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["attach", "--pid", &pid.to_string(), "-o"])
            .arg(&json),
    );
    let rest = wait_for_line(
        tracer.child().stderr.take().unwrap(),
        "leaktrace: tracing pid",
    );
    // Drain the report so a full pipe can never block leaktrace.
    let drain = std::thread::spawn(move || rest.lines().map_while(Result::ok).collect::<Vec<_>>());
    std::fs::write(&go, b"").unwrap();

    let target_out = target.wait_output();
    assert!(
        target_out.status.success(),
        "fixture failed: {target_out:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = tracer.child().try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "leaktrace attach did not end after its target exited"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let report = drain.join().unwrap();
    assert!(
        status.success(),
        "leaktrace attach failed: {status}\n{}",
        report.join("\n")
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.ended_by, EndReason::TargetExited);
    Traced {
        trace,
        ledger: read_ledger(&ledger),
    }
}

/// One counter of traced minus baseline, which must not be negative.
fn minus(traced: u64, baseline: u64, what: &str) -> u64 {
    traced
        .checked_sub(baseline)
        .unwrap_or_else(|| panic!("{what}: traced {traced} < baseline {baseline}"))
}

/// Asserts that `traced - baseline` equals the sum of `lines`, for every class and counter.
fn assert_matches_ledger(what: &str, traced: &Process, baseline: &Process, lines: &[&LedgerLine]) {
    for class in RegionClass::ALL {
        let (t, b) = (traced.class(class), baseline.class(class));
        let context = format!("{what}, class {}", class.name());
        let measured = ClassFlow {
            mapped: minus(t.mapped, b.mapped, &context),
            unmapped: minus(t.unmapped, b.unmapped, &context),
            committed: minus(t.committed, b.committed, &context),
            uncommitted: minus(t.uncommitted, b.uncommitted, &context),
            released: minus(t.released, b.released, &context),
            calls: minus(t.calls, b.calls, &context),
        };
        let mut expected = ClassFlow::default();
        lines
            .iter()
            .for_each(|line| expected.add(&line.flow(class.name())));
        assert_eq!(
            measured, expected,
            "{context}: traced {t:?} minus baseline {b:?}"
        );
    }
    let expected_brk: i64 = lines.iter().map(|l| l.brk_growth).sum();
    assert_eq!(
        traced.brk_growth - baseline.brk_growth,
        expected_brk,
        "{what}: brk growth"
    );
}

/// Root, child (before and after exec) and every grandchild match the ledger, and the process
/// tree is complete with the right parents.
fn assert_runs_match(normal: &Traced, baseline: &Traced) {
    assert!(normal.trace.ebpf && baseline.trace.ebpf);
    for (reason, count) in normal
        .trace
        .events_lost
        .iter()
        .chain(&baseline.trace.events_lost)
    {
        assert_eq!(*count, 0, "lost events: {reason}");
    }
    assert!(
        normal.ledger.iter().any(|l| !l.is_zero())
            && baseline.ledger.iter().all(LedgerLine::is_zero)
    );

    let root = normal.process(normal.pid("root"));
    assert_matches_ledger(
        "root",
        root,
        baseline.process(baseline.pid("root")),
        &normal.lines("root"),
    );

    let child_lines: Vec<&LedgerLine> = normal
        .lines("child")
        .into_iter()
        .chain(normal.lines("exec"))
        .collect();
    assert!(
        child_lines.iter().all(|l| l.pid == normal.pid("child")),
        "exec keeps the child's pid"
    );
    let child = normal.process(normal.pid("child"));
    assert_matches_ledger(
        "child",
        child,
        baseline.process(baseline.pid("child")),
        &child_lines,
    );
    assert_eq!(child.comm, "ledger_exec", "exec renames the child");

    let baseline_grandchildren: Vec<&Process> = baseline
        .lines("grandchild")
        .iter()
        .map(|l| baseline.process(l.pid))
        .collect();
    let quiet = baseline_grandchildren[0];
    assert!(
        baseline_grandchildren
            .iter()
            .all(|p| p.address_space == quiet.address_space)
    );
    let grandchildren = normal.lines("grandchild");
    assert_eq!(grandchildren.len(), GRANDCHILDREN);
    for line in &grandchildren {
        assert_matches_ledger(
            &format!("grandchild {}", line.pid),
            normal.process(line.pid),
            quiet,
            &[line],
        );
    }

    // Every process of the tree, with the parent the fixture saw, and nothing else.
    for line in &normal.ledger {
        let process = normal.process(line.pid);
        assert_eq!(
            process.ppid, line.ppid,
            "ppid of {} ({})",
            line.pid, line.role
        );
        assert!(process.exited, "{} ({}) exited", line.pid, line.role);
        assert_eq!(
            process.exit_code,
            Some(0),
            "exit code of {} ({})",
            line.pid,
            line.role
        );
    }
    let ledger_pids: BTreeSet<u32> = normal.ledger.iter().map(|l| l.pid).collect();
    let traced_pids: BTreeSet<u32> = normal.trace.processes.iter().map(|p| p.pid).collect();
    assert_eq!(ledger_pids.len(), 2 + GRANDCHILDREN);
    assert_eq!(
        traced_pids, ledger_pids,
        "the trace holds exactly the fixture's processes"
    );
}

#[test]
fn run_mode_counts_every_process_and_class_to_the_byte() {
    if !require_root("run_mode_counts_every_process_and_class_to_the_byte") {
        return;
    }
    let scratch = Scratch::new("run-ledger");
    let baseline = run_fixture(&scratch, "baseline", true);
    let normal = run_fixture(&scratch, "normal", false);
    assert_runs_match(&normal, &baseline);
    assert_eq!(normal.trace.root_pid, normal.pid("root"));
}

#[test]
fn attach_mode_counts_what_happens_after_attaching_including_new_children() {
    if !require_root("attach_mode_counts_what_happens_after_attaching_including_new_children") {
        return;
    }
    let scratch = Scratch::new("attach-ledger");
    let baseline = attach_fixture(&scratch, "baseline", true);
    let normal = attach_fixture(&scratch, "normal", false);
    assert_runs_match(&normal, &baseline);
    assert_eq!(normal.trace.mode, "attach");
    assert_eq!(
        normal.process(normal.pid("root")).ppid,
        std::process::id(),
        "the root's parent is this test"
    );
}

/// A child exits and the next one takes its pid within a millisecond, before leaktrace has
/// collected the first one's counters: each keeps its own (A mapped 4 MiB in two calls, B
/// 1 MiB in one). Keyed by pid alone, B's mapping landed on A in 8 of 9 runs.
#[test]
fn a_reused_pid_never_mixes_two_processes_counters() {
    if !require_root("a_reused_pid_never_mixes_two_processes_counters") {
        return;
    }
    const MIB: u64 = 1 << 20;
    let scratch = Scratch::new("pid-reuse");
    let json = scratch.path("t.json");
    let fixture = fixture("pid_reuse");
    let (output, trace) = leaktrace_run(
        &[
            "run",
            "-q",
            "-o",
            json.to_str().unwrap(),
            "--",
            fixture.to_str().unwrap(),
        ],
        &json,
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reused: Vec<u32> = stdout
        .lines()
        .filter_map(|line| line.strip_prefix("reused ")?.parse().ok())
        .collect();
    assert_eq!(reused.len(), 3, "the fixture's pairs: {stdout}");
    for pid in reused {
        // The processes that had this pid, in the order they appeared; the last two are the pair
        // (an earlier attempt may have left one that got another pid, never this one twice).
        let mapped: Vec<(u64, u64)> = trace
            .processes
            .iter()
            .filter(|p| p.pid == pid)
            .map(|p| {
                let anon = p.address_space.get("anon").copied().unwrap_or_default();
                (anon.mapped, anon.calls)
            })
            .collect();
        assert!(mapped.len() >= 2, "pid {pid}: {mapped:?}");
        assert_eq!(
            mapped[mapped.len() - 2..],
            [(4 * MIB, 2), (MIB, 1)],
            "pid {pid}: A then B, (bytes, calls)"
        );
    }
}

/// `mm_contention ARGS` traced, with MALLOC_ARENA_MAX=1 (so that glibc makes no
/// timing-dependent number of arenas): the fixture process, and the bytes it says it unmapped.
fn contention(scratch: &Scratch, args: &[&str]) -> (Process, u64) {
    contention_with(scratch, args, &[])
}

/// `contention` with more environment for leaktrace.
fn contention_with(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> (Process, u64) {
    let name = env.iter().map(|(_, v)| *v).chain(args.iter().copied());
    let json = scratch.path(&format!("{}.json", name.collect::<String>()));
    let output = Command::new(leaktrace())
        .envs(env.iter().copied())
        .env("MALLOC_ARENA_MAX", "1")
        .args(["run", "-q", "-o", json.to_str().unwrap(), "--"])
        .arg(fixture("mm_contention"))
        .args(args)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let bytes = stdout
        .split_whitespace()
        .nth(2)
        .and_then(|b| b.parse().ok())
        .unwrap_or_else(|| panic!("the fixture's line: {stdout}"));
    let trace = Trace::read(&json).unwrap();
    let root = trace.processes.iter().find(|p| p.pid == trace.root_pid);
    (root.unwrap().clone(), bytes)
}

/// The fixture mapped and unmapped `bytes` more than the baseline, counted over every class.
fn assert_total_exact(traced: &Process, base: &Process, bytes: u64) {
    let all = |process: &Process| {
        process
            .address_space
            .values()
            .fold(ClassFlow::default(), |mut all, flow| {
                all.add(flow);
                all
            })
    };
    let (traced, base) = (all(traced), all(base));
    assert_eq!(traced.mapped - base.mapped, bytes, "mapped, every class");
    assert_eq!(
        traced.unmapped - base.unmapped,
        bytes,
        "unmapped, every class"
    );
}

/// At least 99% of the `unmapped` bytes the fixture unmapped beyond the baseline were
/// attributed to anon (from the records of its mappings, or walks that got the lock).
fn assert_nearly_all_anon(traced: &Process, base: &Process, unmapped: u64) {
    let anon = |p: &Process| p.address_space["anon"].unmapped;
    let attributed = anon(traced) - anon(base);
    assert!(
        attributed * 100 >= unmapped * 99,
        "only {attributed} of {unmapped} unmapped bytes attributed to anon: {:?}",
        traced.address_space
    );
}

/// Whether this kernel's VMA walks go through `bpf_find_vma` (5.17+), which only tries the mm's
/// lock; before, leaktrace walks `mm_rb` without it, and never finds it busy.
fn walks_take_the_lock() -> bool {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let mut numbers = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>());
    let (major, minor) = (numbers.next(), numbers.next());
    matches!((major, minor), (Some(Ok(major)), Some(Ok(minor))) if (major, minor) >= (5, 17))
}

/// 200 threads mapping and unmapping 64 KiB at once keep the mm's lock busy, so VMA walks fail
/// (399,199 of 400,000 munmaps were lost before mappings were remembered). The process's total
/// must be exact to the byte, and at least 99% of the fixture's unmapped bytes attributed to
/// their class (from the record of mappings). With each mapping unmapped in two halves, no
/// munmap is of a whole mapping: every one walks, many walks fail, and what they could not
/// classify must count as `unattributed`, the total still exact. A run with `--rounds 0` (the
/// same threads, no mapping) is the baseline.
#[test]
fn under_mmap_lock_contention_totals_stay_exact_and_nearly_all_is_attributed() {
    if !require_root("under_mmap_lock_contention_totals_stay_exact_and_nearly_all_is_attributed") {
        return;
    }
    let scratch = Scratch::new("contention");
    let (base, _) = contention(&scratch, &["--rounds", "0"]);
    let (whole, unmapped) = contention(&scratch, &["--rounds", "2000"]);
    assert_eq!(unmapped, 400_000 * 64 * 1024, "the fixture's own count");
    assert_total_exact(&whole, &base, unmapped);
    assert_nearly_all_anon(&whole, &base, unmapped);

    if !walks_take_the_lock() {
        return;
    }
    let (halves, unmapped) = contention(&scratch, &["--rounds", "500", "--halves"]);
    assert_eq!(unmapped, 100_000 * 128 * 1024, "the fixture's own count");
    assert_total_exact(&halves, &base, unmapped);
    let unattributed = halves.address_space["unattributed"];
    assert!(
        unattributed.unmapped > 0 && halves.class_split_partial(),
        "no walk failed: {:?}",
        halves.address_space
    );
}

/// The kernel stashes each thread's call between entry and return in a slot chosen by its tid,
/// and two threads that share one (where pid_max exceeds the slots) fall back to a hash map.
/// With a single slot, 200 threads mapping and unmapping at once share it nearly always: every
/// byte must still be counted and attributed as with a slot each.
#[test]
fn threads_sharing_a_stash_slot_lose_nothing() {
    if !require_root("threads_sharing_a_stash_slot_lose_nothing") {
        return;
    }
    let scratch = Scratch::new("shared-slot");
    let one_slot = [("LEAKTRACE_STASH_SLOTS", "1")];
    let (base, _) = contention_with(&scratch, &["--rounds", "0"], &one_slot);
    let (traced, unmapped) = contention_with(&scratch, &["--rounds", "500"], &one_slot);
    assert_eq!(unmapped, 100_000 * 64 * 1024, "the fixture's own count");
    assert_total_exact(&traced, &base, unmapped);
    // And each call's record went through intact: its class with it.
    assert_nearly_all_anon(&traced, &base, unmapped);
}
