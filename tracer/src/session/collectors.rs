//! Every collector of a session (the kernel programs, the process table and its /proc samples,
//! the browser's view) and the clock they share: what a boundary snapshot is made of.

use std::{collections::BTreeMap, time::Instant};

use tracer_common::{GENERATION_OF_LOADER, LostReason};

use super::{error::SessionError, watchdog::Watchdog};
use crate::{
    collect::{
        browser::{BrowserReader, BrowserView},
        kernel::{Kernel, KernelError, RssIndices},
        processes::{self, Process, ProcessTable, SampleSeries, Snapshot},
        roles::Role,
        sampler::{self, Depth, Reading, TreeReader},
        target::{self, ProcInfo},
    },
    trace::{Totals, TracerCost, TreeSample},
};

/// Every collector, and the clock they share.
pub(super) struct Collectors {
    kernel: Option<Kernel>,
    table: ProcessTable,
    series: SampleSeries,
    /// The last sample that found the tree alive: what the totals report once the worker exits.
    last_alive: Option<TreeSample>,
    started: Instant,
    root_pid: u32,
    /// Reads the tree's memory, here and where markers are read.
    tree: TreeReader,
    /// When the last reading was done (CLOCK_BOOTTIME).
    read_until_ns: u64,
    /// In `run` mode, told of every process that joins the tree.
    watchdog: Option<Watchdog>,
}

/// What the collectors hold for the trace document: every process with the kernel's figures,
/// the samples, the losses, and what reading the tree cost.
pub(super) struct Collected {
    pub(super) ebpf: bool,
    pub(super) flows: bool,
    pub(super) resident_source: &'static str,
    pub(super) events_lost: BTreeMap<String, u64>,
    pub(super) processes: Vec<Process>,
    pub(super) totals: Totals,
    pub(super) samples: Vec<TreeSample>,
    pub(super) tracer: TracerCost,
}

/// Everything every collector knew at one boundary.
pub(super) struct BoundarySnapshot {
    pub(super) t_s: f64,
    pub(super) snapshot: Snapshot,
    pub(super) sample: TreeSample,
}

impl Collectors {
    /// No tree yet: [`Collectors::launched`] or [`Collectors::attach`] gives it its root.
    pub(super) fn new(kernel: Option<Kernel>, started: Instant) -> Collectors {
        Collectors {
            kernel,
            table: ProcessTable::new(0),
            series: SampleSeries::default(),
            last_alive: None,
            started,
            root_pid: 0,
            tree: Default::default(),
            read_until_ns: 0,
            watchdog: None,
        }
    }

    /// Run mode: the command leaktrace launched is the root, with the watchdog that guards it.
    pub(super) fn launched(&mut self, root: ProcInfo, generation: u32, watchdog: Watchdog) {
        self.root_pid = root.pid;
        self.table = ProcessTable::new(root.pid);
        self.table.add(root, generation);
        self.watchdog = Some(watchdog);
        self.follow();
    }

    /// Attach mode: the process and its live descendants.
    pub(super) fn attach(&mut self, pid: u32) -> Result<(), SessionError> {
        self.root_pid = pid;
        self.table = ProcessTable::new(pid);
        self.seed_tree()?;
        // A child forked while we were seeding: look once more.
        self.seed_tree()
    }

    /// What they hold now, for the trace (see [`Collected`]): the kernel's figures are
    /// collected into the process table first.
    pub(super) fn collected(&mut self) -> Collected {
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
        Collected {
            ebpf: self.kernel.is_some(),
            flows: self.kernel.as_ref().is_some_and(|k| k.flows),
            resident_source: if rss.is_some() { "kernel" } else { "proc" },
            events_lost,
            totals: crate::trace::totals(&processes, self.last_alive.as_ref()),
            processes,
            samples: self.series.points().to_vec(),
            tracer: TracerCost::of_self(self.tree.cost()),
        }
    }

    /// Says on stderr that tracing has started (attach mode: the moment it is safe to go).
    pub(super) fn announce(&self) {
        let others = self.table.len().saturating_sub(1);
        eprintln!(
            "leaktrace: tracing pid {} and {others} other processes (Ctrl-C to stop)",
            self.root_pid
        );
    }

    /// Tracks a process in the kernel (eBPF only): the launched command, before it runs.
    pub(super) fn track(&mut self, pid: u32) -> Result<(), SessionError> {
        match self.kernel.as_mut() {
            Some(kernel) => kernel.track(pid).map(drop).map_err(SessionError::from),
            None => Ok(()),
        }
    }

    /// The reader of the tree's memory, for the threads that read markers.
    pub(super) fn tree_reader(&self) -> TreeReader {
        self.tree.clone()
    }

    /// When the session started: the clock every boundary's time is read on.
    pub(super) fn started(&self) -> Instant {
        self.started
    }

    pub(super) fn root_pid(&self) -> u32 {
        self.root_pid
    }

    pub(super) fn table(&self) -> &ProcessTable {
        &self.table
    }

    /// Kernel events lost so far, per reason (eBPF only).
    pub(super) fn lost(&mut self) -> Option<BTreeMap<String, u64>> {
        let lost = self.kernel.as_mut()?.lost();
        Some(
            LostReason::ALL
                .iter()
                .map(|&reason| (reason.name().to_string(), lost[reason as usize]))
                .collect(),
        )
    }

    /// When the last reading was done (CLOCK_BOOTTIME).
    pub(super) fn read_until_ns(&self) -> u64 {
        self.read_until_ns
    }

    /// From now on the syscall hooks count nothing (eBPF only).
    pub(super) fn stop_flows(&mut self) -> Result<(), KernelError> {
        match self.kernel.as_mut() {
            Some(kernel) => kernel.stop_flows(),
            None => Ok(()),
        }
    }

    /// Reaps the exited children the table knows of.
    pub(super) fn reap(&mut self) {
        self.table.reap();
    }

    /// The watchdog's work is done: the session stopped what it started.
    pub(super) fn release_watchdog(&mut self) {
        if let Some(watchdog) = self.watchdog.take() {
            watchdog.release();
        }
    }

    /// Follows `pid` and its tree from now on, in place of the root that exited. False when it
    /// is gone before it could be tracked.
    pub(super) fn follow_root(&mut self, pid: u32) -> bool {
        self.root_pid = pid;
        self.table.set_root(pid);
        if self.seed_tree().is_err() {
            return false;
        }
        // A child forked while we were seeding: look once more.
        let _ = self.seed_tree();
        true
    }

    pub(super) fn elapsed(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    pub(super) fn rss(&self) -> Option<RssIndices> {
        self.kernel.as_ref().and_then(|k| k.rss)
    }

    /// Takes in what happened since the last tick: kernel events, or /proc without eBPF.
    pub(super) fn follow(&mut self) {
        self.take_in();
        let joined = self.table.take_joined();
        if let Some(watchdog) = &mut self.watchdog {
            joined.iter().for_each(|process| watchdog.watch(process));
        }
        self.tree.set_pids(self.table.live_pids());
    }

    fn take_in(&mut self) {
        match &mut self.kernel {
            Some(kernel) => {
                let mut events = Vec::new();
                kernel.drain_events(|event| events.push(event));
                for event in &events {
                    self.table.on_event(event, kernel);
                }
            }
            None => {
                if let Ok(tree) = target::process_tree(self.root_pid) {
                    tree.into_iter()
                        .for_each(|info| self.table.add(info, GENERATION_OF_LOADER));
                }
                for pid in self.table.live_pids() {
                    if !target::is_alive(pid) {
                        self.table.mark_gone(pid);
                    }
                }
            }
        }
    }

    /// A /proc sample of every live process, kept in the bounded series: never a full one
    /// (PSS read again where resident memory moved, within the budget, or not at all), since
    /// samples come every `--interval` however large the tree (17 browsers are 193 processes:
    /// 1.3 s of smaps_rollup, measured).
    pub(super) fn sample(&mut self, depth: Depth) -> TreeSample {
        let reading = Reading {
            at_ns: sampler::boot_ns(),
            ..Reading::default()
        };
        self.sample_with(reading, depth)
    }

    /// Takes in `reading`, with every live process it does not cover (forked since its pid
    /// list was set) read now, as deep as `depth`.
    fn sample_with(&mut self, mut reading: Reading, depth: Depth) -> TreeSample {
        self.follow();
        let missing: Vec<u32> = self
            .table
            .live_pids()
            .into_iter()
            .filter(|pid| !reading.samples.contains_key(pid))
            .collect();
        let now = self.tree.read_pids(&missing, reading.at_ns, depth);
        reading.samples.extend(now.samples);
        reading.done_ns = reading.done_ns.max(now.done_ns);
        self.read_until_ns = reading.done_ns;
        let sample = self.table.sample_with(self.elapsed(), &reading);
        self.series.push(sample.clone());
        if !sample.by_role.is_empty() {
            self.last_alive = Some(sample.clone());
        }
        self.table.reap();
        sample
    }

    /// Everything every collector knows now, for the start and end of the trace.
    pub(super) fn snapshot(&mut self) -> (f64, Snapshot, TreeSample) {
        let boundary = self.boundary(sampler::boot_ns(), None, Depth::Full);
        (boundary.t_s, boundary.snapshot, boundary.sample)
    }

    /// Everything every collector knew at a marker read at `at_ns`: the tree's memory from
    /// `reading` (taken when the marker was read) or read now as deep as `depth`, and the
    /// kernel's flows.
    pub(super) fn boundary(
        &mut self,
        at_ns: u64,
        reading: Option<Reading>,
        depth: Depth,
    ) -> BoundarySnapshot {
        let reading = reading.unwrap_or_else(|| Reading {
            at_ns,
            ..Reading::default()
        });
        let sample = self.sample_with(reading, depth);
        if let Some(kernel) = &mut self.kernel {
            self.table.collect_kernel(kernel);
        }
        BoundarySnapshot {
            t_s: sample.t_s,
            snapshot: self.table.snapshot(self.rss()),
            sample,
        }
    }

    /// Tracks the attached process and its live descendants, from /proc.
    pub(super) fn seed_tree(&mut self) -> Result<(), SessionError> {
        for info in target::process_tree(self.root_pid)? {
            let mut generation = GENERATION_OF_LOADER;
            if let Some(kernel) = self.kernel.as_mut() {
                let key = kernel.track(info.pid)?;
                generation = key.generation;
                // Counters that never change while we watch still need a value: /proc shows the
                // same ones the kernel programs read.
                if let Some(rss) = kernel.rss
                    && let Some(sample) = sampler::sample(info.pid)
                {
                    kernel.seed_resident(key, processes::resident_pages(&sample, rss))?;
                }
            }
            self.table.add(info, generation);
        }
        Ok(())
    }
}

/// Connects to the browser when one shows up, and without cycles keeps the last view fresh.
pub(super) async fn follow_browser(
    collectors: &Collectors,
    browser: &mut BrowserReader,
    read: bool,
) {
    let browsers: Vec<_> = collectors
        .table
        .live_with_role(&Role::Browser)
        .into_iter()
        .filter_map(|pid| {
            let id = sampler::identity(pid)?;
            Some((pid, id.cmdline, sampler::home_of(pid)))
        })
        .collect();
    browser.ensure_connected(&browsers).await;
    if read {
        read_browser(collectors, browser).await;
    }
}

/// Reads the browser's view (within its deadline), with leaktrace's role for each of
/// Chromium's processes.
pub(super) async fn read_browser(
    collectors: &Collectors,
    browser: &mut BrowserReader,
) -> Option<BrowserView> {
    let mut view = browser.read_within_deadline().await?;
    for process in &mut view.processes {
        process.role = collectors.table.role_of_pid(process.pid);
    }
    Some(view)
}
