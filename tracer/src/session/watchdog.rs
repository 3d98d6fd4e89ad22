//! The command's tree must not outlive leaktrace, even when leaktrace itself is killed with
//! SIGKILL and none of its own clean-up runs.
//!
//! In `run` mode leaktrace starts a small process of its own before the command: itself again,
//! as the hidden `__watchdog` subcommand, outside the traced tree (its parent, leaktrace, is not
//! traced). Its stdin is a pipe only leaktrace writes to (close-on-exec, so the command never
//! holds it). leaktrace tells it each process that joins the tree (`watch PID START`) and the
//! directories it made (`dir PATH`), and `done` once it has stopped the tree itself. If the pipe
//! closes without `done`, leaktrace is gone: the watchdog stops every process it was told of
//! that is still the same process (pid and start time) and their descendants, SIGTERM first and
//! SIGKILL after a grace period, removes the directories, and exits. It ignores the terminal's
//! signals, so a Ctrl-C or a closed terminal that ends leaktrace does not end it first.
//!
//! `attach` never starts one: it never stops anything.

use std::{
    collections::BTreeSet,
    io::{BufRead, Write},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, ExitCode, Stdio},
    time::{Duration, Instant},
};

use crate::collect::target::{self, ProcInfo};

/// The hidden subcommand that runs [`watch`].
pub const SUBCOMMAND: &str = "__watchdog";
/// How long the tree gets between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(2);
const POLL: Duration = Duration::from_millis(100);

/// leaktrace's end of the pipe.
pub(super) struct Watchdog {
    child: Child,
    stdin: ChildStdin,
}

impl Watchdog {
    pub(super) fn spawn() -> std::io::Result<Watchdog> {
        // By its path, so that it is named `leaktrace` in ps; /proc/self/exe if that is gone.
        let exe = std::env::current_exe()
            .ok()
            .filter(|path| path.is_file())
            .unwrap_or_else(|| PathBuf::from("/proc/self/exe"));
        let mut child = Command::new(exe)
            .arg(SUBCOMMAND)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        let stdin = child.stdin.take().expect("piped stdin");
        Ok(Watchdog { child, stdin })
    }

    /// A process of the tree, to stop if leaktrace dies.
    pub(super) fn watch(&mut self, process: &ProcInfo) {
        self.send(&format!("watch {} {}", process.pid, process.start_time));
    }

    /// A directory to remove if leaktrace dies.
    pub(super) fn remove_on_death(&mut self, dir: &Path) {
        self.send(&format!("dir {}", dir.display()));
    }

    /// leaktrace has stopped the tree itself: the watchdog exits, and is reaped here.
    pub(super) fn release(mut self) {
        self.send("done");
        drop(self.stdin);
        let _ = self.child.wait();
    }

    /// A watchdog that died (it ignores the terminal's signals, but not SIGKILL) only costs
    /// the protection it gave: the trace goes on.
    fn send(&mut self, line: &str) {
        let _ = writeln!(self.stdin, "{line}");
    }
}

/// The watchdog's whole life: listen until `done` (exit quietly) or the end of its input
/// (leaktrace died: stop the tree).
pub fn watch() -> ExitCode {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
        // SAFETY: setting a signal's disposition to SIG_IGN.
        unsafe { libc::signal(signal, libc::SIG_IGN) };
    }
    let mut watched = Vec::new();
    let mut dirs = Vec::new();
    for line in std::io::stdin().lock().lines() {
        let Ok(line) = line else { break };
        match line.split_once(' ') {
            _ if line == "done" => return ExitCode::SUCCESS,
            Some(("watch", rest)) => {
                if let Some((pid, start)) = rest.split_once(' ')
                    && let (Ok(pid), Ok(start_time)) = (pid.parse(), start.parse())
                {
                    watched.push(ProcInfo {
                        pid,
                        ppid: 0,
                        comm: String::new(),
                        start_time,
                    });
                }
            }
            Some(("dir", path)) => dirs.push(PathBuf::from(path)),
            _ => {}
        }
    }
    let stopped = stop_tree(watched);
    for dir in dirs {
        let _ = std::fs::remove_dir_all(dir);
    }
    if stopped > 0 {
        eprintln!(
            "leaktrace: the tracer ended without stopping its command; \
             its watchdog stopped {stopped} processes of the command's tree"
        );
    }
    ExitCode::FAILURE
}

/// Stops the watched processes that are still themselves, and every descendant they have:
/// SIGTERM, then SIGKILL to those alive after the grace period. Descendants are looked for
/// again at every poll, so a child forked meanwhile is not missed. How many were signalled.
fn stop_tree(mut known: Vec<ProcInfo>) -> usize {
    let mut signalled = BTreeSet::new();
    for signal in [libc::SIGTERM, libc::SIGKILL] {
        let mut sent = BTreeSet::new();
        let deadline = Instant::now() + GRACE;
        loop {
            let all = target::all_processes().unwrap_or_default();
            let is_same = |p: &ProcInfo| {
                all.iter()
                    .any(|q| q.pid == p.pid && (q.start_time - p.start_time).abs() < 0.05)
            };
            let live = known.iter().filter(|p| is_same(p)).cloned().collect();
            let running: Vec<ProcInfo> = target::with_descendants(live, &all)
                .into_iter()
                .filter(|p| target::is_alive(p.pid))
                .collect();
            if running.is_empty() {
                return signalled.len();
            }
            for process in running {
                if sent.insert(process.pid) {
                    target::signal(process.pid, signal);
                    signalled.insert(process.pid);
                }
                if !known.iter().any(|p| p.pid == process.pid) {
                    known.push(process);
                }
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(POLL);
        }
    }
    signalled.len()
}
