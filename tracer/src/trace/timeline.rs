//! The timeline: the trace cut into the worker's cycles and their phases.
//!
//! At every boundary the session hands in a [`Snapshot`] of every process; a cycle or phase is
//! the difference between the snapshots at its two ends, summed per role. Flows are cumulative
//! counters, so their differences are exact; resident memory and PSS are states, so their
//! differences are growth. Only the open cycle's and open phase's start snapshots are kept:
//! memory grows with the number of cycles, not with events or samples.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::PathBuf,
};

use tracer_common::{ClassFlow, RegionClass};

use super::{
    compact_map::CompactMap,
    cycle::{CompactedCycles, Cycle, Growth, Phase},
    digest::{History, median},
    spill::{Cycles, Spill},
};
use crate::collect::{
    browser::BrowserView,
    markers::Boundary,
    processes::{ProcessState, RoleTotals, Snapshot},
    roles::Role,
    sampler::ProcSample,
};

/// The shortest stub (without a phase or figures) kept as a cut cycle: a worker whose cycles
/// take milliseconds (socket markers answered at once) still needs a moment to exit after its
/// last marker, and that moment is not a cycle.
const MIN_CUT_S: f64 = 0.1;

struct OpenPhase {
    name: String,
    start_s: f64,
    start: Snapshot,
}

struct OpenCycle {
    start_s: f64,
    start: Snapshot,
    phases: Vec<Phase>,
    phase: Option<OpenPhase>,
    worker: BTreeMap<String, f64>,
}

/// How many of the latest cycles keep every detail; older ones are compacted (see
/// [`Cycle::compact`]), so a trace of 100,000 cycles stays small in memory and on disk. Past
/// a sixteenth more in memory, the older ones are spilled to disk (see [`crate::trace::spill`]).
pub const FULL_CYCLES: usize = 1000;

/// Compacted cycles kept in memory before they go to disk together, as a share of the full
/// ones: few, so that the memory a trace holds after 1,000 cycles is what it holds after
/// 100,000 (with twice `FULL_CYCLES` in memory it grew from 11 to 21 MiB between the two).
const SPILL_BATCH_DIVISOR: usize = 16;

pub struct Timeline {
    warmup: u32,
    /// The cycles in memory: the latest ones, after those spilled.
    cycles: Vec<Cycle>,
    open: OpenCycle,
    /// How many of the latest cycles stay in full.
    full_cycles: usize,
    compacted: CompactedCycles,
    /// Where older cycles go: created when first needed, in `spill_dir`. Without one (no
    /// directory given, or the file could not be created or written), they stay in memory.
    spill: Option<Spill>,
    spill_dir: Option<PathBuf>,
    spill_failed: bool,
    /// The segment (instance of a followed worker) under way, and the index of its first cycle.
    segment: u32,
    segment_first: u32,
}

impl Timeline {
    pub fn new(warmup: u32, start_s: f64, start: Snapshot) -> Timeline {
        Timeline {
            warmup,
            cycles: Vec::new(),
            open: OpenCycle::new(start_s, start),
            full_cycles: FULL_CYCLES,
            compacted: CompactedCycles::default(),
            spill: None,
            spill_dir: None,
            spill_failed: false,
            segment: 0,
            segment_first: 1,
        }
    }

    /// Spills older cycles to an unnamed file in `dir` rather than keeping them in memory.
    pub fn with_spill_dir(mut self, dir: PathBuf) -> Timeline {
        self.spill_dir = Some(dir);
        self
    }

    /// Keeps only the latest `n` cycles in full (tests use a small `n`).
    pub fn with_full_cycles(mut self, n: usize) -> Timeline {
        self.full_cycles = n.max(1);
        self
    }

    /// Records the browser's view at the end of the last complete cycle.
    pub fn attach_browser(&mut self, view: BrowserView) {
        if let Some(cycle) = self.cycles.last_mut() {
            cycle.browser = Some(Box::new(view));
        }
    }

    pub fn complete_cycles(&self) -> usize {
        self.spilled() + self.cycles.len()
    }

    /// The cycles still in memory: the latest ones.
    pub fn cycles(&self) -> &[Cycle] {
        &self.cycles
    }

    fn spilled(&self) -> usize {
        self.spill.as_ref().map_or(0, Spill::count)
    }

    /// The digest of every complete cycle so far, for an interim analysis.
    pub fn history(&self) -> History {
        let mut history = self
            .spill
            .as_ref()
            .map(|s| s.history().clone())
            .unwrap_or_default();
        history.extend(&self.cycles);
        history
    }

    /// Writes the older half of the cycles in memory out, once twice [`FULL_CYCLES`] are there
    /// (all of them compacted already).
    fn spill_older(&mut self) {
        let batch = (self.full_cycles / SPILL_BATCH_DIVISOR).max(1);
        if self.cycles.len() < self.full_cycles + batch || self.spill_failed {
            return;
        }
        let Some(dir) = &self.spill_dir else { return };
        if self.spill.is_none() {
            match Spill::create(dir).or_else(|_| Spill::create(&std::env::temp_dir())) {
                Ok(spill) => self.spill = Some(spill),
                Err(_) => {
                    self.spill_failed = true;
                    return;
                }
            }
        }
        let spill = self.spill.as_mut().expect("created above");
        let mut written = 0;
        for cycle in &self.cycles[..self.cycles.len() - self.full_cycles] {
            if spill.push(cycle).is_err() {
                self.spill_failed = true;
                break;
            }
            written += 1;
        }
        self.cycles.drain(..written);
    }

    /// The worker's figures from a line of its own (`--figures-regex`): the cycle under way's.
    pub fn add_figures(&mut self, values: BTreeMap<String, f64>) {
        self.open.worker.extend(values);
    }

    /// Takes in one boundary at `now_s`, with the state of every process at that moment and
    /// the worker's figures sent with the marker.
    pub fn on_boundary(
        &mut self,
        boundary: Boundary,
        now_s: f64,
        snapshot: Snapshot,
        values: BTreeMap<String, f64>,
    ) {
        self.open.worker.extend(values);
        match boundary {
            Boundary::PhaseStart(name) => {
                self.open.close_phase(now_s, &snapshot);
                self.open.phase = Some(OpenPhase {
                    name,
                    start_s: now_s,
                    start: snapshot,
                });
            }
            Boundary::CycleEnd => {
                let next = OpenCycle::new(now_s, snapshot.clone());
                let done = std::mem::replace(&mut self.open, next);
                let (index, warmup) = self.next_index();
                let mut cycle = done.close(index, now_s, &snapshot, false, warmup);
                cycle.segment = self.segment;
                self.cycles.push(cycle);
                // The cycle falling out of the recent ones: its teardown mark and browser view
                // were settled long ago.
                if let Some(old) = self.cycles.len().checked_sub(self.full_cycles + 1) {
                    self.compacted.take(&mut self.cycles[old]);
                }
                self.spill_older();
            }
        }
    }

    /// Marks what the last boundary ended (a cycle, or a phase) as measured on a tree tearing
    /// down: it stays in the trace, and out of every fit.
    pub fn mark_teardown(&mut self, boundary: &Boundary, reason: String) {
        match boundary {
            Boundary::CycleEnd => {
                if let Some(cycle) = self.cycles.last_mut() {
                    cycle.teardown = true;
                    cycle.teardown_reason = Some(reason);
                }
            }
            Boundary::PhaseStart(_) => {
                if let Some(phase) = self.open.phases.last_mut() {
                    phase.teardown = true;
                }
            }
        }
    }

    /// The cycles, with the open one added as `cut` when it holds anything worth keeping: a
    /// phase, the worker's figures, or at least half a typical cycle and 0.1 s (a stub between
    /// the last marker and the worker's exit is shutdown, not a cycle).
    /// Returns them with the sums of what compacted cycles dropped, if any were.
    /// The complete cycles so far, for a report written while the trace goes on (the open
    /// cycle is left out), with the sums of what compacted cycles dropped.
    pub fn so_far(&self) -> std::io::Result<(Cycles, Option<CompactedCycles>)> {
        let spill = self.spill.as_ref().map(Spill::share).transpose()?;
        let compacted = (self.compacted.count > 0).then(|| self.compacted.clone());
        Ok((Cycles::new(spill, self.cycles.clone()), compacted))
    }

    pub fn finish(mut self, end_s: f64, snapshot: Snapshot) -> (Cycles, Option<CompactedCycles>) {
        self.cut_open(end_s, snapshot);
        let compacted = (self.compacted.count > 0).then_some(self.compacted);
        (Cycles::new(self.spill, self.cycles), compacted)
    }

    /// The followed worker exited at `end_s`: the cycle under way is cut there, and what
    /// comes until the next instance belongs to no cycle.
    pub fn end_segment(&mut self, end_s: f64, snapshot: Snapshot) {
        self.cut_open(end_s, snapshot.clone());
        self.open = OpenCycle::new(end_s, snapshot);
    }

    /// A new instance of the followed worker from `now_s` on: its cycles are a new segment,
    /// its warm-up counted from its own first cycle.
    pub fn start_segment(&mut self, now_s: f64, snapshot: Snapshot) {
        self.open = OpenCycle::new(now_s, snapshot);
        self.segment += 1;
        self.segment_first = self.complete_cycles() as u32 + 1;
    }

    /// The index of the first cycle of the segment under way (1 without a followed worker).
    pub fn segment_first(&self) -> u32 {
        self.segment_first
    }

    /// The index the next cycle gets, and whether it is warm-up.
    fn next_index(&self) -> (u32, bool) {
        let index = self.complete_cycles() as u32 + 1;
        (index, index - self.segment_first < self.warmup)
    }

    /// Closes the open cycle as `cut` at `end_s` when it holds anything worth keeping.
    fn cut_open(&mut self, end_s: f64, snapshot: Snapshot) {
        let mut durations: Vec<f64> = self.cycles.iter().map(|c| c.end_s - c.start_s).collect();
        let typical = median(&mut durations);
        let open = &self.open;
        let span = end_s - open.start_s;
        let worth_keeping = open.phase.is_some()
            || !open.phases.is_empty()
            || !open.worker.is_empty()
            || typical.is_some_and(|t| span >= (t / 2.0).max(MIN_CUT_S));
        if worth_keeping && span > 0.0 {
            let (index, warmup) = self.next_index();
            let open = std::mem::replace(&mut self.open, OpenCycle::new(end_s, snapshot.clone()));
            let mut cycle = open.close(index, end_s, &snapshot, true, warmup);
            cycle.segment = self.segment;
            self.cycles.push(cycle);
        }
    }
}

impl OpenCycle {
    fn new(start_s: f64, start: Snapshot) -> OpenCycle {
        OpenCycle {
            start_s,
            start,
            phases: Vec::new(),
            phase: None,
            worker: BTreeMap::new(),
        }
    }

    fn close_phase(&mut self, now_s: f64, snapshot: &Snapshot) {
        if let Some(phase) = self.phase.take() {
            self.phases.push(Phase {
                name: phase.name,
                start_s: phase.start_s,
                end_s: now_s,
                growth: growth(&phase.start, snapshot),
                teardown: false,
                tree: None,
            });
        }
    }

    fn close(mut self, index: u32, end_s: f64, end: &Snapshot, cut: bool, warmup: bool) -> Cycle {
        self.close_phase(end_s, end);
        Cycle {
            index,
            start_s: self.start_s,
            end_s,
            cut,
            warmup,
            phases: self.phases,
            by_role: by_role(end),
            growth: growth(&self.start, end),
            worker: self.worker.into_iter().collect(),
            browser: None,
            ..Cycle::default()
        }
    }
}

/// The live processes of each role in a snapshot.
fn by_role(snapshot: &Snapshot) -> CompactMap<Role, RoleTotals> {
    let mut roles: CompactMap<Role, RoleTotals> = CompactMap::new();
    for process in snapshot.processes.iter().filter(|p| p.live) {
        roles.get_or_default(process.role.clone()).add(&process.pss);
    }
    roles
}

/// What changed from `start` to `end`, per role (the role a process has at `end`).
pub fn growth(start: &Snapshot, end: &Snapshot) -> CompactMap<Role, Growth> {
    let before: HashMap<(u32, u64), &ProcessState> =
        start.processes.iter().map(|p| (p.key, p)).collect();
    let mut roles: CompactMap<Role, Growth> = CompactMap::new();
    for after in &end.processes {
        let before = before.get(&after.key);
        let growth = roles.get_or_default(after.role.clone());
        for class in RegionClass::ALL {
            let now = after.flows.classes[class as usize];
            let then = before
                .map(|b| b.flows.classes[class as usize])
                .unwrap_or_default();
            // Flows only ever grow; saturate in case a process's counters were collected late.
            let moved = minus(&now, &then);
            // Classes nothing moved in are left out: most of them in most phases, and a long
            // trace keeps every cycle's growth (in memory and in the JSON).
            if moved != ClassFlow::default() {
                growth
                    .address_space
                    .get_or_default(class.name().to_string())
                    .add(&moved);
            }
        }
        growth.brk_growth += after.flows.brk_growth - before.map_or(0, |b| b.flows.brk_growth);
        let change = |now: u64, then: Option<u64>| now as i64 - then.unwrap_or(0) as i64;
        growth.resident.anon += change(after.resident.anon, before.map(|b| b.resident.anon));
        growth.resident.file += change(after.resident.file, before.map(|b| b.resident.file));
        growth.resident.shmem += change(after.resident.shmem, before.map(|b| b.resident.shmem));
        growth.resident.swap += change(after.resident.swap, before.map(|b| b.resident.swap));
        let pss = |figure: fn(&ProcSample) -> u64| {
            change(figure(&after.pss), before.map(|b| figure(&b.pss)))
        };
        growth.pss += pss(|s| s.pss);
        growth.pss_anon += pss(|s| s.pss_anon);
        growth.pss_shmem += pss(|s| s.pss_shmem);
        growth.pss_file += pss(|s| s.pss_file);
    }
    // A process that left the snapshot was folded into its role's entry (see
    // `ProcessTable::fold_exited`), which now holds its flows: they did not move in this span.
    let after: HashSet<(u32, u64)> = end.processes.iter().map(|p| p.key).collect();
    for gone in start.processes.iter().filter(|p| !after.contains(&p.key)) {
        let Some(growth) = roles.get_mut(&gone.role) else {
            continue;
        };
        for class in RegionClass::ALL {
            if let Some(flow) = growth.address_space.get_mut(class.name()) {
                *flow = minus(flow, &gone.flows.classes[class as usize]);
            }
        }
        growth
            .address_space
            .retain(|_, flow| *flow != ClassFlow::default());
        growth.brk_growth -= gone.flows.brk_growth;
    }
    roles
}

/// `a - b`, field by field, never below zero.
fn minus(a: &ClassFlow, b: &ClassFlow) -> ClassFlow {
    ClassFlow {
        mapped: a.mapped.saturating_sub(b.mapped),
        unmapped: a.unmapped.saturating_sub(b.unmapped),
        committed: a.committed.saturating_sub(b.committed),
        uncommitted: a.uncommitted.saturating_sub(b.uncommitted),
        released: a.released.saturating_sub(b.released),
        calls: a.calls.saturating_sub(b.calls),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use tracer_common::ProcessFlows;

    use super::*;

    /// A span over which 600 exited processes were folded (see `ProcessTable::reap`) grows by
    /// nothing: their flows moved to the folded entry, not away.
    #[test]
    fn folding_exited_processes_changes_no_growth() {
        let (_, before, after) = crate::collect::processes::tests::table_with_600_exited();
        for (role, growth) in growth(&before, &after).iter() {
            assert!(growth.address_space.is_empty(), "{role}: {growth:?}");
            assert_eq!(growth.brk_growth, 0, "{role}");
        }
    }
    use crate::trace::{ResidentBytes, TreeChange};

    fn state(
        pid: u32,
        role: &str,
        anon_mapped: u64,
        resident_anon: u64,
        live: bool,
    ) -> ProcessState {
        let mut flows = ProcessFlows::default();
        flows.classes[RegionClass::Anon as usize].mapped = anon_mapped;
        ProcessState {
            key: (pid, 0),
            role: role.parse().unwrap(),
            live,
            flows,
            resident: ResidentBytes {
                anon: resident_anon,
                ..Default::default()
            },
            pss: ProcSample {
                pss: resident_anon,
                pss_anon: resident_anon,
                ..Default::default()
            },
        }
    }

    fn snapshot(states: Vec<ProcessState>) -> Snapshot {
        Snapshot { processes: states }
    }

    #[test]
    fn cycles_and_phases_are_differences_between_boundaries() {
        let mut timeline =
            Timeline::new(1, 0.0, snapshot(vec![state(1, "worker", 100, 100, true)]));
        timeline.on_boundary(
            Boundary::PhaseStart("scrape".into()),
            1.0,
            snapshot(vec![state(1, "worker", 100, 100, true)]),
            BTreeMap::new(),
        );
        timeline.on_boundary(
            Boundary::PhaseStart("cleanup".into()),
            2.0,
            snapshot(vec![
                state(1, "worker", 300, 300, true),
                state(2, "renderer", 50, 50, true),
            ]),
            BTreeMap::new(),
        );
        let values = BTreeMap::from([("heapUsed".to_string(), 42.0)]);
        timeline.on_boundary(
            Boundary::CycleEnd,
            3.0,
            snapshot(vec![
                state(1, "worker", 300, 200, true),
                state(2, "renderer", 50, 0, false),
            ]),
            values,
        );
        assert_eq!(timeline.complete_cycles(), 1);
        let (cycles, _) = timeline.finish(
            3.1,
            snapshot(vec![
                state(1, "worker", 300, 200, true),
                state(2, "renderer", 50, 0, false),
            ]),
        );
        assert_eq!(
            cycles.len(),
            1,
            "a 0.1 s stub with nothing in it is not a cycle"
        );
        let cycle = &cycles[0];
        assert!(cycle.warmup && !cycle.cut);
        assert_eq!(cycle.worker["heapUsed"], 42.0);
        assert_eq!(
            cycle.growth[&Role::Worker].address_space["anon"].mapped,
            200
        );
        assert_eq!(cycle.growth[&Role::Worker].resident.anon, 100);
        // The renderer came and went within the cycle: its flows stay, its memory does not.
        assert_eq!(
            cycle.growth[&Role::Renderer].address_space["anon"].mapped,
            50
        );
        assert_eq!(cycle.growth[&Role::Renderer].resident.anon, 0);
        assert_eq!(cycle.by_role.keys().collect::<Vec<_>>(), [&Role::Worker]);
        let phases: Vec<(&str, i64)> = cycle
            .phases
            .iter()
            .map(|p| (p.name.as_str(), p.growth[&Role::Worker].resident.anon))
            .collect();
        assert_eq!(phases, [("scrape", 200), ("cleanup", -100)]);
        assert_eq!((cycle.phases[0].start_s, cycle.phases[1].end_s), (1.0, 3.0));
    }

    #[test]
    fn a_moment_after_millisecond_cycles_is_not_a_cut_cycle() {
        let start = snapshot(vec![state(1, "worker", 0, 0, true)]);
        let mut timeline = Timeline::new(0, 0.0, start.clone());
        timeline.on_boundary(Boundary::CycleEnd, 0.01, start.clone(), BTreeMap::new());
        timeline.on_boundary(Boundary::CycleEnd, 0.02, start.clone(), BTreeMap::new());
        // 30 ms after the last marker, three times a cycle: the worker exiting.
        assert_eq!(timeline.finish(0.05, start).0.len(), 2);
    }

    #[test]
    fn a_trace_cut_short_keeps_the_open_cycle_marked_cut() {
        let start = snapshot(vec![state(1, "worker", 0, 0, true)]);
        let mut timeline = Timeline::new(0, 0.0, start.clone());
        timeline.on_boundary(Boundary::CycleEnd, 1.0, start.clone(), BTreeMap::new());
        timeline.on_boundary(Boundary::CycleEnd, 2.0, start.clone(), BTreeMap::new());
        timeline.on_boundary(
            Boundary::PhaseStart("scrape".into()),
            2.1,
            start.clone(),
            BTreeMap::new(),
        );
        let (cycles, _) = timeline.finish(2.2, start);
        let summary: Vec<(u32, bool)> = cycles.iter().map(|c| (c.index, c.cut)).collect();
        assert_eq!(summary, [(1, false), (2, false), (3, true)]);
        assert_eq!(cycles[2].phases[0].name, "scrape");
    }

    /// Five cycles of a worker growing 100 bytes in `scrape` and giving back 30 in `cleanup`,
    /// kept as `full` full cycles.
    /// Five cycles of a worker growing 70 bytes a cycle (100 in scrape, -30 in cleanup), the
    /// latest `full` kept whole.
    pub(crate) fn five_cycles(full: usize) -> (Cycles, Option<CompactedCycles>) {
        five_cycles_spilled(full, None)
    }

    /// The same, with older cycles spilled into `dir`.
    pub(crate) fn five_cycles_spilled(
        full: usize,
        spill_dir: Option<PathBuf>,
    ) -> (Cycles, Option<CompactedCycles>) {
        let at = |i: u64, extra: u64| {
            snapshot(vec![state(
                1,
                "worker",
                70 * i + extra,
                70 * i + extra,
                true,
            )])
        };
        let mut timeline = Timeline::new(0, 0.0, at(0, 0)).with_full_cycles(full);
        if let Some(dir) = spill_dir {
            timeline = timeline.with_spill_dir(dir);
        }
        for i in 0..5u64 {
            let t = i as f64;
            timeline.on_boundary(
                Boundary::PhaseStart("scrape".into()),
                t,
                at(i, 0),
                BTreeMap::new(),
            );
            timeline.on_boundary(
                Boundary::PhaseStart("cleanup".into()),
                t + 0.5,
                at(i, 100),
                BTreeMap::new(),
            );
            let figures = BTreeMap::from([("heapUsed".to_string(), t)]);
            timeline.on_boundary(Boundary::CycleEnd, t + 1.0, at(i + 1, 0), figures);
        }
        timeline.finish(5.0, at(5, 0))
    }

    #[test]
    fn older_cycles_are_compacted_and_the_analysis_reads_them_the_same() {
        let (full, none) = five_cycles(10);
        assert!(none.is_none() && full.iter().all(|c| !c.compacted));
        let (cycles, compacted) = five_cycles(2);
        let compacted = compacted.expect("three cycles compacted");
        let flags: Vec<bool> = cycles.iter().map(|c| c.compacted).collect();
        assert_eq!(flags, [true, true, true, false, false]);
        // What a compacted cycle keeps: the tree's change over it and over each phase, its
        // figures per role and the worker's.
        let old = &cycles[0];
        assert!(old.growth.is_empty() && old.phases.iter().all(|p| p.growth.is_empty()));
        assert_eq!(
            old.tree(),
            TreeChange {
                pss: 70,
                owned: 70,
                anon: 70
            }
        );
        let phases: Vec<i64> = old.phases.iter().map(|p| p.tree().owned).collect();
        assert_eq!(phases, [100, -30]);
        assert_eq!(
            (old.by_role[&Role::Worker].anon, old.worker["heapUsed"]),
            (70, 0.0)
        );
        // What it drops, summed: three cycles of 70 bytes mapped, 100 in scrape each.
        assert_eq!(compacted.count, 3);
        assert_eq!(
            compacted.growth[&Role::Worker].address_space["anon"].mapped,
            210
        );
        assert_eq!(compacted.phases["scrape"][&Role::Worker].resident.anon, 300);
        assert_eq!(compacted.phases["cleanup"][&Role::Worker].pss_anon, -90);
        // The same once written and read back (the analysis reads it as the whole cycles:
        // `analysis::tests`).
        let json = serde_json::to_string(&cycles).unwrap();
        let read: Vec<Cycle> = serde_json::from_str(&json).unwrap();
        assert_eq!(read, *cycles);
    }

    #[test]
    fn spilled_cycles_are_written_and_analysed_as_if_kept() {
        let (kept, kept_sums) = five_cycles(2);
        let (spilled, spilled_sums) = five_cycles_spilled(2, Some(std::env::temp_dir()));
        // At each cycle end from the third on, one more than `full` in memory: the oldest went
        // to disk, so the last two stay.
        assert_eq!(spilled.spilled().map(|s| s.count()), Some(3));
        assert_eq!((spilled.len(), spilled.count()), (2, 5));
        assert_eq!(spilled[0].index, 4);
        assert_eq!(spilled_sums, kept_sums);
        assert_eq!(
            serde_json::to_string(&spilled).unwrap(),
            serde_json::to_string(&kept).unwrap()
        );
    }
}
