//! Before and after a fix: every series' growth rate side by side, and a verdict per series and
//! overall (`fixed`, `improved`, `unchanged`, `regressed`, `new growth`).

use std::{collections::BTreeSet, fmt::Write as _};

use serde::Serialize;

use crate::{
    analysis::{Series, SeriesFit},
    trace::Trace,
    units::bytes,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Change {
    Fixed,
    Improved,
    Unchanged,
    Regressed,
    NewGrowth,
}

impl Change {
    pub fn name(self) -> &'static str {
        match self {
            Change::Fixed => "fixed",
            Change::Improved => "improved",
            Change::Unchanged => "unchanged",
            Change::Regressed => "regressed",
            Change::NewGrowth => "new growth",
        }
    }
}

fn grows(fit: Option<&SeriesFit>) -> bool {
    fit.is_some_and(|f| f.grows() && f.per_cycle > 0.0)
}

/// Between two growths, the after/before ratio of the per-day rates below which it improved,
/// and above which it regressed: a fifth less or more (a rate measured twice on the same
/// worker moves by less).
const IMPROVED_BELOW: f64 = 0.8;
const REGRESSED_ABOVE: f64 = 1.2;

/// How one series changed: growth that stopped is fixed, growth that started is new; between two
/// growths, [`IMPROVED_BELOW`] and [`REGRESSED_ABOVE`] are the lines between unchanged and better
/// or worse.
pub fn change(before: Option<&SeriesFit>, after: Option<&SeriesFit>) -> Change {
    match (grows(before), grows(after)) {
        (true, false) => Change::Fixed,
        (false, true) => Change::NewGrowth,
        (false, false) => Change::Unchanged,
        (true, true) => {
            let (b, a) = (
                before.map_or(0.0, |f| f.per_day),
                after.map_or(0.0, |f| f.per_day),
            );
            if a < IMPROVED_BELOW * b {
                Change::Improved
            } else if a > REGRESSED_ABOVE * b {
                Change::Regressed
            } else {
                Change::Unchanged
            }
        }
    }
}

/// One row of the comparison.
#[derive(Clone, Debug, Serialize)]
pub struct SeriesChange {
    pub name: Series,
    pub before_per_day: Option<f64>,
    pub after_per_day: Option<f64>,
    pub change: Change,
}

pub struct Comparison {
    pub rows: Vec<SeriesChange>,
    /// The tree's change: the answer to "did the fix work".
    pub overall: Change,
    pub warnings: Vec<String>,
}

pub fn compare(before: &Trace, after: &Trace) -> Comparison {
    let mut warnings = Vec::new();
    if before.command != after.command {
        warnings.push(format!(
            "the traces ran different commands (`{}` and `{}`): compared all the same",
            before.command.join(" "),
            after.command.join(" ")
        ));
    }
    for (label, trace) in [("before", before), ("after", after)] {
        if trace.analysis.tree().is_none() {
            warnings.push(format!(
                "the {label} trace has no fit of the tree's owned PSS (no complete cycles, or \
                 written by an older leaktrace): its rates are missing"
            ));
        }
    }
    let names: BTreeSet<&Series> = before
        .analysis
        .series
        .iter()
        .chain(&after.analysis.series)
        .map(|s| &s.name)
        .collect();
    let find = |trace: &'_ Trace, name: &Series| {
        trace
            .analysis
            .series
            .iter()
            .find(|s| s.name == *name)
            .cloned()
    };
    let mut rows: Vec<SeriesChange> = names
        .into_iter()
        .map(|name| {
            let (b, a) = (find(before, name), find(after, name));
            SeriesChange {
                name: name.clone(),
                before_per_day: b.as_ref().map(|f| f.per_day),
                after_per_day: a.as_ref().map(|f| f.per_day),
                change: change(b.as_ref(), a.as_ref()),
            }
        })
        .collect();
    // The tree first, then the rest by name.
    rows.sort_by_key(|r| (r.name != Series::TreeOwned, r.name.clone()));
    let overall = rows
        .iter()
        .find(|r| r.name == Series::TreeOwned)
        .map_or(Change::Unchanged, |r| r.change);
    Comparison {
        rows,
        overall,
        warnings,
    }
}

pub fn render(before: &Trace, after: &Trace, comparison: &Comparison) -> String {
    let mut out = String::new();
    let cycles = |t: &Trace| t.cycles.iter().filter(|c| c.is_measured()).count();
    let _ = writeln!(
        out,
        "leaktrace diff: before `{}` ({} cycles), after `{}` ({} cycles)",
        before.command.join(" "),
        cycles(before),
        after.command.join(" "),
        cycles(after)
    );
    for warning in &comparison.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    let _ = writeln!(
        out,
        "{:<40} {:>14} {:>14}  CHANGE",
        "SERIES", "BEFORE /DAY", "AFTER /DAY"
    );
    let rate = |r: Option<f64>| r.map_or("-".to_string(), |v| bytes(v as i64, true));
    for row in &comparison.rows {
        let name: String = row.name.to_string().chars().take(40).collect();
        let _ = writeln!(
            out,
            "{name:<40} {:>14} {:>14}  {}",
            rate(row.before_per_day),
            rate(row.after_per_day),
            row.change.name()
        );
    }
    let _ = writeln!(
        out,
        "overall (tree owned PSS): {}",
        comparison.overall.name()
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::Shape;

    fn fit(per_day: f64, shape: Shape) -> SeriesFit {
        SeriesFit {
            per_cycle: per_day / 1000.0,
            per_day,
            shape: Some(shape),
            ..SeriesFit::default()
        }
    }

    #[test]
    fn growth_that_stops_is_fixed_and_growth_that_starts_is_new() {
        let leak = fit(1e9, Shape::Linear);
        let flat = fit(1e3, Shape::Flat);
        assert_eq!(change(Some(&leak), Some(&flat)), Change::Fixed);
        assert_eq!(change(Some(&flat), Some(&leak)), Change::NewGrowth);
        assert_eq!(
            change(Some(&leak), Some(&fit(0.5e9, Shape::Linear))),
            Change::Improved
        );
        assert_eq!(
            change(Some(&leak), Some(&fit(1.1e9, Shape::Linear))),
            Change::Unchanged
        );
        assert_eq!(
            change(Some(&leak), Some(&fit(2e9, Shape::Accelerating))),
            Change::Regressed
        );
        assert_eq!(change(None, Some(&leak)), Change::NewGrowth);
        assert_eq!(change(Some(&flat), None), Change::Unchanged);
    }
}
