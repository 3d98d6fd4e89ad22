//! The six answers and the verdict: what a user reads first, derived from the fits.

use serde::{Deserialize, Serialize};

use super::{
    Analysis,
    fit::{SeriesFit, Shape},
    is_whole_tree,
};
use crate::trace::Cycle;

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
    pub growing: Vec<String>,
    /// 3. The phase with the largest mean growth of owned PSS, if it grows.
    pub growth_phase: Option<String>,
    /// 4. The tree's shape, and its warm-up.
    pub shape: Option<Shape>,
    pub warmup_cycles: usize,
    /// 5. The mean owned-PSS change of the cleanup phase (negative: it gives memory back).
    pub cleanup_change: Option<f64>,
    pub cleanup_helps: Option<bool>,
    /// 6. The mean owned-PSS change of cycles where pages or contexts were recreated (their count
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

pub(super) fn answers(analysis: &Analysis, cycles: &[&Cycle]) -> Answers {
    let Some(tree) = analysis.tree() else {
        return Answers::default();
    };
    let mut growing: Vec<&SeriesFit> = analysis
        .series
        .iter()
        .filter(|s| {
            !is_whole_tree(&s.name) && matches!(s.shape, Some(Shape::Linear | Shape::Accelerating))
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
    let count = |c: &Cycle| c.browser.as_ref().map(|b| (b.pages, b.contexts));
    let owned = |c: &Cycle| c.growth.values().map(|g| g.owned() as f64).sum::<f64>();
    let (mut recreated, mut others) = (Vec::new(), Vec::new());
    for pair in cycles.windows(2) {
        match (count(pair[0]), count(pair[1])) {
            (Some(before), Some(after)) if after.0 < before.0 || after.1 < before.1 => {
                recreated.push(owned(pair[1]))
            }
            (Some(_), Some(_)) => others.push(owned(pair[1])),
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
pub(super) fn verdict(analysis: &Analysis) -> Verdict {
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
                "the tree's owned PSS is {shape} after {} warm-up cycles ({:+.0} B/cycle)",
                tree.warmup_cycles, tree.per_cycle
            )],
        };
    }
    let series = |name: &str| analysis.series.iter().find(|s| s.name == name);
    let share = |fit: &SeriesFit| fit.per_cycle / tree.per_cycle.max(1.0);
    let evidence = |fit: &SeriesFit, unit: &str| {
        format!(
            "{} grows {:+.1}{unit}/cycle (R² {:.2}), tree owned PSS {:+.0} B/cycle",
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
        ("role.worker.owned", "worker-heap"),
        ("role.renderer.owned", "renderer-native"),
        ("role.browser.owned", "browser-process"),
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
    use crate::analysis::TREE;

    const MIB: f64 = 1048576.0;

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
        let tree = series(TREE, 4.0 * MIB, Shape::Linear);
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
                series("role.renderer.owned", 3.0 * MIB, Shape::Linear),
                series("role.worker.owned", 0.5 * MIB, Shape::Linear)
            ]),
            "renderer-native"
        );
        assert_eq!(
            verdict_of(vec![series("role.browser.owned", 3.0 * MIB, Shape::Linear)]),
            "browser-process"
        );
        let flat = Analysis {
            series: vec![series(TREE, 0.0, Shape::Plateau)],
            ..Analysis::default()
        };
        assert_eq!(verdict(&flat).source, "none");
    }
}
