//! What the analysis keeps of every measured cycle, in memory that does not grow with the
//! number of cycles: a trace of a million cycles is fitted from the same few thousand numbers
//! as one of a thousand.
//!
//! Each series is a [`Binned`] list of at most [`MAX_FIT_POINTS`] points. Up to that many
//! cycles, a point is a cycle. Past it, consecutive points are merged three by three, each new
//! point the median of three (Rousseeuw and Bassett's remedian), so a point stands for 3, 9,
//! 27 … cycles and one cycle's outlier, such as a GC, never moves it; cycles not yet in a whole
//! point (fewer than one point's width, the most recent) are left out of the fits. What is
//! summed rather than fitted (the phases' changes, the recreation answer, the distribution of
//! per-cycle changes) is kept exactly.

use std::{
    collections::BTreeMap,
    sync::{Arc, OnceLock},
};

use hdrhistogram::Histogram;

use super::{
    cycle::Cycle,
    findings::{Distribution, SegmentFit},
};
use crate::collect::{
    browser::{Counts, origin},
    processes::RoleTotals,
    roles::Role,
};

/// The most points a series is fitted on. Theil–Sen, Mann–Kendall and the warm-up search are
/// O(n²); past this, cycles are binned (see the module), so a 100,000-cycle trace fits in
/// milliseconds.
pub const MAX_FIT_POINTS: usize = 1000;

/// The median of `values` (the mean of the middle two of an even count), sorting them.
pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// How many bins become one when a series has too many.
const MERGED: usize = 3;

/// What a bin of cycles holds, and how bins merge.
pub trait Bin: Clone {
    fn merge(bins: Vec<Self>) -> Self;
}

/// A value at cycle ends: merged bins take the median.
impl Bin for f64 {
    fn merge(mut bins: Vec<f64>) -> f64 {
        median(&mut bins).unwrap_or_default()
    }
}

/// Per phase name, the sum of the tree's owned change and how many phases it sums.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PhaseSums(BTreeMap<String, (f64, u32)>);

impl Bin for PhaseSums {
    fn merge(bins: Vec<PhaseSums>) -> PhaseSums {
        let mut sums = PhaseSums::default();
        for bin in bins {
            sums.add(&bin);
        }
        sums
    }
}

impl PhaseSums {
    fn add(&mut self, other: &PhaseSums) {
        for (name, (sum, n)) in &other.0 {
            let entry = self.0.entry(name.clone()).or_default();
            entry.0 += sum;
            entry.1 += n;
        }
    }

    /// The mean change per phase.
    pub fn means(&self) -> BTreeMap<String, f64> {
        self.0
            .iter()
            .map(|(name, (sum, n))| (name.clone(), sum / f64::from((*n).max(1))))
            .collect()
    }
}

/// A series binned as the module says: whole points of `width` cycles each, and the bins not
/// yet wide enough to be a point.
#[derive(Clone, Debug, PartialEq)]
pub struct Binned<T> {
    points: Vec<T>,
    /// Cycles per point: a power of [`MERGED`].
    width: usize,
    /// `pending[level]`: fewer than MERGED bins of MERGED^level cycles, waiting to be merged.
    pending: Vec<Vec<T>>,
    cycles: usize,
}

impl<T> Default for Binned<T> {
    fn default() -> Self {
        Binned {
            points: Vec::new(),
            width: 1,
            pending: Vec::new(),
            cycles: 0,
        }
    }
}

impl<T: Bin> Binned<T> {
    pub fn push(&mut self, value: T) {
        self.cycles += 1;
        let (mut carry, mut width, mut level) = (value, 1, 0);
        while width < self.width {
            if self.pending.len() <= level {
                self.pending.resize_with(level + 1, Vec::new);
            }
            let bins = &mut self.pending[level];
            bins.push(carry);
            if bins.len() < MERGED {
                return;
            }
            carry = T::merge(std::mem::take(bins));
            width *= MERGED;
            level += 1;
        }
        self.points.push(carry);
        if self.points.len() > MAX_FIT_POINTS {
            // Wider points: whole groups merge, the bins left over wait at the old width's level.
            let level = self.pending.len();
            let whole = self.points.len() - self.points.len() % MERGED;
            let rest = self.points.split_off(whole);
            let points = std::mem::take(&mut self.points);
            let mut groups = points.into_iter();
            while groups.len() > 0 {
                self.points
                    .push(T::merge(groups.by_ref().take(MERGED).collect()));
            }
            self.pending.push(rest);
            self.width *= MERGED;
            debug_assert_eq!(self.pending.len(), level + 1);
        }
    }

    /// The whole points, oldest first.
    pub fn points(&self) -> &[T] {
        &self.points
    }

    /// Cycles per point.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Every value pushed, in points or not.
    pub fn cycles(&self) -> usize {
        self.cycles
    }
}

impl<T: Bin> FromIterator<T> for Binned<T> {
    fn from_iter<I: IntoIterator<Item = T>>(values: I) -> Self {
        let mut binned = Binned::default();
        for value in values {
            binned.push(value);
        }
        binned
    }
}

/// A series that exists only if every cycle has it (a worker's figure, a site's JS heap): it
/// stops at the first cycle without it.
#[derive(Clone, Debug, PartialEq)]
pub enum Complete {
    Every(Binned<f64>),
    Gap,
}

impl Complete {
    /// Starts a series at the `seen`-th value (0-based): only the first can start one.
    fn start(seen: usize) -> Complete {
        if seen == 0 {
            Complete::Every(Binned::default())
        } else {
            Complete::Gap
        }
    }

    pub fn binned(&self) -> Option<&Binned<f64>> {
        match self {
            Complete::Every(binned) => Some(binned),
            Complete::Gap => None,
        }
    }
}

/// Adds one value per key to series that must have a value at every step: a key not seen at
/// the first step, or missing at a later one, has a gap.
fn push_complete(
    series: &mut BTreeMap<String, Complete>,
    seen: usize,
    values: &BTreeMap<String, f64>,
) {
    for (key, complete) in series.iter_mut() {
        match (values.get(key), &mut *complete) {
            (Some(value), Complete::Every(binned)) => binned.push(*value),
            (None, Complete::Every(_)) => *complete = Complete::Gap,
            (_, Complete::Gap) => {}
        }
    }
    for (key, value) in values {
        if !series.contains_key(key) {
            let mut complete = Complete::start(seen);
            if let Complete::Every(binned) = &mut complete {
                binned.push(*value);
            }
            series.insert(key.clone(), complete);
        }
    }
}

/// Signed changes, exact in count, minimum and maximum, quantiles to three significant digits.
#[derive(Clone, Debug)]
struct Changes {
    falls: Histogram<u32>,
    rises: Histogram<u32>,
    min: i64,
    max: i64,
}

impl Default for Changes {
    fn default() -> Self {
        let histogram = || Histogram::new(3).expect("3 significant digits are allowed");
        Changes {
            falls: histogram(),
            rises: histogram(),
            min: i64::MAX,
            max: i64::MIN,
        }
    }
}

impl Changes {
    fn record(&mut self, change: i64) {
        let (histogram, magnitude) = if change < 0 {
            (&mut self.falls, change.unsigned_abs())
        } else {
            (&mut self.rises, change as u64)
        };
        // Fails only past 4 billion changes of one size: beyond any trace.
        let _ = histogram.record(magnitude);
        self.min = self.min.min(change);
        self.max = self.max.max(change);
    }

    fn count(&self) -> u64 {
        self.falls.len() + self.rises.len()
    }

    /// The value of rank `ceil(q · count)` in ascending order: falls first, most negative first.
    fn quantile(&self, q: f64) -> i64 {
        let falls = self.falls.len();
        let rank = ((q * self.count() as f64).ceil() as u64).clamp(1, self.count());
        let value = if rank <= falls {
            -(at_rank(&self.falls, falls + 1 - rank) as i64)
        } else {
            at_rank(&self.rises, rank - falls) as i64
        };
        value.clamp(self.min, self.max)
    }

    fn distribution(&self) -> Option<Distribution> {
        (self.count() > 0).then(|| Distribution {
            count: self.count(),
            min: self.min,
            p50: self.quantile(0.5),
            p90: self.quantile(0.9),
            p99: self.quantile(0.99),
            max: self.max,
        })
    }
}

/// The recorded value of 1-based `rank` in ascending order (to the histogram's precision).
fn at_rank(histogram: &Histogram<u32>, rank: u64) -> u64 {
    let mut seen = 0;
    for bucket in histogram.iter_recorded() {
        seen += bucket.count_at_value() as u64;
        if seen >= rank {
            return bucket.value_iterated_to();
        }
    }
    histogram.max()
}

/// A running mean.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Mean {
    sum: f64,
    count: u64,
}

impl Mean {
    fn add(&mut self, value: f64) {
        self.sum += value;
        self.count += 1;
    }

    fn get(self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }
}

/// The digest of a trace's measured cycles that [`crate::analysis::analyze_history`] fits
/// (see the module). Take cycles in with [`History::add`], in order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Measured cycles taken in.
    cycles: usize,
    pub(crate) lengths: Binned<f64>,
    /// The tree: owned PSS, PSS, and the shared-memory and file-backed parts.
    pub(crate) tree_owned: Binned<f64>,
    pub(crate) tree_pss: Binned<f64>,
    pub(crate) tree_shmem: Binned<f64>,
    pub(crate) tree_file: Binned<f64>,
    /// Per role, owned PSS (0 while the role has no process).
    pub(crate) roles: BTreeMap<Role, Binned<f64>>,
    pub(crate) browsers: Binned<f64>,
    pub(crate) processes: Binned<f64>,
    pub(crate) worker: BTreeMap<String, Complete>,
    /// The browser's view, over the cycles it was read at.
    pub(crate) views: usize,
    pub(crate) pages: Binned<f64>,
    pub(crate) contexts: Binned<f64>,
    pub(crate) js_heap: Binned<f64>,
    /// Per origin, the JS heap of its pages: origins open at every view.
    pub(crate) sites: BTreeMap<String, Complete>,
    /// Each phase's change of the tree's owned PSS, binned like the tree's series so that the
    /// fitted warm-up can be left out.
    pub(crate) phases: Binned<PhaseSums>,
    changes: Changes,
    last_owned: Option<i64>,
    /// The page and context counts of the last measured cycle, if it had a view.
    last_counts: Option<Counts>,
    recreated: Mean,
    others: Mean,
    pub(crate) browsers_at_start: Option<u64>,
    pub(crate) browsers_alive: Option<u64>,
    /// The segment (instance of a followed worker) this digest is of: a cycle of a later one
    /// starts the digest over, since a restart gives the worker's memory back.
    pub(crate) segment: u32,
    /// The segments before it, the latest [`MAX_EARLIER_SEGMENTS`].
    pub(crate) earlier: Vec<FinishedSegment>,
}

/// Earlier segments that are kept: a worker restarting every few minutes for days has
/// thousands, and the latest say how it behaves now.
const MAX_EARLIER_SEGMENTS: usize = 64;

/// A segment that ended: its digest, and its fit once an analysis has made it. The fit is
/// shared by every copy of the digest (a report during the trace, the interim analyses), so
/// each segment is fitted once however often the trace is analysed; the fitting is the
/// analysis's, which the trace does not call.
#[derive(Clone, Debug)]
pub struct FinishedSegment {
    pub digest: Arc<History>,
    pub fit: Arc<OnceLock<SegmentFit>>,
}

impl History {
    /// The digest of a list of cycles.
    pub fn of<'a>(cycles: impl IntoIterator<Item = &'a Cycle>) -> History {
        let mut history = History::default();
        history.extend(cycles);
        history
    }

    pub fn extend<'a>(&mut self, cycles: impl IntoIterator<Item = &'a Cycle>) {
        for cycle in cycles {
            self.add(cycle);
        }
    }

    /// Takes in one cycle; a cycle that is not measured (cut, or on a tree tearing down) is
    /// left out of every fit, as the analysis says.
    pub fn add(&mut self, cycle: &Cycle) {
        if cycle.segment != self.segment {
            self.start_segment(cycle.segment);
        }
        if !cycle.is_measured() {
            return;
        }
        let seen = self.cycles;
        self.cycles += 1;
        self.lengths.push(cycle.end_s - cycle.start_s);
        let tree = |part: fn(&RoleTotals) -> u64| cycle.by_role.values().map(part).sum::<u64>();
        let owned = tree(RoleTotals::owned);
        self.tree_owned.push(owned as f64);
        self.tree_pss.push(tree(|r| r.pss) as f64);
        self.tree_shmem.push(tree(|r| r.shmem) as f64);
        self.tree_file.push(tree(|r| r.file) as f64);
        if let Some(last) = self.last_owned.replace(owned as i64) {
            self.changes.record(owned as i64 - last);
        }
        for role in cycle.by_role.keys() {
            // A role first seen now had no process, and so owned nothing, in the cycles before.
            self.roles
                .entry(role.clone())
                .or_insert_with(|| std::iter::repeat_n(0.0, seen).collect());
        }
        for (role, series) in &mut self.roles {
            series.push(cycle.by_role.get(role).map_or(0, RoleTotals::owned) as f64);
        }
        let browsers = cycle.by_role.get(&Role::Browser).map_or(0, |r| r.count);
        self.browsers.push(browsers as f64);
        self.browsers_at_start.get_or_insert(browsers);
        self.browsers_alive = Some(browsers);
        self.processes
            .push(cycle.by_role.values().map(|r| r.count).sum::<u64>() as f64);
        let figures: BTreeMap<String, f64> =
            cycle.worker.iter().map(|(k, v)| (k.clone(), *v)).collect();
        push_complete(&mut self.worker, seen, &figures);
        let mut phases = PhaseSums::default();
        for phase in cycle.phases.iter().filter(|p| !p.teardown) {
            let entry = phases.0.entry(phase.name.clone()).or_default();
            entry.0 += phase.tree().owned as f64;
            entry.1 += 1;
        }
        self.phases.push(phases);
        // Recreation: against the previous measured cycle's view.
        let counts = cycle.browser.as_ref().map(|v| v.counts());
        if let (Some(before), Some(after)) = (self.last_counts, counts) {
            let change = cycle.tree().owned as f64;
            if after.recreated_since(before) {
                self.recreated.add(change);
            } else {
                self.others.add(change);
            }
        }
        self.last_counts = counts;
        if let Some(view) = &cycle.browser {
            let viewed = self.views;
            self.views += 1;
            self.pages.push(f64::from(view.pages));
            self.contexts.push(f64::from(view.contexts));
            self.js_heap.push(view.js_heap_used as f64);
            let mut sites: BTreeMap<String, f64> = BTreeMap::new();
            for page in view.page_list.iter().filter(|p| !p.internal) {
                *sites.entry(origin(&page.url)).or_default() += page.js_heap_used as f64;
            }
            sites.retain(|_, heap| *heap > 0.0);
            push_complete(&mut self.sites, viewed, &sites);
        }
    }

    /// Puts the segment so far with the earlier ones and starts over with `segment`.
    fn start_segment(&mut self, segment: u32) {
        let mut done = std::mem::take(self);
        self.earlier = std::mem::take(&mut done.earlier);
        if done.cycles > 0 {
            self.earlier.push(FinishedSegment {
                digest: Arc::new(done),
                fit: Arc::default(),
            });
        }
        let over = self.earlier.len().saturating_sub(MAX_EARLIER_SEGMENTS);
        self.earlier.drain(..over);
        self.segment = segment;
    }

    /// Measured cycles taken in.
    pub fn cycles(&self) -> usize {
        self.cycles
    }

    /// How the tree's owned PSS changed from one measured cycle end to the next.
    pub(crate) fn cycle_growth(&self) -> Option<Distribution> {
        self.changes.distribution()
    }

    /// The mean owned-PSS change of cycles that recreated pages or contexts, and of the others.
    pub(crate) fn recreation(&self) -> (Option<f64>, Option<f64>) {
        (self.recreated.get(), self.others.get())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn up_to_the_limit_a_point_is_a_cycle_then_points_are_medians_of_three() {
        let exact: Binned<f64> = (0..MAX_FIT_POINTS).map(|i| i as f64).collect();
        assert_eq!((exact.width(), exact.points().len()), (1, MAX_FIT_POINTS));
        // One more: 333 points of 3 cycles, the 1000th and 1001st waiting for a third.
        let wider: Binned<f64> = (0..=MAX_FIT_POINTS).map(|i| i as f64).collect();
        assert_eq!((wider.width(), wider.points().len()), (3, 333));
        assert_eq!(&wider.points()[..2], &[1.0, 4.0]);
        // 100,000 cycles: points of 243 cycles; an outlier in one cycle of each point is gone.
        let binned: Binned<f64> = (0..100_000)
            .map(|i| i as f64 + if i % 97 == 0 { 1e9 } else { 0.0 })
            .collect();
        assert_eq!(binned.width(), 243);
        assert_eq!(binned.points().len(), 100_000 / 243);
        assert_eq!(binned.cycles(), 100_000);
        for (i, point) in binned.points().iter().enumerate() {
            let middle = (i * 243 + 121) as f64;
            assert!((point - middle).abs() <= 13.0, "point {i}: {point}");
        }
    }

    #[test]
    fn phase_sums_merge_exactly() {
        let one = |owned: f64| PhaseSums(BTreeMap::from([("scrape".to_string(), (owned, 1))]));
        let binned: Binned<PhaseSums> = (0..=MAX_FIT_POINTS).map(|i| one(i as f64)).collect();
        let total: f64 = binned.points().iter().map(|p| p.0["scrape"].0).sum();
        assert_eq!(total, (0..999).sum::<usize>() as f64);
        assert_eq!(binned.points()[0].0["scrape"].1, 3);
    }

    #[test]
    fn the_per_cycle_distribution_keeps_one_jump_in_its_tail() {
        let mut changes = Changes::default();
        for kib in [1, 1, 1, 50, 1, 1, 1, 1, 1, 1, -3] {
            changes.record(kib * 1024);
        }
        let d = changes.distribution().unwrap();
        assert_eq!((d.count, d.min, d.p50, d.max), (11, -3072, 1024, 50 * 1024));
        assert_eq!(d.p90, 1024);
        assert!((50 * 1024 - 64..=50 * 1024).contains(&d.p99), "{d:?}");
    }
}
