//! A real Chromium under leaktrace: every process gets the role its own command line gives,
//! the tree's PSS equals the sum the test reads from smaps_rollup itself, and nothing of the
//! browser is left running afterwards.

mod support;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use leaktrace::trace::Trace;
use leaktrace_tests::proc::{rollup, traced_by};
use support::{CHROMIUM, Scratch, leaktrace, require_chromium, require_root, spawn, wait_for_line};

/// The role the test reads from a process's command line, independently of leaktrace.
fn role_from_cmdline(pid: u32) -> Option<String> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let line = String::from_utf8_lossy(&raw).replace('\0', " ");
    let args: Vec<&str> = line.split_whitespace().collect();
    let flag = |prefix: &str| args.iter().find_map(|a| a.strip_prefix(prefix));
    if args.first()?.contains("crashpad") {
        return Some("crashpad".into());
    }
    Some(match flag("--type=") {
        Some("renderer") => "renderer".into(),
        Some("zygote") => "zygote".into(),
        Some("gpu-process") => "gpu".into(),
        Some("utility") => format!(
            "utility:{}",
            flag("--utility-sub-type=")?
                .split('.')
                .next()?
                .to_lowercase()
        ),
        Some(other) => panic!("unexpected chromium process type {other}"),
        None if args[0].ends_with("/chromium") => "browser".into(),
        None => "worker".into(),
    })
}

#[test]
fn chromium_roles_and_tree_pss_match_an_independent_reading() {
    let test = "chromium_roles_and_tree_pss_match_an_independent_reading";
    if !require_root(test) || !require_chromium(test) {
        return;
    }
    let scratch = Scratch::new("chromium");
    let json = scratch.path("t.json");
    let profile = format!("--user-data-dir={}", scratch.path("profile").display());
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["run", "-v", "--interval", "200ms", "-o"])
            .arg(&json)
            .args([
                "--",
                CHROMIUM,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
            ])
            .args([
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
            ])
            .args(["--disable-sync", &profile, "about:blank"]),
    );
    let rest = wait_for_line(
        tracer.child().stderr.take().unwrap(),
        "leaktrace: tracing pid",
    );
    let drain = std::thread::spawn(move || std::io::read_to_string(rest.into_inner()));
    let leaktrace_pid = tracer.pid();

    // Wait for the browser to settle: a renderer and the network service up, then a pause.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let roles: Vec<String> = traced_by(leaktrace_pid)
            .into_iter()
            .filter_map(role_from_cmdline)
            .collect();
        if roles.iter().any(|r| r == "renderer") && roles.iter().any(|r| r == "utility:network") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not start: {roles:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(3));

    // The independent reading, then at once stop the trace: its last sample follows ours.
    let mut expected_roles = BTreeMap::new();
    let mut expected_pss = 0;
    for pid in traced_by(leaktrace_pid) {
        if let (Some(role), Some(pss)) = (
            role_from_cmdline(pid),
            rollup(pid).map(|fields| fields["Pss"]),
        ) {
            expected_roles.insert(pid, role);
            expected_pss += pss;
        }
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(leaktrace_pid as i32, libc::SIGTERM) };
    let output = tracer.wait_output();
    let stderr = drain.join().unwrap().unwrap();
    assert!(output.status.success(), "{stderr}");
    let trace = Trace::read(&json).unwrap();

    for (pid, role) in &expected_roles {
        let traced = trace
            .processes
            .iter()
            .find(|p| p.pid == *pid)
            .unwrap_or_else(|| panic!("pid {pid} ({role}) not traced"));
        assert_eq!(traced.role.as_str(), role, "role of {pid}");
    }
    let mut expected_counts: BTreeMap<&str, u64> = BTreeMap::new();
    expected_roles
        .values()
        .for_each(|r| *expected_counts.entry(r).or_default() += 1);
    let traced_counts: BTreeMap<&str, u64> = trace
        .totals
        .by_role
        .iter()
        .map(|(r, t)| (r.as_str(), t.count))
        .collect();
    assert_eq!(
        traced_counts, expected_counts,
        "live processes per role at the last sample"
    );
    for role in [
        "browser",
        "zygote",
        "renderer",
        "gpu",
        "utility:network",
        "crashpad",
    ] {
        assert!(
            expected_counts.contains_key(role),
            "no {role} in {expected_counts:?}"
        );
    }

    let diff = trace.totals.pss.abs_diff(expected_pss) as f64 / expected_pss as f64;
    assert!(
        diff < 0.01,
        "tree PSS {} vs {} read by the test ({:.2}%)",
        trace.totals.pss,
        expected_pss,
        diff * 100.0
    );
    let by_role_sum: u64 = trace.totals.by_role.values().map(|r| r.pss).sum();
    assert_eq!(by_role_sum, trace.totals.pss);

    // Nothing of the browser is left, not even a zombie.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<u32> = expected_roles.keys().copied().collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left.is_empty(), "left behind: {left:?}");
}
