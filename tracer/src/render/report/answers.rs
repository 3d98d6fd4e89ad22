//! The answers a trace gives, as one view: the six questions, the cycles left out, the verdict
//! and the budget, worded once. The terminal report, its Markdown and the HTML page all render
//! these rows; none of them reads another's output.

use std::fmt::Write as _;

use crate::units::bytes;
use crate::{
    analysis::{Analysis, MIN_COUNT_GROWTH, SeriesFit, Shape},
    trace::Trace,
};

/// The answers of a trace with cycles.
pub struct AnswersView {
    /// What the answers rest on: cycles, warm-up, cycle length.
    pub heading: String,
    pub rows: Vec<Row>,
}

/// One answer: a short label (empty for a row that continues the one above) and its text.
pub struct Row {
    pub label: &'static str,
    pub text: String,
}

fn shape(fit: &SeriesFit) -> &'static str {
    match fit.shape {
        Some(Shape::Flat) => "flat",
        Some(Shape::Plateau) => "plateau after warm-up",
        Some(Shape::Linear) => "linear",
        Some(Shape::Accelerating) => "accelerating",
        Some(Shape::Unknown) | None => "unknown",
    }
}

/// The view, when the trace has cycles to answer from.
pub fn view(trace: &Trace) -> Option<AnswersView> {
    let analysis = &trace.analysis;
    let tree = analysis.tree()?;
    let mut rows = Vec::new();
    let mut row = |label: &'static str, text: String| rows.push(Row { label, text });
    growth_rate(&mut row, trace, tree);
    what_grows(&mut row, analysis);
    allocators_and_browsers(&mut row, analysis);
    when_and_shape(&mut row, analysis, tree);
    what_helps(&mut row, analysis);
    left_out_verdict_and_budget(&mut row, trace);
    Some(AnswersView {
        heading: format!(
            "{} complete cycles after {} of warm-up, median cycle {:.1} s",
            tree.cycles, tree.warmup_cycles, analysis.cycle_s
        ),
        rows,
    })
}

/// 1. The tree's growth per cycle and per day (or per hour, on a short trace).
fn growth_rate(row: &mut impl FnMut(&'static str, String), trace: &Trace, tree: &SeriesFit) {
    let caveat = if tree.trustworthy {
        ""
    } else {
        "  [too few cycles: not a trustworthy fit]"
    };
    let unit = RateUnit::of(trace.duration_s);
    let if_it_went_on = if unit.extrapolated {
        format!(
            " if it went on (a {} trace)",
            crate::units::duration(trace.duration_s)
        )
    } else {
        String::new()
    };
    row(
        "growth rate",
        format!(
            "tree owned PSS {}/cycle, {}/{}{if_it_went_on} (trend p {:.3}, R² {:.2}){caveat}",
            bytes(tree.per_cycle as i64, true),
            unit.rate(tree.per_day),
            unit.name(),
            tree.trend_p,
            tree.r2
        ),
    );
}

/// 2. The series that grows fastest, and the counts that grow.
fn what_grows(row: &mut impl FnMut(&'static str, String), analysis: &Analysis) {
    let fastest = analysis
        .series
        .iter()
        .filter(|s| !s.name.is_whole_tree() && !s.name.is_count())
        .max_by(|a, b| a.per_day.total_cmp(&b.per_day));
    let mut label = "what grows";
    if let Some(fastest) = fastest.filter(|f| f.per_cycle > 0.0) {
        row(
            label,
            format!(
                "{} {}/cycle ({})",
                fastest.name,
                bytes(fastest.per_cycle as i64, true),
                shape(fastest)
            ),
        );
        label = "";
    }
    for count in analysis
        .series
        .iter()
        .filter(|s| s.name.is_count() && s.per_cycle >= MIN_COUNT_GROWTH)
    {
        row(
            label,
            format!("{} {:+.1}/cycle", count.name, count.per_cycle),
        );
        label = "";
    }
}

/// Chromium's allocators that grew, and browser instances piling up.
fn allocators_and_browsers(row: &mut impl FnMut(&'static str, String), analysis: &Analysis) {
    let answers = &analysis.answers;
    // Chromium's own account (`--memory-dumps`): the allocators that grew most.
    let grown: Vec<String> = analysis
        .allocators
        .iter()
        .filter(|a| a.growth > 0)
        .take(3)
        .map(|a| format!("{} {} {}", a.role, a.allocator, bytes(a.growth, true)))
        .collect();
    if let Some(first) = analysis.allocators.first().filter(|_| !grown.is_empty()) {
        row(
            "allocators",
            format!(
                "{} (Chromium's memory dumps, cycles {} to {})",
                grown.join(", "),
                first.from_cycle,
                first.to_cycle
            ),
        );
    }
    if let (Some(alive), Some(first)) = (answers.browsers_alive, answers.browsers_at_start)
        && alive > first
    {
        row(
            "browsers",
            format!("{alive} browser instances alive at the last cycle end, {first} at the first"),
        );
    }
}

/// 3. and 4. In which phase it grows, its shape, and the per-cycle changes.
fn when_and_shape(
    row: &mut impl FnMut(&'static str, String),
    analysis: &Analysis,
    tree: &SeriesFit,
) {
    if !analysis.phase_growth.is_empty() {
        let phases: Vec<String> = analysis
            .phase_growth
            .iter()
            .map(|(name, growth)| format!("{name} {}", bytes(*growth as i64, true)))
            .collect();
        row(
            "when",
            format!("owned PSS change per phase, mean: {}", phases.join(", ")),
        );
    }
    row("shape", shape(tree).to_string());
    if let Some(d) = &analysis.cycle_growth {
        row(
            "per cycle",
            format!(
                "tree owned PSS change: median {}, p90 {}, max {} (min {})",
                bytes(d.p50, true),
                bytes(d.p90, true),
                bytes(d.max, true),
                bytes(d.min, true)
            ),
        );
    }
}

/// 5. and 6. Whether cleanup and page recreation give memory back.
fn what_helps(row: &mut impl FnMut(&'static str, String), analysis: &Analysis) {
    let answers = &analysis.answers;
    if let Some(cleanup) = answers.cleanup_change {
        let gives = if answers.cleanup_helps == Some(true) {
            "gives memory back"
        } else {
            "gives nothing back"
        };
        row(
            "cleanup",
            format!(
                "{gives}: {} per cycle, against {} in the other phases",
                bytes(cleanup as i64, true),
                bytes(answers.other_phases_change.unwrap_or(0.0) as i64, true)
            ),
        );
    }
    if let Some(recreation) = answers.recreation_change {
        row(
            "recreation",
            format!(
                "cycles that recreated pages or contexts: {} owned PSS, others {}",
                bytes(recreation as i64, true),
                bytes(answers.other_cycles_change.unwrap_or(0.0) as i64, true)
            ),
        );
    }
}

/// The cycles left out, the verdict, and the budget.
fn left_out_verdict_and_budget(row: &mut impl FnMut(&'static str, String), trace: &Trace) {
    let analysis = &trace.analysis;
    for cycle in trace.cycles.iter().filter(|c| c.teardown) {
        row(
            "left out",
            format!(
                "cycle {}: {}",
                cycle.index,
                cycle
                    .teardown_reason
                    .as_deref()
                    .unwrap_or("the tree tore down")
            ),
        );
    }
    let verdict = &analysis.verdict;
    if !verdict.evidence.is_empty() {
        row(
            "verdict",
            format!("{}: {}", verdict.source, verdict.evidence.join("; ")),
        );
    }
    if let Some(budget) = &analysis.budget {
        row(
            "budget",
            format!(
                "{}/day allowed, {}/day measured: {}",
                bytes(budget.limit_per_day as i64, false),
                bytes(budget.measured_per_day as i64, true),
                if budget.pass {
                    "pass"
                } else {
                    "EXCEEDED (exit 3)"
                }
            ),
        );
    }
}

impl AnswersView {
    /// As the terminal shows it: a heading, then the rows under aligned labels.
    pub fn text(&self) -> String {
        let mut out = format!("ANSWERS ({})\n", self.heading);
        for row in &self.rows {
            let _ = writeln!(out, "  {:<13} {}", row.label, row.text);
        }
        out
    }

    /// As Markdown: one bullet per answer (continuation rows join their answer's bullet).
    pub fn markdown(&self) -> String {
        let mut out = format!("**Answers** ({})\n\n", self.heading);
        for row in &self.rows {
            if row.label.is_empty() {
                let _ = writeln!(out, "  {}", row.text);
            } else {
                let _ = writeln!(out, "- **{}**: {}", row.label, row.text);
            }
        }
        out
    }
}

/// Per hour for a trace of hours, per day for longer ones; marked as an extrapolation when the
/// trace was shorter than the unit.
pub struct RateUnit {
    seconds: f64,
    pub extrapolated: bool,
}

impl RateUnit {
    pub fn of(trace_s: f64) -> RateUnit {
        let seconds = if trace_s < 6.0 * 3600.0 {
            3600.0
        } else {
            86400.0
        };
        RateUnit {
            seconds,
            extrapolated: trace_s < seconds,
        }
    }

    /// `hour` or `day`.
    pub fn name(&self) -> &'static str {
        if self.seconds < 86400.0 {
            "hour"
        } else {
            "day"
        }
    }

    pub fn heading(&self) -> &'static str {
        if self.seconds < 86400.0 {
            "PER HOUR"
        } else {
            "PER DAY"
        }
    }

    pub fn rate(&self, per_day: f64) -> String {
        let value = bytes((per_day * self.seconds / 86400.0) as i64, true);
        if self.extrapolated {
            format!("≈{value}")
        } else {
            value
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_per_hour_or_day_and_marked_when_extrapolated() {
        let short = RateUnit::of(14.0);
        assert_eq!(short.heading(), "PER HOUR");
        assert_eq!(short.rate(24.0 * 1024.0 * 1024.0), "≈+1.0M");
        let long = RateUnit::of(2.0 * 86400.0);
        assert_eq!(long.heading(), "PER DAY");
        assert_eq!(long.rate(2048.0), "+2.0K");
        assert_eq!(RateUnit::of(8.0 * 3600.0).rate(1024.0), "≈+1.0K");
    }
}
