//! Fitting one series of values at cycle ends: Theil–Sen slope (the median of pairwise slopes:
//! robust to outliers, such as a GC in one cycle), least squares beside it for R², the warm-up
//! as the knee of a two-segment fit, and the shape.

use serde::{Deserialize, Serialize};

/// Fewer complete cycles than this after warm-up give no trustworthy fit.
pub const MIN_CYCLES: usize = 5;
/// Below this R², a line explains too little of the cycles for their slope to be growth.
const MIN_R2: f64 = 0.5;
pub(crate) const SECONDS_PER_DAY: f64 = 86_400.0;

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

pub(crate) fn median(values: &mut [f64]) -> Option<f64> {
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
}
