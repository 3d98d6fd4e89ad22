//! What a session is asked to do: the target, where markers come from, and every option of
//! `run` and `attach` that reaches the session.

use std::{path::PathBuf, time::Duration};

use super::reports::ReportSchedule;
use crate::collect::{
    browser::CdpMode,
    markers::{LineRules, MarkerError},
    target,
};

/// Time between /proc samples, unless `--interval` says otherwise.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

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

impl MarkerOptions {
    /// The rules that find markers and figures in the worker's output lines.
    pub(super) fn line_rules(&self) -> Result<LineRules, MarkerError> {
        LineRules::new(
            self.cycle_regex.as_deref(),
            self.phase_regex.as_deref(),
            self.figures_regex.as_deref(),
        )
    }
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
