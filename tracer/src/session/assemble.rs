//! The trace document assembled from what the session's parts hold: the collectors' processes
//! and samples, the cutting's cycles, markers and regions.

use std::{collections::BTreeMap, time::Instant};

use tracer_common::LostReason;

use super::{Options, collectors::Collectors, cutting::Cut};
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
        command: Vec<String>,
        mode: &'static str,
        root_pid: u32,
        started: Instant,
        started_at: u64,
        options: &Options,
    ) -> Head {
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

impl Collectors {
    /// The trace as far as it has gone, for the end or for a report on the way: every
    /// process with the kernel's figures now, the samples, and what the cutting made of the
    /// markers. Its browser and exit code are the caller's to fill.
    pub(super) fn trace(
        &mut self,
        head: &Head,
        warnings: Vec<String>,
        ended_by: EndReason,
        cut: Cut,
    ) -> Trace {
        let mut events_lost = BTreeMap::new();
        let rss = self.rss();
        if let Some(kernel) = self.kernel.as_mut() {
            self.table.collect_kernel(kernel);
            let lost = kernel.lost();
            for reason in LostReason::ALL {
                events_lost.insert(reason.name().to_string(), lost[reason as usize]);
            }
        }
        let processes = self.table.processes(rss);
        let mut trace = Trace {
            schema: SCHEMA.to_string(),
            command: head.command.clone(),
            mode: head.mode.to_string(),
            root_pid: head.root_pid,
            started_at: head.started_at.clone(),
            duration_s: head.started.elapsed().as_secs_f64(),
            ebpf: self.kernel.is_some(),
            flows: self.kernel.as_ref().is_some_and(|k| k.flows),
            resident_source: if rss.is_some() { "kernel" } else { "proc" }.to_string(),
            interval_s: head.interval_s,
            warnings,
            ended_by,
            exit_code: None,
            events_lost,
            totals: trace::totals(&processes, self.last_alive.as_ref()),
            processes,
            samples: self.series.points().to_vec(),
            // Filled from the cut below.
            cycles: Vec::new().into(),
            compacted: None,
            segments: Vec::new(),
            memory_dumps: Vec::new(),
            markers: MarkerSummary::default(),
            browser: Default::default(),
            analysis: Default::default(),
            tracer: trace::TracerCost::of_self(self.tree.cost()),
        };
        cut.fill(&mut trace);
        trace
    }
}
