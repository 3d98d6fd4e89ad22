//! The terminal reports of a trace. The short one ([`summary`], the default) fits one screen;
//! the full one ([`render_full`], `--full`, and inside the Markdown and the HTML page) has every
//! table: what ran and how it ended; resident memory first (the tree's PSS by role, then per
//! process), then address-space flows per process and region class with their totals, and
//! lost-event counters when there were any.

use std::{collections::BTreeMap, fmt::Write as _};

use tracer_common::RegionClass;

pub mod answers;
pub mod summary;

use crate::{
    trace::{ClassFlow, Cycle, Process, Trace},
    units::{bytes, size},
};

/// Beyond this many processes, the tables show the busiest ones (the JSON has all).
const MAX_ROWS: usize = 40;

/// `, exit status 3` when the command's status is known.
fn exit_status(trace: &Trace) -> String {
    trace
        .exit_code
        .map(|c| format!(", exit status {c}"))
        .unwrap_or_default()
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

/// How much a process holds and did: used to pick rows when there are too many.
fn activity(process: &Process) -> u64 {
    let flows: u64 = process
        .address_space
        .values()
        .map(|f| f.mapped + f.unmapped + f.committed + f.released)
        .sum();
    flows + process.pss + process.resident_peak.anon
}

/// The processes to show: all of them, or the busiest `MAX_ROWS` in their original order.
fn rows(trace: &Trace) -> Vec<&Process> {
    let mut rows: Vec<&Process> = trace.processes.iter().collect();
    if rows.len() > MAX_ROWS {
        let mut busiest = rows.clone();
        busiest.sort_by_key(|p| std::cmp::Reverse(activity(p)));
        let threshold = activity(busiest[MAX_ROWS - 1]);
        let mut kept = 0;
        rows.retain(|p| {
            let keep = activity(p) >= threshold && kept < MAX_ROWS;
            kept += usize::from(keep);
            keep
        });
    }
    rows
}

fn more_rows_note(out: &mut String, shown: usize, total: usize) {
    if shown < total {
        let _ = writeln!(
            out,
            "  ... and {} quieter processes (all are in the JSON, -o FILE)",
            total - shown
        );
    }
}

/// The report as Markdown: the answers on top, the full report below.
pub fn markdown(trace: &Trace, text: &str) -> String {
    let mut out = format!("## leaktrace: `{}`\n\n", trace.command.join(" "));
    if let Some(view) = answers::view(trace) {
        out.push_str(&view.markdown());
        out.push('\n');
    }
    let _ = write!(
        out,
        "<details><summary>full report</summary>\n\n```text\n{text}```\n\n</details>\n"
    );
    out
}

/// The short report (see [`summary`]), lines at most `width` columns.
pub fn render(trace: &Trace, width: usize) -> String {
    summary::render(trace, width)
}

/// The whole terminal report: every table.
pub fn render_full(trace: &Trace) -> String {
    let mut out = String::new();
    header(&mut out, trace);
    segments(&mut out, trace);
    answers(&mut out, trace);
    let rows = rows(trace);
    resident_by_role(&mut out, trace);
    regions(&mut out, trace);
    cycles(&mut out, trace);
    browser(&mut out, trace);
    resident_by_process(&mut out, trace, &rows);
    if trace.has_flows() {
        address_space_by_process(&mut out, trace, &rows);
        class_totals(&mut out, trace);
    }
    lost_events(&mut out, trace);
    out
}

fn header(out: &mut String, trace: &Trace) {
    let status = exit_status(trace);
    let _ = writeln!(
        out,
        "leaktrace: {} `{}` (pid {}) for {:.1} s; ended: {}{status}",
        trace.mode,
        trace.command.join(" "),
        trace.root_pid,
        trace.duration_s,
        trace.ended_by.describe(),
    );
    let exited = trace.processes.iter().filter(|p| p.exited).count();
    let _ = writeln!(
        out,
        "processes: {} seen, {} exited",
        trace.processes.len(),
        exited
    );
    if trace.tracer.peak_rss > 0 {
        let rollup = &trace.tracer.smaps_rollup;
        let _ = writeln!(
            out,
            "leaktrace itself: {} peak resident, {:.1} s of CPU ({:.2} s reading PSS: {} smaps_rollup \
             reads, {} estimates from the resident counters)",
            bytes(trace.tracer.peak_rss as i64, false),
            trace.tracer.cpu_s,
            rollup.seconds,
            rollup.reads,
            rollup.estimates
        );
        let regions = &trace.tracer.regions;
        if regions.readings > 0 {
            let _ = writeln!(
                out,
                "  regions: {} readings of the tree's smaps at cycle ends, {} files, {:.2} s",
                regions.readings, regions.reads, regions.seconds
            );
        }
    }
    if !trace.memory_dumps.is_empty() {
        let cycles: Vec<String> = trace
            .memory_dumps
            .iter()
            .map(|d| d.cycle.to_string())
            .collect();
        let longest = trace
            .memory_dumps
            .iter()
            .map(|d| d.seconds)
            .fold(0.0, f64::max);
        let _ = writeln!(
            out,
            "memory dumps: {} at the ends of cycles {} (the browser took up to {:.0} ms for one; \
             the first started its tracing service)",
            trace.memory_dumps.len(),
            cycles.join(", "),
            longest * 1000.0
        );
    }
    for warning in &trace.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
}

/// A followed worker's instances, each fitted on its own cycles: what comes after is of the
/// last.
fn segments(out: &mut String, trace: &Trace) {
    let Some(last) = trace.segments.last().filter(|_| trace.segments.len() > 1) else {
        return;
    };
    let _ = writeln!(
        out,
        "\nINSTANCES of the followed worker: {} (the answers below are of the last: pid {}, \
         from cycle {})",
        trace.segments.len(),
        last.root_pid,
        last.first_cycle
    );
    let _ = writeln!(
        out,
        "{:<4} {:>8} {:>10} {:>10} {:>7} {:>14}  VERDICT",
        "#", "PID", "FROM", "TO", "CYCLES", "TREE OWNED/CY"
    );
    for (index, segment) in trace.segments.iter().enumerate() {
        let fit = trace
            .analysis
            .segments
            .iter()
            .find(|f| f.segment as usize == index);
        let to = segment
            .end_s
            .map_or("running".to_string(), |s| format!("{s:.1} s"));
        let (cycles, growth, verdict) = match fit {
            Some(fit) => (
                fit.cycles.to_string(),
                fit.tree
                    .as_ref()
                    .map_or("-".into(), |t| bytes(t.per_cycle as i64, true)),
                fit.verdict.source.to_string(),
            ),
            None => ("0".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "{:<4} {:>8} {:>10} {:>10} {:>7} {:>14}  {verdict}",
            index + 1,
            segment.root_pid,
            format!("{:.1} s", segment.start_s),
            to,
            cycles,
            growth
        );
    }
}

/// The regions that grew most: per role, then per process.
fn regions(out: &mut String, trace: &Trace) {
    let by_role = &trace.analysis.regions;
    if by_role.is_empty() {
        return;
    }
    let window: Option<(u32, u32)> = trace
        .processes
        .iter()
        .flat_map(|p| &p.regions)
        .map(|r| (r.from_cycle, r.to_cycle))
        .max_by_key(|&(from, to)| to - from);
    let _ = writeln!(
        out,
        "\nREGIONS THAT GREW (/proc/PID/smaps at cycle ends{}; owned: PSS, of a file only its private pages)",
        window.map_or(String::new(), |(from, to)| format!(
            ", mostly cycles {from} to {to}"
        ))
    );
    let _ = writeln!(
        out,
        "{:<18} {:>5} {:>10}  REGION",
        "ROLE", "PROCS", "GROWTH"
    );
    for region in by_role {
        let _ = writeln!(
            out,
            "{:<18} {:>5} {:>10}  {}",
            region.role,
            region.processes,
            bytes(region.growth, true),
            region.name
        );
    }
    if let Some(top) = by_role.first() {
        let _ = writeln!(out, "  {}: {}", top.name, top.why);
    }
    let mut grown: Vec<&crate::trace::Process> = trace
        .processes
        .iter()
        .filter(|p| !p.regions.is_empty())
        .collect();
    grown.sort_by_key(|p| std::cmp::Reverse(p.regions[0].growth));
    for process in grown.iter().take(5) {
        let _ = writeln!(
            out,
            "pid {} ({}, {}), cycles {} to {}:",
            process.pid,
            process.comm,
            process.role,
            process.regions[0].from_cycle,
            process.regions[0].to_cycle
        );
        for region in process.regions.iter().take(3) {
            let many =
                if region.regions > 1 && region.kind != crate::collect::regions::RegionKind::Rest {
                    format!("{} regions, ", region.regions)
                } else {
                    String::new()
                };
            let _ = writeln!(
                out,
                "  {:>10}  {} ({} → {}, {many}{} of address space)",
                bytes(region.growth, true),
                region.name,
                size(region.from_owned),
                size(region.to_owned),
                size(region.size)
            );
        }
    }
}

/// The questions a trace answers, first.
fn answers(out: &mut String, trace: &Trace) {
    if let Some(view) = answers::view(trace) {
        out.push('\n');
        out.push_str(&view.text());
    }
}

fn resident_by_role(out: &mut String, trace: &Trace) {
    let live: u64 = trace.totals.by_role.values().map(|r| r.count).sum();
    let _ = writeln!(
        out,
        "\nRESIDENT MEMORY: tree PSS {} over {live} live processes, at {:.1} s (the last sample of the live tree)",
        size(trace.totals.pss),
        trace.totals.pss_at_s
    );
    // PSS = anon + shmem + file; owned = anon + shmem, what growth is judged on.
    let _ = writeln!(
        out,
        "{:<26} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "ROLE", "PROCS", "PSS", "OWNED", "ANON", "SHMEM", "FILE"
    );
    for (role, totals) in &trace.totals.by_role {
        let _ = writeln!(
            out,
            "{:<26} {:>6} {:>10} {:>10} {:>10} {:>10} {:>10}",
            role,
            totals.count,
            size(totals.pss),
            size(totals.owned()),
            size(totals.anon),
            size(totals.shmem),
            size(totals.file)
        );
    }
}

/// The cycles table: one row per cycle, then the mean of each phase.
fn cycles(out: &mut String, trace: &Trace) {
    if trace.cycles.is_empty() {
        return;
    }
    cycles_heading(out, trace);
    let mut segment = 0;
    for cycle in trace.cycles.iter() {
        if cycle.segment != segment
            && let Some(instance) = trace.segments.get(cycle.segment as usize)
        {
            segment = cycle.segment;
            let _ = writeln!(
                out,
                "   -- instance {} of the worker: pid {} --",
                segment + 1,
                instance.root_pid
            );
        }
        cycle_row(out, cycle);
    }
    phase_means(out, trace);
}

/// What the cycles are, what markers were ignored, and the table's head.
fn cycles_heading(out: &mut String, trace: &Trace) {
    let cut = trace.cycles.iter().filter(|c| !c.is_complete()).count();
    let complete = trace.cycles.count() - cut;
    let _ = writeln!(
        out,
        "\nCYCLES: {complete} complete (markers: {}); growth over each cycle, all roles",
        trace.markers.sources.join(", ")
    );
    let markers = &trace.markers;
    if markers.between_instances > 0 {
        let _ = writeln!(
            out,
            "markers: {} while no instance of the followed worker ran (in no cycle)",
            markers.between_instances
        );
    }
    if markers.malformed + markers.dropped > 0 {
        let _ = writeln!(
            out,
            "markers: {} malformed (ignored), {} still queued when the trace ended (not taken in)",
            markers.malformed, markers.dropped
        );
    }
    let _ = writeln!(
        out,
        "{:>4} {:>8} {:>7} {:>10} {:>9} {:>9} {:>10} {:>10}  WORKER FIGURES",
        "#", "START S", "LEN S", "TREE PSS", "PSS", "OWNED", "ANON", "FLOWS NET"
    );
    if let Some(spilled) = trace.cycles.spilled() {
        let _ = writeln!(
            out,
            "(the first {} cycles are in the JSON trace: `leaktrace report` shows them all)",
            spilled.count()
        );
    }
}

/// One cycle: when, how long, the tree's PSS and changes, the flows' net, the worker's figures.
fn cycle_row(out: &mut String, cycle: &Cycle) {
    let pss: u64 = cycle.by_role.values().map(|r| r.pss).sum();
    let tree = cycle.tree();
    // A compacted cycle keeps the tree's change, not its flows.
    let net = if cycle.compacted {
        "-".to_string()
    } else {
        let flows = cycle.growth.values().flat_map(|g| g.address_space.values());
        bytes(flows.map(ClassFlow::net).sum(), true)
    };
    let figures: Vec<String> = cycle
        .worker
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let flag = if cycle.cut {
        " cut"
    } else if cycle.teardown {
        " teardown (left out)"
    } else if cycle.warmup {
        " warm-up"
    } else {
        ""
    };
    let _ = writeln!(
        out,
        "{:>4} {:>8.1} {:>7.1} {:>10} {:>9} {:>9} {:>10} {:>10}  {}{flag}",
        cycle.index,
        cycle.start_s,
        cycle.end_s - cycle.start_s,
        size(pss),
        bytes(tree.pss, true),
        bytes(tree.owned, true),
        bytes(tree.anon, true),
        net,
        figures.join(" ")
    );
}

/// Per phase, the mean over the cycles the fits take (the same as the answers' `when`): where
/// the growth happens.
fn phase_means(out: &mut String, trace: &Trace) {
    let mut phases: BTreeMap<&str, (i64, i64, i64, u32)> = BTreeMap::new();
    for cycle in crate::analysis::fitted_cycles(trace) {
        for phase in cycle.phases.iter().filter(|p| !p.teardown) {
            let entry = phases.entry(&phase.name).or_default();
            let tree = phase.tree();
            entry.0 += tree.pss;
            entry.1 += tree.owned;
            entry.2 += tree.anon;
            entry.3 += 1;
        }
    }
    if !phases.is_empty() {
        let _ = writeln!(
            out,
            "{:<16} {:>7} {:>10} {:>10} {:>10}",
            "PHASE (mean)", "CYCLES", "PSS", "OWNED", "ANON"
        );
        for (name, (pss, owned, anon, count)) in phases {
            let n = i64::from(count.max(1));
            let _ = writeln!(
                out,
                "{:<16} {:>7} {:>10} {:>10} {:>10}",
                truncate(name, 16),
                count,
                bytes(pss / n, true),
                bytes(owned / n, true),
                bytes(anon / n, true)
            );
        }
    }
}

fn browser(out: &mut String, trace: &Trace) {
    let summary = &trace.browser;
    if summary.mode == "off" || (summary.endpoint.is_none() && summary.notes.is_empty()) {
        return;
    }
    let endpoint = summary.endpoint.as_deref().unwrap_or("none");
    let _ = writeln!(
        out,
        "\nBROWSER (DevTools, read-only): endpoint {endpoint}; {} connects, {} disconnects, {} failed calls, {} late views",
        summary.connects, summary.disconnects, summary.failed_calls, summary.late_views
    );
    if !summary.calls.is_empty() {
        let calls: Vec<String> = summary
            .calls
            .iter()
            .map(|(method, cost)| {
                format!(
                    "{method} {}x {:.1} ms (max {:.1})",
                    cost.count,
                    1e3 * cost.seconds / cost.count.max(1) as f64,
                    1e3 * cost.max_seconds
                )
            })
            .collect();
        let _ = writeln!(out, "calls (mean answer time): {}", calls.join(", "));
    }
    for note in &summary.notes {
        let _ = writeln!(out, "note: {note}");
    }
    let with_views: Vec<_> = trace
        .cycles
        .iter()
        .filter_map(|c| c.browser.as_deref().map(|b| (c.index, b)))
        .collect();
    if !with_views.is_empty() {
        let _ = writeln!(
            out,
            "{:>4} {:>6} {:>9} {:>10}",
            "#", "PAGES", "CONTEXTS", "JS HEAP"
        );
        for (index, view) in &with_views {
            let _ = writeln!(
                out,
                "{:>4} {:>6} {:>9} {:>10}",
                index,
                view.pages,
                view.contexts,
                size(view.js_heap_used)
            );
        }
    }
    if let Some(view) = with_views.last().map(|(_, v)| *v).or(summary.last.as_ref()) {
        let mut pages: Vec<_> = view.page_list.iter().filter(|p| !p.internal).collect();
        pages.sort_by_key(|p| std::cmp::Reverse(p.js_heap_used));
        let _ = writeln!(
            out,
            "{:>10} {:>9} {:>8}  URL",
            "JS HEAP", "NODES", "RENDERER"
        );
        for page in pages.iter().take(10) {
            let renderer = page
                .renderer_pid
                .map(|p| p.to_string())
                .unwrap_or_else(|| "?".into());
            let _ = writeln!(
                out,
                "{:>10} {:>9} {:>8}  {}",
                size(page.js_heap_used),
                page.nodes,
                renderer,
                truncate(&page.url, 80)
            );
        }
    }
}

fn resident_by_process(out: &mut String, trace: &Trace, rows: &[&Process]) {
    let source = if trace.resident_source == "kernel" {
        "the kernel's counters"
    } else {
        "/proc samples"
    };
    let _ = writeln!(
        out,
        "\nRESIDENT BY PROCESS (PSS from /proc; anon, file, shmem, swap from {source}, when last seen)"
    );
    let _ = writeln!(
        out,
        "{:>7} {:<18} {:<16} {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
        "PID", "ROLE", "COMMAND", "STATE", "PSS", "ANON", "FILE", "SHMEM", "SWAP", "PEAK ANON"
    );
    for process in rows {
        let resident = &process.resident;
        let _ = writeln!(
            out,
            "{:>7} {:<18} {:<16} {:<8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9}",
            process.pid,
            truncate(process.role.as_str(), 18),
            truncate(&process.comm, 16),
            process.state(),
            size(process.pss),
            size(resident.anon),
            size(resident.file),
            size(resident.shmem),
            size(resident.swap),
            size(process.resident_peak.anon)
        );
    }
    more_rows_note(out, rows.len(), trace.processes.len());
}

fn address_space_by_process(out: &mut String, trace: &Trace, rows: &[&Process]) {
    let _ = writeln!(
        out,
        "\nADDRESS SPACE BY PROCESS (address space, not memory: net bytes per class = mapped - unmapped \
         + committed - uncommitted; `total` leaves out `reserved`, space held that nothing can \
         touch until it is committed)"
    );
    let classes = RegionClass::ALL
        .into_iter()
        .filter(|c| *c != RegionClass::Unattributed);
    let mut header = format!(
        "{:>7} {:>7} {:<16} {:<8}",
        "PID", "PPID", "COMMAND", "STATE"
    );
    for class in classes.clone() {
        let _ = write!(header, " {:>8}", class.name());
    }
    let _ = writeln!(
        out,
        "{header} {:>8} {:>9} {:>9} {:>8}",
        "total", "committed", "released", "brk"
    );
    let mut partial = 0;
    for process in rows {
        let mut line = format!(
            "{:>7} {:>7} {:<16} {:<8}",
            process.pid,
            process.ppid,
            truncate(&process.comm, 16),
            process.state()
        );
        let split_known = !process.class_split_partial();
        partial += usize::from(!split_known);
        let (mut committed, mut released, mut total) = (0, 0, 0);
        for class in RegionClass::ALL {
            let flow = process.class(class);
            committed += flow.committed;
            released += flow.released;
            if class != RegionClass::Reserved {
                total += flow.net();
            }
        }
        for class in classes.clone() {
            let net = process.class(class).net();
            // A split it knows is wrong is not printed: "?" and the exact total.
            let cell = if split_known {
                bytes(net, true)
            } else {
                "?".into()
            };
            let _ = write!(line, " {cell:>8}");
        }
        let _ = writeln!(
            out,
            "{line} {:>8} {:>9} {:>9} {:>8}",
            bytes(total, true),
            size(committed),
            size(released),
            bytes(process.brk_growth, true)
        );
    }
    more_rows_note(out, rows.len(), trace.processes.len());
    if partial > 0 {
        let processes = if partial == 1 { "process" } else { "processes" };
        let _ = writeln!(
            out,
            "? {partial} {processes}: some calls could not be attributed to a class (the mm's lock \
             was busy; see LOST and the `unattributed` class below); their totals are exact"
        );
    }
}

fn class_totals(out: &mut String, trace: &Trace) {
    let _ = writeln!(
        out,
        "\nADDRESS SPACE BY REGION CLASS (address space, not memory: what is resident is under \
         RESIDENT MEMORY; `reserved` is held, not used, and left out of the last row)"
    );
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8}",
        "class", "mapped", "unmapped", "net", "committed", "uncommitted", "released", "calls"
    );
    let mut all = ClassFlow::default();
    for class in RegionClass::ALL {
        let flow = trace
            .totals
            .address_space
            .get(class.name())
            .copied()
            .unwrap_or_default();
        if class != RegionClass::Reserved {
            all.add(&flow);
        }
        class_row(out, class.name(), &flow);
    }
    class_row(out, "all but resv", &all);
    let _ = writeln!(out, "brk growth: {}", bytes(trace.totals.brk_growth, true));
}

fn class_row(out: &mut String, name: &str, flow: &ClassFlow) {
    let _ = writeln!(
        out,
        "{:<12} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8}",
        name,
        size(flow.mapped),
        size(flow.unmapped),
        bytes(flow.net(), true),
        size(flow.committed),
        size(flow.uncommitted),
        size(flow.released),
        flow.calls
    );
}

/// `reason count` for each reason that lost events.
fn lost_reasons(trace: &Trace) -> Vec<String> {
    trace
        .events_lost
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect()
}

fn lost_events(out: &mut String, trace: &Trace) {
    let lost = lost_reasons(trace);
    if !lost.is_empty() {
        let _ = writeln!(
            out,
            "\nLOST EVENTS (figures above are incomplete): {}",
            lost.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use crate::units::bytes;

    #[test]
    fn formats_bytes_in_binary_units() {
        assert_eq!(bytes(0, true), "0");
        assert_eq!(bytes(512, false), "512");
        assert_eq!(bytes(4096, true), "+4.0K");
        assert_eq!(bytes(-(3 << 20) / 2, true), "-1.5M");
        assert_eq!(bytes(5 << 30, false), "5.0G");
    }
}
