//! The trace document assembled from what the session's parts hold: the collectors' processes
//! and samples, the cutting's cycles, markers and regions.

use std::time::Instant;

use super::{
    collectors::Collected,
    cutting::Cut,
    options::{Options, Target},
};
use crate::trace::{self, EndReason, MarkerSummary, SCHEMA, Trace};

/// What a trace says of itself that is fixed once the tree is found.
pub(super) struct Head {
    pub(super) command: Vec<String>,
    pub(super) mode: &'static str,
    pub(super) root_pid: u32,
    pub(super) started_at: String,
    pub(super) started: Instant,
    pub(super) interval_s: f64,
}

impl Head {
    pub(super) fn new(
        target: &Target,
        root_pid: u32,
        started: Instant,
        started_at: u64,
        options: &Options,
    ) -> Head {
        let (mode, command) = match target {
            Target::Run(command) => ("run", command.clone()),
            Target::Attach(pid) => ("attach", crate::collect::target::cmdline(*pid)),
        };
        Head {
            command,
            mode,
            root_pid,
            started_at: trace::rfc3339(started_at),
            started,
            interval_s: options.interval.as_secs_f64(),
        }
    }
}

/// The trace as far as it has gone, for the end or for a report on the way: what the
/// collectors hold now and what the cutting made of the markers. Its browser and exit code are
/// the caller's to fill.
pub(super) fn trace(
    head: &Head,
    warnings: Vec<String>,
    ended_by: EndReason,
    collected: Collected,
    cut: Cut,
) -> Trace {
    let mut trace = Trace {
        schema: SCHEMA.to_string(),
        command: head.command.clone(),
        mode: head.mode.to_string(),
        root_pid: head.root_pid,
        started_at: head.started_at.clone(),
        duration_s: head.started.elapsed().as_secs_f64(),
        ebpf: collected.ebpf,
        flows: collected.flows,
        resident_source: collected.resident_source.to_string(),
        interval_s: head.interval_s,
        warnings,
        ended_by,
        exit_code: None,
        events_lost: collected.events_lost,
        totals: collected.totals,
        processes: collected.processes,
        samples: collected.samples,
        // Filled from the cut below.
        cycles: Vec::new().into(),
        compacted: None,
        segments: Vec::new(),
        memory_dumps: Vec::new(),
        markers: MarkerSummary::default(),
        browser: Default::default(),
        analysis: Default::default(),
        tracer: collected.tracer,
    };
    cut.fill(&mut trace);
    trace
}
