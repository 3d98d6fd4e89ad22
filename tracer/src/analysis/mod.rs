//! Fits and answers: how fast each series grows per cycle and per day, its shape (flat,
//! plateau after warm-up, linear, accelerating), in which phase it grows, whether cleanup gives
//! memory back — and the budget a run can be gated on.
//!
//! Slopes are Theil–Sen (the median of pairwise slopes: robust to outliers, such as a GC in one
//! cycle), with least squares beside them for R². Series are taken at cycle ends over complete
//! cycles; the warm-up is the user's `--warmup`, or else found as the knee of a two-segment fit.
//! The tree's growth (answers, verdict, budget) is judged on the PSS it owns (`tree.owned`):
//! anonymous and shared-memory pages, not file-backed ones (see `RoleTotals::owned`).
//!
//! [`crate::trace::series`] names what a series measures; [`fit`] fits one series;
//! [`verdict`] turns the fits into answers and a verdict.

pub mod allocators;
mod fit;
mod verdict;

use self::fit::SECONDS_PER_DAY;
pub use self::{
    fit::{MIN_CYCLES, detect_warmup, fit, fit_binned, least_squares, theil_sen},
    verdict::{IN_PAGE_SHARE, MIN_COUNT_GROWTH},
};
use crate::trace::{
    Cycle, Trace,
    digest::{Bin, Binned, PhaseSums, median},
};
pub use crate::trace::{
    digest::History,
    findings::{
        AllocatorGrowth, Analysis, Answers, BudgetCheck, Distribution, SegmentFit, Series,
        SeriesFit, Shape, Source, Verdict,
    },
};

/// A budget: so many bytes per day or per cycle.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Budget {
    PerDay(f64),
    PerCycle(f64),
}

impl std::str::FromStr for Budget {
    type Err = String;
    /// `5MiB/day`, `200KiB/cycle`, `1GiB/day`, `500MB/day`, `64KiB/hour`.
    fn from_str(text: &str) -> Result<Budget, String> {
        let (amount, per) = text
            .split_once('/')
            .ok_or("expected AMOUNT/day, AMOUNT/hour or AMOUNT/cycle")?;
        let bytes = crate::collect::markers::parse_amount(amount).ok_or_else(|| {
            format!("{amount:?} is not an amount (use a number with B, KiB, MiB, GiB, KB, MB, GB)")
        })?;
        if !(bytes >= 0.0 && bytes.is_finite()) {
            return Err(format!(
                "{amount:?}: a budget is a growth that may not be exceeded, 0 or more"
            ));
        }
        match per.trim() {
            "day" | "d" => Ok(Budget::PerDay(bytes)),
            "hour" | "h" => Ok(Budget::PerDay(bytes * 24.0)),
            "cycle" => Ok(Budget::PerCycle(bytes)),
            other => Err(format!("per {other:?}: expected day, hour or cycle")),
        }
    }
}

impl Budget {
    pub fn check(self, tree: &SeriesFit, cycle_s: f64) -> BudgetCheck {
        let limit_per_day = match self {
            Budget::PerDay(bytes) => bytes,
            Budget::PerCycle(bytes) if cycle_s > 0.0 => bytes * SECONDS_PER_DAY / cycle_s,
            Budget::PerCycle(_) => f64::INFINITY,
        };
        // A flat series (or a plateau after warm-up) has no growth to tell from its noise, however
        // short the cycles make the per-day figure of that noise.
        let no_growth = matches!(tree.shape, Some(Shape::Flat | Shape::Plateau));
        BudgetCheck {
            limit_per_day,
            measured_per_day: tree.per_day,
            pass: no_growth || tree.per_day <= limit_per_day,
        }
    }
}

impl SegmentFit {
    fn of(segment: u32, cycles: usize, analysis: &Analysis) -> SegmentFit {
        SegmentFit {
            segment,
            cycles,
            tree: analysis.tree().cloned(),
            verdict: analysis.verdict.clone(),
        }
    }
}

/// A fit in words, for a line that has no room for caveats: a per-day figure only where the
/// series grows (a flat one's slope is noise, and a day of noise is not a figure to quote).
pub fn describe(fit: &SeriesFit) -> String {
    let bytes = |b: f64| crate::units::bytes(b as i64, true);
    match fit.shape {
        Some(Shape::Linear | Shape::Accelerating) => format!(
            "grows {}/cycle, about {}/day if it went on ({}, trend p {:.3})",
            bytes(fit.per_cycle),
            bytes(fit.per_day),
            if fit.shape == Some(Shape::Linear) {
                "linear"
            } else {
                "accelerating"
            },
            fit.trend_p
        ),
        Some(Shape::Plateau) => format!("flat after {} warm-up cycles", fit.warmup_cycles),
        Some(Shape::Flat) => format!("flat ({}/cycle of noise)", bytes(fit.per_cycle)),
        _ => format!(
            "not known yet: {} cycles after warm-up, a trend needs {}",
            fit.cycles,
            fit::TREND_MIN_CYCLES
        ),
    }
}

/// Regions in `analysis.regions`.
const TOP_REGIONS: usize = 10;

/// Fits every series of the trace's complete cycles, and sums its processes' region growth
/// per role; the verdict names the region that grew most.
pub fn analyze(trace: &Trace, warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    let mut analysis = analyze_history(&trace.cycles.history(), warmup, budget);
    // Of a followed worker, the latest instance's processes, as every other figure here.
    let since = trace.segments.last().map_or(0, |s| s.first_cycle);
    analysis.regions = crate::collect::regions::by_role(
        trace
            .processes
            .iter()
            .filter(|p| p.regions.first().is_some_and(|r| r.to_cycle >= since))
            .map(|p| (p.role.as_str(), p.regions.as_slice())),
        TOP_REGIONS,
    );
    if analysis.verdict.source == Source::Worker {
        verdict::worker_by_regions(&mut analysis.verdict, trace);
    }
    let fitted_from = since + analysis.tree().map_or(0, |t| t.warmup_cycles) as u32;
    analysis.allocators = allocators::growth(&trace.memory_dumps, since, fitted_from);
    verdict::renderer_by_allocators(&mut analysis.verdict, &analysis.allocators);
    if let Some(top) = analysis.regions.first()
        && analysis.verdict.source != Source::None
    {
        analysis.verdict.evidence.push(format!(
            "the region that grew most: {} of the {} ({} process(es)), +{} B ({})",
            top.name, top.role, top.processes, top.growth, top.why
        ));
    }
    analysis
}

/// The cycles the tree's fit takes: the measured cycles of the latest segment past its warm-up.
/// On a trace of more than [`crate::trace::digest::MAX_FIT_POINTS`] cycles, the fit's warm-up
/// ends on a whole point, so the fits' cycles may start up to a point's width later.
pub fn fitted_cycles(trace: &Trace) -> impl Iterator<Item = &Cycle> {
    let segment = trace.cycles.last().map_or(0, |c| c.segment);
    let warmup = trace.analysis.tree().map_or(0, |t| t.warmup_cycles);
    trace
        .cycles
        .iter()
        .filter(move |c| c.segment == segment && c.is_measured())
        .skip(warmup)
}

/// The same over a list of cycles (the interim analysis of a trace still running).
pub fn analyze_cycles(cycles: &[Cycle], warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    analyze_history(&History::of(cycles), warmup, budget)
}

/// What counts as growth over the fitted cycles of a series in bytes: [`MIN_GROWTH_BYTES`] or
/// [`MIN_GROWTH_SHARE`] of the series' level, whichever is more. Real workers wander by more
/// than a smaller floor suggests, in CI's busy runs: a healthy Chromium tree (the zoo's `none`)
/// creeps by 3% of its owned PSS over some 60 cycles until V8's memory reducer gives it back (at
/// 0.5%, a 30-cycle trace of it read as a renderer-native leak), and a healthy Bun + puppeteer
/// scraper's tree rose 4.7% over 20 cycles once (at 2%, read as a worker leak). A slow leak
/// still shows once the trace is long enough: the floor is on the change over all the fitted
/// cycles, not per cycle.
const MIN_GROWTH_BYTES: f64 = 256.0 * 1024.0;
const MIN_GROWTH_SHARE: f64 = 0.08;
/// A warm-up is found by a smaller rise: a browser's start-up (17 MB of a 175 MB tree) is a
/// warm-up to leave out of the fit, though not growth to call a leak.
const WARMUP_SHARE: f64 = 0.02;
/// What counts as growth of a count (pages, contexts, browsers, processes): half of one.
const MIN_GROWTH_COUNT: f64 = 0.5;
/// The browser's series are fitted when it was read at four in five cycles at least, as
/// (views, cycles): a read can fail while the browser is busy, and with too many missing the
/// series would not be the cycles'.
const MIN_VIEWS_SHARE: (usize, usize) = (4, 5);

/// What a series measures, for its floor of growth.
#[derive(Clone, Copy)]
enum Unit {
    Bytes,
    Count,
}

/// The same over the digest of the cycles (see [`crate::trace::digest`]): a long trace's.
pub fn analyze_history(
    history: &History,
    warmup: Option<usize>,
    budget: Option<Budget>,
) -> Analysis {
    let cycle_s = median(&mut history.lengths.points().to_vec()).unwrap_or(0.0);
    let mut analysis = Analysis {
        cycle_s,
        ..Analysis::default()
    };
    if history.cycles() == 0 {
        return analysis;
    }
    analysis.series = fit_every_series(history, warmup, cycle_s);
    analysis.cycle_growth = history.cycle_growth();
    // Per phase, the mean over the points past the tree's warm-up (a whole number of points).
    let tree_warmup = analysis.tree().map_or(0, |t| t.warmup_cycles);
    let phases = &history.phases;
    let past_warmup = phases
        .points()
        .iter()
        .skip(tree_warmup.div_ceil(phases.width()));
    analysis.phase_growth = PhaseSums::merge(past_warmup.cloned().collect()).means();
    if let (Some(budget), Some(tree)) = (budget, analysis.tree()) {
        analysis.budget = Some(budget.check(tree, cycle_s));
    }
    analysis.answers = verdict::answers(&analysis, history);
    analysis.verdict = verdict::verdict(&analysis);
    if !history.earlier.is_empty() {
        analysis.segments = history
            .earlier
            .iter()
            .map(|done| done.fit.get_or_init(|| fit_segment(&done.digest)).clone())
            .collect();
        let current = SegmentFit::of(history.segment, history.cycles(), &analysis);
        analysis.segments.push(current);
    }
    analysis
}

/// Fits every series the digest holds: the tree, each role, the process counts, the worker's
/// figures and the browser's view.
fn fit_every_series(history: &History, warmup: Option<usize>, cycle_s: f64) -> Vec<SeriesFit> {
    let mut fits = Vec::new();
    let mut add = |name: Series, binned: &Binned<f64>, unit: Unit| {
        let ys = binned.points();
        let level = ys.iter().map(|y| y.abs()).sum::<f64>() / ys.len().max(1) as f64;
        let (significant, knee) = match unit {
            Unit::Bytes => (
                MIN_GROWTH_BYTES.max(MIN_GROWTH_SHARE * level),
                MIN_GROWTH_BYTES.max(WARMUP_SHARE * level),
            ),
            Unit::Count => (MIN_GROWTH_COUNT, MIN_GROWTH_COUNT),
        };
        let warmup = warmup.unwrap_or_else(|| detect_warmup(ys, knee) * binned.width());
        fits.push(fit_binned(name, binned, Some(warmup), cycle_s, significant));
    };
    // The tree: its PSS as people know it, the part it owns (what growth is judged on, see
    // `RoleTotals::owned`), and the shared-memory and file-backed parts for question 2.
    add(Series::TreeOwned, &history.tree_owned, Unit::Bytes);
    add(Series::TreePss, &history.tree_pss, Unit::Bytes);
    add(Series::TreeShmem, &history.tree_shmem, Unit::Bytes);
    add(Series::TreeFile, &history.tree_file, Unit::Bytes);
    for (role, owned) in &history.roles {
        add(Series::RoleOwned(role.clone()), owned, Unit::Bytes);
    }
    // Process counts: relaunched browsers that are never closed pile up, each with its tree.
    add(Series::Browsers, &history.browsers, Unit::Count);
    add(Series::Processes, &history.processes, Unit::Count);
    for (key, figure) in &history.worker {
        if let Some(figure) = figure.binned() {
            add(Series::worker(key), figure, Unit::Bytes);
        }
    }
    // The browser's view, over the cycles it was read at.
    let (views, per_cycles) = MIN_VIEWS_SHARE;
    if history.views > 0 && history.views * per_cycles >= history.cycles() * views {
        add(Series::Pages, &history.pages, Unit::Count);
        add(Series::Contexts, &history.contexts, Unit::Count);
        add(Series::JsHeap, &history.js_heap, Unit::Bytes);
        // Per site: the JS heap of every page of an origin, for origins open in every view.
        for (site, heap) in &history.sites {
            if let Some(heap) = heap.binned() {
                add(Series::SiteJsHeap(site.clone()), heap, Unit::Bytes);
            }
        }
    }
    fits
}

/// The fit of one finished segment, from the digest [`History`] keeps of it.
fn fit_segment(history: &History) -> SegmentFit {
    let analysis = analyze_history(history, None, None);
    SegmentFit::of(history.segment, history.cycles(), &analysis)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Compacted cycles, written and read back, and cycles spilled to disk are analysed as the
    /// same cycles kept whole in memory.
    #[test]
    fn compacted_and_spilled_cycles_are_analysed_as_if_kept_whole() {
        use crate::trace::timeline::tests::{five_cycles, five_cycles_spilled};
        let (full, _) = five_cycles(10);
        let (compacted, _) = five_cycles(2);
        let json = serde_json::to_string(&compacted).unwrap();
        let read: Vec<Cycle> = serde_json::from_str(&json).unwrap();
        let analysis = |cycles: &[Cycle]| analyze_cycles(cycles, Some(0), None);
        let (expected, got) = (analysis(&full), analysis(&read));
        assert_eq!(got.phase_growth, expected.phase_growth);
        assert_eq!(got.phase_growth["scrape"], 100.0);
        assert_eq!(got.series, expected.series);
        let (kept, _) = five_cycles(2);
        let (spilled, _) = five_cycles_spilled(2, Some(std::env::temp_dir()));
        assert!(spilled.spilled().is_some());
        let analysis = |history| analyze_history(&history, None, None);
        assert_eq!(analysis(spilled.history()), analysis(kept.history()));
    }
    use crate::{collect::roles::Role, trace::RoleTotals};

    const MIB: f64 = 1048576.0;

    #[test]
    fn sites_are_origins() {
        assert_eq!(
            crate::collect::browser::origin("https://shop.example:8443/p/1?x=2"),
            "https://shop.example:8443"
        );
        assert_eq!(
            crate::collect::browser::origin("data:text/html,<p>hi</p>"),
            "data:"
        );
        assert_eq!(crate::collect::browser::origin("about:blank"), "about:");
    }

    #[test]
    fn budgets_read_like_people_write_them() {
        assert_eq!(
            "5MiB/day".parse::<Budget>().unwrap(),
            Budget::PerDay(5.0 * MIB)
        );
        assert_eq!(
            "200KiB/cycle".parse::<Budget>().unwrap(),
            Budget::PerCycle(200.0 * 1024.0)
        );
        assert_eq!("1MB/hour".parse::<Budget>().unwrap(), Budget::PerDay(24e6));
        assert!("5 MiB".parse::<Budget>().is_err());
        assert!("-5MiB/day".parse::<Budget>().is_err());
        assert!("5XB/day".parse::<Budget>().is_err());
        let tree = SeriesFit {
            per_day: 6.0 * MIB,
            ..SeriesFit::default()
        };
        assert!(!Budget::PerDay(5.0 * MIB).check(&tree, 10.0).pass);
        // 1 KiB per 10 s cycle is 8640 KiB per day.
        let check = Budget::PerCycle(1024.0).check(&tree, 10.0);
        assert_eq!((check.limit_per_day, check.pass), (8640.0 * 1024.0, true));
    }

    /// A Chromium tree at the zoo's `none`: a 95 MB browser and an 80 MB renderer that, after a
    /// 17 MB warm-up, creeps by 35 KB a cycle (with page-sized noise) as V8's heap does until
    /// its memory reducer runs, with `per_cycle` more of real growth.
    fn chromium_cycles(per_cycle: u64) -> Vec<Cycle> {
        (0..30u64)
            .map(|i| {
                let warm = if i < 2 { 0 } else { 17 << 20 };
                let noise = (i * 7919 % 13) * 4096;
                let renderer = (63 << 20) + warm + i * (35 << 10) + noise + i * per_cycle;
                let totals = |anon| RoleTotals {
                    pss: anon,
                    anon,
                    count: 1,
                    ..RoleTotals::default()
                };
                Cycle {
                    index: i as u32 + 1,
                    start_s: i as f64 * 0.3,
                    end_s: (i + 1) as f64 * 0.3,
                    by_role: [
                        (Role::Browser, totals(95 << 20)),
                        (Role::Renderer, totals(renderer)),
                    ]
                    .into_iter()
                    .collect(),
                    ..Cycle::default()
                }
            })
            .collect()
    }

    #[test]
    fn chromiums_own_creep_is_not_a_leak_but_a_small_one_above_it_is() {
        let healthy = analyze_cycles(&chromium_cycles(0), None, None);
        assert_eq!(healthy.verdict.source, "none", "{:?}", healthy.verdict);
        // 1 MiB a cycle more: 28 MiB over the fitted cycles, above 8% of the tree's 175 MB.
        let leak = analyze_cycles(&chromium_cycles(1 << 20), None, None);
        assert_eq!(leak.verdict.source, "renderer-native", "{:?}", leak.verdict);
    }

    /// A followed worker restarted: the leaking first instance and the healthy second are
    /// fitted each on its own cycles, and the analysis is of the second. Over both at once, the
    /// restart's drop would be a fall, or a sawtooth.
    #[test]
    fn each_instance_of_a_followed_worker_is_fitted_on_its_own() {
        let mut cycles = chromium_cycles(1 << 20);
        for (i, mut cycle) in chromium_cycles(0).into_iter().enumerate() {
            cycle.index = 31 + i as u32;
            cycle.segment = 1;
            cycles.push(cycle);
        }
        let analysis = analyze_cycles(&cycles, None, None);
        assert_eq!(analysis.verdict.source, "none", "{:?}", analysis.verdict);
        assert_eq!(
            analysis.tree().unwrap().cycles + analysis.tree().unwrap().warmup_cycles,
            30
        );
        let [first, second] = analysis.segments.as_slice() else {
            panic!("two segments: {:?}", analysis.segments);
        };
        assert_eq!((first.segment, first.cycles), (0, 30));
        assert_eq!((second.segment, second.cycles), (1, 30));
        assert_eq!(first.verdict.source, "renderer-native");
        assert_eq!(second.verdict, analysis.verdict);
        let leak = first.tree.as_ref().unwrap().per_cycle;
        assert!(
            (leak - (1 << 20) as f64 - 35.0 * 1024.0).abs() < 8192.0,
            "the first instance's own rate: {leak}"
        );
    }
}
