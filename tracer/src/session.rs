//! A tracing session: start or attach to the target, follow its process tree until it ends,
//! sample /proc on an interval, cut the trace into the worker's cycles at its markers, and
//! collect everything into a [`Trace`].
//!
//! The session ends when the launched command (or the attached process) exits, when
//! `--duration` elapses or `--cycles` are complete, or on SIGINT/SIGTERM; in every case it takes
//! a last sample, drains the kernel side and returns a complete trace. A command leaktrace
//! started is never left running: on any other stop it gets SIGTERM, then SIGKILL after a grace
//! period, and so do descendants that outlive it.

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
use tracer_common::LostReason;

use crate::{
    browser::{BrowserReader, BrowserView, CdpMode, WorkerInspector},
    kernel::{self, Kernel, KernelError, RssIndices},
    markers::{self, LineRules, Marker, MarkerError, MarkerEvent, MarkerSocket},
    processes::{self, ProcessTable, SampleSeries, Snapshot},
    progress::Progress,
    sampler,
    target::{self, Identity, LaunchIo, ProcInfo, TargetError},
    timeline::{Boundary, Timeline},
    trace::{self, EndReason, MarkerSummary, SCHEMA, Trace, TreeSample},
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
    #[error(transparent)]
    Markers(#[from] MarkerError),
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

/// Where cycle and phase boundaries come from (the socket is always offered in run mode).
#[derive(Clone, Debug, Default)]
pub struct MarkerOptions {
    pub cycle_regex: Option<String>,
    pub phase_regex: Option<String>,
    pub cycle_log: Option<PathBuf>,
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
    /// Warn on stderr about what the trace cannot see; draw the progress line.
    pub warn: bool,
    /// Time between /proc samples.
    pub interval: Duration,
    pub markers: MarkerOptions,
    /// Where the browser's DevTools endpoint is (`--cdp`).
    pub cdp: CdpMode,
    /// Drop query strings and fragments from the URLs recorded.
    pub redact_urls: bool,
    /// A Node worker's inspector (`--worker-inspect`), for its own heap at every cycle end.
    pub worker_inspect: Option<String>,
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
            markers: MarkerOptions::default(),
            cdp: CdpMode::Auto,
            redact_urls: false,
            worker_inspect: None,
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

/// Every collector, and the clock they share.
struct Collectors {
    kernel: Option<Kernel>,
    table: ProcessTable,
    series: SampleSeries,
    /// The last sample that found the tree alive: what the totals report once the worker exits.
    last_alive: Option<TreeSample>,
    started: Instant,
    root_pid: u32,
}

impl Collectors {
    fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn rss(&self) -> Option<RssIndices> {
        self.kernel.as_ref().map(|k| k.rss)
    }

    /// Takes in what happened since the last tick: kernel events, or /proc without eBPF.
    fn follow(&mut self) {
        match &mut self.kernel {
            Some(kernel) => {
                let mut events = Vec::new();
                kernel.drain_events(|event| events.push(event));
                for event in &events {
                    self.table.on_event(event, kernel);
                }
            }
            None => {
                if let Ok(tree) = target::process_tree(self.root_pid) {
                    tree.into_iter().for_each(|info| self.table.add(info));
                }
                for pid in self.table.live_pids() {
                    if !target::is_alive(pid) {
                        self.table.mark_gone(pid);
                    }
                }
            }
        }
    }

    /// A /proc sample of every live process, kept in the bounded series.
    fn sample(&mut self) -> TreeSample {
        self.follow();
        let sample = self.table.sample(self.elapsed());
        self.series.push(sample.clone());
        if !sample.by_role.is_empty() {
            self.last_alive = Some(sample.clone());
        }
        self.table.reap();
        sample
    }

    /// Everything every collector knows now, for a cycle or phase boundary.
    fn snapshot(&mut self) -> (f64, Snapshot, TreeSample) {
        let sample = self.sample();
        if let Some(kernel) = &mut self.kernel {
            self.table.collect_kernel(kernel);
        }
        (sample.t_s, self.table.snapshot(self.rss()), sample)
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
    let kernel = match ebpf_off_reason(&options) {
        None => Some(Kernel::load()?),
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
    if options.warn {
        warnings
            .iter()
            .for_each(|w| eprintln!("leaktrace: warning: {w}"));
    }

    let marker_options = &options.markers;
    let rules = LineRules::new(
        marker_options.cycle_regex.as_deref(),
        marker_options.phase_regex.as_deref(),
    )?;
    let (marker_tx, mut marker_rx) = mpsc::unbounded_channel();
    let progress = Progress::new(options.warn, marker_options.cycles);
    let mut browser = BrowserReader::new(options.cdp.clone(), options.redact_urls);
    let inspector = options.worker_inspect.clone().map(WorkerInspector::new);
    let mut summary = MarkerSummary {
        warmup: marker_options.warmup,
        ..MarkerSummary::default()
    };
    let mut socket = None;

    let mut collectors = Collectors {
        kernel,
        table: ProcessTable::new(0),
        series: SampleSeries::default(),
        last_alive: None,
        started,
        root_pid: 0,
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
                capture_output: !rules.is_empty(),
            };
            socket = Some(served);
            // Orphans of the command's tree come to leaktrace rather than to init (which may
            // not reap them, as in containers), so none is left a zombie.
            // SAFETY: prctl with an integer argument.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
            let kernel = &mut collectors.kernel;
            let mut launched =
                target::launch(command, identity, io, |pid| match kernel.as_mut() {
                    Some(kernel) => kernel.track(pid).map_err(SessionError::from),
                    None => Ok(()),
                })?;
            if let Some(stdout) = launched.child.stdout.take() {
                let progress = progress.clone();
                markers::pass_through(
                    stdout,
                    move |b| progress.pass(false, b),
                    rules.clone(),
                    marker_tx.clone(),
                );
            }
            if let Some(stderr) = launched.child.stderr.take() {
                let progress = progress.clone();
                markers::pass_through(
                    stderr,
                    move |b| progress.pass(true, b),
                    rules.clone(),
                    marker_tx.clone(),
                );
            }
            collectors.root_pid = launched.pid;
            collectors.table = ProcessTable::new(launched.pid);
            // Not in the fork event stream: leaktrace forked it before it was tracked.
            collectors
                .table
                .add(target::proc_info(launched.pid).unwrap_or(ProcInfo {
                    pid: launched.pid,
                    ppid: std::process::id(),
                    comm: command[0].clone(),
                    start_time: 0.0,
                }));
            ("run", command.clone(), Some(launched.child))
        }
        Target::Attach(pid) => {
            collectors.root_pid = *pid;
            collectors.table = ProcessTable::new(*pid);
            seed_tree(&mut collectors)?;
            // A child forked while we were seeding: look once more.
            seed_tree(&mut collectors)?;
            ("attach", attached_command(*pid), None)
        }
    };
    let root_pid = collectors.root_pid;
    summary.sources = marker_sources(&rules, marker_options, socket.is_some());
    if let Some(log) = &marker_options.cycle_log {
        markers::follow_log(log, rules.clone().or_protocol(), marker_tx.clone())?;
    }
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
        timeline: Timeline::new(marker_options.warmup, t0, start),
        summary,
        owned_at_cycle_ends: Vec::new(),
        progress: progress.clone(),
        warn: options.warn,
        target: marker_options.cycles,
        started,
        inspector,
        analyze_every: marker_options.analyze_every,
        warmup: marker_options.warmup,
    };
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
            // Markers first: one that arrived before the command's exit or a signal belongs to
            // the trace.
            biased;
            event = marker_rx.recv(), if markers_open => match event {
                None => markers_open = false,
                Some(event) => {
                    if cutting.on_event(&mut collectors, &mut browser, event).await {
                        break EndReason::CyclesDone;
                    }
                }
            },
            status = &mut status_rx, if mode == "run" => {
                exit_status = Some(status_code(status.expect("waiter thread").map_err(SessionError::Wait)?));
                break EndReason::CommandExited;
            }
            _ = interrupt.recv() => break EndReason::Interrupted,
            _ = terminate.recv() => break EndReason::Terminated,
            _ = sleep_until(deadline) => break EndReason::Duration,
            _ = tick_every(&mut every) => {
                let marker = Marker { boundary: Boundary::CycleEnd, values: BTreeMap::new(), ack: None };
                if cutting.on_event(&mut collectors, &mut browser, MarkerEvent::Marker(marker)).await {
                    break EndReason::CyclesDone;
                }
            }
            _ = sample_tick.tick() => {
                let sample = collectors.sample();
                follow_browser(&collectors, &mut browser, options.warn, cutting.summary.cycles_seen == 0).await;
                cutting.progress.update(started.elapsed(), sample.pss, &cutting.owned_at_cycle_ends);
            }
            _ = tick.tick() => {
                collectors.follow();
                if mode == "attach" && !target::is_alive(root_pid) {
                    break EndReason::TargetExited;
                }
            }
        }
    };
    // Markers already sent when the trace ended still count.
    if ended_by != EndReason::CyclesDone {
        while let Ok(event) = marker_rx.try_recv() {
            if cutting.on_event(&mut collectors, &mut browser, event).await {
                break;
            }
        }
    }
    progress.finish();

    // The last sample, of the tree as it is now, before anything is stopped.
    let (end_s, end, _) = collectors.snapshot();
    // The last view, if still connected: no reconnecting to a browser that is shutting down.
    if browser.is_connected() {
        read_browser(&collectors, &mut browser).await;
    }
    browser.close().await;
    let Cutting {
        timeline,
        summary,
        inspector,
        ..
    } = cutting;
    browser.summary.failed_calls += inspector.map_or(0, |i| i.failed_calls);
    let cycles = timeline.finish(end_s, end);
    if mode == "run" {
        if exit_status.is_none() {
            exit_status = stop_command(root_pid, &mut status_rx, ended_by).await;
        }
        // Descendants that outlived the command (Chromium's crashpad handlers daemonize):
        // leaktrace started them, so it does not leave them behind.
        collectors.follow();
        stop_leftovers(&mut collectors).await;
    }
    collectors.follow();
    collectors.table.reap();
    drop(socket);
    let mut events_lost = BTreeMap::new();
    let rss = collectors.rss();
    if let Some(kernel) = collectors.kernel.as_mut() {
        collectors.table.collect_kernel(kernel);
        let lost = kernel.lost();
        for reason in LostReason::ALL {
            events_lost.insert(reason.name().to_string(), lost[reason as usize]);
        }
    }
    let ebpf = collectors.kernel.is_some();
    let processes = collectors.table.into_processes(rss);
    Ok(Trace {
        schema: SCHEMA.to_string(),
        command,
        mode: mode.to_string(),
        root_pid,
        started_at: trace::rfc3339(started_at),
        duration_s: started.elapsed().as_secs_f64(),
        ebpf,
        resident_source: if ebpf { "kernel" } else { "proc" }.to_string(),
        interval_s: options.interval.as_secs_f64(),
        warnings,
        ended_by,
        exit_code: exit_status,
        events_lost,
        totals: trace::totals(&processes, collectors.last_alive.as_ref()),
        processes,
        samples: collectors.series.into_points(),
        cycles,
        markers: summary,
        browser: browser.summary,
        analysis: Default::default(),
    })
}

impl Cutting {
    /// Every `--analyze-every` cycles, the fits so far, on stderr.
    fn interim_analysis(&self) {
        let done = self.timeline.complete_cycles();
        if !self.warn
            || self.analyze_every == 0
            || !done.is_multiple_of(self.analyze_every as usize)
        {
            return;
        }
        let warmup = (self.warmup > 0).then_some(self.warmup as usize);
        let analysis = crate::analysis::analyze_cycles(self.timeline.cycles(), warmup, None);
        let Some(tree) = analysis.tree() else { return };
        let line = format!(
            "leaktrace: after {done} cycles: tree owned PSS {}/cycle, {}/day (R² {:.2}, {:?}); likely source: {}\n",
            crate::report::bytes(tree.per_cycle as i64, true),
            crate::report::bytes(tree.per_day as i64, true),
            tree.r2,
            tree.shape.unwrap_or(crate::analysis::Shape::Unknown),
            analysis.verdict.source,
        );
        self.progress.pass(true, line.as_bytes());
    }
}

/// Cuts the trace into cycles as markers come.
struct Cutting {
    timeline: Timeline,
    summary: MarkerSummary,
    /// The tree's PSS at each cycle end, for the progress line.
    owned_at_cycle_ends: Vec<u64>,
    progress: Progress,
    warn: bool,
    /// `--cycles`.
    target: Option<u32>,
    started: Instant,
    inspector: Option<WorkerInspector>,
    analyze_every: u32,
    warmup: u32,
}

impl Cutting {
    /// Takes one marker event; true once `--cycles` complete cycles are in.
    async fn on_event(
        &mut self,
        collectors: &mut Collectors,
        browser: &mut BrowserReader,
        event: MarkerEvent,
    ) -> bool {
        let marker = match event {
            MarkerEvent::Marker(marker) => marker,
            MarkerEvent::Malformed(reason) => {
                self.summary.malformed += 1;
                if self.summary.malformed == 1 && self.warn {
                    let warning = format!(
                        "leaktrace: warning: ignored a marker ({reason}); further ones are only counted\n"
                    );
                    self.progress.pass(true, warning.as_bytes());
                }
                return false;
            }
        };
        let (now, snapshot, sample) = collectors.snapshot();
        if marker.boundary == Boundary::CycleEnd {
            self.summary.cycles_seen += 1;
            self.owned_at_cycle_ends.push(sample.owned());
            self.progress.update(
                self.started.elapsed(),
                sample.pss,
                &self.owned_at_cycle_ends,
            );
        } else {
            self.summary.phases_seen += 1;
        }
        let cycle_end = marker.boundary == Boundary::CycleEnd;
        let mut values = marker.values;
        if cycle_end && let Some(inspector) = &mut self.inspector {
            values.extend(inspector.read().await);
        }
        self.timeline
            .on_boundary(marker.boundary, now, snapshot, values);
        if cycle_end {
            follow_browser(collectors, browser, self.warn, false).await;
            if let Some(view) = read_browser(collectors, browser).await {
                self.timeline.attach_browser(view);
            }
        }
        if let Some(ack) = marker.ack {
            let _ = ack.send(());
        }
        if cycle_end {
            self.interim_analysis();
        }
        self.target
            .is_some_and(|n| self.timeline.complete_cycles() >= n as usize)
    }
}

fn marker_sources(rules: &LineRules, options: &MarkerOptions, socket: bool) -> Vec<String> {
    let mut sources = Vec::new();
    if !rules.is_empty() && options.cycle_log.is_none() {
        sources.push("regex".to_string());
    }
    if socket {
        sources.push("socket".to_string());
    }
    if options.cycle_log.is_some() {
        sources.push("log".to_string());
    }
    if options.cycle_every.is_some() {
        sources.push("interval".to_string());
    }
    sources
}

/// Connects to the browser when one shows up, and without cycles keeps the last view fresh.
async fn follow_browser(
    collectors: &Collectors,
    browser: &mut BrowserReader,
    warn: bool,
    read: bool,
) {
    let browsers: Vec<_> = collectors
        .table
        .live_with_role("browser")
        .into_iter()
        .filter_map(|pid| {
            let id = sampler::identity(pid)?;
            Some((pid, id.cmdline, sampler::home_of(pid)))
        })
        .collect();
    browser.ensure_connected(&browsers, warn).await;
    if read {
        read_browser(collectors, browser).await;
    }
}

/// Reads the browser's view, with leaktrace's role for each of Chromium's processes.
async fn read_browser(collectors: &Collectors, browser: &mut BrowserReader) -> Option<BrowserView> {
    let mut view = browser.read().await?;
    for process in &mut view.processes {
        process.role = collectors.table.role_of_pid(process.pid);
    }
    Some(view)
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

fn seed_tree(collectors: &mut Collectors) -> Result<(), SessionError> {
    for info in target::process_tree(collectors.root_pid)? {
        if let Some(kernel) = collectors.kernel.as_mut() {
            kernel.track(info.pid)?;
            // Counters that never change while we watch still need a value: /proc shows the
            // same ones the kernel programs read.
            if let Some(sample) = sampler::sample(info.pid) {
                kernel.seed_resident(info.pid, processes::resident_pages(&sample, kernel.rss))?;
            }
        }
        collectors.table.add(info);
    }
    Ok(())
}

fn attached_command(pid: u32) -> Vec<String> {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.cmdline())
        .unwrap_or_default()
}

/// SIGTERM to every traced process still alive, SIGKILL to those alive after the grace period.
async fn stop_leftovers(collectors: &mut Collectors) {
    for next_signal in [libc::SIGTERM, libc::SIGKILL] {
        let leftovers = collectors.table.live();
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
            collectors.follow();
            collectors.table.reap();
            if collectors
                .table
                .live()
                .iter()
                .all(|(pid, _)| !target::is_alive(*pid))
            {
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
