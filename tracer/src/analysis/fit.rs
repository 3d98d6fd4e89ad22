//! Fitting one series of values at cycle ends: how fast it grows, whether it grows at all, its
//! shape, and its warm-up.
//!
//! - The slope is Theil–Sen (Sen's slope: the median of pairwise slopes), so one odd cycle — a
//!   GC, or a last snapshot taken after the browser closed — barely moves it. Least squares
//!   stays beside it only for R², a figure for the reader, no longer a gate: one outlier
//!   collapses R².
//! - Whether it grows is the Mann–Kendall trend test: S sums the signs of all later-minus-earlier
//!   pairs, so one outlier changes at most n − 1 of its n(n − 1)/2 terms, and a value's size
//!   does not matter, only its order. Var(S) is corrected for ties (page-quantised memory and
//!   counts repeat values), then by Hamed & Rao (1998) for autocorrelation: from the ranks of
//!   the series detrended by Sen's slope, the lag-k autocorrelations significant at 5%
//!   (|r_k| > 1.96/√n) scale Var(S) by n/n*_s = 1 + 2/(n(n−1)(n−2)) Σ (n−k)(n−k−1)(n−k−2) r_k.
//!   That factor is clamped to at least 1: negative autocorrelation (a sawtooth's alternating
//!   residuals) would otherwise make the test over-confident, and on short series the sum can
//!   drive the factor to 0 or below. Z and its two-sided p-value follow (normal approximation,
//!   continuity-corrected).
//! - A series grows when Mann–Kendall finds an increasing trend at p < 0.01 (1%: many series
//!   are fitted per trace, so a looser level would call some noise a leak) and Sen's slope times
//!   the fitted cycles exceeds the caller's `significant` change. Below `significant` it is flat
//!   (or a plateau after a warm-up that grew) however few its cycles. Above it on 5 cycles, its
//!   shape is unknown: even a strictly increasing series needs 6 cycles to reach p < 0.01.
//! - Accelerating: growing, the Sen slope of the second half more than twice the first half's
//!   (by more than `significant` over the half), and Mann–Kendall also finds the per-cycle
//!   increments increasing at p < 0.01. One outlier can drag a short half's Sen slope, but not
//!   that last test: a spike makes one increment high and the next low, whose terms in S nearly
//!   cancel (at the first or last cycle it moves a single increment, n − 2 terms at most).
//! - Warm-up: the knee of a two-segment fit of the per-cycle increments, each segment costed by
//!   the absolute deviations from its median (a continuous two-piece line whose slope changes at
//!   the knee). Least squares let one bad cycle pull the knee towards itself, since its squared
//!   residual dominated the sum; here a bad cycle adds two bounded terms wherever the knee is,
//!   so it moves the knee no more than two ordinary cycles would. The knee counts only when the
//!   Sen-slope rise before it exceeds `significant` and three times the rise after it. Prefix
//!   and suffix costs come from a sorted insertion each: O(n²), cheap for a few thousand cycles.

use crate::trace::{
    digest::{Binned, median},
    findings::{Series, SeriesFit, Shape},
};

/// Fewer complete cycles than this after warm-up give no trustworthy fit.
pub const MIN_CYCLES: usize = 5;
/// The two-sided Mann–Kendall p-value below which a series trends (see the module doc).
const ALPHA: f64 = 0.01;
/// Mann–Kendall cannot reach ALPHA on fewer cycles: a strictly increasing 5 has p = 0.028.
pub const TREND_MIN_CYCLES: usize = 6;
pub(crate) const SECONDS_PER_DAY: f64 = 86_400.0;
/// A lag's autocorrelation counts in Hamed–Rao's correction when |r_k| exceeds this over √n:
/// the two-sided 5% point of the normal distribution.
const AUTOCORRELATION_Z: f64 = 1.96;
/// A warm-up's knee counts when the rise before it is more than this many times the rise after.
const WARMUP_RISE_RATIO: f64 = 3.0;
/// Accelerating: the second half's slope more than this many times the first half's (Chromium's
/// own creep can tilt a linear leak's second half by half again).
const ACCELERATION_RATIO: f64 = 2.0;

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

/// A Mann–Kendall trend: the statistic S, its variance under no trend (tie-corrected, before the
/// autocorrelation factor), the Hamed–Rao factor, and the resulting Z and two-sided p-value.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Trend {
    s: f64,
    var_s: f64,
    factor: f64,
    z: f64,
    p: f64,
}

impl Trend {
    fn increasing(&self) -> bool {
        self.z > 0.0 && self.p < ALPHA
    }
}

/// Mann–Kendall S and its tie-corrected variance:
/// Var(S) = (n(n−1)(2n+5) − Σ t(t−1)(2t+5)) / 18 over the groups of t equal values.
fn mann_kendall_s(ys: &[f64]) -> (f64, f64) {
    let mut s = 0i64;
    for (i, a) in ys.iter().enumerate() {
        for b in &ys[i + 1..] {
            s += match b.total_cmp(a) {
                std::cmp::Ordering::Greater => 1,
                std::cmp::Ordering::Less => -1,
                std::cmp::Ordering::Equal => 0,
            };
        }
    }
    let term = |t: usize| {
        let t = t as f64;
        t * (t - 1.0) * (2.0 * t + 5.0)
    };
    let mut sorted = ys.to_vec();
    sorted.sort_by(f64::total_cmp);
    let ties: f64 = sorted
        .chunk_by(|a, b| a == b)
        .map(|group| term(group.len()))
        .sum();
    (s as f64, (term(ys.len()) - ties) / 18.0)
}

/// Average ranks (1-based) of `values`, values within `tolerance` of their group's smallest
/// sharing one: a detrended exact line should be all ties, not rounding errors in some order.
fn ranks(values: &[f64], tolerance: f64) -> Vec<f64> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[a].total_cmp(&values[b]));
    let mut ranks = vec![0.0; values.len()];
    let mut start = 0;
    while start < order.len() {
        let lowest = values[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| values[i] - lowest <= tolerance)
                .count();
        // Positions start..end hold ranks start+1..=end: their average.
        let rank = (start + end + 1) as f64 / 2.0;
        for &i in &order[start..end] {
            ranks[i] = rank;
        }
        start = end;
    }
    ranks
}

/// Hamed & Rao's n/n*_s: how much autocorrelation of the detrended series widens Var(S), from
/// the lag-k autocorrelations of its ranks that are significant at 5%. Clamped to at least 1
/// (see the module doc).
fn hamed_rao_factor(ys: &[f64], sen_slope: f64) -> f64 {
    let n = ys.len();
    if n < 3 {
        return 1.0;
    }
    let detrended: Vec<f64> = ys
        .iter()
        .enumerate()
        .map(|(i, y)| y - sen_slope * i as f64)
        .collect();
    let scale = ys.iter().fold(0.0f64, |m, y| m.max(y.abs()));
    let ranks = ranks(&detrended, 1e-9 * scale);
    let mean = (n + 1) as f64 / 2.0;
    let centred: Vec<f64> = ranks.iter().map(|r| r - mean).collect();
    let variance: f64 = centred.iter().map(|c| c * c).sum();
    if variance == 0.0 {
        return 1.0;
    }
    let nf = n as f64;
    let bound = AUTOCORRELATION_Z / nf.sqrt();
    let mut sum = 0.0;
    // Lags n − 2 and beyond weigh (n−k)(n−k−1)(n−k−2) = 0.
    for k in 1..n - 2 {
        let r_k = centred
            .iter()
            .zip(&centred[k..])
            .map(|(a, b)| a * b)
            .sum::<f64>()
            / variance;
        if r_k.abs() > bound {
            let m = (n - k) as f64;
            sum += m * (m - 1.0) * (m - 2.0) * r_k;
        }
    }
    (1.0 + 2.0 * sum / (nf * (nf - 1.0) * (nf - 2.0))).max(1.0)
}

/// The Mann–Kendall test of `ys`, its variance corrected for ties and (Hamed–Rao) for the
/// autocorrelation left after removing `sen_slope`.
fn mann_kendall(ys: &[f64], sen_slope: f64) -> Trend {
    let (s, var_s) = mann_kendall_s(ys);
    let factor = hamed_rao_factor(ys, sen_slope);
    let corrected = var_s * factor;
    // Continuity correction: S moves in steps of 2.
    let z = if corrected <= 0.0 || s == 0.0 {
        0.0
    } else {
        (s - s.signum()) / corrected.sqrt()
    };
    Trend {
        s,
        var_s,
        factor,
        z,
        p: erfc(z.abs() / std::f64::consts::SQRT_2).min(1.0),
    }
}

/// The complementary error function (Numerical Recipes' Chebyshev fit, relative error below
/// 1.2e-7): the two-sided normal p-value of z is erfc(|z|/√2).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 { r } else { 2.0 - r }
}

/// Whether `ys` rises by Mann–Kendall, detrending by its own Sen slope.
fn rises(ys: &[f64]) -> bool {
    theil_sen(ys).is_some_and(|(slope, _)| mann_kendall(ys, slope).increasing())
}

/// `costs[k]`: the sum of absolute deviations of the first k `values` from their median,
/// kept sorted by insertion (O(n) each).
fn l1_costs(values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sorted: Vec<f64> = Vec::new();
    let mut costs = vec![0.0];
    for v in values {
        let at = sorted.partition_point(|x| *x < v);
        sorted.insert(at, v);
        // Any value between the two middle ones minimises the absolute deviations.
        let middle = sorted[sorted.len() / 2];
        costs.push(sorted.iter().map(|x| (x - middle).abs()).sum());
    }
    costs
}

/// The warm-up: the knee of the best two-segment fit of the per-cycle increments by absolute
/// deviations from each segment's median, when the growth before it is clearly steeper than
/// after; 0 otherwise.
pub fn detect_warmup(ys: &[f64], significant: f64) -> usize {
    if ys.len() < MIN_CYCLES + 2 {
        return 0;
    }
    let increments: Vec<f64> = ys.windows(2).map(|w| w[1] - w[0]).collect();
    // before[k]: the cost of increments[..k]; after[k]: of increments[k..].
    let before = l1_costs(increments.iter().copied());
    let mut after = l1_costs(increments.iter().rev().copied());
    after.reverse();
    let mut knee = 0;
    for k in 2..=ys.len() / 2 {
        if knee == 0 || before[k] + after[k] < before[knee] + after[knee] {
            knee = k;
        }
    }
    let rise = |part: &[f64]| theil_sen(part).map_or(0.0, |f| f.0) * (part.len() - 1) as f64;
    let (before, after) = (rise(&ys[..=knee]), rise(&ys[knee..]));
    // A warm-up grows clearly, and more than everything after it.
    if before > significant && before > WARMUP_RISE_RATIO * after.max(0.0) {
        knee
    } else {
        0
    }
}

/// Fits one series of values at cycle ends.
/// `significant`: the smallest total change over the fitted cycles that counts as growth.
pub fn fit(
    name: impl Into<Series>,
    ys: &[f64],
    warmup: Option<usize>,
    cycle_s: f64,
    significant: f64,
) -> SeriesFit {
    let binned: Binned<f64> = ys.iter().copied().collect();
    fit_binned(name, &binned, warmup, cycle_s, significant)
}

/// Fits a series binned as [`crate::trace::digest`] says: on a long trace, a point stands for
/// `width` cycles, so the slope per point is divided by it; the total change, and so
/// `significant`, is the same. `warmup` is in cycles.
pub fn fit_binned(
    name: impl Into<Series>,
    binned: &Binned<f64>,
    warmup: Option<usize>,
    cycle_s: f64,
    significant: f64,
) -> SeriesFit {
    let (points, k) = (binned.points(), binned.width());
    if k == 1 {
        return fit_points(name, points, warmup, cycle_s, significant);
    }
    let covered = points.len() * k;
    let mut fitted = fit_points(
        name,
        points,
        warmup.map(|w| w.div_ceil(k)),
        cycle_s * k as f64,
        significant,
    );
    fitted.per_cycle /= k as f64;
    fitted.warmup_cycles = (fitted.warmup_cycles * k).min(covered);
    fitted.cycles = covered - fitted.warmup_cycles;
    fitted.bin_cycles = k;
    fitted
}

fn fit_points(
    name: impl Into<Series>,
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
        name: name.into(),
        warmup_cycles,
        cycles: post.len(),
        trustworthy: post.len() >= MIN_CYCLES,
        ..SeriesFit::default()
    };
    let (Some((slope, _)), Some((_, _, r2))) = (theil_sen(post), least_squares(post)) else {
        result.shape = Some(Shape::Unknown);
        return result;
    };
    let trend = mann_kendall(post, slope);
    result.per_cycle = slope;
    result.per_day = if cycle_s > 0.0 {
        slope * SECONDS_PER_DAY / cycle_s
    } else {
        0.0
    };
    result.r2 = r2;
    result.trend_z = trend.z;
    result.trend_p = trend.p;
    let large = slope * post.len() as f64 > significant;
    result.shape = Some(
        if !result.trustworthy || (large && post.len() < TREND_MIN_CYCLES) {
            // A rise too large to call flat, on too few cycles for the test to call it growth.
            Shape::Unknown
        } else if !(large && trend.increasing()) {
            // The warm-up's rise by Sen's slope too: one odd first or last warm-up cycle
            // neither makes nor unmakes a plateau.
            let warmup_rise =
                theil_sen(&ys[..=warmup_cycles]).map_or(0.0, |f| f.0 * warmup_cycles as f64);
            if warmup_cycles > 0 && warmup_rise > significant {
                Shape::Plateau
            } else {
                Shape::Flat
            }
        } else {
            let half = post.len() / 2;
            let first = theil_sen(&post[..=half]).map_or(0.0, |f| f.0);
            let second = theil_sen(&post[half..]).map_or(0.0, |f| f.0);
            let increments: Vec<f64> = post.windows(2).map(|w| w[1] - w[0]).collect();
            // The increments must trend up as well: one outlier can drag a short half's median,
            // but its high and low increments cancel in Mann–Kendall's S.
            if second > ACCELERATION_RATIO * first.max(0.0)
                && (second - first) * (post.len() - half) as f64 > significant
                && rises(&increments)
            {
                Shape::Accelerating
            } else {
                Shape::Linear
            }
        },
    );
    result
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
    fn a_long_trace_is_fitted_on_bins_with_the_same_slope_warm_up_and_day_rate() {
        // 100,000 cycles of 1 s: a 20,000-cycle warm-up rising 1 KiB a cycle, then 64 bytes a
        // cycle with page-sized noise and a GC outlier every 97 cycles.
        let ys: Vec<f64> = (0..100_000)
            .map(|i| {
                let base = if i < 20_000 {
                    1024.0 * i as f64
                } else {
                    1024.0 * 20_000.0 + 64.0 * (i - 20_000) as f64
                };
                base + noise(i, 4096.0) + if i % 97 == 0 { 50.0 * MIB } else { 0.0 }
            })
            .collect();
        let fit = fit("x", &ys, None, 1.0, 256.0 * 1024.0);
        assert_eq!(fit.bin_cycles, 243);
        assert!((fit.per_cycle - 64.0).abs() < 2.0, "{}", fit.per_cycle);
        assert!((fit.per_day - 64.0 * 86_400.0).abs() < 2.0 * 86_400.0);
        assert!(
            (19_000..=21_000).contains(&fit.warmup_cycles),
            "warm-up {}",
            fit.warmup_cycles
        );
        assert_eq!(fit.cycles, 411 * 243 - fit.warmup_cycles);
        assert_eq!(fit.shape, Some(Shape::Linear));
        // Short traces are fitted cycle by cycle.
        assert_eq!(super::fit("x", &ys[..1000], None, 1.0, 1.0).bin_cycles, 1);
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

    /// A teardown snapshot: the browser closed, the tree's memory dropped by 800 MiB.
    #[test]
    fn a_teardown_outlier_last_does_not_hide_linear_growth() {
        let mut ys: Vec<f64> = (0..20)
            .map(|i| 900.0 * MIB + MIB * i as f64 + noise(i, 0.05 * MIB))
            .collect();
        ys[19] -= 800.0 * MIB;
        let fit = fit("x", &ys, None, 10.0, 256.0 * 1024.0);
        assert_eq!(fit.warmup_cycles, 0);
        assert_eq!(fit.shape, Some(Shape::Linear), "{fit:?}");
        assert!(
            (fit.per_cycle - MIB).abs() < 0.05 * MIB,
            "{}",
            fit.per_cycle / MIB
        );
        assert!(fit.trend_z > 0.0 && fit.trend_p < 0.01, "{fit:?}");
        // What the R² gate used to see: the outlier leaves a line explaining almost nothing.
        assert!(fit.r2 < 0.5, "{}", fit.r2);
    }

    #[test]
    fn a_spike_after_a_plateau_is_neither_growth_nor_the_warm_up() {
        let mut ys: Vec<f64> = (0..30)
            .map(|i| {
                if i < 6 {
                    50.0 * MIB + 20.0 * MIB * i as f64
                } else {
                    150.0 * MIB
                }
            } + noise(i, 0.05 * MIB))
            .collect();
        ys[17] += 300.0 * MIB; // a GC spike
        let fit = fit("x", &ys, None, 10.0, 256.0 * 1024.0);
        assert!(
            (4..=7).contains(&fit.warmup_cycles),
            "warm-up {}",
            fit.warmup_cycles
        );
        assert_eq!(fit.shape, Some(Shape::Plateau), "{fit:?}");
        // Right after the warm-up, and last: where a spike pulls least squares hardest.
        for at in [8, 29] {
            let mut ys = ys.clone();
            ys[17] -= 300.0 * MIB;
            ys[at] += 300.0 * MIB;
            let fit = super::fit("x", &ys, None, 10.0, 256.0 * 1024.0);
            assert!((4..=7).contains(&fit.warmup_cycles), "{at}: {fit:?}");
            assert_eq!(fit.shape, Some(Shape::Plateau), "{at}: {fit:?}");
        }
    }

    #[test]
    fn flat_noise_with_one_spike_is_flat() {
        for at in [0, 10, 29] {
            let mut ys: Vec<f64> = (0..30).map(|i| 80.0 * MIB + noise(i, 0.2 * MIB)).collect();
            ys[at] += 500.0 * MIB;
            let fit = fit("x", &ys, None, 10.0, 256.0 * 1024.0);
            assert_eq!(fit.shape, Some(Shape::Flat), "spike at {at}: {fit:?}");
        }
    }

    #[test]
    fn one_outlier_anywhere_does_not_make_linear_growth_accelerate() {
        // On 8 cycles a half is 4 cycles, whose Sen slope one outlier does drag: only the
        // increments' trend keeps those linear (or, for a dip, flat: 8 cycles are few).
        for n in [8, 20] {
            let line: Vec<f64> = (0..n)
                .map(|i| 300.0 * MIB + MIB * i as f64 + noise(i, 0.4 * MIB))
                .collect();
            for at in 0..n {
                for jump in [-800.0 * MIB, 800.0 * MIB] {
                    let mut ys = line.clone();
                    ys[at] += jump;
                    let fit = fit("x", &ys, Some(0), 10.0, 256.0 * 1024.0);
                    assert_ne!(
                        fit.shape,
                        Some(Shape::Accelerating),
                        "{jump} at {at}: {fit:?}"
                    );
                    if n == 20 {
                        assert_eq!(fit.shape, Some(Shape::Linear), "{jump} at {at}: {fit:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn page_quantised_ties_are_judged_by_their_order() {
        const PAGE: f64 = 4096.0;
        // Flat: three page levels in an irregular order.
        let levels = [0, 2, 1, 1, 0, 2, 2, 1, 0, 1, 2, 0, 0, 1, 2];
        let flat: Vec<f64> = (0..30)
            .map(|i| 4000.0 * PAGE + levels[i % levels.len()] as f64 * PAGE)
            .collect();
        assert_eq!(
            fit("x", &flat, Some(0), 10.0, 8192.0).shape,
            Some(Shape::Flat)
        );
        // A staircase: one more page every third cycle.
        let stairs: Vec<f64> = (0..30)
            .map(|i| 4000.0 * PAGE + (i / 3) as f64 * PAGE)
            .collect();
        let fit = fit("x", &stairs, None, 10.0, 8192.0);
        assert_eq!(fit.shape, Some(Shape::Linear), "{fit:?}");
        assert!((fit.per_cycle - PAGE / 3.0).abs() < 0.1 * PAGE, "{fit:?}");
    }

    #[test]
    fn tie_corrected_variance_by_hand() {
        // [1, 2, 2, 3, 3, 3]: the 1 is below all five others (+5), each 2 below the three 3s
        // (+3, +3), the tied pairs count 0: S = 11.
        // Var(S) = (n(n−1)(2n+5) − Σ t(t−1)(2t+5)) / 18 with n = 6 and tie groups of 2 and 3:
        // (6·5·17 − 2·1·9 − 3·2·11) / 18 = (510 − 18 − 66) / 18 = 426 / 18.
        let (s, var_s) = mann_kendall_s(&[1.0, 2.0, 2.0, 3.0, 3.0, 3.0]);
        assert_eq!(s, 11.0);
        assert!((var_s - 426.0 / 18.0).abs() < 1e-12, "{var_s}");
        // No ties: n(n−1)(2n+5)/18; all tied: no variance, so no trend.
        assert_eq!(
            mann_kendall_s(&[4.0, 1.0, 3.0]),
            (-1.0, 3.0 * 2.0 * 11.0 / 18.0)
        );
        let constant = mann_kendall(&[7.0; 8], 0.0);
        assert_eq!((constant.z, constant.p), (0.0, 1.0));
    }

    #[test]
    fn mann_kendall_on_known_series() {
        // [3, 1, 4, 1, 5]: from 3: −1 +1 −1 +1; from 1: +1 0 +1; from 4: −1 +1; from 1: +1.
        assert_eq!(mann_kendall_s(&[3.0, 1.0, 4.0, 1.0, 5.0]).0, 3.0);
        // Strictly increasing, n = 10: S = 45, Var(S) = 10·9·25/18 = 125, Z = 44/√125 = 3.94.
        let ys: Vec<f64> = (0..10).map(|i| 0.1 * i as f64).collect();
        let trend = mann_kendall(&ys, theil_sen(&ys).unwrap().0);
        assert_eq!((trend.s, trend.factor), (45.0, 1.0));
        assert!((trend.z - 44.0 / 125f64.sqrt()).abs() < 1e-9, "{trend:?}");
        assert!(trend.p < 0.001, "{trend:?}");
        assert!(trend.increasing());
        // Decreasing is a trend, but not growth.
        let down: Vec<f64> = ys.iter().rev().copied().collect();
        let trend = mann_kendall(&down, theil_sen(&down).unwrap().0);
        assert!(trend.z < 0.0 && trend.p < 0.001 && !trend.increasing());
    }

    #[test]
    fn the_normal_tail_matches_its_tables() {
        for (z, p) in [
            (0.0, 1.0),
            (1.959964, 0.05),
            (2.575829, 0.01),
            (3.290527, 0.001),
        ] {
            let two_sided = erfc(z / std::f64::consts::SQRT_2);
            assert!(
                (two_sided - p).abs() < 1e-6 * p.max(1e-3),
                "{z}: {two_sided}"
            );
        }
        assert!((erfc(-1.0) - (2.0 - erfc(1.0))).abs() < 1e-12);
    }

    #[test]
    fn autocorrelated_residuals_widen_the_variance() {
        // A slow wave around a weak trend: neighbours' residuals agree, which Hamed–Rao counts.
        let ys: Vec<f64> = (0..40)
            .map(|i| i as f64 + 30.0 * (i as f64 / 6.0).sin())
            .collect();
        let slope = theil_sen(&ys).unwrap().0;
        assert!(
            hamed_rao_factor(&ys, slope) > 1.5,
            "{}",
            hamed_rao_factor(&ys, slope)
        );
        // A sawtooth's alternating residuals would shrink it: clamped to 1.
        let saw: Vec<f64> = (0..40).map(|i| (i % 2) as f64).collect();
        assert_eq!(hamed_rao_factor(&saw, 0.0), 1.0);
    }

    #[test]
    fn five_cycles_tell_flat_but_not_growth() {
        let rising = fit("x", &[1.0, 2.0, 3.0, 4.0, 5.0], Some(0), 10.0, 0.5);
        assert!(rising.trustworthy);
        assert!(rising.trend_p > 0.01, "{rising:?}");
        assert_eq!(rising.shape, Some(Shape::Unknown));
        let six = fit("x", &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], Some(0), 10.0, 0.5);
        assert_eq!(six.shape, Some(Shape::Linear), "{six:?}");
        let flat = fit("x", &[5.0, 5.0, 6.0, 5.0, 5.0], Some(0), 10.0, 0.5);
        assert_eq!(flat.shape, Some(Shape::Flat));
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
}
