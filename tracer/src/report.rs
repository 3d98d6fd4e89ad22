//! The terminal report of a trace: what ran and how it ended, address-space flows per process
//! and region class, totals, and lost-event counters when there were any.

use std::fmt::Write as _;

use tracer_common::RegionClass;

use crate::trace::{ClassFlow, Process, Trace};

/// Beyond this many processes, the table shows the busiest ones (the JSON has all).
const MAX_ROWS: usize = 40;

/// Bytes as a short binary-unit figure: 0, 4.0K, 1.5M, 2.0G; `signed` adds a + to growth.
pub fn bytes(value: i64, signed: bool) -> String {
    let sign = if value < 0 {
        "-"
    } else if signed && value > 0 {
        "+"
    } else {
        ""
    };
    let magnitude = value.unsigned_abs() as f64;
    let (scaled, unit) = [("G", 1u64 << 30), ("M", 1 << 20), ("K", 1 << 10)]
        .into_iter()
        .find(|(_, size)| magnitude >= *size as f64)
        .map(|(unit, size)| (magnitude / size as f64, unit))
        .unwrap_or((magnitude, ""));
    if unit.is_empty() {
        format!("{sign}{}", value.unsigned_abs())
    } else {
        format!("{sign}{scaled:.1}{unit}")
    }
}

fn state(process: &Process) -> String {
    match (process.exited, process.exit_code) {
        (false, _) => "running".into(),
        (true, Some(code)) => format!("exit {code}"),
        (true, None) => "exited".into(),
    }
}

/// How much happened in a process: used to pick rows when there are too many.
fn activity(process: &Process) -> u64 {
    process
        .address_space
        .values()
        .map(|f| f.mapped + f.unmapped + f.committed + f.released)
        .sum()
}

pub fn render(trace: &Trace) -> String {
    let mut out = String::new();
    let status = trace
        .exit_code
        .map(|c| format!(", exit status {c}"))
        .unwrap_or_default();
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
    if !trace.ebpf {
        let _ = writeln!(
            out,
            "eBPF was off: no address-space flows (run as root without --no-ebpf to see them)"
        );
    }

    let _ = writeln!(
        out,
        "\nADDRESS SPACE BY PROCESS (net bytes per class = mapped - unmapped + committed - uncommitted)"
    );
    let mut header = format!(
        "{:>7} {:>7} {:<16} {:<8}",
        "PID", "PPID", "COMMAND", "STATE"
    );
    for class in RegionClass::ALL {
        let _ = write!(header, " {:>8}", class.name());
    }
    let _ = writeln!(
        out,
        "{header} {:>9} {:>9} {:>8}",
        "committed", "released", "brk"
    );
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
    for process in &rows {
        let mut line = format!(
            "{:>7} {:>7} {:<16} {:<8}",
            process.pid,
            process.ppid,
            truncate(&process.comm, 16),
            state(process)
        );
        let mut committed = 0;
        let mut released = 0;
        for class in RegionClass::ALL {
            let flow = process.class(class);
            committed += flow.committed;
            released += flow.released;
            let _ = write!(line, " {:>8}", bytes(flow.net(), true));
        }
        let _ = writeln!(
            out,
            "{line} {:>9} {:>9} {:>8}",
            bytes(committed as i64, false),
            bytes(released as i64, false),
            bytes(process.brk_growth, true)
        );
    }
    if rows.len() < trace.processes.len() {
        let _ = writeln!(
            out,
            "  ... and {} quieter processes (all are in the JSON, -o FILE)",
            trace.processes.len() - rows.len()
        );
    }

    let _ = writeln!(out, "\nTOTALS BY REGION CLASS");
    let _ = writeln!(
        out,
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8}",
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
        all.add(&flow);
        class_row(&mut out, class.name(), &flow);
    }
    class_row(&mut out, "all", &all);
    let _ = writeln!(out, "brk growth: {}", bytes(trace.totals.brk_growth, true));

    let lost: Vec<String> = trace
        .events_lost
        .iter()
        .filter(|(_, count)| **count > 0)
        .map(|(reason, count)| format!("{reason} {count}"))
        .collect();
    if !lost.is_empty() {
        let _ = writeln!(
            out,
            "\nLOST EVENTS (figures above are incomplete): {}",
            lost.join(", ")
        );
    }
    out
}

fn class_row(out: &mut String, name: &str, flow: &ClassFlow) {
    let _ = writeln!(
        out,
        "{:<9} {:>10} {:>10} {:>10} {:>10} {:>11} {:>10} {:>8}",
        name,
        bytes(flow.mapped as i64, false),
        bytes(flow.unmapped as i64, false),
        bytes(flow.net(), true),
        bytes(flow.committed as i64, false),
        bytes(flow.uncommitted as i64, false),
        bytes(flow.released as i64, false),
        flow.calls
    );
}

fn truncate(text: &str, width: usize) -> String {
    text.chars().take(width).collect()
}

#[cfg(test)]
mod tests {
    use super::bytes;

    #[test]
    fn formats_bytes_in_binary_units() {
        assert_eq!(bytes(0, true), "0");
        assert_eq!(bytes(512, false), "512");
        assert_eq!(bytes(4096, true), "+4.0K");
        assert_eq!(bytes(-(3 << 20) / 2, true), "-1.5M");
        assert_eq!(bytes(5 << 30, false), "5.0G");
    }
}
