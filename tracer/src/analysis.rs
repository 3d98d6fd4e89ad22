//! Fits and answers: how fast each series grows per cycle and per day, its shape (flat,
//! plateau after warm-up, linear, accelerating), in which phase it grows, whether cleanup gives
//! memory back — and the budget a run can be gated on.
//!
//! Slopes are Theil–Sen (the median of pairwise slopes: robust to outliers, such as a GC in one
//! cycle), with least squares beside them for R². Series are taken at cycle ends over complete
//! cycles; the warm-up is the user's `--warmup`, or else found as the knee of a two-segment fit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::trace::{Cycle, Trace};

/// Fewer complete cycles than this after warm-up give no trustworthy fit.
pub const MIN_CYCLES: usize = 5;
/// Below this R², a line explains too little of the cycles for their slope to be growth.
const MIN_R2: f64 = 0.5;
const SECONDS_PER_DAY: f64 = 86_400.0;

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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SeriesFit {
    pub name: String,
    /// Growth per cycle after warm-up (Theil–Sen), in the series' unit (bytes or counts).
    pub per_cycle: f64,
    /// `per_cycle` over a day of cycles as long as the median measured one.
    pub per_day: f64,
    /// Least squares over the same cycles: how well a line explains them (0..1).
    pub r2: f64,
    pub shape: Option<Shape>,
    pub warmup_cycles: usize,
    /// Complete cycles used after warm-up.
    pub cycles: usize,
    /// False when there were fewer than MIN_CYCLES cycles: the numbers are not to be trusted.
    pub trustworthy: bool,
}

/// Theil–Sen slope and intercept of `ys` against 0, 1, 2, ...
pub fn theil_sen(ys: &[f64]) -> Option<(f64, f64)> {
    if ys.len() < 2 {
        return None;
    }
    let mut slopes = Vec::with_capacity(ys.len() * (ys.len() - 1) / 2);
    for i in 0..ys.len() {
        for j in i + 1..ys.len() {
            slopes.push((ys[j] - ys[i]) / (j - i) as f64);
        }
    }
    let slope = median(&mut slopes)?;
    let mut intercepts: Vec<f64> = ys
        .iter()
        .enumerate()
        .map(|(i, y)| y - slope * i as f64)
        .collect();
    Some((slope, median(&mut intercepts)?))
}

/// Least-squares slope, intercept and R² of `ys` against 0, 1, 2, ...
pub fn least_squares(ys: &[f64]) -> Option<(f64, f64, f64)> {
    let n = ys.len() as f64;
    if ys.len() < 2 {
        return None;
    }
    let mean_x = (n - 1.0) / 2.0;
    let mean_y = ys.iter().sum::<f64>() / n;
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (i, y) in ys.iter().enumerate() {
        let (dx, dy) = (i as f64 - mean_x, y - mean_y);
        sxy += dx * dy;
        sxx += dx * dx;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let r2 = if syy == 0.0 {
        1.0
    } else {
        (sxy * sxy) / (sxx * syy)
    };
    Some((slope, mean_y - slope * mean_x, r2))
}

fn median(values: &mut [f64]) -> Option<f64> {
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

/// Sum of squared residuals of a least-squares line through `ys`.
fn sse(ys: &[f64]) -> f64 {
    match least_squares(ys) {
        Some((slope, intercept, _)) => ys
            .iter()
            .enumerate()
            .map(|(i, y)| (y - intercept - slope * i as f64).powi(2))
            .sum(),
        None => 0.0,
    }
}

/// The warm-up: the knee of the best two-segment fit, when the growth before it is clearly
/// steeper than after; 0 otherwise.
pub fn detect_warmup(ys: &[f64], significant: f64) -> usize {
    if ys.len() < MIN_CYCLES + 2 {
        return 0;
    }
    let whole = sse(ys);
    let mut best = (whole, 0);
    for knee in 2..=ys.len() / 2 {
        let split = sse(&ys[..=knee]) + sse(&ys[knee..]);
        if split < best.0 {
            best = (split, knee);
        }
    }
    let knee = best.1;
    if knee == 0 {
        return 0;
    }
    let before = theil_sen(&ys[..=knee]).map_or(0.0, |f| f.0) * knee as f64;
    let after = theil_sen(&ys[knee..]).map_or(0.0, |f| f.0) * (ys.len() - knee) as f64;
    // A warm-up grows clearly, and more than everything after it.
    if before > significant && before > 3.0 * after.max(0.0) {
        knee
    } else {
        0
    }
}

/// Fits one series of values at cycle ends.
/// `significant`: the smallest total change over the fitted cycles that counts as growth.
pub fn fit(
    name: &str,
    ys: &[f64],
    warmup: Option<usize>,
    cycle_s: f64,
    significant: f64,
) -> SeriesFit {
    let warmup_cycles = warmup
        .unwrap_or_else(|| detect_warmup(ys, significant))
        .min(ys.len());
    let post = &ys[warmup_cycles..];
    let mut result = SeriesFit {
        name: name.to_string(),
        warmup_cycles,
        cycles: post.len(),
        trustworthy: post.len() >= MIN_CYCLES,
        ..SeriesFit::default()
    };
    let (Some((slope, _)), Some((_, _, r2))) = (theil_sen(post), least_squares(post)) else {
        result.shape = Some(Shape::Unknown);
        return result;
    };
    result.per_cycle = slope;
    result.per_day = if cycle_s > 0.0 {
        slope * SECONDS_PER_DAY / cycle_s
    } else {
        0.0
    };
    result.r2 = r2;
    result.shape = Some(if !result.trustworthy {
        Shape::Unknown
    } else if slope * post.len() as f64 <= significant || r2 < MIN_R2 {
        let warmup_grew = warmup_cycles > 0 && ys[warmup_cycles] - ys[0] > significant;
        if warmup_grew {
            Shape::Plateau
        } else {
            Shape::Flat
        }
    } else {
        let half = post.len() / 2;
        let first = theil_sen(&post[..=half]).map_or(0.0, |f| f.0);
        let second = theil_sen(&post[half..]).map_or(0.0, |f| f.0);
        // Twice the slope: Chromium's own creep can tilt a linear leak's second half by half again.
        if second > 2.0 * first.max(0.0)
            && (second - first) * (post.len() - half) as f64 > significant
        {
            Shape::Accelerating
        } else {
            Shape::Linear
        }
    });
    result
}

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
        let digits = amount
            .trim_end_matches(|c: char| c.is_ascii_alphabetic())
            .trim();
        let unit = amount[digits.len()..].trim();
        let number: f64 = digits
            .parse()
            .map_err(|_| format!("{amount:?} is not an amount"))?;
        let factor = match unit.to_ascii_lowercase().as_str() {
            "" | "b" => 1.0,
            "k" | "kib" => 1024.0,
            "m" | "mib" => 1024.0 * 1024.0,
            "g" | "gib" => 1024.0 * 1024.0 * 1024.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            other => {
                return Err(format!(
                    "unknown unit {other:?} (use B, KiB, MiB, GiB, KB, MB, GB)"
                ));
            }
        };
        let bytes = number * factor;
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
    /// Mean change of the tree's PSS in each phase, over complete cycles past warm-up.
    pub phase_growth: BTreeMap<String, f64>,
    /// How the tree's PSS changed from one cycle end to the next: the distribution.
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

/// The per-cycle changes of the tree's PSS, through an HDR histogram (3 significant digits):
/// one cycle's jump, such as a GC or a cache fill, shows in the tail, not in the median.
fn distribution(cycles: &[&Cycle]) -> Option<Distribution> {
    let pss: Vec<i64> = cycles
        .iter()
        .map(|c| c.by_role.values().map(|r| r.pss as i64).sum())
        .collect();
    let changes: Vec<i64> = pss.windows(2).map(|w| w[1] - w[0]).collect();
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

/// The origin of a URL (scheme and host), or its scheme when it has no host (data:, about:).
pub fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!(
            "{scheme}://{}",
            rest.split(['/', '?', '#']).next().unwrap_or("")
        ),
        None => url.split(':').next().unwrap_or(url).to_string() + ":",
    }
}

/// The six questions of an investigation, answered with numbers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Answers {
    /// 1. The tree's PSS growth per cycle and per day, with R² and whether the fit is trustworthy.
    pub growth_per_cycle: f64,
    pub growth_per_day: f64,
    pub r2: f64,
    pub trustworthy: bool,
    /// 2. The series that grow, fastest first.
    pub growing: Vec<String>,
    /// 3. The phase with the largest mean PSS growth, if it grows.
    pub growth_phase: Option<String>,
    /// 4. The tree's shape, and its warm-up.
    pub shape: Option<Shape>,
    pub warmup_cycles: usize,
    /// 5. The mean PSS change of the cleanup phase (negative: it gives memory back).
    pub cleanup_change: Option<f64>,
    pub cleanup_helps: Option<bool>,
    /// 6. The mean PSS change of cycles where pages or contexts were recreated (their count
    ///    dropped), against the others.
    pub recreation_change: Option<f64>,
    pub other_cycles_change: Option<f64>,
    pub recreation_helps: Option<bool>,
}

/// The most likely source of the growth, with the numbers behind it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Verdict {
    /// worker-heap, worker-external, page-accumulation, context-accumulation, in-page-js,
    /// renderer-native, browser-process, or none.
    pub source: String,
    pub evidence: Vec<String>,
}

impl Analysis {
    pub fn tree(&self) -> Option<&SeriesFit> {
        self.series.iter().find(|s| s.name == "tree.pss")
    }
}

/// Fits every series of the trace's complete cycles.
pub fn analyze(trace: &Trace, warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    analyze_cycles(&trace.cycles, warmup, budget)
}

/// The same over a list of cycles (the interim analysis of a trace still running).
pub fn analyze_cycles(cycles: &[Cycle], warmup: Option<usize>, budget: Option<Budget>) -> Analysis {
    let cycles: Vec<&Cycle> = cycles.iter().filter(|c| !c.cut).collect();
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
    let mut add = |name: String, ys: Vec<f64>, floor: f64| {
        let level = ys.iter().map(|y| y.abs()).sum::<f64>() / ys.len().max(1) as f64;
        let significant = if floor == BYTES {
            floor.max(0.005 * level)
        } else {
            floor
        };
        analysis
            .series
            .push(fit(&name, &ys, warmup, cycle_s, significant));
    };
    add(
        "tree.pss".into(),
        cycles
            .iter()
            .map(|c| c.by_role.values().map(|r| r.pss).sum::<u64>() as f64)
            .collect(),
        BYTES,
    );
    let roles: std::collections::BTreeSet<&String> =
        cycles.iter().flat_map(|c| c.by_role.keys()).collect();
    for role in roles {
        let pss = cycles
            .iter()
            .map(|c| c.by_role.get(role).map_or(0, |r| r.pss) as f64)
            .collect();
        add(format!("role.{role}.pss"), pss, BYTES);
    }
    let keys: std::collections::BTreeSet<&String> =
        cycles.iter().flat_map(|c| c.worker.keys()).collect();
    for key in keys {
        if cycles.iter().all(|c| c.worker.contains_key(key)) {
            add(
                format!("worker.{key}"),
                cycles.iter().map(|c| c.worker[key]).collect(),
                BYTES,
            );
        }
    }
    if cycles.iter().all(|c| c.browser.is_some()) {
        let views: Vec<_> = cycles.iter().filter_map(|c| c.browser.as_ref()).collect();
        add(
            "browser.pages".into(),
            views.iter().map(|v| v.pages as f64).collect(),
            0.5,
        );
        add(
            "browser.contexts".into(),
            views.iter().map(|v| v.contexts as f64).collect(),
            0.5,
        );
        add(
            "browser.js_heap_used".into(),
            views.iter().map(|v| v.js_heap_used as f64).collect(),
            BYTES,
        );
        // Per site: the JS heap of every page of an origin, for origins open in every cycle.
        let mut sites: BTreeMap<String, Vec<f64>> = BTreeMap::new();
        for (i, view) in views.iter().enumerate() {
            for page in view.page_list.iter().filter(|p| !p.internal) {
                let heap = sites
                    .entry(origin(&page.url))
                    .or_insert_with(|| vec![0.0; views.len()]);
                heap[i] += page.js_heap_used as f64;
            }
        }
        for (site, heap) in sites {
            if heap.iter().all(|h| *h > 0.0) {
                add(format!("site.{site}.js_heap_used"), heap, BYTES);
            }
        }
    }
    let tree_warmup = analysis.tree().map_or(0, |t| t.warmup_cycles);
    let mut sums: BTreeMap<String, (f64, u32)> = BTreeMap::new();
    for cycle in cycles.iter().skip(tree_warmup) {
        for phase in &cycle.phases {
            let entry = sums.entry(phase.name.clone()).or_default();
            entry.0 += phase.growth.values().map(|g| g.pss as f64).sum::<f64>();
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
    analysis.cycle_growth = distribution(&cycles);
    analysis.answers = answers(&analysis, &cycles);
    analysis.verdict = verdict(&analysis);
    analysis
}

fn answers(analysis: &Analysis, cycles: &[&crate::trace::Cycle]) -> Answers {
    let Some(tree) = analysis.tree() else {
        return Answers::default();
    };
    let mut growing: Vec<&SeriesFit> = analysis
        .series
        .iter()
        .filter(|s| {
            s.name != "tree.pss" && matches!(s.shape, Some(Shape::Linear | Shape::Accelerating))
        })
        .collect();
    growing.sort_by(|a, b| b.per_day.total_cmp(&a.per_day));
    let growth_phase = analysis
        .phase_growth
        .iter()
        .filter(|(_, g)| **g > 0.0)
        .max_by(|a, b| a.1.total_cmp(b.1))
        .map(|(name, _)| name.clone());
    let cleanup_change = analysis
        .phase_growth
        .iter()
        .find(|(name, _)| name.contains("clean"))
        .map(|(_, g)| *g);
    // Recreation: a cycle whose page or context count fell below the previous cycle's.
    let count = |c: &crate::trace::Cycle| c.browser.as_ref().map(|b| (b.pages, b.contexts));
    let pss = |c: &crate::trace::Cycle| c.growth.values().map(|g| g.pss as f64).sum::<f64>();
    let (mut recreated, mut others) = (Vec::new(), Vec::new());
    for pair in cycles.windows(2) {
        match (count(pair[0]), count(pair[1])) {
            (Some(before), Some(after)) if after.0 < before.0 || after.1 < before.1 => {
                recreated.push(pss(pair[1]))
            }
            (Some(_), Some(_)) => others.push(pss(pair[1])),
            _ => {}
        }
    }
    let mean = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64);
    let (recreation_change, other_cycles_change) = (mean(&recreated), mean(&others));
    Answers {
        growth_per_cycle: tree.per_cycle,
        growth_per_day: tree.per_day,
        r2: tree.r2,
        trustworthy: tree.trustworthy,
        growing: growing.iter().map(|s| s.name.clone()).collect(),
        growth_phase,
        shape: tree.shape,
        warmup_cycles: tree.warmup_cycles,
        cleanup_helps: cleanup_change.map(|c| c < 0.0),
        cleanup_change,
        recreation_helps: recreation_change
            .zip(other_cycles_change)
            .map(|(r, o)| r < o),
        recreation_change,
        other_cycles_change,
    }
}

/// Names the most likely source: the counts a leak leaves (pages, contexts) first, then the
/// figure or role that carries most of the tree's growth.
fn verdict(analysis: &Analysis) -> Verdict {
    let Some(tree) = analysis.tree() else {
        return Verdict {
            source: "none".into(),
            evidence: vec!["no complete cycles to fit".into()],
        };
    };
    let growing_tree = matches!(tree.shape, Some(Shape::Linear | Shape::Accelerating));
    if !growing_tree {
        let shape = format!("{:?}", tree.shape.unwrap_or(Shape::Unknown)).to_lowercase();
        return Verdict {
            source: "none".into(),
            evidence: vec![format!(
                "tree PSS is {shape} after {} warm-up cycles ({:+.0} B/cycle)",
                tree.warmup_cycles, tree.per_cycle
            )],
        };
    }
    let series = |name: &str| analysis.series.iter().find(|s| s.name == name);
    let share = |fit: &SeriesFit| fit.per_cycle / tree.per_cycle.max(1.0);
    let evidence = |fit: &SeriesFit, unit: &str| {
        format!(
            "{} grows {:+.1}{unit}/cycle (R² {:.2}), tree PSS {:+.0} B/cycle",
            fit.name, fit.per_cycle, fit.r2, tree.per_cycle
        )
    };
    for (name, source) in [
        ("browser.contexts", "context-accumulation"),
        ("browser.pages", "page-accumulation"),
    ] {
        if let Some(fit) = series(name).filter(|f| f.per_cycle >= 0.5) {
            return Verdict {
                source: source.into(),
                evidence: vec![evidence(fit, "")],
            };
        }
    }
    if let Some(fit) = series("browser.js_heap_used").filter(|f| share(f) >= 0.5) {
        return Verdict {
            source: "in-page-js".into(),
            evidence: vec![evidence(fit, " B")],
        };
    }
    let heap = series("worker.heapUsed").filter(|f| share(f) >= 0.25);
    let external = series("worker.external").filter(|f| share(f) >= 0.25);
    match (heap, external) {
        (_, Some(external)) if heap.is_none_or(|h| external.per_cycle > h.per_cycle) => {
            return Verdict {
                source: "worker-external".into(),
                evidence: vec![evidence(external, " B")],
            };
        }
        (Some(heap), _) => {
            return Verdict {
                source: "worker-heap".into(),
                evidence: vec![evidence(heap, " B")],
            };
        }
        _ => {}
    }
    let roles = [
        ("role.worker.pss", "worker-heap"),
        ("role.renderer.pss", "renderer-native"),
        ("role.browser.pss", "browser-process"),
    ];
    let largest = roles
        .iter()
        .filter_map(|(name, source)| series(name).map(|fit| (fit, *source)))
        .max_by(|a, b| a.0.per_cycle.total_cmp(&b.0.per_cycle));
    match largest {
        Some((fit, source)) if fit.per_cycle > 0.0 => Verdict {
            source: source.into(),
            evidence: vec![evidence(fit, " B")],
        },
        _ => Verdict {
            source: "none".into(),
            evidence: vec!["no role carries the growth".into()],
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: f64 = 1048576.0;

    /// A deterministic wobble, so the tests need no random numbers.
    fn noise(i: usize, amplitude: f64) -> f64 {
        (((i * 7919) % 13) as f64 / 12.0 - 0.5) * 2.0 * amplitude
    }

    #[test]
    fn finds_a_known_slope_through_noise_and_outliers() {
        let mut ys: Vec<f64> = (0..30)
            .map(|i| 100.0 * MIB + 2.0 * MIB * i as f64 + noise(i, 0.3 * MIB))
            .collect();
        ys[7] += 60.0 * MIB; // one cycle caught before a GC
        ys[19] -= 40.0 * MIB;
        let fit = fit("x", &ys, Some(0), 60.0, 256.0 * 1024.0);
        assert!(
            (fit.per_cycle - 2.0 * MIB).abs() < 0.1 * MIB,
            "{}",
            fit.per_cycle / MIB
        );
        assert!((fit.per_day - 2.0 * MIB * 1440.0).abs() < 0.1 * MIB * 1440.0);
        assert_eq!(fit.shape, Some(Shape::Linear));
        assert!(fit.trustworthy);
    }

    #[test]
    fn a_plateau_after_warm_up_is_not_a_leak() {
        let ys: Vec<f64> = (0..30)
            .map(|i| if i < 6 { 50.0 * MIB + 20.0 * MIB * i as f64 } else { 150.0 * MIB } + noise(i, 0.05 * MIB))
            .collect();
        let fit = fit("x", &ys, None, 10.0, 256.0 * 1024.0);
        assert!(
            (4..=7).contains(&fit.warmup_cycles),
            "warm-up {}",
            fit.warmup_cycles
        );
        assert_eq!(fit.shape, Some(Shape::Plateau));
        assert!(fit.per_cycle.abs() < 0.05 * MIB);
    }

    #[test]
    fn accelerating_growth_is_told_from_linear() {
        let ys: Vec<f64> = (0..30).map(|i| 0.05 * MIB * (i * i) as f64).collect();
        assert_eq!(
            fit("x", &ys, Some(0), 10.0, 256.0 * 1024.0).shape,
            Some(Shape::Accelerating)
        );
        let flat: Vec<f64> = (0..30).map(|i| 80.0 * MIB + noise(i, 0.02 * MIB)).collect();
        assert_eq!(
            fit("x", &flat, Some(0), 10.0, 256.0 * 1024.0).shape,
            Some(Shape::Flat)
        );
    }

    #[test]
    fn a_sawtooth_that_cleanup_resets_does_not_grow() {
        let ys: Vec<f64> = (0..30)
            .map(|i| 60.0 * MIB + (i % 3) as f64 * 4.0 * MIB)
            .collect();
        let fit = fit("x", &ys, Some(0), 10.0, 256.0 * 1024.0);
        assert!(fit.per_cycle.abs() < 0.5 * MIB, "{}", fit.per_cycle / MIB);
        assert_ne!(fit.shape, Some(Shape::Linear));
    }

    #[test]
    fn too_few_cycles_give_no_trustworthy_fit() {
        let three = fit("x", &[1.0, 2.0, 3.0], Some(0), 10.0, 0.5);
        assert!(!three.trustworthy);
        assert_eq!(three.shape, Some(Shape::Unknown));
        assert_eq!(
            fit("x", &[5.0], Some(0), 10.0, 0.5).shape,
            Some(Shape::Unknown)
        );
    }

    fn series(name: &str, per_cycle: f64, shape: Shape) -> SeriesFit {
        SeriesFit {
            name: name.into(),
            per_cycle,
            per_day: per_cycle * 1440.0,
            r2: 0.99,
            shape: Some(shape),
            trustworthy: true,
            ..SeriesFit::default()
        }
    }

    #[test]
    fn the_verdict_follows_counts_first_then_the_figure_or_role_that_grows() {
        let tree = series("tree.pss", 4.0 * MIB, Shape::Linear);
        let verdict_of = |more: Vec<SeriesFit>| {
            let analysis = Analysis {
                series: [vec![tree.clone()], more].concat(),
                ..Analysis::default()
            };
            verdict(&analysis).source
        };
        assert_eq!(
            verdict_of(vec![series("browser.pages", 1.0, Shape::Linear)]),
            "page-accumulation"
        );
        assert_eq!(
            verdict_of(vec![
                series("browser.contexts", 1.0, Shape::Linear),
                series("browser.pages", 1.0, Shape::Linear)
            ]),
            "context-accumulation"
        );
        assert_eq!(
            verdict_of(vec![
                series("browser.pages", 0.0, Shape::Flat),
                series("browser.js_heap_used", 3.0 * MIB, Shape::Linear)
            ]),
            "in-page-js"
        );
        assert_eq!(
            verdict_of(vec![
                series("worker.heapUsed", 3.0 * MIB, Shape::Linear),
                series("worker.external", 0.1 * MIB, Shape::Flat)
            ]),
            "worker-heap"
        );
        assert_eq!(
            verdict_of(vec![
                series("worker.heapUsed", 0.1 * MIB, Shape::Flat),
                series("worker.external", 3.5 * MIB, Shape::Linear)
            ]),
            "worker-external"
        );
        assert_eq!(
            verdict_of(vec![
                series("role.renderer.pss", 3.0 * MIB, Shape::Linear),
                series("role.worker.pss", 0.5 * MIB, Shape::Linear)
            ]),
            "renderer-native"
        );
        assert_eq!(
            verdict_of(vec![series("role.browser.pss", 3.0 * MIB, Shape::Linear)]),
            "browser-process"
        );
        let flat = Analysis {
            series: vec![series("tree.pss", 0.0, Shape::Plateau)],
            ..Analysis::default()
        };
        assert_eq!(verdict(&flat).source, "none");
    }

    #[test]
    fn sites_are_origins() {
        assert_eq!(
            origin("https://shop.example:8443/p/1?x=2"),
            "https://shop.example:8443"
        );
        assert_eq!(origin("data:text/html,<p>hi</p>"), "data:");
        assert_eq!(origin("about:blank"), "about:");
    }

    #[test]
    fn the_per_cycle_distribution_keeps_one_jump_in_its_tail() {
        let mut cycles = Vec::new();
        for (i, pss) in [100u64, 101, 102, 103, 153, 154, 155, 156, 157, 158, 159]
            .iter()
            .enumerate()
        {
            let mut cycle = Cycle {
                index: i as u32 + 1,
                ..Cycle::default()
            };
            cycle.by_role.insert(
                "worker".into(),
                crate::trace::RoleTotals {
                    pss: pss * 1024,
                    anon: 0,
                    count: 1,
                },
            );
            cycles.push(cycle);
        }
        let refs: Vec<&Cycle> = cycles.iter().collect();
        let d = distribution(&refs).unwrap();
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
