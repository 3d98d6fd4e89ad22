//! The analysis section of the document (`analysis` in the JSON): what [`crate::analysis`]
//! finds in a trace, defined here with the rest of the schema so that the document depends on
//! nothing downstream of it. The fitting itself is all in `analysis/`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use super::series::Series;
use crate::collect::regions::RoleRegion;

/// The fits of a trace.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Analysis {
    /// The median length of a complete cycle, in seconds.
    pub cycle_s: f64,
    pub series: Vec<SeriesFit>,
    /// Mean change of the tree's owned PSS in each phase, over complete cycles past warm-up.
    pub phase_growth: BTreeMap<String, f64>,
    /// How the tree's owned PSS changed from one cycle end to the next: the distribution.
    pub cycle_growth: Option<Distribution>,
    pub answers: Answers,
    pub verdict: Verdict,
    pub budget: Option<BudgetCheck>,
    /// With a followed worker that restarted: each instance fitted on its own cycles, oldest
    /// first, the last being the one every other figure here is of. Empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<SegmentFit>,
    /// The regions that grew most, summed per role over its processes (see
    /// [`crate::collect::regions`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RoleRegion>,
    /// With `--memory-dumps`: Chromium's allocators that changed most per role, between the
    /// dump nearest the start of the fitted cycles and the last (see `analysis::allocators`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub allocators: Vec<AllocatorGrowth>,
}

impl Analysis {
    pub fn tree(&self) -> Option<&SeriesFit> {
        self.series.iter().find(|s| s.name == Series::TreeOwned)
    }
}

/// A budget checked against the tree's growth after warm-up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetCheck {
    pub limit_per_day: f64,
    pub measured_per_day: f64,
    pub pass: bool,
}

/// One instance of a followed worker, fitted on its own cycles (a restart gives its memory
/// back, so a fit across instances would measure the restarts, not the worker).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SegmentFit {
    /// The index into the trace's `segments`.
    pub segment: u32,
    /// Its measured cycles.
    pub cycles: usize,
    /// The tree's owned PSS over them.
    pub tree: Option<SeriesFit>,
    pub verdict: Verdict,
}

/// Quantiles of a distribution of signed byte changes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Distribution {
    pub count: u64,
    pub min: i64,
    pub p50: i64,
    pub p90: i64,
    pub p99: i64,
    pub max: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Flat,
    /// Grows during warm-up, then flat.
    Plateau,
    Linear,
    Accelerating,
    /// Too few cycles to say.
    Unknown,
}

/// One fitted series.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesFit {
    pub name: Series,
    /// Growth per cycle after warm-up (Theil–Sen), in the series' unit (bytes or counts).
    pub per_cycle: f64,
    /// `per_cycle` over a day of cycles as long as the median measured one.
    pub per_day: f64,
    /// Least squares over the same cycles: how well a line explains them (0..1). A figure only:
    /// growth is decided by `trend_p`.
    pub r2: f64,
    /// Mann–Kendall Z over the same cycles (tie- and autocorrelation-corrected): above 0 when
    /// later cycles tend to be higher.
    pub trend_z: f64,
    /// The two-sided p-value of `trend_z`: the series grows only below 0.01. 1 when not fitted.
    pub trend_p: f64,
    pub shape: Option<Shape>,
    pub warmup_cycles: usize,
    /// Complete cycles used after warm-up.
    pub cycles: usize,
    /// False when there were fewer than MIN_CYCLES cycles: the numbers are not to be trusted.
    pub trustworthy: bool,
    /// Cycles per fitted point: 1, or on a long trace the k consecutive cycles each point
    /// stands for (see [`super::digest`]); the trend test then speaks of those points.
    pub bin_cycles: usize,
}

impl SeriesFit {
    /// Whether the series grows: a significant upward trend, linear or accelerating (the one
    /// rule the verdict, the answers, the tables and the diff share).
    pub fn grows(&self) -> bool {
        matches!(self.shape, Some(Shape::Linear | Shape::Accelerating))
    }
}

impl Default for SeriesFit {
    /// Written out so that a fit without a trend test (or an older trace) reads p = 1, no trend.
    fn default() -> SeriesFit {
        SeriesFit {
            name: Series::default(),
            per_cycle: 0.0,
            per_day: 0.0,
            r2: 0.0,
            trend_z: 0.0,
            trend_p: 1.0,
            shape: None,
            warmup_cycles: 0,
            cycles: 0,
            trustworthy: false,
            bin_cycles: 1,
        }
    }
}

/// The six questions of an investigation, answered with numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answers {
    /// 1. The growth of the PSS the tree owns, per cycle and per day, with R² and whether the
    ///    fit is trustworthy.
    pub growth_per_cycle: f64,
    pub growth_per_day: f64,
    pub r2: f64,
    pub trustworthy: bool,
    /// 2. The series that grow, fastest first.
    pub growing: Vec<Series>,
    /// 3. The phase with the largest mean growth of owned PSS, if it grows.
    pub growth_phase: Option<String>,
    /// 4. The tree's shape, and its warm-up.
    pub shape: Option<Shape>,
    pub warmup_cycles: usize,
    /// 5. The mean owned-PSS change of the cleanup phase (negative: it gives memory back), and
    ///    of the other phases together.
    pub cleanup_change: Option<f64>,
    pub cleanup_helps: Option<bool>,
    pub other_phases_change: Option<f64>,
    /// 6. The mean owned-PSS change of cycles where pages or contexts were recreated (their count
    ///    dropped), against the others.
    pub recreation_change: Option<f64>,
    pub other_cycles_change: Option<f64>,
    pub recreation_helps: Option<bool>,
    /// Browser instances (browser processes) alive at the end of the last measured cycle, and
    /// at the end of the first: relaunched browsers that are never closed pile up.
    pub browsers_alive: Option<u64>,
    pub browsers_at_start: Option<u64>,
}

/// Where the growth most likely comes from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// The worker's JS heap: its own heap figure explains the growth.
    WorkerHeap,
    /// The worker's memory outside its JS heap: its external / arrayBuffers figure grows.
    WorkerExternal,
    /// The worker's own processes grow, and no figure of its own says whether in its heap.
    Worker,
    PageAccumulation,
    ContextAccumulation,
    /// Browser instances accumulate: relaunched without closing the old ones.
    BrowserAccumulation,
    /// The pages' JS heaps grow and explain most of the renderers' growth.
    InPageJs,
    /// Renderers grow beyond what their JS heaps explain.
    RendererNative,
    /// Chromium's browser process (or another of its non-renderer processes) grows.
    BrowserProcess,
    #[default]
    None,
    /// Too few measured cycles after warm-up to tell growth from noise (see
    /// `fit::TREND_MIN_CYCLES`): no source is named, whatever the figures say.
    TooFewCycles,
    /// A source this leaktrace does not know (a trace written by another version).
    #[serde(other)]
    Unknown,
}

impl Source {
    pub fn name(self) -> &'static str {
        match self {
            Source::WorkerHeap => "worker-heap",
            Source::WorkerExternal => "worker-external",
            Source::Worker => "worker",
            Source::PageAccumulation => "page-accumulation",
            Source::ContextAccumulation => "context-accumulation",
            Source::BrowserAccumulation => "browser-accumulation",
            Source::InPageJs => "in-page-js",
            Source::RendererNative => "renderer-native",
            Source::BrowserProcess => "browser-process",
            Source::None => "none",
            Source::TooFewCycles => "too-few-cycles",
            Source::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl PartialEq<&str> for Source {
    fn eq(&self, other: &&str) -> bool {
        self.name() == *other
    }
}

/// The most likely source of the growth, with the numbers behind it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    pub source: Source,
    pub evidence: Vec<String>,
}

/// One allocator of one role between two dumps: the sums over the role's processes in each
/// (processes that came or went between them count where they were).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AllocatorGrowth {
    pub role: String,
    /// Chromium's name: v8, blink_gc, partition_alloc, malloc, cc, gpu, shared_memory, ...
    pub allocator: String,
    pub from_cycle: u32,
    pub to_cycle: u32,
    pub from: u64,
    pub to: u64,
    pub growth: i64,
}
