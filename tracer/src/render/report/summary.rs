//! The short report, printed by default: what a person reads first, on one screen and at most
//! [`WIDTH`] columns. The verdict and its first reason on top, the answers, resident memory and
//! its growth per role with rates a person can hold, the processes that grew most, the
//! browser's counts, lost events, and a line naming what `--full`, `--html` and `-o` add.
//! Everything else stays in the full report (`report --full`) and the JSON.
//!
//! Colour marks the verdict and the growing rows. It is written as ANSI styles and left to
//! the printer ([`anstream`]) to keep or strip: kept on a terminal, stripped when piped or with
//! `NO_COLOR`.

use std::fmt::Write as _;

use anstyle::{AnsiColor, Style};

use super::{
    answers::{self, RateUnit},
    truncate,
};
use crate::{
    analysis::{Series, SeriesFit, Shape},
    collect::roles::Role,
    trace::{Process, RoleTotals, Trace},
    units::{bytes, duration, size},
};

/// The widest line the short report prints.
pub const WIDTH: usize = 100;
/// Processes listed as the ones that grew most.
const TOP_PROCESSES: usize = 5;
/// Answer labels are this wide; their text wraps under itself.
const LABEL: usize = 13;

const GROWING: Style = AnsiColor::Red.on_default().bold();
const HEALTHY: Style = AnsiColor::Green.on_default().bold();
const HEADING: Style = Style::new().bold();

/// The short report, lines at most `width` columns (at most [`WIDTH`]).
pub fn render(trace: &Trace, width: usize) -> String {
    let width = width.clamp(60, WIDTH);
    let mut out = String::new();
    header(&mut out, trace, width);
    for warning in &trace.warnings {
        wrap_into(&mut out, "warning: ", warning, width);
    }
    if let Some(last) = trace.segments.last().filter(|_| trace.segments.len() > 1) {
        let text = format!(
            "{} (the answers are of the last: pid {}, from cycle {}; `--full` lists them)",
            trace.segments.len(),
            last.root_pid,
            last.first_cycle
        );
        wrap_into(&mut out, "INSTANCES of the followed worker: ", &text, width);
    }
    let view = answers::view(trace);
    verdict(&mut out, trace, width);
    if let Some(view) = &view {
        let _ = writeln!(out, "\n{HEADING}ANSWERS{HEADING:#} ({})", view.heading);
        for row in view
            .rows
            .iter()
            .filter(|r| !matches!(r.label, "verdict" | "budget"))
        {
            let label = format!("  {:<LABEL$} ", row.label);
            wrap_into(&mut out, &label, &row.text, width);
        }
    }
    by_role(&mut out, trace);
    grew_most(&mut out, trace, width);
    browser(&mut out, trace);
    let lost = super::lost_reasons(trace);
    if !lost.is_empty() {
        let text = format!("the figures above are incomplete: {}", lost.join(", "));
        wrap_into(&mut out, "\nLOST EVENTS  ", &text, width);
    }
    wrap_into(
        &mut out,
        "\nmore: ",
        "`leaktrace report --full TRACE.json` prints every table (cycles, phases, each process, \
         address space, regions); --html FILE draws the plots; -o FILE keeps the trace (JSON)",
        width,
    );
    out
}

/// What ran (the command gives way to the width: it is whole in the JSON), then how long and
/// how it ended.
fn header(out: &mut String, trace: &Trace, width: usize) {
    let line = format!(
        "leaktrace: {} `{}` (pid {})",
        trace.mode,
        trace.command.join(" "),
        trace.root_pid
    );
    let line = if line.chars().count() > width {
        format!("{}…", truncate(&line, width - 1))
    } else {
        line
    };
    let _ = writeln!(out, "{line}");
    let cycles = trace.cycles.iter().filter(|c| c.is_complete()).count();
    let status = super::exit_status(trace);
    let text = format!(
        "{cycles} cycles in {}; ended: {}{status}",
        duration(trace.duration_s),
        trace.ended_by.describe()
    );
    wrap_into(out, "", &text, width);
}

/// The verdict and its reasons, then the budget: the first thing after the header.
fn verdict(out: &mut String, trace: &Trace, width: usize) {
    let verdict = &trace.analysis.verdict;
    if trace.analysis.tree().is_none() {
        wrap_into(
            out,
            "",
            "no complete cycles: nothing to fit a growth rate to (mark cycles with --cycle-regex \
             or the marker socket, see --help)",
            width,
        );
        return;
    }
    let style = if matches!(verdict.source.name(), "none") {
        HEALTHY
    } else {
        GROWING
    };
    let source = format!("{style}{}{style:#}", verdict.source);
    let reasons = verdict.evidence.join("; ");
    wrap_into(out, &format!("VERDICT  {source}: "), &reasons, width);
    if let Some(budget) = &trace.analysis.budget {
        let (style, outcome) = if budget.pass {
            (HEALTHY, "pass")
        } else {
            (GROWING, "EXCEEDED (exit 3)")
        };
        let _ = writeln!(
            out,
            "BUDGET   {}/day allowed, {}/day measured: {style}{outcome}{style:#}",
            bytes(budget.limit_per_day as i64, false),
            bytes(budget.measured_per_day as i64, true),
        );
    }
}

/// Resident memory per role, and its growth per cycle and per hour or day with the fit's trust.
fn by_role(out: &mut String, trace: &Trace) {
    let analysis = &trace.analysis;
    let role_fit = |role: &str| {
        analysis
            .series
            .iter()
            .find(|s| matches!(&s.name, Series::RoleOwned(r) if r.as_str() == role))
    };
    let (at, by_role) = memory_at_the_end(trace);
    let mut roles = by_role.clone();
    roles.sort_by_key(|(_, t)| std::cmp::Reverse(t.owned()));
    let unit = RateUnit::of(trace.duration_s);
    let _ = writeln!(
        out,
        "\n{HEADING}MEMORY BY ROLE{HEADING:#} (PSS {at}; owned = anon + shmem, what growth is judged on)"
    );
    let _ = writeln!(
        out,
        "{:<18} {:>5} {:>9} {:>9} {:>10} {:>11}  TREND",
        "ROLE",
        "PROCS",
        "PSS",
        "OWNED",
        "PER CYCLE",
        unit.heading()
    );
    for (role, totals) in roles {
        role_row(out, &unit, role.as_str(), totals, role_fit(role.as_str()));
    }
    let sum = |f: fn(&RoleTotals) -> u64| by_role.iter().map(|(_, t)| f(t)).sum::<u64>();
    let tree = RoleTotals {
        count: sum(|t| t.count),
        pss: sum(|t| t.pss),
        anon: sum(|t| t.anon),
        shmem: sum(|t| t.shmem),
        file: sum(|t| t.file),
    };
    role_row(out, &unit, "tree", &tree, analysis.tree());
    if analysis.tree().is_some() && unit.extrapolated {
        let _ = writeln!(
            out,
            "≈ extrapolated: the trace lasted {}; {} is what the cycles would add if they went on alike",
            duration(trace.duration_s),
            unit.heading().to_lowercase()
        );
    }
}

/// Memory by role at the last cycle end (a worker that closes its browser after its last cycle
/// leaves none of it in the tree's last sample), else at the last sample; and when that was.
fn memory_at_the_end(trace: &Trace) -> (String, Vec<(&Role, &RoleTotals)>) {
    let last_cycle = trace
        .cycles
        .iter()
        .rev()
        .find(|c| c.is_complete() && !c.by_role.is_empty());
    match last_cycle {
        Some(cycle) => (
            format!("at the end of cycle {}", cycle.index),
            cycle.by_role.iter().collect(),
        ),
        None => (
            format!("at {}", duration(trace.totals.pss_at_s)),
            trace.totals.by_role.iter().collect(),
        ),
    }
}

/// One row of the table: a role's processes, PSS and owned PSS, and its fit, highlighted when
/// it grows.
fn role_row(
    out: &mut String,
    unit: &RateUnit,
    name: &str,
    totals: &RoleTotals,
    fit: Option<&SeriesFit>,
) {
    let (per_cycle, per_time, trend, grows) = match fit {
        Some(fit) => (
            bytes(fit.per_cycle as i64, true),
            unit.rate(fit.per_day),
            trend(fit),
            fit.grows(),
        ),
        None => ("-".into(), "-".into(), String::new(), false),
    };
    let line = format!(
        "{:<18} {:>5} {:>9} {:>9} {:>10} {:>11}  {trend}",
        truncate(name, 18),
        totals.count,
        size(totals.pss),
        size(totals.owned()),
        per_cycle,
        per_time
    );
    let style = if grows { GROWING } else { Style::new() };
    let _ = writeln!(out, "{style}{}{style:#}", line.trim_end());
}

/// `linear, p 0.000` (the trend test's p-value: below 0.01 is growth), or why not trusted.
fn trend(fit: &SeriesFit) -> String {
    let shape = match fit.shape {
        Some(Shape::Flat) => "flat",
        Some(Shape::Plateau) => "plateau",
        Some(Shape::Linear) => "linear",
        Some(Shape::Accelerating) => "accelerating",
        Some(Shape::Unknown) | None => "unknown",
    };
    if fit.trustworthy {
        format!("{shape}, p {:.3}", fit.trend_p)
    } else {
        format!("{shape} (too few cycles)")
    }
}

/// The processes whose owned memory grew most between the region readings (the one nearest
/// the fitted start and the last), with the region that grew most in each; without readings
/// (no cycles), those that own the most.
fn grew_most(out: &mut String, trace: &Trace, width: usize) {
    let growth = |p: &Process| p.regions.iter().map(|r| r.growth).sum::<i64>();
    let mut grown: Vec<&Process> = trace
        .processes
        .iter()
        .filter(|p| !p.regions.is_empty())
        .collect();
    if grown.is_empty() {
        let owned = |p: &Process| {
            p.smaps_rollup
                .as_ref()
                .map_or(0, |s| s.pss_anon + s.pss_shmem)
        };
        let mut live: Vec<&Process> = trace.processes.iter().filter(|p| owned(p) > 0).collect();
        live.sort_by_key(|p| std::cmp::Reverse(owned(p)));
        if live.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "\n{HEADING}OWNED MOST{HEADING:#} (at each one's last sample; which grew takes region readings at two cycle ends)"
        );
        let _ = writeln!(
            out,
            "{:>7} {:<18} {:<16} {:>9}",
            "PID", "ROLE", "NAME", "OWNED"
        );
        for process in live.iter().take(TOP_PROCESSES) {
            let _ = writeln!(
                out,
                "{:>7} {:<18} {:<16} {:>9}",
                process.pid,
                truncate(process.role.as_str(), 18),
                truncate(&process.comm, 16),
                size(owned(process))
            );
        }
        return;
    }
    grown.sort_by_key(|p| std::cmp::Reverse(growth(p)));
    let _ = writeln!(
        out,
        "\n{HEADING}GREW MOST{HEADING:#} (owned PSS between region readings at cycle ends; `--full` lists each region)"
    );
    let _ = writeln!(
        out,
        "{:>7} {:<18} {:<16} {:>9}  REGION THAT GREW MOST",
        "PID", "ROLE", "NAME", "GROWTH"
    );
    for process in grown.iter().take(TOP_PROCESSES) {
        let top = &process.regions[0];
        let line = format!(
            "{:>7} {:<18} {:<16} {:>9}  {} {}",
            process.pid,
            truncate(process.role.as_str(), 18),
            truncate(&process.comm, 16),
            bytes(growth(process), true),
            bytes(top.growth, true),
            top.name
        );
        let _ = writeln!(out, "{}", truncate(&line, width));
    }
}

/// The browser's counts at the last view DevTools gave.
fn browser(out: &mut String, trace: &Trace) {
    let last_view = trace
        .cycles
        .iter()
        .rev()
        .find_map(|c| c.browser.as_deref())
        .or(trace.browser.last.as_ref());
    let Some(view) = last_view else { return };
    let _ = writeln!(
        out,
        "\n{HEADING}BROWSER{HEADING:#} (DevTools, last view): pages {}, contexts {}, pages' JS heap {}",
        view.pages,
        view.contexts,
        size(view.js_heap_used)
    );
}

/// `first` then `text`, wrapped at word boundaries to `width` columns, continuation lines
/// indented as far as `text` began. Styles in `first` take no columns.
fn wrap_into(out: &mut String, first: &str, text: &str, width: usize) {
    let lead = first.trim_start_matches('\n');
    out.push_str(&first[..first.len() - lead.len()]);
    let indent = visible_width(lead);
    let mut line = lead.to_string();
    let mut used = indent;
    let mut empty = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let len = word.chars().count();
        if !empty && used + 1 + len > width {
            let _ = writeln!(out, "{line}");
            line = " ".repeat(indent);
            used = indent;
            empty = true;
        }
        if !empty {
            line.push(' ');
            used += 1;
        }
        line.push_str(word);
        used += len;
        empty = false;
    }
    let _ = writeln!(out, "{line}");
}

/// Columns a string takes on a terminal: its characters but ANSI escape sequences.
pub fn visible_width(text: &str) -> usize {
    let mut width = 0;
    let mut escape = false;
    for c in text.chars() {
        match (escape, c) {
            (false, '\x1b') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, _) => width += 1,
        }
    }
    width
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_wraps_under_its_label_within_the_width() {
        let mut out = String::new();
        let text = "one two three four five six seven eight nine ten eleven twelve";
        wrap_into(&mut out, "\n  label  ", text, 30);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "");
        assert!(lines[1].starts_with("  label  one two"), "{out}");
        assert!(lines.iter().all(|l| l.chars().count() <= 30), "{out}");
        assert!(lines[2].starts_with("         "), "{out}");
        let words: Vec<&str> = out.split_whitespace().skip(1).collect();
        assert_eq!(words.join(" "), text);
    }

    #[test]
    fn styles_take_no_columns() {
        let styled = format!("{GROWING}renderer-native{GROWING:#}: ");
        assert_eq!(visible_width(&styled), "renderer-native: ".len());
    }
}
