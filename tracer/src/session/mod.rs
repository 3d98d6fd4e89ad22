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
    process::ExitStatus,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::{mpsc, oneshot},
    time::Interval,
};
use tracer_common::GENERATION_OF_LOADER;

mod assemble;
mod collectors;
mod cutting;
mod dumps;
mod error;
mod follow;
mod options;
mod reports;
mod stop;
pub mod watchdog;

pub use self::{
    error::SessionError,
    options::{DEFAULT_INTERVAL, MarkerOptions, Options, Target},
    reports::ReportSchedule,
};

use self::{
    assemble::Head,
    collectors::{Collectors, read_browser},
    cutting::{Cutting, marker_sources},
    follow::Following,
    reports::Reports,
    stop::{reap_children, status_code, stop_command, stop_leftovers},
    watchdog::Watchdog,
};
use crate::{
    collect::{
        browser::BrowserReader,
        kernel::{self, Kernel},
        markers::{self, CycleCommand, LineRules, Marker, MarkerEvent, MarkerSocket},
        target::{self, Identity, LaunchIo, ProcInfo},
    },
    render::progress::Progress,
    trace::{EndReason, MarkerSummary, Trace},
};

/// How often the ring buffer is drained (and, without eBPF, /proc searched for new processes).
const TICK: Duration = Duration::from_millis(50);
/// How long the command's last output may take to be read after it exits.
const OUTPUT_GRACE: Duration = Duration::from_secs(1);
/// How long the markers queued when the trace ended may take to be taken in.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Runs a whole session on a small single-threaded runtime.
pub fn trace(target: Target, options: Options) -> Result<Trace, SessionError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(SessionError::Signals)?;
    runtime.block_on(async {
        let (mut session, mut clocks) = Session::start(target, options)?;
        let ended_by = session.run(&mut clocks).await?;
        Ok(session.finish(ended_by).await)
    })
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

/// The kernel side, loaded unless eBPF is off, and the warnings it gives.
fn load_kernel(options: &Options) -> Result<(Option<Kernel>, Vec<String>), SessionError> {
    let mut warnings = Vec::new();
    let kernel = match ebpf_off_reason(options) {
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
    Ok((kernel, warnings))
}

/// A session under way: every collector, the cutting into cycles, and what ends the trace.
struct Session {
    options: Options,
    head: Head,
    warnings: Vec<String>,
    collectors: Collectors,
    cutting: Cutting,
    browser: BrowserReader,
    progress: Progress,
    inputs: MarkerInputs,
    /// The launched command's exit status, from the blocking thread that waits for it.
    status: oneshot::Receiver<std::io::Result<ExitStatus>>,
    exit_status: Option<i32>,
    reports: Option<Reports>,
    following: Option<Following>,
}

/// Where the markers come from: the channel every source sends on, and the sources that
/// must be waited for or stopped at the end.
struct MarkerInputs {
    events: mpsc::UnboundedReceiver<MarkerEvent>,
    open: bool,
    /// The threads reading the command's output.
    readers: Vec<std::thread::JoinHandle<()>>,
    /// The socket (run mode), removed when the session ends.
    socket: Option<MarkerSocket>,
    /// `--cycle-cmd`, stopped when the trace ends.
    cycle_cmd: Option<CycleCommand>,
}

/// The signals that end a trace or ask for a report, caught before anything starts.
struct Signals {
    interrupt: Signal,
    terminate: Signal,
    /// SIGUSR1 writes a report now: caught always, so that it never kills a trace (its
    /// default).
    usr1: Signal,
}

impl Signals {
    fn catch() -> Result<Signals, SessionError> {
        let listen = |kind| signal(kind).map_err(SessionError::Signals);
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            usr1: listen(SignalKind::user_defined1())?,
        })
    }
}

/// What the event loop waits for besides markers and the command's exit.
struct Clocks {
    signals: Signals,
    deadline: Option<tokio::time::Instant>,
    /// Drains the kernel's events (see [`TICK`]).
    tick: Interval,
    /// Samples /proc (`--interval`).
    sample_tick: Interval,
    /// `--cycle-every`: a cycle end at every period.
    every: Option<Interval>,
    /// `--report-every`.
    report_every: Option<Interval>,
}

impl Clocks {
    /// Started now, once the trace is under way.
    fn start(signals: Signals, options: &Options, report_every: Option<Duration>) -> Clocks {
        let now = tokio::time::Instant::now();
        let period = |period: Duration| tokio::time::interval_at(now + period, period);
        Clocks {
            signals,
            deadline: options.duration.map(|d| now + d),
            tick: tokio::time::interval(TICK),
            sample_tick: tokio::time::interval(options.interval),
            every: options.markers.cycle_every.map(period),
            report_every: report_every.map(period),
        }
    }
}

/// The invoking user under sudo, whom launched commands run as, unless `--as-root`.
fn invoking_user(options: &Options) -> Result<Option<Identity>, SessionError> {
    Ok(if options.as_root {
        None
    } else {
        Identity::from_sudo()?
    })
}

/// A launched command, its output read for markers by `readers`.
struct Launch {
    child: std::process::Child,
    socket: Option<MarkerSocket>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

/// Launches the command with the marker socket in its environment, its output read for
/// markers, and every process it starts tracked from its first moment.
fn launch(
    command: &[String],
    options: &Options,
    rules: &LineRules,
    marker_tx: &mpsc::UnboundedSender<MarkerEvent>,
    progress: &Progress,
    collectors: &mut Collectors,
) -> Result<Launch, SessionError> {
    let identity = invoking_user(options)?;
    let owner = identity.as_ref().map(|i| (i.uid, i.gid));
    let socket = MarkerSocket::serve(owner, marker_tx.clone())?;
    let io = LaunchIo {
        env: vec![("LEAKTRACE_MARKER".into(), socket.path.display().to_string())],
        capture_output: rules.reads_lines(),
    };
    // Before the command, so that no moment of its life is unguarded.
    let mut watchdog = Watchdog::spawn().map_err(SessionError::Watchdog)?;
    watchdog.remove_on_death(socket.dir());
    // Orphans of the command's tree come to leaktrace rather than to init (which may not reap
    // them, as in containers), so none is left a zombie.
    // SAFETY: prctl with an integer argument.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) };
    let mut launched = target::launch(command, identity, io, |pid| collectors.track(pid))?;
    let mut readers = Vec::new();
    let outputs = [
        (
            launched
                .child
                .stdout
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            false,
        ),
        (
            launched
                .child
                .stderr
                .take()
                .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>),
            true,
        ),
    ];
    for (output, is_stderr) in outputs {
        if let Some(output) = output {
            let progress = progress.clone();
            readers.push(markers::pass_through(
                output,
                move |b| progress.pass(is_stderr, b),
                rules.clone(),
                marker_tx.clone(),
                collectors.tree_reader(),
            ));
        }
    }
    // Not in the fork event stream: leaktrace forked it before it was tracked.
    let root = target::proc_info(launched.pid).unwrap_or(ProcInfo {
        pid: launched.pid,
        ppid: std::process::id(),
        comm: command[0].clone(),
        start_time: 0.0,
    });
    collectors.launched(root, GENERATION_OF_LOADER, watchdog);
    Ok(Launch {
        child: launched.child,
        socket: Some(socket),
        readers,
    })
}

impl MarkerInputs {
    /// The command's readers and socket, `--cycle-log` and `--cycle-cmd`; the channel's last
    /// sender goes with them, so it closes when they are all done.
    fn start(
        events: mpsc::UnboundedReceiver<MarkerEvent>,
        marker_tx: mpsc::UnboundedSender<MarkerEvent>,
        launched: Option<&mut Launch>,
        rules: &LineRules,
        options: &Options,
        collectors: &Collectors,
    ) -> Result<MarkerInputs, SessionError> {
        if let Some(log) = &options.markers.cycle_log {
            markers::follow_log(log, rules.clone().or_protocol(), marker_tx.clone())?;
        }
        // As the invoking user, as a launched command is.
        let cycle_cmd = match &options.markers.cycle_cmd {
            Some(command) => Some(CycleCommand::start(
                command,
                invoking_user(options)?,
                rules.clone().or_protocol(),
                marker_tx,
                collectors.tree_reader(),
            )),
            None => None,
        };
        let (readers, socket) = match launched {
            Some(launched) => (
                std::mem::take(&mut launched.readers),
                launched.socket.take(),
            ),
            None => (Vec::new(), None),
        };
        Ok(MarkerInputs {
            events,
            open: true,
            readers,
            socket,
            cycle_cmd,
        })
    }
}

impl Session {
    /// Loads the kernel side, launches the command or attaches to the process, and starts
    /// every source of markers. Signals are caught first, so that none is missed.
    fn start(target: Target, options: Options) -> Result<(Session, Clocks), SessionError> {
        let started = Instant::now();
        let started_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let signals = Signals::catch()?;
        let (kernel, warnings) = load_kernel(&options)?;
        let marker_options = &options.markers;
        let rules = marker_options.line_rules()?;
        let (marker_tx, events) = mpsc::unbounded_channel();
        let progress = Progress::new(options.progress, marker_options.cycles);
        let mut collectors = Collectors::new(kernel, started);
        let mut launched = match &target {
            Target::Run(command) => Some(launch(
                command,
                &options,
                &rules,
                &marker_tx,
                &progress,
                &mut collectors,
            )?),
            Target::Attach(pid) => {
                collectors.attach(*pid)?;
                None
            }
        };
        let head = Head::new(
            &target,
            collectors.root_pid(),
            started,
            started_at,
            &options,
        );
        let summary = MarkerSummary {
            warmup: marker_options.warmup,
            socket: launched
                .as_ref()
                .and_then(|l| l.socket.as_ref())
                .map(|s| s.path.display().to_string()),
            sources: marker_sources(&rules, marker_options, launched.is_some()),
            ..MarkerSummary::default()
        };
        let inputs = MarkerInputs::start(
            events,
            marker_tx,
            launched.as_mut(),
            &rules,
            &options,
            &collectors,
        )?;
        if options.announce {
            collectors.announce();
        }
        let status = wait_for(launched.map(|l| l.child));
        let cutting = Cutting::start(&mut collectors, summary, progress.clone(), &options);
        let mut session = Session {
            browser: BrowserReader::new(
                options.cdp.clone(),
                options.redact_urls,
                options.page_renderers,
            ),
            reports: (options.reports.clone()).map(|s| Reports::new(s, &head.started_at)),
            options,
            head,
            warnings,
            collectors,
            cutting,
            progress,
            inputs,
            status,
            exit_status: None,
            following: None,
        };
        session.serve_metrics_and_follow(&target)?;
        let report_every = session.reports.as_ref().and_then(Reports::every);
        let clocks = Clocks::start(signals, &session.options, report_every);
        Ok((session, clocks))
    }

    /// `--metrics-addr` served, and `--follow-name`/`--follow-cmdline`'s first segment.
    fn serve_metrics_and_follow(&mut self, target: &Target) -> Result<(), SessionError> {
        if let Some(endpoint) = &self.options.metrics {
            let published = crate::render::metrics::Published::default();
            endpoint
                .serve(published.clone())
                .map_err(SessionError::Metrics)?;
            self.cutting.publish_to(published);
        }
        if let (Target::Attach(_), Some(rule)) = (target, &self.options.follow) {
            self.following = Some(Following::new(
                rule.clone(),
                &self.collectors,
                &mut self.cutting,
            ));
        }
        Ok(())
    }

    /// Follows the tree until something ends the trace, and says what did.
    async fn run(&mut self, clocks: &mut Clocks) -> Result<EndReason, SessionError> {
        let run_mode = self.head.mode == "run";
        loop {
            tokio::select! {
                // Signals first, so a flood of markers cannot hold them off; then markers, so
                // one that arrived before the command's exit belongs to the trace.
                biased;
                _ = clocks.signals.interrupt.recv() => return Ok(EndReason::Interrupted),
                _ = clocks.signals.terminate.recv() => return Ok(EndReason::Terminated),
                event = self.inputs.events.recv(), if self.inputs.open => match event {
                    None => self.inputs.open = false,
                    Some(event) => {
                        if self.on_marker(event).await {
                            return Ok(EndReason::CyclesDone);
                        }
                    }
                },
                status = &mut self.status, if run_mode => {
                    let status = status.expect("waiter thread").map_err(SessionError::Wait)?;
                    self.exit_status = Some(status_code(status));
                    return Ok(EndReason::CommandExited);
                }
                _ = sleep_until(clocks.deadline) => return Ok(EndReason::Duration),
                _ = clocks.signals.usr1.recv() => self.report_so_far(true).await,
                _ = tick_every(&mut clocks.report_every) => self.report_so_far(false).await,
                _ = tick_every(&mut clocks.every) => {
                    if self.on_marker(MarkerEvent::Marker(Marker::cycle_end_now())).await {
                        return Ok(EndReason::CyclesDone);
                    }
                }
                _ = clocks.sample_tick.tick() => {
                    self.cutting.on_sample(&mut self.collectors, &mut self.browser).await;
                }
                _ = clocks.tick.tick() => {
                    if let Some(ended_by) = self.on_tick() {
                        return Ok(ended_by);
                    }
                }
            }
        }
    }

    async fn on_marker(&mut self, event: MarkerEvent) -> bool {
        self.cutting
            .on_event(&mut self.collectors, &mut self.browser, event)
            .await
    }

    /// Takes in the kernel's events; in attach mode, notices the root's exit (and follows the
    /// next instance, if asked to).
    fn on_tick(&mut self) -> Option<EndReason> {
        self.collectors.follow();
        self.cutting.check_teardown(&self.collectors);
        if self.head.mode == "attach" && !target::is_alive(self.collectors.root_pid()) {
            match self.following.as_mut() {
                Some(following) => following.on_root_gone(
                    &mut self.collectors,
                    &mut self.cutting,
                    &mut self.browser,
                ),
                None => return Some(EndReason::TargetExited),
            }
        }
        None
    }

    /// Ends the trace: no flow after this moment belongs to it; the markers already sent are
    /// taken in; the last snapshot and browser view are read; what leaktrace started is
    /// stopped; and the whole trace is returned.
    async fn finish(mut self, ended_by: EndReason) -> Trace {
        if let Some(command) = self.inputs.cycle_cmd.take() {
            let _ = tokio::task::spawn_blocking(move || command.stop()).await;
        }
        if let Err(e) = self.collectors.stop_flows() {
            self.warnings.push(format!(
                "address-space flows may include the trace's last moments: {e}"
            ));
        }
        self.take_last_markers(ended_by).await;
        self.progress.finish();
        // The last sample, of the tree as it is now, before anything is stopped.
        let (end_s, end, _) = self.collectors.snapshot();
        self.cutting.check_teardown(&self.collectors);
        // The last view, if still connected: no reconnecting to a browser that is shutting
        // down.
        if self.browser.is_connected() {
            read_browser(&self.collectors, &mut self.browser).await;
        }
        self.browser.close().await;
        if self.head.mode == "run" {
            self.stop_what_we_started(ended_by).await;
        }
        self.collectors.follow();
        self.collectors.reap();
        drop(self.inputs.socket.take());
        // The last report written on the way is whole before leaktrace goes on to the final one.
        if let Some(reports) = &mut self.reports
            && let Some(Err(e)) = reports.collect().await
        {
            self.warnings
                .push(format!("a report during the trace was not written: {e}"));
        }
        let cut = self.cutting.finish(end_s, end, &mut self.browser);
        let warnings = std::mem::take(&mut self.warnings);
        let collected = self.collectors.collected();
        let mut trace = assemble::trace(&self.head, warnings, ended_by, collected, cut);
        trace.exit_code = self.exit_status;
        trace.browser = self.browser.summary;
        trace
    }

    /// The command's last lines, and the markers queued when the trace ended.
    async fn take_last_markers(&mut self, ended_by: EndReason) {
        // The command's last lines may still be in its readers, each taking its reading before
        // it hands its marker on: wait for them to reach the end of the output, a moment at
        // most (a daemonized grandchild can hold the pipe open).
        if ended_by == EndReason::CommandExited {
            let deadline = Instant::now() + OUTPUT_GRACE;
            while self.inputs.readers.iter().any(|r| !r.is_finished()) && Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        // Markers already sent when the trace ended still count, as many as [`DRAIN_LIMIT`]
        // allows: a flood queued faster than it could be taken in must not hold the trace for
        // minutes.
        if ended_by == EndReason::CyclesDone {
            return;
        }
        let until = Instant::now() + DRAIN_LIMIT;
        while let Ok(event) = self.inputs.events.try_recv() {
            if Instant::now() > until {
                let left = std::iter::from_fn(|| self.inputs.events.try_recv().ok()).count();
                self.cutting.count_dropped(1 + left as u64);
                break;
            }
            if self.on_marker(event).await {
                break;
            }
        }
    }

    /// Run mode: the command (if it still runs) and every descendant that outlived it.
    async fn stop_what_we_started(&mut self, ended_by: EndReason) {
        if self.exit_status.is_none() {
            self.exit_status = stop_command(self.head.root_pid, &mut self.status, ended_by).await;
        }
        // Descendants that outlived the command (Chromium's crashpad handlers daemonize):
        // leaktrace started them, so it does not leave them behind.
        self.collectors.follow();
        stop_leftovers(&mut self.collectors).await;
        self.collectors.release_watchdog();
        reap_children().await;
    }

    /// Writes the trace so far as a report, in the background, if reports are asked for and
    /// the last one is done (`asked`: SIGUSR1, which says what became of it).
    async fn report_so_far(&mut self, asked: bool) {
        let say = |line: String| {
            self.progress
                .pass(true, format!("leaktrace: {line}\n").as_bytes())
        };
        let Some(reports) = &mut self.reports else {
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
        let cut = match self.cutting.so_far() {
            Ok(cut) => cut,
            Err(e) => {
                say(format!(
                    "warning: no report written: the spilled cycles: {e}"
                ));
                return;
            }
        };
        let warnings = self.warnings.clone();
        let collected = self.collectors.collected();
        let mut trace = assemble::trace(&self.head, warnings, EndReason::Running, collected, cut);
        trace.browser = self.browser.summary.clone();
        if let Some(Err(e)) = reports.write(trace).await {
            say(format!("warning: a report was not written: {e}"));
        }
    }
}

/// The launched command's exit status, from a blocking thread that waits for it (never, in
/// attach mode: the sender is dropped, and the loop does not wait on it).
fn wait_for(child: Option<std::process::Child>) -> oneshot::Receiver<std::io::Result<ExitStatus>> {
    let (status_tx, status) = oneshot::channel();
    if let Some(mut child) = child {
        tokio::task::spawn_blocking(move || {
            let _ = status_tx.send(child.wait());
        });
    }
    status
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
