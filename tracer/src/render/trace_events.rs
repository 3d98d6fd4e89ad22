//! A trace as Chrome Trace Event Format JSON (`--trace-events FILE`), which Perfetto's UI and
//! chrome://tracing open: a counter track per role (PSS over time, stacked as the part the role
//! owns, anonymous and shared memory, and the file-backed rest) and per process (resident
//! memory when last seen), and an instant event at every cycle end and phase start.

use serde_json::{Value, json};

use crate::trace::{Role, RoleTotals, Trace};

/// The pid every role track is drawn under (not a real process).
const ROLES_PID: u32 = 0;

fn micros(seconds: f64) -> f64 {
    (seconds * 1e6).round()
}

pub fn trace_events(trace: &Trace) -> Value {
    let mut events = vec![json!({
        "name": "process_name", "ph": "M", "pid": ROLES_PID, "ts": 0,
        "args": {"name": "leaktrace: PSS by role"}
    })];
    // Counter args are drawn stacked: owned + file is the role's PSS.
    let role_counter = |t_s: f64, role: &Role, totals: &RoleTotals| {
        json!({"name": format!("{role} PSS"), "ph": "C", "pid": ROLES_PID, "ts": micros(t_s),
               "args": {"owned": totals.owned(), "file": totals.file}})
    };
    for sample in &trace.samples {
        for (role, totals) in &sample.by_role {
            events.push(role_counter(sample.t_s, role, totals));
        }
    }
    // The totals last, so every track ends on the figures of the report.
    for (role, totals) in &trace.totals.by_role {
        events.push(role_counter(trace.totals.pss_at_s, role, totals));
    }
    let end = micros(trace.duration_s);
    for process in &trace.processes {
        events.push(
            json!({"name": "process_name", "ph": "M", "pid": process.pid, "ts": 0,
                           "args": {"name": format!("{} ({})", process.comm, process.role)}}),
        );
        let r = &process.resident;
        events.push(json!({"name": "resident", "ph": "C", "pid": process.pid, "ts": end,
                           "args": {"anon": r.anon, "file": r.file, "shmem": r.shmem, "swap": r.swap, "pss": process.pss}}));
    }
    // Spilled cycles are read back one at a time: every cycle has its marks.
    let spilled = trace.cycles.spilled().into_iter().flat_map(|s| s.cycles());
    for cycle in spilled.chain(trace.cycles.iter().cloned()) {
        for phase in &cycle.phases {
            events.push(
                json!({"name": format!("phase {}", phase.name), "ph": "i", "s": "g",
                               "pid": ROLES_PID, "ts": micros(phase.start_s)}),
            );
        }
        let name = if cycle.cut {
            format!("cycle {} (cut)", cycle.index)
        } else {
            format!("cycle {} end", cycle.index)
        };
        events.push(
            json!({"name": name, "ph": "i", "s": "g", "pid": ROLES_PID, "ts": micros(cycle.end_s)}),
        );
    }
    json!({"traceEvents": events, "displayTimeUnit": "ms"})
}

/// Writes the events where the JSON trace would go: never through a symlink.
pub fn write(trace: &Trace, path: &std::path::Path) -> Result<(), crate::trace::TraceFileError> {
    write_into(trace, crate::trace::ReportFile::create(path)?)
}

/// The same into a file opened before (see [`crate::trace::ReportFile`]).
pub fn write_into(
    trace: &Trace,
    file: crate::trace::ReportFile,
) -> Result<(), crate::trace::TraceFileError> {
    let mut text = serde_json::to_vec(&trace_events(trace)).expect("events always serialise");
    text.push(b'\n');
    file.write_all(&text)
}
