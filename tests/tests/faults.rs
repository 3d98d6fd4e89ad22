//! Faults, tried as a hostile user would (issue 13's matrix): a bad output path or regex fails
//! before the command starts; an output that cannot be written at the end loses nothing; every
//! line on the marker socket gets an answer; half a sudo identity is refused; a dying worker
//! leaves no zombie behind; a killed tracer leaves no process behind.

mod support;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use leaktrace::trace::Trace;
use support::{Scratch, fixture, leaktrace, require_chromium, require_root, spawn, succeeded};

/// `leaktrace ARGS -- touch FILE`: the exit code and stderr, and whether the command ran.
fn before_start(scratch: &Scratch, args: &[&str], env: &[(&str, &str)]) -> (i32, String, bool) {
    let ran = scratch.path("ran");
    let _ = std::fs::remove_file(&ran);
    let out = Command::new(leaktrace())
        .arg("run")
        .args(args)
        .args(["--", "touch"])
        .arg(&ran)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        ran.exists(),
    )
}

#[test]
fn a_bad_path_or_pattern_exits_2_before_the_command_starts() {
    let scratch = Scratch::new("faults-usage");
    let link = scratch.path("link.json");
    std::os::unix::fs::symlink(scratch.path("elsewhere"), &link).unwrap();
    let link = link.to_str().unwrap();
    let cases: [(&[&str], &str); 7] = [
        (
            &["-o", "/nonexistent/dir/t.json"],
            "/nonexistent/dir/t.json",
        ),
        (&["-o", link], "symbolic link"),
        (&["--trace-events", link], "symbolic link"),
        (&["--cycle-log", "/nonexistent.log"], "--cycle-log"),
        (&["--cycle-regex", "("], "--cycle-regex"),
        (&["--budget", "-5MiB/day"], "budget"),
        (&["--worker-inspect", "notaurl"], "ws:// or http://"),
    ];
    for (args, says) in cases {
        let (code, stderr, ran) = before_start(&scratch, args, &[]);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?} says {says:?}: {stderr}");
        assert!(!ran, "{args:?}: the command must not have started");
    }
    assert!(
        !scratch.path("elsewhere").exists(),
        "nothing written through the link"
    );
}

#[test]
fn half_a_sudo_identity_never_runs_the_command_as_root() {
    let scratch = Scratch::new("faults-sudo");
    for (env, missing) in [
        (&[("SUDO_UID", "65534")][..], "SUDO_GID"),
        (&[("SUDO_GID", "65534")][..], "SUDO_UID"),
    ] {
        let (code, stderr, ran) = before_start(&scratch, &["-q", "--no-ebpf"], env);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(missing) && stderr.contains("--as-root"),
            "{stderr}"
        );
        assert!(!ran, "the command must not have run (as root)");
    }
    // A uid this machine does not know is no one to run as either.
    let unknown = [("SUDO_UID", "3999999"), ("SUDO_GID", "3999999")];
    let (code, stderr, ran) = before_start(&scratch, &["-q", "--no-ebpf"], &unknown);
    assert_eq!((code, ran), (1, false), "{stderr}");
    assert!(stderr.contains("no passwd entry"), "{stderr}");
    // Asked for, it does.
    let (code, stderr, ran) = before_start(
        &scratch,
        &["-q", "--no-ebpf", "--as-root"],
        &[("SUDO_UID", "65534")],
    );
    assert_eq!((code, ran), (0, true), "{stderr}");
}

#[test]
fn an_output_that_fails_at_the_end_loses_nothing() {
    let scratch = Scratch::new("faults-full");
    let events = scratch.path("events.json");
    // /dev/full opens, and every write to it fails with ENOSPC: a disk that filled up during
    // the trace.
    let out = Command::new(leaktrace())
        .args(["run", "--no-ebpf", "-o", "/dev/full", "--trace-events"])
        .arg(&events)
        .args(["--", "true"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot write /dev/full"),
        "says what failed: {stderr}"
    );
    // The trace is saved elsewhere, where it says, and reads back.
    let saved = stderr
        .lines()
        .find_map(|l| l.strip_prefix("leaktrace: the trace is saved in "))
        .and_then(|l| l.strip_suffix(" instead"))
        .unwrap_or_else(|| panic!("no fallback path: {stderr}"));
    let trace = Trace::read(Path::new(saved)).unwrap();
    std::fs::remove_file(saved).unwrap();
    assert_eq!(trace.command, ["true"]);
    // The other output and the report are not lost with it.
    let events: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&events).unwrap()).unwrap();
    assert!(
        events["traceEvents"]
            .as_array()
            .is_some_and(|e| !e.is_empty())
    );
    assert!(stderr.contains("MEMORY BY ROLE"), "the report: {stderr}");
}

#[test]
fn every_line_on_the_marker_socket_is_answered() {
    if !require_root("every_line_on_the_marker_socket_is_answered") {
        return;
    }
    let scratch = Scratch::new("faults-socket");
    let json = scratch.path("t.json");
    let out = succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "-o"])
            .arg(&json)
            .arg("--")
            .arg(fixture("marker_client"))
            .args(["phase", "cycle x=notnum", "cycle heapUsed=1e400"])
            .args([
                "phase scrape pages=2",
                "--long",
                "100000",
                "cycle heapUsed=5",
            ]),
    );
    let answers = String::from_utf8_lossy(&out.stdout);
    let answers: Vec<&str> = answers.lines().collect();
    assert_eq!(
        answers,
        [
            "error: a phase marker needs a name: \"phase\"",
            "error: not a number: \"x=notnum\" in \"cycle x=notnum\"",
            "error: not a number: \"heapUsed=1e400\" in \"cycle heapUsed=1e400\"",
            "ok",
            "error: a line longer than 64 KiB",
            "ok",
        ]
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(
        (
            trace.markers.malformed,
            trace.markers.cycles_seen,
            trace.markers.phases_seen
        ),
        (4, 1, 1)
    );
    assert_eq!(trace.cycles[0].worker["heapUsed"], 5.0);
    assert_eq!(trace.cycles[0].worker["pages"], 2.0);
}

/// Whether `pid` is a zombie (its /proc entry says state Z).
fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let state = stat.rsplit_once(") ")?.1.chars().next()?;
            Some(state == 'Z')
        })
        .unwrap_or(false)
}

#[test]
fn a_worker_that_never_reaps_leaves_no_zombie() {
    if !require_root("a_worker_that_never_reaps_leaves_no_zombie") {
        return;
    }
    // This test process inherits what leaktrace leaves behind, as a container's init would;
    // it never reaps them, so a zombie left would stay here to be seen.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    // The worker starts two children and becomes a program that never reaps (as a killed
    // Chromium never does): the first exits at once and stays its zombie until the worker
    // exits a second later, then passes to leaktrace, as its subreaper, already dead (and
    // long after leaktrace took in its exit); the second outlives the worker, and leaktrace
    // stops it. Both must be reaped.
    let out = Command::new(leaktrace())
        .args(["run", "-q", "--interval", "100ms", "--", "sh", "-c"])
        .arg("sleep 0.1 & echo $!; sleep 60 & echo $!; exec sleep 1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let orphans: Vec<u32> = stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(orphans.len(), 2, "{stdout}");
    for pid in orphans {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} is left {}",
            if is_zombie(pid) {
                "a zombie"
            } else {
                "running"
            }
        );
    }
}

#[test]
fn a_flood_of_markers_is_taken_in_whole() {
    if !require_root("a_flood_of_markers_is_taken_in_whole") {
        return;
    }
    let scratch = Scratch::new("faults-flood");
    let json = scratch.path("t.json");
    const LINES: u64 = 100_000;
    let out = succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "--cycle-regex", "^cycle", "-o"])
            .arg(&json)
            .args(["--", "sh", "-c"])
            .arg(format!("seq 1 {LINES} | sed 's/^/cycle /'")),
    );
    // The command's output passes through whole, and every marker is a cycle or counted.
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.lines().count() as u64, LINES);
    assert_eq!(
        stdout.lines().last(),
        Some(format!("cycle {LINES}").as_str())
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.markers.cycles_seen + trace.markers.dropped, LINES);
    assert_eq!(trace.markers.dropped, 0, "taken in before the trace ended");
    assert_eq!(trace.cycles.iter().filter(|c| !c.cut).count() as u64, LINES);
    // Older cycles are compacted, what they dropped summed.
    let compacted = trace.compacted.as_ref().expect("compacted cycles");
    assert_eq!(u64::from(compacted.count), LINES - 1000);
    // Most of them waited on disk during the trace (see `spill`): copied back in order, each
    // once, and analysed from their digest exactly as from the cycles read back.
    let indices: Vec<u64> = trace.cycles.iter().map(|c| u64::from(c.index)).collect();
    assert_eq!(indices, (1..=LINES).collect::<Vec<_>>());
    assert_eq!(
        trace.analysis,
        leaktrace::analysis::analyze(&trace, None, None)
    );
    // Fitted on bins of 3^k cycles, the fewest that leave at most 1000 points. The measured
    // cycles are those whose boundary was read before the tree tore down: leaktrace reads a
    // flood seconds behind the worker, and what it reads after the exit is left out.
    let measured = trace.cycles.iter().filter(|c| c.is_measured()).count();
    let bin = std::iter::successors(Some(1), |k| Some(k * 3))
        .find(|k| measured.div_ceil(*k) <= leaktrace::trace::digest::MAX_FIT_POINTS)
        .unwrap();
    assert!(bin >= 27, "{measured} measured cycles");
    assert_eq!(trace.analysis.tree().map(|t| t.bin_cycles), Some(bin));
}

#[test]
fn sigterm_ends_a_trace_flooded_with_markers() {
    if !require_root("sigterm_ends_a_trace_flooded_with_markers") {
        return;
    }
    let scratch = Scratch::new("faults-flood-term");
    let json = scratch.path("t.json");
    // Markers as fast as `yes` writes them, for ever.
    let traced = support::spawn(
        Command::new(leaktrace())
            .args(["run", "-q", "--cycle-regex", "^cycle", "-o"])
            .arg(&json)
            .args(["--", "sh", "-c", "yes cycle"]),
    );
    std::thread::sleep(std::time::Duration::from_secs(2));
    let sent = std::time::Instant::now();
    // SAFETY: signalling a child of ours that has not been reaped.
    unsafe { libc::kill(traced.pid() as i32, libc::SIGTERM) };
    let out = traced.wait_output();
    let took = sent.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let trace = Trace::read(&json).unwrap();
    assert_eq!(trace.ended_by, leaktrace::trace::EndReason::Terminated);
    // Acted on at once: the queue left is dropped and counted, not worked through.
    assert!(took.as_secs() < 15, "SIGTERM took {took:?}");
    assert!(trace.markers.cycles_seen > 0);
    assert!(
        trace.duration_s < 2.0 + took.as_secs_f64() + 1.0,
        "{}",
        trace.duration_s
    );
}

#[test]
fn a_devtools_endpoint_that_never_answers_holds_nothing_up() {
    if !require_root("a_devtools_endpoint_that_never_answers_holds_nothing_up") {
        return;
    }
    // The kernel completes the handshake into the backlog; nothing ever accepts or answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    assert_cycles_do_not_wait_for(&endpoint, "faults-cdp");
}

#[test]
fn a_devtools_endpoint_that_drops_the_handshake_holds_nothing_up() {
    if !require_root("a_devtools_endpoint_that_drops_the_handshake_holds_nothing_up") {
        return;
    }
    // A listener whose accept queue (backlog 0) is full: the kernel drops every further SYN,
    // so a connect gets no answer at all and would wait for minutes of SYN retries.
    let (listener, addr) = listener_with_backlog_0();
    let mut held = Vec::new();
    while held.len() < 8 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)) {
            Ok(stream) => held.push(stream),
            Err(_) => break,
        }
    }
    assert!(
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err(),
        "the endpoint still completes handshakes after {} connections",
        held.len()
    );
    let started = Instant::now();
    assert_cycles_do_not_wait_for(&format!("http://{addr}"), "faults-syn");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    drop((held, listener));
}

/// A TCP listener on a free loopback port with an accept queue of 0.
fn listener_with_backlog_0() -> (std::net::TcpListener, std::net::SocketAddr) {
    use std::os::fd::FromRawFd;
    // SAFETY: plain socket calls on a socket this function owns; the address structures are
    // zeroed and sized as the calls expect.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket");
        let mut addr: libc::sockaddr_in = std::mem::zeroed();
        addr.sin_family = libc::AF_INET as u16;
        addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        assert_eq!(
            libc::bind(fd, &addr as *const _ as *const libc::sockaddr, len),
            0
        );
        assert_eq!(libc::listen(fd, 0), 0);
        let listener = std::net::TcpListener::from_raw_fd(fd);
        let addr = listener.local_addr().unwrap();
        (listener, addr)
    }
}

/// A fast worker traced with `--cdp ENDPOINT`: its cycles stay milliseconds long, and the trace
/// says why no browser was read.
fn assert_cycles_do_not_wait_for(endpoint: &str, scratch: &str) {
    let scratch = Scratch::new(scratch);
    let json = scratch.path("t.json");
    succeeded(
        Command::new(leaktrace())
            .args(["run", "-q", "--cdp", endpoint, "-o"])
            .arg(&json)
            .arg("--")
            .arg(fixture("cycler"))
            .args(["--cycles", "5", "--markers", "socket"]),
    );
    let trace = Trace::read(&json).unwrap();
    let lengths: Vec<f64> = trace
        .cycles
        .iter()
        .filter(|c| !c.cut)
        .map(|c| c.end_s - c.start_s)
        .collect();
    assert_eq!(lengths.len(), 5);
    // A cycle of this worker takes milliseconds; one waiting out a DevTools timeout (3 s a
    // call) would be seconds long. One connection attempt (1 s at most) then backs off.
    assert!(
        lengths.iter().all(|l| *l < 2.5),
        "cycle lengths {lengths:?}"
    );
    assert!(
        lengths.iter().filter(|l| **l > 0.5).count() <= 1,
        "{lengths:?}"
    );
    assert_eq!(trace.browser.connects, 0);
    assert!(
        trace.browser.notes.iter().any(|n| n.contains(endpoint)),
        "says why: {:?}",
        trace.browser.notes
    );
}

#[test]
fn report_refuses_what_is_not_a_trace_file() {
    for path in ["/dev/zero", "/proc/self"] {
        let out = Command::new(leaktrace())
            .args(["report", path])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{path}: {stderr}");
        assert!(stderr.contains("not a regular file"), "{path}: {stderr}");
    }
}

/// Row 6: leaktrace killed with SIGKILL while it traces a Chromium worker. None of its own
/// clean-up runs; its watchdog stops the whole tree (the worker, Chromium and the crash handler
/// that daemonized) within 5 s, and removes the marker socket's directory.
#[test]
fn a_tracer_killed_with_sigkill_leaves_nothing_of_the_tree_behind() {
    if !require_root("a_tracer_killed_with_sigkill_leaves_nothing_of_the_tree_behind")
        || !require_chromium("a_tracer_killed_with_sigkill_leaves_nothing_of_the_tree_behind")
    {
        return;
    }
    let mut tracer = spawn(
        Command::new(leaktrace())
            .args(["run", "-q", "--"])
            .arg(fixture("browser_worker"))
            .args(["--pages", "2", "--cycles", "100"]),
    );
    let tracer_pid = tracer.pid();
    let stdout = tracer.child().stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    assert!(
        lines.any(|l| l.is_ok_and(|l| l.starts_with("cycle 1 done"))),
        "the worker never finished a cycle"
    );
    // Everything leaktrace started, the watchdog apart: its descendants in /proc.
    let all = leaktrace::collect::target::all_processes().unwrap();
    let started = leaktrace::collect::target::with_descendants(
        vec![leaktrace::collect::target::proc_info(tracer_pid).unwrap()],
        &all,
    );
    let tree: Vec<_> = started[1..]
        .iter()
        .filter(|p| !leaktrace_tests::proc::is_watchdog(p.pid))
        .cloned()
        .collect();
    assert!(
        tree.iter().filter(|p| p.comm.contains("chrom")).count() >= 3,
        "Chromium's processes are in the tree: {tree:?}"
    );
    let socket_dir = std::env::temp_dir().join(format!("leaktrace-{tracer_pid}"));
    assert!(socket_dir.is_dir(), "the marker socket's directory");

    leaktrace::collect::target::signal(tracer_pid, libc::SIGKILL);
    let _ = tracer.child().wait();
    let alive = |p: &leaktrace::collect::target::ProcInfo| {
        leaktrace::collect::target::proc_info(p.pid)
            .is_some_and(|now| (now.start_time - p.start_time).abs() < 0.05)
            && leaktrace::collect::target::is_alive(p.pid)
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while tree.iter().any(alive) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let left: Vec<_> = tree.iter().filter(|p| alive(p)).collect();
    assert!(
        left.is_empty(),
        "left running 5 s after leaktrace died: {left:?}"
    );
    assert!(!socket_dir.exists(), "{} is left", socket_dir.display());
    // Orphans may have come to this process (a subreaper if another test made it one): reap
    // exactly those, never another test's children.
    for process in started {
        // SAFETY: waitpid on one pid with a null status pointer; WNOHANG never blocks.
        unsafe { libc::waitpid(process.pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
    }
}

#[test]
fn leaktrace_leaves_its_links_to_a_copy_that_exits_soon_after() {
    if !require_root("leaktrace_leaves_its_links_to_a_copy_that_exits_soon_after") {
        return;
    }
    // As a subreaper, this process inherits what leaktrace leaves behind.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let token = format!("links-holder-{}", std::process::id());
    let mut tracer = Command::new(leaktrace())
        .args(["run", "-q", "--", "sh", "-c", "exit 0", &token])
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let tracer_pid = tracer.id();
    // Detaching the eBPF links takes the kernel the better part of a second, which leaktrace
    // does not wait for: a copy of it (its command line is leaktrace's, so it carries the token)
    // holds them until leaktrace has exited. The copy is forked as the trace ends and lives
    // some 10 ms past leaktrace: it is looked for among leaktrace's children from the start,
    // every millisecond (a scan of all of /proc on a busy machine took longer than it lives).
    let me = std::process::id();
    let copy_of_tracer = |pid: &u32| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let mut args = c.split(|b| *b == 0);
            args.next().is_some_and(|arg0| arg0.ends_with(b"leaktrace"))
                && args.any(|arg| arg == token.as_bytes())
        })
    };
    // The children of every thread of `pid`.
    let children_of = |pid: u32| -> Vec<u32> {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            return Vec::new();
        };
        tasks
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("children")).ok())
            .flat_map(|list| {
                list.split_whitespace()
                    .filter_map(|pid| pid.parse().ok())
                    .collect::<Vec<u32>>()
            })
            .collect()
    };
    // The first copies seen are the command's and the watchdog's, before they exec.
    let mut copies = std::collections::BTreeSet::new();
    let mut exited = false;
    loop {
        let children = children_of(tracer_pid).into_iter().chain(if exited {
            children_of(me)
        } else {
            Vec::new()
        });
        copies.extend(children.filter(copy_of_tracer));
        if exited {
            break;
        }
        if let Some(status) = tracer.try_wait().unwrap() {
            assert!(status.success(), "leaktrace: {status}");
            // Once more: the holder may have been forked since the last look.
            exited = true;
            continue;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    // The holder outlived leaktrace, so it was handed to this process (its subreaper), and it
    // exits on its own, soon.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let holder_exited = copies.iter().any(|&pid| {
            let mut status = 0;
            // SAFETY: waiting for one pid; a process that is not our child gives -1 (ECHILD).
            let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
            reaped == pid as i32 && libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
        });
        if holder_exited {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "none of leaktrace's copies {copies:?} outlived it and exited within 5 s after it: \
             no holder of the links"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
