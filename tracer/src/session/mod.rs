//! A tracing session: start or attach to the target, follow its process tree until it ends,
//! sample /proc on an interval, cut the trace into the worker's cycles at its markers, and
//! collect everything into a [`Trace`].
//!
//! The session ends when the launched command (or the attached process) exits, when
//! `--duration` elapses or `--cycles` are complete, or on SIGINT/SIGTERM; in every case it takes
//! a last sample, drains the kernel side and returns a complete trace. A command leaktrace
//! started is never left running: on any other stop it gets SIGTERM, then SIGKILL after a grace
//! period, and so do descendants that outlive it.
//!
//! [`collectors`]: what a snapshot is made of (kernel, process table, browser);
//! [`cutting`]: markers into cycles and phases; [`stop`]: nothing we start is left behind;
//! [`watchdog`]: not even when leaktrace is killed.

use std::{
    collections::BTreeMap,
    path::PathBuf,
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use thiserror::Error;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
};
use tracer_common::{GENERATION_OF_LOADER, LostReason};

mod collectors;
mod cutting;
mod dumps;
mod follow;
mod reports;
mod stop;
pub mod watchdog;

pub use self::reports::ReportSchedule;

use self::{
    collectors::{Collectors, follow_browser, read_browser},
    cutting::{Cutting, marker_sources},
    follow::Following,
    reports::Reports,
    stop::{reap_children, stop_command, stop_leftovers},
    watchdog::Watchdog,
};
use crate::{
    collect::browser::{BrowserReader, CdpMode, WorkerInspector},
    collect::kernel::{self, Kernel, KernelError},
    collect::markers::{
        self, Boundary, CycleCommand, LineRules, Marker, MarkerError, MarkerEvent, MarkerSocket,
    },
    collect::processes::{ProcessTable, SampleSeries},
    collect::sampler::Depth,
    collect::target::{self, Identity, LaunchIo, ProcInfo, TargetError},
    render::progress::Progress,
    trace::timeline::Timeline,
    trace::{self, EndReason, MarkerSummary, SCHEMA, Trace},
};

/// How often the ring buffer is drained (and, without eBPF, /proc searched for new processes).
const TICK: Duration = Duration::from_millis(50);
/// How long the command's last output may take to be read after it exits.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How long the markers queued when the trace ended may take to be taken in.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long a stopped command gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(3);
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Target(#[from] TargetError),
    #[error(transparent)]
    Markers(#[from] MarkerError),
    #[error("cannot set up signal handling")]
    Signals(#[source] std::io::Error),
    #[error("cannot wait for the command")]
    Wait(#[source] std::io::Error),
    #[error("cannot start leaktrace's watchdog (/proc/self/exe)")]
    Watchdog(#[source] std::io::Error),
    #[error("cannot serve --metrics-addr")]
    Metrics(#[source] std::io::Error),
}

/// What to trace.
#[derive(Clone, Debug)]
pub enum Target {
    /// Launch this command.
    Run(Vec<String>),
    /// Attach to this process and its descendants.
    Attach(u32),
}

/// Where cycle and phase boundaries come from (the socket is always offered in run mode).
#[derive(Clone, Debug, Default)]
pub struct MarkerOptions {
    pub cycle_regex: Option<String>,
    pub phase_regex: Option<String>,
    /// `--figures-regex`: the worker's figures from any line of its output, by named group.
    pub figures_regex: Option<String>,
    pub cycle_log: Option<PathBuf>,
    /// `--cycle-cmd`: a shell command whose output is read for markers, like a log.
    pub cycle_cmd: Option<String>,
    pub cycle_every: Option<Duration>,
    /// End the trace after this many complete cycles.
    pub cycles: Option<u32>,
    /// The first cycles are warm-up.
    pub warmup: u32,
    /// Print an interim analysis on stderr every this many cycles (0: never).
    pub analyze_every: u32,
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
    /// Draw the progress line (on a terminal). Warnings go through [`crate::diagnostics`].
    pub progress: bool,
    /// Time between /proc samples.
    pub interval: Duration,
    pub markers: MarkerOptions,
    /// Where the browser's DevTools endpoint is (`--cdp`).
    pub cdp: CdpMode,
    /// Drop query strings and fragments from the URLs recorded.
    pub redact_urls: bool,
    /// Find each page's renderer (`--page-renderers`; starts Chromium's tracing service).
    pub page_renderers: bool,
    /// Chromium's memory-infra dumps at a few cycle ends (see `dumps`).
    pub memory_dumps: bool,
    /// A Node worker's inspector (`--worker-inspect`), for its own heap at every cycle end.
    pub worker_inspect: Option<String>,
    /// Where a long trace's older cycles are written while it runs (an unnamed file, see
    /// [`crate::trace::spill`]): the output's directory, else the temporary directory.
    pub spill_dir: PathBuf,
    /// The metrics endpoint (`--metrics-addr`), already bound.
    pub metrics: Option<crate::render::metrics::Endpoint>,
    /// Reports written while the trace goes on (`--report-dir`, `--report-every`, SIGUSR1).
    pub reports: Option<ReportSchedule>,
    /// Attach mode: the next instance to follow when the attached process exits.
    pub follow: Option<target::Follow>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: None,
            ebpf: true,
            as_root: false,
            announce: false,
            progress: true,
            interval: DEFAULT_INTERVAL,
            markers: MarkerOptions::default(),
            cdp: CdpMode::Auto,
            redact_urls: false,
            page_renderers: false,
            memory_dumps: false,
            worker_inspect: None,
            spill_dir: std::env::temp_dir(),
            metrics: None,
            reports: None,
            follow: None,
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
    // SIGUSR1 writes a report now: caught always, so that it never kills a trace (its default).
    let mut usr1 = signal(SignalKind::user_defined1()).map_err(SessionError::Signals)?;

    let mut warnings = Vec::new();
    let kernel = match ebpf_off_reason(&options) {
        None => {
            let kernel = Kernel::load()?;
            warnings.extend(kernel.losses.iter().cloned());
            Some(kernel)
        }
        Some(reason) => {
            warnings.push(format!(
                "eBPF is off ({reason}): no address-space flows and no kernel resident counters; \
                 resident memory comes from /proc every {:?}, and processes living shorter than \
                 that may be missed (run with sudo for the kernel view)",
                options.interval
            ));
            None
        }
    };
    warnings.iter().for_each(|w| tracing::warn!("{w}"));

    let marker_options = &options.markers;
    let rules = LineRules::new(
        marker_options.cycle_regex.as_deref(),
        marker_options.phase_regex.as_deref(),
        marker_options.figures_regex.as_deref(),
    )?;
    let (marker_tx, mut marker_rx) = mpsc::unbounded_channel();
    let progress = Progress::new(options.progress, marker_options.cycles);
    let mut browser = BrowserReader::new(
        options.cdp.clone(),
        options.redact_urls,
        options.page_renderers,
    );
    let inspector = options.worker_inspect.clone().map(WorkerInspector::new);
    let mut summary = MarkerSummary {
        warmup: marker_options.warmup,
        ..MarkerSummary::default()
    };
    let mut socket = None;
    // The threads reading the command's output, for markers.
    let mut readers = Vec::new();

    let mut collectors = Collectors {
        kernel,
        table: ProcessTable::new(0),
        series: SampleSeries::default(),
        last_alive: None,
        started,
        root_pid: 0,
        tree: Default::default(),
        read_until_ns: 0,
        watchdog: None,
    };
    let (mode, command, child) = match &target {
        Target::Run(command) => {
            let identity = if options.as_root {
                None
            } else {
                Identity::from_sudo()?
            };
            let owner = identity.as_ref().map(|i| (i.uid, i.gid));
            let served = MarkerSocket::serve(owner, marker_tx.clone())?;
            summary.socket = Some(served.path.display().to_string());
            let io = LaunchIo {
                env: vec![("LEAKTRACE_MARKER".into(), served.path.display().to_string())],
                capture_output: rules.reads_lines(),
            };
            // Before the command, so that no moment of its life is unguarded.
            let mut watchdog = Watchdog::spawn().map_err(SessionError::Watchdog)?;
            watchdog.remove_on_death(served.dir());
            socket = Some(served);
            // Orphans of the command's tree come to leaktrace rather than to init (which may
            // not reap them, as in containers), so none is left a zombie.
            // SAFETY: prctl with an integer argument.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
            let kernel = &mut collectors.kernel;
            let mut launched =
                target::launch(command, identity, io, |pid| match kernel.as_mut() {
                    Some(kernel) => kernel.track(pid).map(drop).map_err(SessionError::from),
                    None => Ok(()),
                })?;
            if let Some(stdout) = launched.child.stdout.take() {
                let progress = progress.clone();
                readers.push(markers::pass_through(
                    stdout,
                    move |b| progress.pass(false, b),
                    rules.clone(),
                    marker_tx.clone(),
                    collectors.tree.clone(),
                ));
            }
            if let Some(stderr) = launched.child.stderr.take() {
                let progress = progress.clone();
                readers.push(markers::pass_through(
                    stderr,
                    move |b| progress.pass(true, b),
                    rules.clone(),
                    marker_tx.clone(),
                    collectors.tree.clone(),
                ));
            }
            collectors.root_pid = launched.pid;
            collectors.table = ProcessTable::new(launched.pid);
            // Not in the fork event stream: leaktrace forked it before it was tracked.
            let root = target::proc_info(launched.pid).unwrap_or(ProcInfo {
                pid: launched.pid,
                ppid: std::process::id(),
                comm: command[0].clone(),
                start_time: 0.0,
            });
            collectors.table.add(root, GENERATION_OF_LOADER);
            collectors.watchdog = Some(watchdog);
            collectors.follow();
            ("run", command.clone(), Some(launched.child))
        }
        Target::Attach(pid) => {
            collectors.root_pid = *pid;
            collectors.table = ProcessTable::new(*pid);
            collectors.seed_tree()?;
            // A child forked while we were seeding: look once more.
            collectors.seed_tree()?;
            ("attach", target::cmdline(*pid), None)
        }
    };
    let root_pid = collectors.root_pid;
    let head = Head {
        command,
        mode,
        root_pid,
        started_at: trace::rfc3339(started_at),
        started,
        interval_s: options.interval.as_secs_f64(),
    };
    let mut reports = options
        .reports
        .clone()
        .map(|schedule| Reports::new(schedule, &head.started_at));
    let mut report_every = reports
        .as_ref()
        .and_then(Reports::every)
        .map(|period| tokio::time::interval_at(tokio::time::Instant::now() + period, period));
    summary.sources = marker_sources(&rules, marker_options, socket.is_some());
    if let Some(log) = &marker_options.cycle_log {
        markers::follow_log(log, rules.clone().or_protocol(), marker_tx.clone())?;
    }
    // As the invoking user, as a launched command is.
    let cycle_cmd = match &marker_options.cycle_cmd {
        Some(command) => Some(CycleCommand::start(
            command,
            if options.as_root {
                None
            } else {
                Identity::from_sudo()?
            },
            rules.clone().or_protocol(),
            marker_tx.clone(),
            collectors.tree.clone(),
        )),
        None => None,
    };
    drop(marker_tx);
    if options.announce {
        let others = collectors.table.len().saturating_sub(1);
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

    let (t0, start, _) = collectors.snapshot();
    let mut cutting = Cutting {
        timeline: Timeline::new(marker_options.warmup, t0, start)
            .with_spill_dir(options.spill_dir.clone()),
        summary,
        owned_at_cycle_ends: Default::default(),
        progress: progress.clone(),
        target: marker_options.cycles,
        started,
        inspector,
        analyze_every: marker_options.analyze_every,
        warmup: marker_options.warmup,
        watch: None,
        last_interim: None,
        metrics: None,
        between_instances: false,
        segments: Vec::new(),
        regions: Default::default(),
        dumps: dumps::MemoryDumps::new(
            options.memory_dumps && !matches!(options.cdp, CdpMode::Off),
        ),
    };
    let mut following = match (&target, &options.follow) {
        (Target::Attach(_), Some(rule)) => {
            Some(Following::new(rule.clone(), &collectors, &mut cutting))
        }
        _ => None,
    };
    if let Some(endpoint) = &options.metrics {
        let published = crate::render::metrics::Published::default();
        endpoint
            .serve(published.clone())
            .map_err(SessionError::Metrics)?;
        cutting.metrics = Some(published);
    }
    let deadline = options.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    let mut sample_tick = tokio::time::interval(options.interval);
    let mut every = marker_options
        .cycle_every
        .map(|period| tokio::time::interval_at(tokio::time::Instant::now() + period, period));
    let mut markers_open = true;
    let mut exit_status = None;
    let ended_by = loop {
        tokio::select! {
            // Signals first, so a flood of markers cannot hold them off; then markers, so one
            // that arrived before the command's exit belongs to the trace.
            biased;
            _ = interrupt.recv() => break EndReason::Interrupted,
            _ = terminate.recv() => break EndReason::Terminated,
            event = marker_rx.recv(), if markers_open => match event {
                None => markers_open = false,
                Some(event) => {
                    if cutting.on_event(&mut collectors, &mut browser, event).await {
                        break EndReason::CyclesDone;
                    }
                }
            },
            status = &mut status_rx, if head.mode == "run" => {
                exit_status = Some(status_code(status.expect("waiter thread").map_err(SessionError::Wait)?));
                break EndReason::CommandExited;
            }
            _ = sleep_until(deadline) => break EndReason::Duration,
            _ = usr1.recv() => {
                report_so_far(&mut reports, &mut collectors, &head, &cutting, &browser, &warnings, true).await;
            }
            _ = tick_every(&mut report_every) => {
                report_so_far(&mut reports, &mut collectors, &head, &cutting, &browser, &warnings, false).await;
            }
            _ = tick_every(&mut every) => {
                let marker = Marker {
                    boundary: Boundary::CycleEnd,
                    values: BTreeMap::new(),
                    ack: None,
                    at_ns: crate::collect::sampler::boot_ns(),
                    reading: None,
                };
                if cutting.on_event(&mut collectors, &mut browser, MarkerEvent::Marker(marker)).await {
                    break EndReason::CyclesDone;
                }
            }
            _ = sample_tick.tick() => {
                // While cycles are cut, their ends read PSS: a sample only reads the counters,
                // and leaves the budget to them.
                let cutting_cycles = cutting.summary.cycles_seen > 0;
                let sample = collectors.sample(if cutting_cycles { Depth::Counters } else { Depth::Budgeted });
                follow_browser(&collectors, &mut browser, cutting.summary.cycles_seen == 0).await;
                cutting.progress.update(started.elapsed(), sample.pss, &cutting.owned_at_cycle_ends);
                if let Some(metrics) = &cutting.metrics {
                    metrics.sample(&sample);
                    let top = collectors.table.top_owned(crate::render::metrics::TOP_PROCESSES);
                    metrics.update(|live| live.top = top);
                    if let Some(kernel) = collectors.kernel.as_mut() {
                        let lost = kernel.lost();
                        metrics.update(|live| live.lost = LostReason::ALL
                            .iter()
                            .map(|&reason| (reason.name().to_string(), lost[reason as usize]))
                            .collect());
                    }
                }
            }
            _ = tick.tick() => {
                collectors.follow();
                cutting.check_teardown(&collectors);
                if head.mode == "attach" && !target::is_alive(collectors.root_pid) {
                    match following.as_mut() {
                        Some(following) => {
                            following.on_root_gone(&mut collectors, &mut cutting, &mut browser);
                        }
                        None => break EndReason::TargetExited,
                    }
                }
            }
        }
    };
    if let Some(command) = cycle_cmd {
        let _ = tokio::task::spawn_blocking(move || command.stop()).await;
    }
    // No flow after this moment belongs to the trace: the syscall hooks stop counting.
    if let Some(kernel) = collectors.kernel.as_mut()
        && let Err(e) = kernel.stop_flows()
    {
        warnings.push(format!(
            "address-space flows may include the trace's last moments: {e}"
        ));
    }
    // The command's last lines may still be in its readers, each taking its reading before it
    // hands its marker on: wait for them to reach the end of the output, a moment at most (a
    // daemonized grandchild can hold the pipe open).
    if ended_by == EndReason::CommandExited {
        let deadline = Instant::now() + OUTPUT_GRACE;
        while readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Markers already sent when the trace ended still count, as many as [`DRAIN_LIMIT`] allows:
    // a flood queued faster than it could be taken in must not hold the trace for minutes.
    if ended_by != EndReason::CyclesDone {
        let until = Instant::now() + DRAIN_LIMIT;
        while let Ok(event) = marker_rx.try_recv() {
            if Instant::now() > until {
                cutting.summary.dropped =
                    1 + std::iter::from_fn(|| marker_rx.try_recv().ok()).count() as u64;
                break;
            }
            if cutting.on_event(&mut collectors, &mut browser, event).await {
                break;
            }
        }
    }
    progress.finish();

    // The last sample, of the tree as it is now, before anything is stopped.
    let (end_s, end, _) = collectors.snapshot();
    cutting.check_teardown(&collectors);
    // The last view, if still connected: no reconnecting to a browser that is shutting down.
    if browser.is_connected() {
        read_browser(&collectors, &mut browser).await;
    }
    browser.close().await;
    // The region growth is taken from the reading nearest the start of the fitted cycles (after
    // the last snapshot: the fits take a moment on a long trace).
    let fitted_from = fitted_from(&cutting.timeline, marker_options.warmup);
    let Cutting {
        timeline,
        summary,
        inspector,
        segments,
        regions,
        dumps,
        ..
    } = cutting;
    browser.summary.failed_calls += inspector.map_or(0, |i| i.failed_calls);
    let (cycles, compacted) = timeline.finish(end_s, end);
    if head.mode == "run" {
        if exit_status.is_none() {
            exit_status = stop_command(root_pid, &mut status_rx, ended_by).await;
        }
        // Descendants that outlived the command (Chromium's crashpad handlers daemonize):
        // leaktrace started them, so it does not leave them behind.
        collectors.follow();
        stop_leftovers(&mut collectors).await;
        if let Some(watchdog) = collectors.watchdog.take() {
            watchdog.release();
        }
        reap_children().await;
    }
    collectors.follow();
    collectors.table.reap();
    drop(socket);
    // The last report written on the way is whole before leaktrace goes on to the final one.
    if let Some(reports) = &mut reports
        && let Some(Err(e)) = reports.collect().await
    {
        warnings.push(format!("a report during the trace was not written: {e}"));
    }
    let mut trace = collectors.trace(&head, warnings, ended_by, cycles, compacted);
    trace.exit_code = exit_status;
    trace.segments = segments;
    trace.memory_dumps = dumps.taken;
    for process in &mut trace.processes {
        process.regions = regions.top(process.pid, process.start_time, fitted_from);
    }
    trace.tracer.regions = regions.cost();
    trace.markers = summary;
    trace.browser = browser.summary;
    Ok(trace)
}

/// What a trace says of itself that is fixed once the tree is found.
struct Head {
    command: Vec<String>,
    mode: &'static str,
    root_pid: u32,
    started_at: String,
    started: Instant,
    interval_s: f64,
}

impl Collectors {
    /// The trace as far as it has gone, for the end or for a report on the way: every
    /// process with the kernel's figures now, the samples, and the cycles given. Its markers,
    /// browser and exit code are the caller's to fill.
    fn trace(
        &mut self,
        head: &Head,
        warnings: Vec<String>,
        ended_by: EndReason,
        cycles: crate::trace::spill::Cycles,
        compacted: Option<trace::CompactedCycles>,
    ) -> Trace {
        let mut events_lost = BTreeMap::new();
        let rss = self.rss();
        if let Some(kernel) = self.kernel.as_mut() {
            self.table.collect_kernel(kernel);
            let lost = kernel.lost();
            for reason in LostReason::ALL {
                events_lost.insert(reason.name().to_string(), lost[reason as usize]);
            }
        }
        let processes = self.table.processes(rss);
        Trace {
            schema: SCHEMA.to_string(),
            command: head.command.clone(),
            mode: head.mode.to_string(),
            root_pid: head.root_pid,
            started_at: head.started_at.clone(),
            duration_s: head.started.elapsed().as_secs_f64(),
            ebpf: self.kernel.is_some(),
            flows: self.kernel.as_ref().is_some_and(|k| k.flows),
            resident_source: if rss.is_some() { "kernel" } else { "proc" }.to_string(),
            interval_s: head.interval_s,
            warnings,
            ended_by,
            exit_code: None,
            events_lost,
            totals: trace::totals(&processes, self.last_alive.as_ref()),
            processes,
            samples: self.series.points().to_vec(),
            cycles,
            compacted,
            segments: Vec::new(),
            memory_dumps: Vec::new(),
            markers: MarkerSummary::default(),
            browser: Default::default(),
            analysis: Default::default(),
            tracer: trace::TracerCost::of_self(self.tree.cost()),
        }
    }
}

/// Writes the trace so far as a report, in the background, if reports are asked for and the
/// last one is done (`asked`: SIGUSR1, which says what became of it).
async fn report_so_far(
    reports: &mut Option<Reports>,
    collectors: &mut Collectors,
    head: &Head,
    cutting: &Cutting,
    browser: &BrowserReader,
    warnings: &[String],
    asked: bool,
) {
    let say = |line: String| {
        cutting
            .progress
            .pass(true, format!("leaktrace: {line}\n").as_bytes())
    };
    let Some(reports) = reports else {
        if asked {
            say("SIGUSR1: no --report-dir to write a report into".into());
        }
        return;
    };
    if reports.busy() {
        if asked {
            say("SIGUSR1: the last report is still being written; skipped".into());
        }
        return;
    }
    let (cycles, compacted) = match cutting.timeline.so_far() {
        Ok(so_far) => so_far,
        Err(e) => {
            say(format!(
                "warning: no report written: the spilled cycles: {e}"
            ));
            return;
        }
    };
    let mut trace = collectors.trace(
        head,
        warnings.to_vec(),
        EndReason::Running,
        cycles,
        compacted,
    );
    trace.markers = cutting.summary.clone();
    trace.segments = cutting.segments.clone();
    trace.memory_dumps = cutting.dumps.taken.clone();
    let fitted_from = fitted_from(&cutting.timeline, cutting.warmup);
    for process in &mut trace.processes {
        process.regions = cutting
            .regions
            .top(process.pid, process.start_time, fitted_from);
    }
    trace.tracer.regions = cutting.regions.cost();
    trace.browser = browser.summary.clone();
    if let Some(Err(e)) = reports.write(trace).await {
        say(format!("warning: a report was not written: {e}"));
    }
}

/// The first cycle whose end the tree's fit takes (past its warm-up, in the latest segment).
fn fitted_from(timeline: &Timeline, warmup: u32) -> u32 {
    let warmup = (warmup > 0).then_some(warmup as usize);
    let analysis = crate::analysis::analyze_history(&timeline.history(), warmup, None);
    let skipped = analysis.tree().map_or(0, |t| t.warmup_cycles) as u32;
    timeline.segment_first() + skipped
}

async fn tick_every(every: &mut Option<tokio::time::Interval>) {
    match every {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
