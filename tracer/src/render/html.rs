//! `leaktrace report --html FILE`: one self-contained page (no scripts, no network, no web
//! fonts) with the answers and verdict on top, then plots drawn by plotters as inline SVG: each
//! role's resident memory over the cycles (PSS stacked as its anonymous part and the rest), page
//! and context counts, the pages' JS heap, with warm-up, recreation points and phase starts
//! marked; then the process table and the lost-event counters.
//!
//! Every plot is a `<figure class="plot" data-series=...>` whose points are SVG circles, one per
//! complete cycle, so a reader (or a test) can count them in the DOM.

use std::fmt::Write as _;

use plotters::{coord::types::RangedCoordf64, prelude::*};

use crate::{
    render::report::{answers, render_full},
    trace::{Cycle, Role, RoleTotals, Trace},
    units::bytes,
};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 240;

/// Escapes text for HTML.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// What every plot marks on its cycle axis.
struct Marks {
    /// Warm-up cycles, shaded.
    warmup: usize,
    /// Cycles that recreated pages or contexts, dashed.
    recreations: Vec<u32>,
    /// Where phases start: cycle k spans (k-1, k], so a phase starting at a fraction f of it
    /// sits at k-1+f. Ticked along the bottom.
    phases: Vec<f64>,
}

/// One plot over the cycles, with a point per cycle; with `under`, the values are drawn stacked
/// as `under` and the rest above it. A drawing error leaves what was drawn so far.
fn plot(
    title: &str,
    unit: &str,
    cycles: &[u32],
    values: &[f64],
    under: Option<&[f64]>,
    marks: &Marks,
) -> String {
    let mut svg = String::new();
    let _ = draw(&mut svg, title, unit, cycles, values, under, marks);
    svg
}

/// Recreation points (dashed) and phase starts (ticks along the axis).
fn draw_marks(
    chart: &mut ChartContext<'_, SVGBackend<'_>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
    marks: &Marks,
    (x0, x1): (f64, f64),
    top: f64,
) -> Result<(), DrawingAreaErrorKind<std::io::Error>> {
    for mark in &marks.recreations {
        let x = *mark as f64 - 1.0;
        let line = DashedLineSeries::new([(x, 0.0), (x, top)], 4, 4, RGBColor(200, 80, 0).into());
        chart.draw_series(line)?;
    }
    for x in marks.phases.iter().filter(|x| (x0..=x1).contains(*x)) {
        let tick = PathElement::new([(*x, 0.0), (*x, top * 0.04)], RGBColor(90, 90, 90));
        chart.draw_series(std::iter::once(tick))?;
    }
    Ok(())
}

fn draw(
    svg: &mut String,
    title: &str,
    unit: &str,
    cycles: &[u32],
    values: &[f64],
    under: Option<&[f64]>,
    marks: &Marks,
) -> Result<(), String> {
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    let err = |e: &dyn std::fmt::Display| e.to_string();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let (x0, x1) = (
        *cycles.first().unwrap_or(&1) as f64 - 1.0,
        *cycles.last().unwrap_or(&1) as f64 + 0.5,
    );
    let top = values.iter().cloned().fold(0.0_f64, f64::max).max(1.0) * 1.1;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 16))
        .margin(8)
        .x_label_area_size(28)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, 0.0..top)
        .map_err(|e| err(&e))?;
    let label = |v: &f64| {
        if unit == "bytes" {
            bytes(*v as i64, false)
        } else {
            format!("{v:.0}")
        }
    };
    chart
        .configure_mesh()
        .x_desc("cycle")
        .y_desc(unit)
        .y_label_formatter(&label)
        .draw()
        .map_err(|e| err(&e))?;
    if marks.warmup > 0 {
        let end = cycles.get(marks.warmup - 1).map_or(x0, |c| *c as f64);
        let shade = Rectangle::new([(x0, 0.0), (end, top)], RGBColor(240, 240, 240).filled());
        chart
            .draw_series(std::iter::once(shade))
            .map_err(|e| err(&e))?;
    }
    // Stacked: the anonymous part below, the rest of PSS (file-backed and shared) above it.
    if let Some(under) = under {
        let total = cycles.iter().zip(values).map(|(c, v)| (*c as f64, *v));
        chart
            .draw_series(AreaSeries::new(total, 0.0, RGBColor(200, 215, 240)))
            .map_err(|e| err(&e))?;
        let anon = cycles.iter().zip(under).map(|(c, v)| (*c as f64, *v));
        chart
            .draw_series(AreaSeries::new(anon, 0.0, RGBColor(140, 175, 225)))
            .map_err(|e| err(&e))?;
    }
    draw_marks(&mut chart, marks, (x0, x1), top).map_err(|e| err(&e))?;
    let points: Vec<(f64, f64)> = cycles
        .iter()
        .zip(values)
        .map(|(c, v)| (*c as f64, *v))
        .collect();
    chart
        .draw_series(LineSeries::new(
            points.clone(),
            RGBColor(30, 90, 180).stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    let dots = points
        .into_iter()
        .map(|p| Circle::new(p, 3, RGBColor(30, 90, 180).filled()));
    chart.draw_series(dots).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))
}

fn figure(out: &mut String, series: &str, svg: &str) {
    let _ = writeln!(
        out,
        "<figure class=\"plot\" data-series=\"{}\">{svg}</figure>",
        escape(series)
    );
}

/// Cycles that recreated pages or contexts (against the cycle before): recreation points.
fn recreations(cycles: &[&Cycle]) -> Vec<u32> {
    cycles
        .windows(2)
        .filter_map(|w| {
            let (before, after) = (w[0].browser.as_ref()?, w[1].browser.as_ref()?);
            after
                .counts()
                .recreated_since(before.counts())
                .then_some(w[1].index)
        })
        .collect()
}

/// The regions that grew most per role, as bars.
fn regions(out: &mut String, trace: &Trace) {
    let regions = &trace.analysis.regions;
    let Some(most) = regions.iter().map(|r| r.growth).max().filter(|&m| m > 0) else {
        return;
    };
    let _ = writeln!(
        out,
        "<h2>Regions that grew</h2><p>The memory each region's processes own, between two readings of their smaps at cycle ends, summed per role.</p><table class=\"regions\"><tr><th>role</th><th>region</th><th>processes</th><th>growth</th><th></th></tr>"
    );
    for region in regions.iter().filter(|r| r.growth > 0) {
        let width = (200 * region.growth / most).max(1);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td title=\"{}\">{}</td><td>{}</td><td>{}</td><td style=\"text-align:left\"><div style=\"background:#4a7;height:10px;width:{width}px\"></div></td></tr>",
            escape(&region.role),
            escape(&region.why),
            escape(&region.name),
            region.processes,
            bytes(region.growth, true)
        );
    }
    let _ = writeln!(out, "</table>");
}

/// One self-contained page: the verdict, the answers, a plot per role and of the browser, the
/// regions, the processes, the lost events and the full report.
pub fn render_html(trace: &Trace) -> String {
    let plots = Plots::of(trace);
    let mut out = String::new();
    heading(&mut out, trace);
    answers_table(&mut out, trace);
    if !plots.cycles.is_empty() {
        let _ = writeln!(
            out,
            "<h2>Resident memory per role over the cycles</h2><p>PSS at each cycle end; darker, the part the processes own (anonymous and shared memory, what growth is judged on), lighter, file-backed pages; warm-up shaded, recreation points dashed, phase starts ticked along the axis.</p>"
        );
        plots.roles(&mut out);
        if plots.cycles.iter().all(|c| c.browser.is_some()) {
            plots.browser(&mut out);
        }
    }
    regions(&mut out, trace);
    processes_and_the_rest(&mut out, trace);
    out
}

/// The measured cycles, their indices along the x axis, and what every plot marks on it.
struct Plots<'a> {
    cycles: Vec<&'a Cycle>,
    index: Vec<u32>,
    marks: Marks,
}

impl<'a> Plots<'a> {
    fn of(trace: &'a Trace) -> Plots<'a> {
        let cycles: Vec<&Cycle> = trace.cycles.iter().filter(|c| c.is_measured()).collect();
        let index: Vec<u32> = cycles.iter().map(|c| c.index).collect();
        let phases = cycles
            .iter()
            .flat_map(|c| {
                let span = (c.end_s - c.start_s).max(1e-9);
                c.phases
                    .iter()
                    .map(move |p| c.index as f64 - 1.0 + (p.start_s - c.start_s) / span)
            })
            .collect();
        let marks = Marks {
            warmup: trace.analysis.tree().map_or(0, |t| t.warmup_cycles),
            recreations: recreations(&cycles),
            phases,
        };
        Plots {
            cycles,
            index,
            marks,
        }
    }

    /// A plot per role, PSS and owned.
    fn roles(&self, out: &mut String) {
        let Plots {
            cycles,
            index,
            marks,
        } = self;
        let roles: std::collections::BTreeSet<&Role> =
            cycles.iter().flat_map(|c| c.by_role.keys()).collect();
        // The role whose owned memory grew most first: the story on the first screen.
        let owned_at = |cycle: Option<&&Cycle>, role: &Role| {
            cycle
                .and_then(|c| c.by_role.get(role))
                .map_or(0, RoleTotals::owned) as i64
        };
        let mut roles: Vec<&Role> = roles.into_iter().collect();
        roles.sort_by_key(|role| {
            std::cmp::Reverse(owned_at(cycles.last(), role) - owned_at(cycles.first(), role))
        });
        for role in roles {
            let pss: Vec<f64> = cycles
                .iter()
                .map(|c| c.by_role.get(role).map_or(0, |r| r.pss) as f64)
                .collect();
            let owned: Vec<f64> = cycles
                .iter()
                .map(|c| c.by_role.get(role).map_or(0, RoleTotals::owned) as f64)
                .collect();
            let svg = plot(
                &format!("{role}: PSS (darker: owned)"),
                "bytes",
                index,
                &pss,
                Some(&owned),
                marks,
            );
            figure(out, &format!("role.{role}.pss"), &svg);
        }
    }

    /// Pages and contexts, the JS heap, and the five largest pages' heaps.
    fn browser(&self, out: &mut String) {
        let Plots {
            cycles,
            index,
            marks,
        } = self;
        let _ = writeln!(out, "<h2>The browser</h2>");
        let views: Vec<_> = cycles.iter().filter_map(|c| c.browser.as_ref()).collect();
        let pages: Vec<f64> = views.iter().map(|v| v.pages as f64).collect();
        let contexts: Vec<f64> = views.iter().map(|v| v.contexts as f64).collect();
        let heap: Vec<f64> = views.iter().map(|v| v.js_heap_used as f64).collect();
        figure(
            out,
            "browser.pages",
            &plot(
                "pages (the line below: contexts)",
                "count",
                index,
                &pages,
                Some(&contexts),
                marks,
            ),
        );
        figure(
            out,
            "browser.js_heap_used",
            &plot("JS heap of the pages", "bytes", index, &heap, None, marks),
        );
        // Per page: the five largest pages open in every cycle.
        let last = views
            .last()
            .map(|v| v.page_list.as_slice())
            .unwrap_or_default();
        let mut pages: Vec<_> = last.iter().filter(|p| !p.internal).collect();
        pages.sort_by_key(|p| std::cmp::Reverse(p.js_heap_used));
        for page in pages.into_iter().take(5) {
            let heap: Option<Vec<f64>> = views
                .iter()
                .map(|v| {
                    v.page_list
                        .iter()
                        .find(|p| p.target_id == page.target_id)
                        .map(|p| p.js_heap_used as f64)
                })
                .collect();
            if let Some(heap) = heap {
                let title: String = format!("JS heap of {}", page.url)
                    .chars()
                    .take(70)
                    .collect();
                let svg = plot(&title, "bytes", index, &heap, None, marks);
                figure(out, &format!("page.{}.js_heap_used", page.target_id), &svg);
            }
        }
    }
}

/// The document's head and the verdict, the page's first line.
fn heading(out: &mut String, trace: &Trace) {
    let title = format!("leaktrace: {}", escape(&trace.command.join(" ")));
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\n<style>\
         body{{font-family:system-ui,sans-serif;margin:24px;color:#222}}\
         figure{{display:inline-block;margin:8px}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
         table.answers td{{text-align:left}}\
         pre{{background:#f6f6f6;padding:12px;overflow:auto}}</style></head><body>\n<h1>{title}</h1>\n"
    );
    let verdict = &trace.analysis.verdict;
    if !verdict.evidence.is_empty() {
        let _ = writeln!(
            out,
            "<p class=\"verdict\"><b>verdict: {}</b> — {}</p>",
            escape(verdict.source.name()),
            escape(&verdict.evidence.join("; "))
        );
    }
}

/// The answers as a table.
fn answers_table(out: &mut String, trace: &Trace) {
    if let Some(view) = answers::view(trace) {
        let _ = writeln!(
            out,
            "<h2>Answers</h2><p>{}</p><table class=\"answers\">",
            escape(&view.heading)
        );
        // The verdict is the page's first line already.
        for row in view.rows.iter().filter(|r| r.label != "verdict") {
            let _ = writeln!(
                out,
                "<tr><th>{}</th><td>{}</td></tr>",
                escape(row.label),
                escape(&row.text)
            );
        }
        let _ = writeln!(out, "</table>");
    }
}

/// The processes, the lost events and the full report.
fn processes_and_the_rest(out: &mut String, trace: &Trace) {
    let _ = writeln!(
        out,
        "<h2>Processes</h2>\n<table><tr><th>pid</th><th>ppid</th><th>role</th><th>command</th><th>state</th><th>PSS</th><th>anon</th><th>file</th><th>shmem</th><th>peak anon</th></tr>"
    );
    for p in &trace.processes {
        let state = p.state();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{state}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            p.pid,
            p.ppid,
            escape(p.role.as_str()),
            escape(&p.comm),
            bytes(p.pss as i64, false),
            bytes(p.resident.anon as i64, false),
            bytes(p.resident.file as i64, false),
            bytes(p.resident.shmem as i64, false),
            bytes(p.resident_peak.anon as i64, false)
        );
    }
    let _ = writeln!(
        out,
        "</table>\n<h2>Lost events</h2>\n<table class=\"lost\"><tr><th>reason</th><th>count</th></tr>"
    );
    for (reason, count) in &trace.events_lost {
        let _ = writeln!(out, "<tr><td>{}</td><td>{count}</td></tr>", escape(reason));
    }
    let _ = writeln!(
        out,
        "</table>\n<h2>The full report</h2>\n<pre>{}</pre>\n</body></html>",
        escape(&render_full(trace))
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_has_one_point_per_cycle() {
        let marks = Marks {
            warmup: 1,
            recreations: vec![3],
            phases: vec![0.2, 1.5],
        };
        let svg = plot(
            "x",
            "bytes",
            &[1, 2, 3, 4],
            &[1.0, 2.0, 3.0, 4.0],
            Some(&[0.5; 4]),
            &marks,
        );
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
        assert!(!svg.contains("http://") || svg.contains("xmlns=\"http://www.w3.org/2000/svg\""));
    }

    #[test]
    fn html_text_is_escaped() {
        assert_eq!(
            escape("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
