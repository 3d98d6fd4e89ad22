//! Cutting the trace into the worker's cycles as markers come: a snapshot of every collector
//! at each boundary, the browser's view at each cycle end, the progress line and the interim
//! analysis.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use super::{
    collectors::{Collectors, follow_browser, read_browser},
    dumps::MemoryDumps,
    options::{MarkerOptions, Options},
};
use crate::{
    collect::{
        browser::{BrowserReader, CdpMode, VIEW_DEADLINE, WorkerInspector},
        markers::{Boundary, LineRules, Marker, MarkerEvent},
        processes::{ResidentBytes, Snapshot, TreeSample},
        regions::{RegionGrowth, RegionSampler},
        roles::Role,
        sampler::{self, Depth},
    },
    render::{
        metrics::{Published, resident_by_role},
        progress::{CycleEnds, Progress},
    },
    trace::{
        CompactedCycles, MarkerSummary, MemoryDump, Segment, Trace, spill::Cycles,
        timeline::Timeline,
    },
};

/// How soon after an asynchronous marker's reading the tree's teardown makes its boundary a
/// measure of the shutdown: Chromium frees a closed browser's pages and ends its renderers
/// within this (and a large tree takes a while to read).
const TEARDOWN_WINDOW_NS: u64 = 1_000_000_000;

/// Cuts the trace into cycles as markers come.
pub(super) struct Cutting {
    timeline: Timeline,
    summary: MarkerSummary,
    /// The tree's PSS at each cycle end, for the progress line.
    owned_at_cycle_ends: CycleEnds,
    progress: Progress,
    /// `--cycles`.
    target: Option<u32>,
    started: Instant,
    inspector: Option<WorkerInspector>,
    analyze_every: u32,
    warmup: u32,
    /// The last boundary an asynchronous marker made, when it was read, and until when a
    /// teardown would still have been under way while the tree was read.
    watch: Option<(Boundary, u64, u64)>,
    /// When the last interim analysis started, and how long it took (seconds).
    last_interim: Option<(Instant, f64)>,
    /// The figures the metrics endpoint serves (`--metrics-addr`).
    metrics: Option<Published>,
    /// No instance of a followed worker runs (see [`super::follow`]): markers are counted, and
    /// cut nothing.
    between_instances: bool,
    /// The instances of a followed worker so far (see [`super::follow`]).
    segments: Vec<Segment>,
    /// Which mapping of each process grows: smaps read at cycle ends, within its share of time.
    regions: RegionSampler,
    /// `--memory-dumps`: Chromium's allocators at a few cycle ends.
    dumps: MemoryDumps,
}

/// What the cutting adds to a trace: the cycles, the markers' summary, the instances of a
/// followed worker, the memory dumps, and each process's regions that grew.
pub(super) struct Cut {
    cycles: Cycles,
    compacted: Option<CompactedCycles>,
    markers: MarkerSummary,
    segments: Vec<Segment>,
    memory_dumps: Vec<MemoryDump>,
    /// Per process (see [`crate::collect::regions::key`]), from the fitted cycles' start.
    regions: std::collections::HashMap<(u32, u64), Vec<RegionGrowth>>,
    region_cost: crate::collect::regions::RegionCost,
}

impl Cut {
    /// Fills the trace's parts that come from the cutting.
    pub(super) fn fill(self, trace: &mut Trace) {
        trace.cycles = self.cycles;
        trace.compacted = self.compacted;
        for process in &mut trace.processes {
            let key = crate::collect::regions::key(process.pid, process.start_time);
            process.regions = self.regions.get(&key).cloned().unwrap_or_default();
        }
        trace.tracer.regions = self.region_cost;
        trace.markers = self.markers;
        trace.segments = self.segments;
        trace.memory_dumps = self.memory_dumps;
    }
}

/// How often the metrics endpoint's fits are brought up to date, at most (within
/// [`INTERIM_SHARE`] of the time like the interim line).
const METRICS_ANALYSIS_EVERY: Duration = Duration::from_secs(2);

/// The share of the time the interim analyses may take.
const INTERIM_SHARE: f64 = 0.05;

impl Cutting {
    /// From the tree as the collectors read it now, the start of the first cycle.
    pub(super) fn start(
        collectors: &mut Collectors,
        summary: MarkerSummary,
        progress: Progress,
        options: &Options,
    ) -> Cutting {
        let markers = &options.markers;
        let (t0, start, _) = collectors.snapshot();
        let timeline =
            Timeline::new(markers.warmup, t0, start).with_spill_dir(options.spill_dir.clone());
        Cutting {
            timeline,
            summary,
            owned_at_cycle_ends: Default::default(),
            progress,
            target: markers.cycles,
            started: collectors.started(),
            inspector: options.worker_inspect.clone().map(WorkerInspector::new),
            analyze_every: markers.analyze_every,
            warmup: markers.warmup,
            watch: None,
            last_interim: None,
            metrics: None,
            between_instances: false,
            segments: Vec::new(),
            regions: Default::default(),
            dumps: MemoryDumps::new(options.memory_dumps && !matches!(options.cdp, CdpMode::Off)),
        }
    }

    /// A followed worker's instance (its first, or the next once it runs), from `start_s`:
    /// its cycles are a segment of their own. Returns its number, from 1.
    pub(super) fn start_instance(&mut self, root_pid: u32, start_s: f64) -> usize {
        self.between_instances = false;
        self.segments.push(Segment {
            root_pid,
            command: crate::collect::target::cmdline(root_pid),
            start_s,
            end_s: None,
            first_cycle: self.timeline.complete_cycles() as u32 + 1,
        });
        self.segments.len()
    }

    /// The next instance's segment of the timeline, from `now_s` (before
    /// [`Cutting::start_instance`], which numbers its first cycle).
    pub(super) fn start_segment(&mut self, now_s: f64, start: Snapshot) {
        self.timeline.start_segment(now_s, start);
    }

    /// The followed worker exited at `end_s`: its cycle under way is cut, and markers until the
    /// next instance runs cut nothing. Returns its pid.
    pub(super) fn end_instance(&mut self, end_s: f64, end: Snapshot) -> u32 {
        self.timeline.end_segment(end_s, end);
        let segment = self
            .segments
            .last_mut()
            .expect("the first is made at start");
        segment.end_s = Some(end_s);
        let pid = segment.root_pid;
        let exits = self.segments.len() as u64;
        if let Some(metrics) = &self.metrics {
            metrics.update(|live| live.worker_exits = exits);
        }
        self.between_instances = true;
        pid
    }

    /// Publishes the figures to the metrics endpoint from now on.
    pub(super) fn publish_to(&mut self, metrics: Published) {
        self.metrics = Some(metrics);
    }

    /// Markers left unread when the trace ended (see `DRAIN_LIMIT`).
    pub(super) fn count_dropped(&mut self, dropped: u64) {
        self.summary.dropped = dropped;
    }

    /// At each `--interval`: the tree's counters (with PSS only while no cycle is cut: cycle
    /// ends read PSS within the budget), the browser found, the progress line and the
    /// metrics.
    pub(super) async fn on_sample(
        &mut self,
        collectors: &mut Collectors,
        browser: &mut BrowserReader,
    ) {
        let cutting_cycles = self.summary.cycles_seen > 0;
        let sample = collectors.sample(if cutting_cycles {
            Depth::Counters
        } else {
            Depth::Budgeted
        });
        follow_browser(collectors, browser, !cutting_cycles).await;
        self.progress.update(
            self.started.elapsed(),
            sample.pss,
            &self.owned_at_cycle_ends,
        );
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.sample(&sample);
        let top = collectors
            .table()
            .top_owned(crate::render::metrics::TOP_PROCESSES);
        metrics.update(|live| live.top = top);
        if let Some(lost) = collectors.lost() {
            metrics.update(|live| live.lost = lost);
        }
    }

    /// The first cycle whose end the tree's fit takes (past its warm-up, in the latest
    /// segment): the regions' growth is taken from the reading nearest it.
    fn fitted_from(&self) -> u32 {
        let warmup = (self.warmup > 0).then_some(self.warmup as usize);
        let analysis = crate::analysis::analyze_history(&self.timeline.history(), warmup, None);
        let skipped = analysis.tree().map_or(0, |t| t.warmup_cycles) as u32;
        self.timeline.segment_first() + skipped
    }

    /// The complete cycles so far and the rest, for a report while the trace goes on.
    pub(super) fn so_far(&self) -> std::io::Result<Cut> {
        let (cycles, compacted) = self.timeline.so_far()?;
        Ok(Cut {
            cycles,
            compacted,
            markers: self.summary.clone(),
            segments: self.segments.clone(),
            memory_dumps: self.dumps.taken.clone(),
            regions: self.regions.tops(self.fitted_from()),
            region_cost: self.regions.cost(),
        })
    }

    /// Ends the trace at `end_s`: the open cycle is cut there. The worker inspector's failed
    /// calls are the browser's to count.
    pub(super) fn finish(self, end_s: f64, end: Snapshot, browser: &mut BrowserReader) -> Cut {
        // The fits take a moment on a long trace: after the last snapshot.
        let fitted_from = self.fitted_from();
        browser.count_failed_calls(self.inspector.map_or(0, |i| i.failed_calls));
        let (cycles, compacted) = self.timeline.finish(end_s, end);
        Cut {
            cycles,
            compacted,
            markers: self.summary,
            segments: self.segments,
            memory_dumps: self.dumps.taken,
            regions: self.regions.tops(fitted_from),
            region_cost: self.regions.cost(),
        }
    }

    /// Takes one marker event; true once `--cycles` complete cycles are in.
    pub(super) async fn on_event(
        &mut self,
        collectors: &mut Collectors,
        browser: &mut BrowserReader,
        event: MarkerEvent,
    ) -> bool {
        match self.take_marker(event) {
            Some(marker) => self.on_marker(collectors, browser, marker).await,
            None => false,
        }
    }

    /// A marker that cuts the trace; anything else (a malformed one, figures, a marker
    /// between instances of a followed worker) is counted or kept here.
    fn take_marker(&mut self, event: MarkerEvent) -> Option<Marker> {
        match event {
            MarkerEvent::Marker(_) if self.between_instances => {
                self.summary.between_instances += 1;
                let ignored = self.summary.between_instances;
                if let Some(metrics) = &self.metrics {
                    metrics.update(|live| live.markers_between_instances = ignored);
                }
                None
            }
            MarkerEvent::Marker(marker) => Some(marker),
            MarkerEvent::Malformed(reason) => {
                self.summary.malformed += 1;
                if self.summary.malformed == 1 {
                    tracing::warn!("ignored a marker ({reason}); further ones are only counted");
                }
                None
            }
            MarkerEvent::Figures(values) => {
                self.timeline.add_figures(values);
                None
            }
        }
    }

    /// A boundary: every collector's snapshot, and at a cycle end the browser's view, the
    /// regions, a memory dump when one is due, the metrics and the interim analysis.
    async fn on_marker(
        &mut self,
        collectors: &mut Collectors,
        browser: &mut BrowserReader,
        marker: Marker,
    ) -> bool {
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
        self.count(cycle_end, &sample);
        let mut values = marker.values;
        if cycle_end {
            values.extend(self.inspect_worker().await);
        }
        if marker_was_async {
            let until = collectors.read_until_ns() + TEARDOWN_WINDOW_NS;
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
        if cycle_end {
            self.after_cycle_end(collectors, browser, boundary.t_s)
                .await;
        }
        self.publish(cycle_end, &sample, resident);
        if cycle_end {
            self.interim_analysis();
        }
        self.target
            .is_some_and(|n| self.timeline.complete_cycles() >= n as usize)
    }

    /// Counts the boundary, and at a cycle end moves the progress line.
    fn count(&mut self, cycle_end: bool, sample: &TreeSample) {
        if !cycle_end {
            self.summary.phases_seen += 1;
            return;
        }
        self.summary.cycles_seen += 1;
        self.owned_at_cycle_ends.push(sample.owned());
        self.progress.update(
            self.started.elapsed(),
            sample.pss,
            &self.owned_at_cycle_ends,
        );
    }

    /// `--worker-inspect`: the worker's own heap figures at a cycle end.
    async fn inspect_worker(&mut self) -> BTreeMap<String, f64> {
        let Some(inspector) = &mut self.inspector else {
            return BTreeMap::new();
        };
        match tokio::time::timeout(VIEW_DEADLINE, inspector.read()).await {
            Ok(figures) => figures,
            Err(_) => {
                inspector.failed_calls += 1;
                BTreeMap::new()
            }
        }
    }

    /// After the worker goes on (a socket marker's answer): a reading of the whole tree's smaps
    /// takes tens of milliseconds, and the worker is not held for it. What the worker does
    /// meanwhile is its next cycle's first moments, at both ends of the growth.
    async fn after_cycle_end(
        &mut self,
        collectors: &Collectors,
        browser: &mut BrowserReader,
        t_s: f64,
    ) {
        let cycle = self.timeline.complete_cycles() as u32;
        if self.regions.due() {
            self.regions
                .read_all(cycle, &collectors.table().live_for_regions());
        }
        self.dumps
            .at_cycle_end(cycle, t_s, browser, collectors.table())
            .await;
    }

    /// The boundary's figures to the metrics endpoint, if one is served.
    fn publish(
        &self,
        cycle_end: bool,
        sample: &TreeSample,
        resident: Option<BTreeMap<Role, ResidentBytes>>,
    ) {
        let Some(metrics) = &self.metrics else {
            return;
        };
        metrics.sample(sample);
        metrics.update(|live| {
            live.cycles_seen = self.summary.cycles_seen;
            live.phases_seen = self.summary.phases_seen;
            live.markers_malformed = self.summary.malformed;
        });
        if cycle_end && let Some(cycle) = self.timeline.cycles().last() {
            metrics.cycle_end(cycle, resident.unwrap_or_default());
        }
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
        if let Some(reason) = collectors.table().teardown_after(*at_ns, *until_ns) {
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
