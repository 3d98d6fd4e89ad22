//! A tracing session: start or attach to the target, follow its process tree until it ends,
//! and collect everything into a [`Trace`].
//!
//! The session ends when the launched command (or the attached process) exits, when
//! `--duration` elapses, or on SIGINT/SIGTERM; in every case it drains the kernel side and
//! returns a complete trace. A command leaktrace started is never left running: on a duration
//! or signal stop it gets SIGTERM, then SIGKILL after a grace period.

use std::{
    collections::{BTreeMap, HashMap},
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{LifecycleEvent, LifecycleKind, LostReason};

use crate::{
    kernel::{Kernel, KernelError},
    target::{self, Identity, ProcInfo, TargetError},
    trace::{self, EndReason, Process, SCHEMA, Trace},
};

/// How often the ring buffer is drained and /proc looked at.
const TICK: Duration = Duration::from_millis(50);
/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot wait for the command")]
    Wait(#[source] std::io::Error),
}

/// What to trace.
#[derive(Clone, Debug)]
pub enum Target {
    /// Launch this command.
    Run(Vec<String>),
    /// Attach to this process and its descendants.
    Attach(u32),
}

#[derive(Clone, Debug, Default)]
pub struct Options {
    pub duration: Option<Duration>,
    /// Off: follow the tree through /proc only (no address-space flows).
    pub ebpf: bool,
    /// Run the command as root even under sudo.
    pub as_root: bool,
    /// Say on stderr when tracing has started (attach mode: the moment it is safe to go).
    pub announce: bool,
}

/// The processes seen so far, in the order they appeared.
#[derive(Default)]
struct ProcessTable {
    processes: Vec<Process>,
    /// Live pid -> index in `processes`.
    live: HashMap<u32, usize>,
}

impl ProcessTable {
    fn add(&mut self, info: ProcInfo) {
        if self.live.contains_key(&info.pid) {
            return;
        }
        self.live.insert(info.pid, self.processes.len());
        self.processes.push(Process {
            pid: info.pid,
            ppid: info.ppid,
            start_time: info.start_time,
            comm: info.comm,
            exited: false,
            exit_code: None,
            address_space: trace::address_space(&Default::default()),
            brk_growth: 0,
        });
    }

    fn on_event(&mut self, event: &LifecycleEvent, kernel: &mut Kernel) {
        let comm = comm(&event.comm);
        match event.kind {
            k if k == LifecycleKind::Fork as u32 => self.add(ProcInfo {
                pid: event.tgid,
                ppid: event.parent_tgid,
                comm,
                start_time: event.time_ns as f64 / 1e9,
            }),
            k if k == LifecycleKind::Exec as u32 => {
                if let Some(&index) = self.live.get(&event.tgid) {
                    self.processes[index].comm = comm;
                }
            }
            k if k == LifecycleKind::Exit as u32 => {
                if let Some(index) = self.live.remove(&event.tgid) {
                    let process = &mut self.processes[index];
                    process.exited = true;
                    process.exit_code = Some(exit_code(event.exit_code as i32));
                    // Collect now: the pid may be reused by a later process.
                    if let Some(flows) = kernel.take_flows(event.tgid) {
                        process.set_flows(&flows);
                    }
                }
            }
            _ => {}
        }
    }

    /// Final flows of every process still alive.
    fn collect_live(&mut self, kernel: &mut Kernel) {
        for (tgid, flows) in kernel.all_flows() {
            if let Some(&index) = self.live.get(&tgid) {
                self.processes[index].set_flows(&flows);
            }
        }
    }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A wait(2) status as a shell would report it: the exit code, or 128 + the signal.
fn exit_code(status: i32) -> i32 {
    if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    }
}

fn status_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// Runs a whole session on a small single-threaded runtime.
pub fn trace(target: Target, options: Options) -> Result<Trace, SessionError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SessionError::Signals)?;
    runtime.block_on(run_session(target, options))
}

async fn run_session(target: Target, options: Options) -> Result<Trace, SessionError> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SessionError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(SessionError::Signals)?;

    let mut kernel = if options.ebpf {
        Some(Kernel::load()?)
    } else {
        None
    };
    let mut table = ProcessTable::default();

    let (mode, command, root_pid, mut child) = match &target {
        Target::Run(command) => {
            let identity = if options.as_root {
                None
            } else {
                Identity::from_sudo()?
            };
            let launched = target::launch(command, identity, |pid| match kernel.as_mut() {
                Some(kernel) => kernel.track(pid).map_err(SessionError::from),
                None => Ok(()),
            })?;
            // Not in the fork event stream: the tracer forked it before it was tracked.
            table.add(target::proc_info(launched.pid).unwrap_or(ProcInfo {
                pid: launched.pid,
                ppid: std::process::id(),
                comm: command[0].clone(),
                start_time: 0.0,
            }));
            ("run", command.clone(), launched.pid, Some(launched.child))
        }
        Target::Attach(pid) => {
            seed_tree(*pid, &mut kernel, &mut table)?;
            // A child forked while we were seeding: look once more.
            seed_tree(*pid, &mut kernel, &mut table)?;
            ("attach", attached_command(*pid), *pid, None)
        }
    };

    if options.announce {
        let others = table.processes.len().saturating_sub(1);
        eprintln!(
            "leaktrace: tracing pid {root_pid} and {others} other processes (Ctrl-C to stop)"
        );
    }

    // The command's wait() runs on a blocking thread; its status arrives here.
    let (status_tx, mut status_rx) = tokio::sync::oneshot::channel();
    if let Some(mut child) = child.take() {
        tokio::task::spawn_blocking(move || {
            let _ = status_tx.send(child.wait());
        });
    }

    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut exit_status = None;
    let ended_by = loop {
        tokio::select! {
            status = &mut status_rx, if exit_status.is_none() && mode == "run" => {
                exit_status = Some(status_code(status.expect("waiter thread").map_err(SessionError::Wait)?));
                break EndReason::CommandExited;
            }
            _ = interrupt.recv() => break EndReason::Interrupted,
            _ = terminate.recv() => break EndReason::Terminated,
            _ = sleep_until(deadline) => break EndReason::Duration,
            _ = tick.tick() => {
                follow(&mut kernel, &mut table, root_pid);
                if mode == "attach" && !target::is_alive(root_pid) {
                    break EndReason::TargetExited;
                }
            }
        }
    };

    if mode == "run" && exit_status.is_none() {
        exit_status = stop_command(root_pid, &mut status_rx, ended_by).await;
    }
    follow(&mut kernel, &mut table, root_pid);
    let mut events_lost = BTreeMap::new();
    if let Some(kernel) = kernel.as_mut() {
        table.collect_live(kernel);
        let lost = kernel.lost();
        for reason in LostReason::ALL {
            events_lost.insert(reason.name().to_string(), lost[reason as usize]);
        }
    }
    let processes = table.processes;
    Ok(Trace {
        schema: SCHEMA.to_string(),
        command,
        mode: mode.to_string(),
        root_pid,
        started_at: trace::rfc3339(started_at),
        duration_s: started.elapsed().as_secs_f64(),
        ebpf: kernel.is_some(),
        ended_by,
        exit_code: exit_status,
        events_lost,
        totals: trace::totals(&processes),
        processes,
    })
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Takes in what happened since the last tick: kernel events, or /proc without eBPF.
fn follow(kernel: &mut Option<Kernel>, table: &mut ProcessTable, root_pid: u32) {
    match kernel {
        Some(kernel) => {
            let mut events = Vec::new();
            kernel.drain_events(|event| events.push(event));
            for event in &events {
                table.on_event(event, kernel);
            }
        }
        None => {
            if let Ok(tree) = target::process_tree(root_pid) {
                tree.into_iter().for_each(|info| table.add(info));
            }
            let gone: Vec<u32> = table
                .live
                .keys()
                .copied()
                .filter(|pid| !target::is_alive(*pid))
                .collect();
            for pid in gone {
                if let Some(index) = table.live.remove(&pid) {
                    table.processes[index].exited = true;
                }
            }
        }
    }
}

fn seed_tree(
    root: u32,
    kernel: &mut Option<Kernel>,
    table: &mut ProcessTable,
) -> Result<(), SessionError> {
    for info in target::process_tree(root)? {
        if let Some(kernel) = kernel.as_mut() {
            kernel.track(info.pid)?;
        }
        table.add(info);
    }
    Ok(())
}

fn attached_command(pid: u32) -> Vec<String> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.cmdline())
        .unwrap_or_default()
}

/// Stops a command the session launched. After Ctrl-C the terminal already sent it SIGINT, so
/// it first gets a grace period; otherwise SIGTERM at once. SIGKILL ends the escalation.
async fn stop_command(
    pid: u32,
    status_rx: &mut tokio::sync::oneshot::Receiver<std::io::Result<ExitStatus>>,
    ended_by: EndReason,
) -> Option<i32> {
    let escalation: &[i32] = if ended_by == EndReason::Interrupted {
        &[libc::SIGTERM, libc::SIGKILL]
    } else {
        target::signal(pid, libc::SIGTERM);
        &[libc::SIGKILL]
    };
    for next_signal in escalation {
        if let Ok(waited) = tokio::time::timeout(KILL_GRACE, &mut *status_rx).await {
            return waited.ok()?.ok().map(status_code);
        }
        target::signal(pid, *next_signal);
    }
    status_rx.await.ok()?.ok().map(status_code)
}
