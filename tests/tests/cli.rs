//! The command line as a user meets it: privilege drop under sudo, stopping on duration and
//! signals with a report written every time, exit codes, `doctor`, and `report` re-rendering.

mod support;

use std::{
    os::unix::{fs::MetadataExt, fs::PermissionsExt, process::CommandExt},
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::{EndReason, Trace};
use leaktrace_tests::read_ledger;
use support::{
    Scratch, fixture, leaktrace, leaktrace_run, require_root, spawn, succeeded, wait_for_line,
};

const NOBODY: u32 = 65534;

fn ledger_run(
    scratch: &Scratch,
    name: &str,
    extra: &[&str],
    env: &[(&str, &str)],
) -> (Trace, Vec<u32>, u32, u32) {
    let (json, ledger) = (
        scratch.path(&format!("{name}.json")),
        scratch.path(&format!("{name}.jsonl")),
    );
    let bin = fixture("ledger");
    let mut command = Command::new(leaktrace());
    command
        .args(["run", "-q", "-o"])
        .arg(&json)
        .args(extra)
        .arg("--")
        .arg(&bin)
        .arg("--ledger")
        .arg(&ledger);
    command.envs(env.iter().copied());
    succeeded(&mut command);
    let lines = read_ledger(&ledger);
    let root = lines.iter().find(|l| l.role == "root").unwrap();
    assert!(
        lines.iter().all(|l| l.uid == root.uid && l.gid == root.gid),
        "every process runs as the root's user"
    );
    let mut groups = root.groups.clone();
    groups.sort();
    (Trace::read(&json).unwrap(), groups, root.uid, root.gid)
}

/// `id -G USER`, read independently of leaktrace.
fn groups_of(user: &str) -> Vec<u32> {
    let out = Command::new("id").args(["-G", user]).output().unwrap();
    let mut groups: Vec<u32> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(|g| g.parse().unwrap())
        .collect();
    groups.sort();
    groups
}

fn own_groups() -> Vec<u32> {
    let mut groups = vec![0 as libc::gid_t; 256];
    // SAFETY: getgroups writes at most `groups.len()` entries.
    let count = unsafe { libc::getgroups(groups.len() as i32, groups.as_mut_ptr()) };
    groups.truncate(count.max(0) as usize);
    groups.sort();
    groups
}

#[test]
fn under_sudo_the_command_runs_as_the_invoking_user_and_owns_the_report() {
    if !require_root("under_sudo_the_command_runs_as_the_invoking_user_and_owns_the_report") {
        return;
    }
    let scratch = Scratch::new("sudo");
    // The fixture, as nobody, must be able to write its ledger here.
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let sudo = [
        ("SUDO_UID", "65534"),
        ("SUDO_GID", "65534"),
        ("SUDO_USER", "nobody"),
    ];
    let (trace, groups, uid, gid) = ledger_run(&scratch, "sudo", &[], &sudo);
    assert_eq!((uid, gid), (NOBODY, NOBODY));
    assert_eq!(groups, groups_of("nobody"));
    assert_eq!(
        std::fs::metadata(scratch.path("sudo.json")).unwrap().uid(),
        NOBODY,
        "the report belongs to the user"
    );
    assert_eq!(
        trace.processes.len(),
        102,
        "the whole tree is traced after the privilege drop"
    );

    // --as-root changes nothing: the command keeps leaktrace's (this test's) identity.
    let (_, groups, uid, gid) = ledger_run(&scratch, "as-root", &["--as-root"], &sudo);
    assert_eq!((uid, gid), (0, 0));
    assert_eq!(groups, own_groups());
}

#[test]
fn duration_ends_the_trace_and_stops_the_command() {
    if !require_root("duration_ends_the_trace_and_stops_the_command") {
        return;
    }
    let scratch = Scratch::new("duration");
    let json = scratch.path("t.json");
    let started = Instant::now();
    let (_, trace) = leaktrace_run(
        &[
            "run",
            "-q",
            "--duration",
            "1s",
            "-o",
            json.to_str().unwrap(),
            "--",
            "sleep",
            "30",
        ],
        &json,
    );
    assert!(started.elapsed() < Duration::from_secs(15));
    assert_eq!(trace.ended_by, EndReason::Duration);
    assert_eq!(
        trace.exit_code,
        Some(128 + libc::SIGTERM),
        "the command got SIGTERM"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{}", trace.root_pid)).exists(),
        "nothing left running"
    );
}

/// Starts `leaktrace run -- sleep 30`, signals leaktrace itself, and reads the trace.
fn signalled_trace(signal: i32, name: &str) -> Trace {
    let scratch = Scratch::new(name);
    let json = scratch.path("t.json");
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["run", "-v", "-o"])
            .arg(&json)
            .args(["--", "sleep", "30"]),
    );
    let rest = wait_for_line(
        tracer.child().stderr.take().unwrap(),
        "leaktrace: tracing pid",
    );
    let drain = std::thread::spawn(move || std::io::read_to_string(rest.into_inner()));
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(tracer.pid() as i32, signal) };
    let output = tracer.wait_output();
    let stderr = drain.join().unwrap().unwrap();
    assert!(
        output.status.success(),
        "leaktrace exits 0 after a signal: {stderr}"
    );
    assert!(
        stderr.contains("MEMORY BY ROLE"),
        "the report is printed: {stderr}"
    );
    let trace = Trace::read(&json).unwrap();
    assert!(
        !std::path::Path::new(&format!("/proc/{}", trace.root_pid)).exists(),
        "nothing left running"
    );
    trace
}

#[test]
fn sigint_and_sigterm_still_write_the_report() {
    if !require_root("sigint_and_sigterm_still_write_the_report") {
        return;
    }
    let interrupted = signalled_trace(libc::SIGINT, "sigint");
    assert_eq!(interrupted.ended_by, EndReason::Interrupted);
    // SIGINT went to leaktrace alone (no terminal here): after the grace period, SIGTERM.
    assert_eq!(interrupted.exit_code, Some(128 + libc::SIGTERM));
    let terminated = signalled_trace(libc::SIGTERM, "sigterm");
    assert_eq!(terminated.ended_by, EndReason::Terminated);
    assert_eq!(terminated.exit_code, Some(128 + libc::SIGTERM));
}

#[test]
fn doctor_passes_here_and_names_every_hook() {
    if !require_root("doctor_passes_here_and_names_every_hook") {
        return;
    }
    let output = Command::new(leaktrace()).arg("doctor").output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "doctor failed:\n{text}");
    for hook in [
        "syscalls:sys_enter_*",
        "syscalls:sys_exit_*",
        "tp_btf/task_newtask",
        "tp_btf/rss_stat",
        "sched:sched_process_exec",
        "sched:sched_process_exit",
    ] {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("hook {hook} ")))
            .unwrap_or_else(|| panic!("{hook} missing:\n{text}"));
        assert!(
            line.starts_with("ok") && line.contains("loads and attaches"),
            "{line}"
        );
    }
}

#[test]
fn report_re_renders_a_saved_trace_exactly() {
    if !require_root("report_re_renders_a_saved_trace_exactly") {
        return;
    }
    let scratch = Scratch::new("report");
    let json = scratch.path("t.json");
    let (output, _) = leaktrace_run(&["run", "-o", json.to_str().unwrap(), "--", "true"], &json);
    let rendered = Command::new(leaktrace())
        .arg("report")
        .arg(&json)
        .output()
        .unwrap();
    assert!(rendered.status.success());
    assert_eq!(
        String::from_utf8_lossy(&rendered.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let markdown = Command::new(leaktrace())
        .args(["report", "--markdown"])
        .arg(&json)
        .output()
        .unwrap();
    let markdown = String::from_utf8_lossy(&markdown.stdout);
    assert!(markdown.starts_with("## leaktrace: `true`"), "{markdown}");
    let full = Command::new(leaktrace())
        .args(["report", "--full"])
        .arg(&json)
        .output()
        .unwrap();
    assert!(markdown.contains(&format!(
        "```text\n{}```",
        String::from_utf8_lossy(&full.stdout)
    )));
}

#[test]
fn usage_errors_exit_2_and_other_errors_exit_1_with_a_message() {
    let status = |args: &[&str]| Command::new(leaktrace()).args(args).output().unwrap();
    assert_eq!(status(&[]).status.code(), Some(2));
    assert_eq!(status(&["run"]).status.code(), Some(2));
    assert_eq!(
        status(&["run", "--duration", "soon", "--", "true"])
            .status
            .code(),
        Some(2)
    );
    assert_eq!(status(&["attach"]).status.code(), Some(2));

    let missing = status(&["report", "/nonexistent/trace.json"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("cannot read /nonexistent/trace.json")
    );

    let scratch = Scratch::new("exit-codes");
    let old = scratch.path("old.json");
    std::fs::write(&old, r#"{"schema": "leaktrace/0"}"#).unwrap();
    let refused = status(&["report", old.to_str().unwrap()]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains(r#"schema "leaktrace/0""#));
}

#[test]
fn without_root_the_trace_runs_on_proc_alone_and_says_so() {
    // Runs as nobody whoever runs the test suite, so only root can set it up.
    if !require_root("without_root_the_trace_runs_on_proc_alone_and_says_so") {
        return;
    }
    let scratch = Scratch::new("unprivileged");
    std::fs::set_permissions(&scratch.0, std::fs::Permissions::from_mode(0o777)).unwrap();
    let json = scratch.path("t.json");
    let output = Command::new(leaktrace())
        .args(["run", "--interval", "50ms", "-o"])
        .arg(&json)
        .args(["--", "sleep", "0.5"])
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        stderr
            .matches("leaktrace: warning: eBPF is off (leaktrace is not root)")
            .count(),
        1,
        "{stderr}"
    );
    let trace = Trace::read(&json).unwrap();
    assert!(!trace.ebpf);
    assert_eq!(trace.resident_source, "proc");
    let sleep = trace
        .processes
        .iter()
        .find(|p| p.pid == trace.root_pid)
        .unwrap();
    assert!(
        sleep.pss > 0 && sleep.resident.anon > 0,
        "sampled from /proc: {sleep:?}"
    );
    assert_eq!(sleep.role, "worker");
}
