//! Cutting the trace into the worker's cycles as markers come: a snapshot of every collector
//! at each boundary, the browser's view at each cycle end, the progress line and the interim
//! analysis.

use std::time::{Duration, Instant};

use super::{
    MarkerOptions,
    collectors::{Collectors, follow_browser, read_browser},
};
use crate::{
    collect::browser::{BrowserReader, VIEW_DEADLINE, WorkerInspector},
    collect::markers::{Boundary, LineRules, MarkerEvent},
    collect::regions::RegionSampler,
    collect::sampler,
    render::metrics::{Published, resident_by_role},
    render::progress::Progress,
    trace::timeline::Timeline,
    trace::{MarkerSummary, Segment},
};

/// How soon after an asynchronous marker's reading the tree's teardown makes its boundary a
/// measure of the shutdown: Chromium frees a closed browser's pages and ends its renderers
/// within this (and a large tree takes a while to read).
const TEARDOWN_WINDOW_NS: u64 = 1_000_000_000;

/// Cuts the trace into cycles as markers come.
pub(super) struct Cutting {
    pub(super) timeline: Timeline,
    pub(super) summary: MarkerSummary,
    /// The tree's PSS at each cycle end, for the progress line.
    pub(super) owned_at_cycle_ends: crate::render::progress::CycleEnds,
    pub(super) progress: Progress,
    /// `--cycles`.
    pub(super) target: Option<u32>,
    pub(super) started: Instant,
    pub(super) inspector: Option<WorkerInspector>,
    pub(super) analyze_every: u32,
    pub(super) warmup: u32,
    /// The last boundary an asynchronous marker made, when it was read, and until when a
    /// teardown would still have been under way while the tree was read.
    pub(super) watch: Option<(Boundary, u64, u64)>,
    /// When the last interim analysis started, and how long it took (seconds).
    pub(super) last_interim: Option<(Instant, f64)>,
    /// The figures the metrics endpoint serves (`--metrics-addr`).
    pub(super) metrics: Option<Published>,
    /// No instance of a followed worker runs (see [`super::follow`]): markers are counted, and
    /// cut nothing.
    pub(super) between_instances: bool,
    /// The instances of a followed worker so far (see [`super::follow`]).
    pub(super) segments: Vec<Segment>,
    /// Which mapping of each process grows: smaps read at cycle ends, within its share of time.
    pub(super) regions: RegionSampler,
    /// `--memory-dumps`: Chromium's allocators at a few cycle ends.
    pub(super) dumps: super::dumps::MemoryDumps,
}

/// How often the metrics endpoint's fits are brought up to date, at most (within
/// [`INTERIM_SHARE`] of the time like the interim line).
const METRICS_ANALYSIS_EVERY: Duration = Duration::from_secs(2);

/// The share of the time the interim analyses may take.
const INTERIM_SHARE: f64 = 0.05;

impl Cutting {
    /// Takes one marker event; true once `--cycles` complete cycles are in.
    pub(super) async fn on_event(
        &mut self,
        collectors: &mut Collectors,
        browser: &mut BrowserReader,
        event: MarkerEvent,
    ) -> bool {
        let marker = match event {
            MarkerEvent::Marker(_) if self.between_instances => {
                self.summary.between_instances += 1;
                let ignored = self.summary.between_instances;
                if let Some(metrics) = &self.metrics {
                    metrics.update(|live| live.markers_between_instances = ignored);
                }
                return false;
            }
            MarkerEvent::Marker(marker) => marker,
            MarkerEvent::Malformed(reason) => {
                self.summary.malformed += 1;
                if self.summary.malformed == 1 {
                    tracing::warn!("ignored a marker ({reason}); further ones are only counted");
                }
                return false;
            }
            MarkerEvent::Figures(values) => {
                self.timeline.add_figures(values);
                return false;
            }
        };
        self.check_teardown(collectors);
        let cycle_end = marker.boundary == Boundary::CycleEnd;
        let boundary = collectors.boundary(marker.at_ns, marker.reading, marker.boundary.depth());
        // A marker on the socket holds the worker until the boundary is recorded: at a phase
        // boundary its counters (cheap), at a cycle end also the browser's view, so the view is
        // the cycle's and not the next one's first moments.
        let marker_was_async = marker.ack.is_none();
        let mut ack = marker.ack;
        if !cycle_end && let Some(ack) = ack.take() {
            let _ = ack.send(());
        }
        let resident = self
            .metrics
            .as_ref()
            .map(|_| resident_by_role(&boundary.snapshot));
        let sample = boundary.sample;
        if cycle_end {
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
        let mut values = marker.values;
        if cycle_end && let Some(inspector) = &mut self.inspector {
            match tokio::time::timeout(VIEW_DEADLINE, inspector.read()).await {
                Ok(figures) => values.extend(figures),
                Err(_) => inspector.failed_calls += 1,
            }
        }
        if marker_was_async {
            let until = collectors.read_until_ns + TEARDOWN_WINDOW_NS;
            self.watch = Some((marker.boundary.clone(), marker.at_ns, until));
        }
        self.timeline
            .on_boundary(marker.boundary, boundary.t_s, boundary.snapshot, values);
        if cycle_end {
            follow_browser(collectors, browser, false).await;
            if let Some(view) = read_browser(collectors, browser).await {
                self.timeline.attach_browser(view);
            }
        }
        if let Some(ack) = ack {
            let _ = ack.send(());
        }
        // After the worker goes on (a socket marker's answer): a reading of the whole tree's
        // smaps takes tens of milliseconds, and the worker is not held for it. What the worker
        // does meanwhile is its next cycle's first moments, at both ends of the growth.
        if cycle_end && self.regions.due() {
            let cycle = self.timeline.complete_cycles() as u32;
            self.regions
                .read_all(cycle, &collectors.table.live_for_regions());
        }
        if cycle_end {
            let cycle = self.timeline.complete_cycles() as u32;
            self.dumps
                .at_cycle_end(cycle, boundary.t_s, browser, &collectors.table)
                .await;
        }
        if let Some(metrics) = &self.metrics {
            metrics.sample(&sample);
            metrics.update(|live| {
                live.cycles_seen = self.summary.cycles_seen;
                live.phases_seen = self.summary.phases_seen;
                live.markers_malformed = self.summary.malformed;
            });
            if cycle_end && let Some(cycle) = self.timeline.cycles().last() {
                metrics.cycle_end(cycle, resident.unwrap_or_default());
            }
        }
        if cycle_end {
            self.interim_analysis();
        }
        self.target
            .is_some_and(|n| self.timeline.complete_cycles() >= n as usize)
    }
}

pub(super) fn marker_sources(
    rules: &LineRules,
    options: &MarkerOptions,
    socket: bool,
) -> Vec<String> {
    let mut sources = Vec::new();
    if !rules.is_empty() && options.cycle_log.is_none() && options.cycle_cmd.is_none() {
        sources.push("regex".to_string());
    }
    if socket {
        sources.push("socket".to_string());
    }
    if options.cycle_log.is_some() {
        sources.push("log".to_string());
    }
    if options.cycle_cmd.is_some() {
        sources.push("command".to_string());
    }
    if options.cycle_every.is_some() {
        sources.push("interval".to_string());
    }
    sources
}

impl Cutting {
    /// Marks the last boundary as a teardown when the tree tore down right after its marker;
    /// stops watching once the window has passed. Called as exits come in, and at the end.
    pub(super) fn check_teardown(&mut self, collectors: &Collectors) {
        let Some((boundary, at_ns, until_ns)) = &self.watch else {
            return;
        };
        if let Some(reason) = collectors.table.teardown_after(*at_ns, *until_ns) {
            self.timeline.mark_teardown(boundary, reason);
            self.watch = None;
        } else if sampler::boot_ns() > *until_ns {
            self.watch = None;
        }
    }

    /// Every `--analyze-every` cycles, the fits so far, on stderr; for the metrics endpoint,
    /// every [`METRICS_ANALYSIS_EVERY`]. Each costs time linear in the cycles so far (up to the
    /// digest's bound), so one is skipped while the last took more than [`INTERIM_SHARE`] of
    /// the time since: a flood of markers cannot be made to spend its time on them.
    fn interim_analysis(&mut self) {
        let done = self.timeline.complete_cycles();
        let line_due = tracing::enabled!(tracing::Level::INFO)
            && self.analyze_every > 0
            && done.is_multiple_of(self.analyze_every as usize);
        let metrics_due = self.metrics.is_some()
            && self
                .last_interim
                .is_none_or(|(at, _)| at.elapsed() >= METRICS_ANALYSIS_EVERY);
        let over_share = self
            .last_interim
            .is_some_and(|(at, took)| at.elapsed().as_secs_f64() * INTERIM_SHARE < took);
        if !(line_due || metrics_due) || over_share {
            return;
        }
        let started = Instant::now();
        let warmup = (self.warmup > 0).then_some(self.warmup as usize);
        let analysis = crate::analysis::analyze_history(&self.timeline.history(), warmup, None);
        // What the fits allocated and freed goes back to the kernel (see main.rs): a trace that
        // runs for days holds the same memory after 1,000 cycles as after 100,000.
        // SAFETY: malloc_trim only releases free memory of the allocator's own.
        unsafe { libc::malloc_trim(0) };
        self.last_interim = Some((started, started.elapsed().as_secs_f64()));
        if line_due && let Some(tree) = analysis.tree() {
            tracing::info!(
                "after {done} cycles: tree owned PSS {}; likely source: {}",
                crate::analysis::describe(tree),
                analysis.verdict.source,
            );
        }
        if let Some(metrics) = &self.metrics {
            metrics.update(|live| live.analysis = Some(analysis));
        }
    }
}
