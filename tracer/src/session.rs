//! A tracing session: start or attach to the target, follow its process tree until it ends,
//! sample /proc on an interval, and collect everything into a [`Trace`].
//!
//! The session ends when the launched command (or the attached process) exits, when
//! `--duration` elapses, or on SIGINT/SIGTERM; in every case it takes a last sample, drains the
//! kernel side and returns a complete trace. A command leaktrace started is never left running:
//! on a duration or signal stop it gets SIGTERM, then SIGKILL after a grace period.

use std::{
    collections::BTreeMap,
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::{LostReason, Resident};

use crate::{
    kernel::{self, Kernel, KernelError},
    processes::{ProcessTable, SampleSeries},
    sampler,
    target::{self, Identity, ProcInfo, TargetError},
    trace::{self, EndReason, SCHEMA, Trace},
};

/// How often the ring buffer is drained (and, without eBPF, /proc searched for new processes).
const TICK: Duration = Duration::from_millis(50);
/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

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

#[derive(Clone, Debug)]
pub struct Options {
    pub duration: Option<Duration>,
    /// Load the eBPF programs. Without them (or without root) the session runs on /proc alone.
    pub ebpf: bool,
    /// Run the command as root even under sudo.
    pub as_root: bool,
    /// Say on stderr when tracing has started (attach mode: the moment it is safe to go).
    pub announce: bool,
    /// Warn on stderr about what the trace cannot see.
    pub warn: bool,
    /// Time between /proc samples.
    pub interval: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: None,
            ebpf: true,
            as_root: false,
            announce: false,
            warn: true,
            interval: DEFAULT_INTERVAL,
        }
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

/// Why eBPF is off, if it is.
fn ebpf_off_reason(options: &Options) -> Option<&'static str> {
    if !options.ebpf {
        Some("--no-ebpf was given")
    } else if !kernel::is_privileged() {
        Some("leaktrace is not root")
    } else {
        None
    }
}

async fn run_session(target: Target, options: Options) -> Result<Trace, SessionError> {
    let started = Instant::now();
    let started_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut interrupt = signal(SignalKind::interrupt()).map_err(SessionError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(SessionError::Signals)?;

    let mut warnings = Vec::new();
    let mut kernel = match ebpf_off_reason(&options) {
        None => Some(Kernel::load()?),
        Some(reason) => {
            warnings.push(format!(
                "eBPF is off ({reason}): no address-space flows and no kernel resident counters; resident \
                 memory comes from /proc every {:?}, and processes living shorter than that may be missed \
                 (run with sudo for the kernel view)",
                options.interval
            ));
            None
        }
    };
    if options.warn {
        warnings
            .iter()
            .for_each(|w| eprintln!("leaktrace: warning: {w}"));
    }

    let (mode, command, root_pid, child) = match &target {
        Target::Run(command) => {
            let identity = if options.as_root {
                None
            } else {
                Identity::from_sudo()?
            };
            // Orphans of the command's tree come to leaktrace rather than to init (which may
            // not reap them, as in containers), so none is left a zombie.
            // SAFETY: prctl with an integer argument.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
            let launched = target::launch(command, identity, |pid| match kernel.as_mut() {
                Some(kernel) => kernel.track(pid).map_err(SessionError::from),
                None => Ok(()),
            })?;
            ("run", command.clone(), launched.pid, Some(launched.child))
        }
        Target::Attach(pid) => ("attach", attached_command(*pid), *pid, None),
    };
    let mut table = ProcessTable::new(root_pid);
    match child {
        // Not in the fork event stream: leaktrace forked it before it was tracked.
        Some(_) => table.add(target::proc_info(root_pid).unwrap_or(ProcInfo {
            pid: root_pid,
            ppid: std::process::id(),
            comm: command[0].clone(),
            start_time: 0.0,
        })),
        None => {
            seed_tree(root_pid, &mut kernel, &mut table)?;
            // A child forked while we were seeding: look once more.
            seed_tree(root_pid, &mut kernel, &mut table)?;
        }
    }
    if options.announce {
        let others = table.len().saturating_sub(1);
        eprintln!(
            "leaktrace: tracing pid {root_pid} and {others} other processes (Ctrl-C to stop)"
        );
    }

    // The command's wait() runs on a blocking thread; its status arrives here.
    let (status_tx, mut status_rx) = tokio::sync::oneshot::channel();
    if let Some(mut child) = child {
        tokio::task::spawn_blocking(move || {
            let _ = status_tx.send(child.wait());
        });
    }

    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut sample_tick = tokio::time::interval(options.interval);
    let mut series = SampleSeries::default();
    let mut exit_status = None;
    let ended_by = loop {
        tokio::select! {
            status = &mut status_rx, if mode == "run" => {
                exit_status = Some(status_code(status.expect("waiter thread").map_err(SessionError::Wait)?));
                break EndReason::CommandExited;
            }
            _ = interrupt.recv() => break EndReason::Interrupted,
            _ = terminate.recv() => break EndReason::Terminated,
            _ = sleep_until(deadline) => break EndReason::Duration,
            _ = sample_tick.tick() => {
                follow(&mut kernel, &mut table, root_pid);
                series.push(table.sample(started.elapsed().as_secs_f64()));
                table.reap();
            }
            _ = tick.tick() => {
                follow(&mut kernel, &mut table, root_pid);
                if mode == "attach" && !target::is_alive(root_pid) {
                    break EndReason::TargetExited;
                }
            }
        }
    };

    // The last sample, of the tree as it is now, before anything is stopped.
    follow(&mut kernel, &mut table, root_pid);
    let last = table.sample(started.elapsed().as_secs_f64());
    series.push(last.clone());
    if mode == "run" {
        if exit_status.is_none() {
            exit_status = stop_command(root_pid, &mut status_rx, ended_by).await;
        }
        // Descendants that outlived the command (Chromium's crashpad handlers daemonize):
        // leaktrace started them, so it does not leave them behind.
        follow(&mut kernel, &mut table, root_pid);
        stop_leftovers(&mut kernel, &mut table, root_pid).await;
    }
    follow(&mut kernel, &mut table, root_pid);
    table.reap();
    let mut events_lost = BTreeMap::new();
    let mut rss = None;
    if let Some(kernel) = kernel.as_mut() {
        table.collect_kernel(kernel);
        let lost = kernel.lost();
        for reason in LostReason::ALL {
            events_lost.insert(reason.name().to_string(), lost[reason as usize]);
        }
        rss = Some(kernel.rss);
    }
    let processes = table.into_processes(rss);
    Ok(Trace {
        schema: SCHEMA.to_string(),
        command,
        mode: mode.to_string(),
        root_pid,
        started_at: trace::rfc3339(started_at),
        duration_s: started.elapsed().as_secs_f64(),
        ebpf: kernel.is_some(),
        resident_source: if kernel.is_some() { "kernel" } else { "proc" }.to_string(),
        interval_s: options.interval.as_secs_f64(),
        warnings,
        ended_by,
        exit_code: exit_status,
        events_lost,
        totals: trace::totals(&processes, Some(&last)),
        processes,
        samples: series.into_points(),
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
            for pid in table.live_pids() {
                if !target::is_alive(pid) {
                    table.mark_gone(pid);
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
            // Counters that never change while we watch still need a value: /proc shows the
            // same ones the kernel programs read.
            if let Some(sample) = sampler::sample(info.pid) {
                kernel.seed_resident(info.pid, resident_pages(&sample, kernel.rss))?;
            }
        }
        table.add(info);
    }
    Ok(())
}

fn resident_pages(sample: &sampler::ProcSample, rss: kernel::RssIndices) -> Resident {
    // SAFETY: sysconf has no preconditions.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64;
    let mut last = [0; tracer_common::RSS_COUNTERS];
    last[rss.anon] = sample.rss_anon / page;
    last[rss.file] = sample.rss_file / page;
    last[rss.shmem] = sample.rss_shmem / page;
    last[rss.swap] = sample.vm_swap / page;
    Resident { last, peak: last }
}

fn attached_command(pid: u32) -> Vec<String> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.cmdline())
        .unwrap_or_default()
}

/// SIGTERM to every traced process still alive, SIGKILL to those alive after the grace period.
async fn stop_leftovers(kernel: &mut Option<Kernel>, table: &mut ProcessTable, root_pid: u32) {
    for next_signal in [libc::SIGTERM, libc::SIGKILL] {
        let leftovers = table.live();
        let signalled = leftovers
            .iter()
            .filter(|(pid, start)| target::signal_if_same(*pid, *start, next_signal))
            .count();
        if signalled == 0 {
            return;
        }
        let deadline = tokio::time::Instant::now() + KILL_GRACE;
        while tokio::time::Instant::now() < deadline {
            tokio::time::sleep(TICK).await;
            follow(kernel, table, root_pid);
            table.reap();
            if table.live().iter().all(|(pid, _)| !target::is_alive(*pid)) {
                return;
            }
        }
    }
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
