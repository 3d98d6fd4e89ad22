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
//! [`series`] names what a series measures; [`fit`] fits one series; [`verdict`] turns the
//! fits into answers and a verdict.

mod fit;
mod series;
mod verdict;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use self::fit::{SECONDS_PER_DAY, median};
pub use self::{
    fit::{MIN_CYCLES, SeriesFit, Shape, detect_warmup, fit, least_squares, theil_sen},
    series::Series,
    verdict::{Answers, IN_PAGE_SHARE, Source, Verdict},
};
use crate::trace::{Cycle, Role, RoleTotals, Trace};

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
        let bytes = crate::markers::parse_amount(amount).ok_or_else(|| {
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

/// A budget checked against the tree's growth after warm-up.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BudgetCheck {
    pub limit_per_day: f64,
    pub measured_per_day: f64,
    pub pass: bool,
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

/// The per-cycle changes of the tree's owned PSS, through an HDR histogram (3 significant digits):
/// one cycle's jump, such as a GC or a cache fill, shows in the tail, not in the median.
/// `at_cycle_ends`: whole bytes, one value per cycle.
fn distribution(at_cycle_ends: &[f64]) -> Option<Distribution> {
    let changes: Vec<i64> = at_cycle_ends
        .windows(2)
        .map(|w| w[1] as i64 - w[0] as i64)
        .collect();
    let min = *changes.iter().min()?;
    // Histograms hold non-negative values: record each change shifted by the smallest.
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3).ok()?;
    for change in &changes {
        histogram.record((change - min) as u64).ok()?;
    }
    let at = |q: f64| histogram.value_at_quantile(q) as i64 + min;
    Some(Distribution {
        count: changes.len() as u64,
        min,
        p50: at(0.5),
        p90: at(0.9),
        p99: at(0.99),
        max: histogram.max() as i64 + min,
    })
}

impl Analysis {
    pub fn tree(&self) -> Option<&SeriesFit> {
        self.series.iter().find(|s| s.name == Series::TreeOwned)
    }
}

/// A fit in words, for a line that has no room for caveats: a per-day figure only where the
/// series grows (a flat one's slope is noise, and a day of noise is not a figure to quote).
pub fn describe(fit: &SeriesFit) -> String {
    let bytes = |b: f64| crate::report::bytes(b as i64, true);
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

/// Fits every series of the trace's complete cycles.
pub fn analyze(trace: &Trace, warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    analyze_cycles(&trace.cycles, warmup, budget)
}

/// The same over a list of cycles (the interim analysis of a trace still running).
pub fn analyze_cycles(cycles: &[Cycle], warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    let cycles: Vec<&Cycle> = cycles.iter().filter(|c| c.is_measured()).collect();
    let mut lengths: Vec<f64> = cycles.iter().map(|c| c.end_s - c.start_s).collect();
    let cycle_s = median(&mut lengths).unwrap_or(0.0);
    let mut analysis = Analysis {
        cycle_s,
        ..Analysis::default()
    };
    if cycles.is_empty() {
        return analysis;
    }
    // What counts as growth over the fitted cycles: for bytes, 256 KiB or 0.5% of the series'
    // level, whichever is more (a browser's PSS wanders by more than a small process's); for
    // counts, half a page or context.
    const BYTES: f64 = 256.0 * 1024.0;
    let mut add = |name: Series, ys: Vec<f64>, floor: f64| {
        let level = ys.iter().map(|y| y.abs()).sum::<f64>() / ys.len().max(1) as f64;
        let significant = if floor == BYTES {
            floor.max(0.005 * level)
        } else {
            floor
        };
        analysis
            .series
            .push(fit(name, &ys, warmup, cycle_s, significant));
    };
    // The tree: its PSS as people know it, the part it owns (what growth is judged on, see
    // `RoleTotals::owned`), and the shared-memory and file-backed parts for question 2.
    let tree = |part: fn(&RoleTotals) -> u64| -> Vec<f64> {
        cycles
            .iter()
            .map(|c| c.by_role.values().map(part).sum::<u64>() as f64)
            .collect()
    };
    let owned = tree(RoleTotals::owned);
    analysis.cycle_growth = distribution(&owned);
    add(Series::TreeOwned, owned, BYTES);
    add(Series::TreePss, tree(|r| r.pss), BYTES);
    add(Series::TreeShmem, tree(|r| r.shmem), BYTES);
    add(Series::TreeFile, tree(|r| r.file), BYTES);
    let roles: std::collections::BTreeSet<&Role> =
        cycles.iter().flat_map(|c| c.by_role.keys()).collect();
    for role in roles {
        let owned = cycles
            .iter()
            .map(|c| c.by_role.get(role).map_or(0, RoleTotals::owned) as f64)
            .collect();
        add(Series::RoleOwned(role.clone()), owned, BYTES);
    }
    // Process counts: relaunched browsers that are never closed pile up, each with its tree.
    let count = |role: Option<&Role>| -> Vec<f64> {
        cycles
            .iter()
            .map(|c| match role {
                Some(role) => c.by_role.get(role).map_or(0, |r| r.count) as f64,
                None => c.by_role.values().map(|r| r.count).sum::<u64>() as f64,
            })
            .collect()
    };
    add(Series::Browsers, count(Some(&Role::Browser)), 0.5);
    add(Series::Processes, count(None), 0.5);
    let keys: std::collections::BTreeSet<&String> =
        cycles.iter().flat_map(|c| c.worker.keys()).collect();
    for key in keys {
        if cycles.iter().all(|c| c.worker.contains_key(key)) {
            add(
                Series::worker(key),
                cycles.iter().map(|c| c.worker[key]).collect(),
                BYTES,
            );
        }
    }
    // The browser's view, over the cycles it was read at (a read can fail while the browser is
    // busy); with too many missing, the series would not be the cycles'.
    let views: Vec<_> = cycles.iter().filter_map(|c| c.browser.as_ref()).collect();
    if !views.is_empty() && views.len() * 5 >= cycles.len() * 4 {
        add(
            Series::Pages,
            views.iter().map(|v| v.pages as f64).collect(),
            0.5,
        );
        add(
            Series::Contexts,
            views.iter().map(|v| v.contexts as f64).collect(),
            0.5,
        );
        add(
            Series::JsHeap,
            views.iter().map(|v| v.js_heap_used as f64).collect(),
            BYTES,
        );
        // Per site: the JS heap of every page of an origin, for origins open in every cycle.
        let mut sites: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (i, view) in views.iter().enumerate() {
            for page in view.page_list.iter().filter(|p| !p.internal) {
                let heap = sites
                    .entry(crate::browser::origin(&page.url))
                    .or_insert_with(|| vec![0.0; views.len()]);
                heap[i] += page.js_heap_used as f64;
            }
        }
        for (site, heap) in sites {
            if heap.iter().all(|h| *h > 0.0) {
                add(Series::SiteJsHeap(site), heap, BYTES);
            }
        }
    }
    let tree_warmup = analysis.tree().map_or(0, |t| t.warmup_cycles);
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for cycle in cycles.iter().skip(tree_warmup) {
        for phase in cycle.phases.iter().filter(|p| !p.teardown) {
            let entry = sums.entry(phase.name.clone()).or_default();
            entry.0 += phase.tree().owned as f64;
            entry.1 += 1;
        }
    }
    analysis.phase_growth = sums
        .into_iter()
        .map(|(name, (sum, n))| (name, sum / f64::from(n.max(1))))
        .collect();
    if let (Some(budget), Some(tree)) = (budget, analysis.tree()) {
        analysis.budget = Some(budget.check(tree, cycle_s));
    }
    analysis.answers = verdict::answers(&analysis, &cycles);
    analysis.verdict = verdict::verdict(&analysis);
    analysis
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    #[test]
    fn sites_are_origins() {
        assert_eq!(
            crate::browser::origin("https://shop.example:8443/p/1?x=2"),
            "https://shop.example:8443"
        );
        assert_eq!(crate::browser::origin("data:text/html,<p>hi</p>"), "data:");
        assert_eq!(crate::browser::origin("about:blank"), "about:");
    }

    #[test]
    fn the_per_cycle_distribution_keeps_one_jump_in_its_tail() {
        let kib = [
            100.0, 101.0, 102.0, 103.0, 153.0, 154.0, 155.0, 156.0, 157.0, 158.0, 159.0,
        ];
        let bytes: Vec<f64> = kib.iter().map(|k| k * 1024.0).collect();
        let d = distribution(&bytes).unwrap();
        assert_eq!((d.count, d.min, d.p50), (10, 1024, 1024));
        assert!((50 * 1024 - 64..=50 * 1024 + 64).contains(&d.max), "{d:?}");
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
}
