//! /proc sampling: what each process holds now, from `smaps_rollup` (PSS: shared pages divided
//! among the processes that share them, so sums over a tree are honest) and `status` (the
//! kernel's resident counters). A process vanishing mid-read is normal and yields nothing.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

/// One process's memory at one moment, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcSample {
    pub rss: u64,
    pub pss: u64,
    pub pss_anon: u64,
    pub pss_file: u64,
    pub pss_shmem: u64,
    pub swap: u64,
    /// From /proc/PID/status: RssAnon, RssFile, RssShmem, VmSwap.
    pub rss_anon: u64,
    pub rss_file: u64,
    pub rss_shmem: u64,
    pub vm_swap: u64,
}

/// Reads `/proc/PID/smaps_rollup` and `/proc/PID/status`; None if the process is gone (or is a
/// zombie, which has no memory left to show).
pub fn sample(pid: u32) -> Option<ProcSample> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let mut sample = status(&process)?;
    add_rollup(&process, &mut sample).then_some(sample)
}

/// The kernel's resident counters from `/proc/PID/status`: cheap (no mmap lock) and exact to
/// the page (the per-CPU parts are summed since Linux 6.16).
fn status(process: &procfs::process::Process) -> Option<ProcSample> {
    let status = process.status().ok()?;
    let kib = |value: Option<u64>| value.unwrap_or(0) * 1024;
    Some(ProcSample {
        rss_anon: kib(status.rssanon),
        rss_file: kib(status.rssfile),
        rss_shmem: kib(status.rssshmem),
        vm_swap: kib(status.vmswap),
        ..ProcSample::default()
    })
}

/// Adds the PSS figures of `/proc/PID/smaps_rollup` (which walks every mapping under the
/// process's mmap lock: ~2 ms for a renderer); false if the process is gone.
fn add_rollup(process: &procfs::process::Process, sample: &mut ProcSample) -> bool {
    let Ok(rollup) = process.smaps_rollup() else {
        return false;
    };
    let Some(totals) = rollup.memory_map_rollup.0.first() else {
        return false;
    };
    let field = |name: &str| totals.extension.map.get(name).copied().unwrap_or(0);
    sample.rss = field("Rss");
    sample.pss = field("Pss");
    sample.pss_anon = field("Pss_Anon");
    sample.pss_file = field("Pss_File");
    sample.pss_shmem = field("Pss_Shmem");
    sample.swap = field("Swap");
    true
}

/// Now, on CLOCK_BOOTTIME: the clock of the kernel programs' event times.
pub fn boot_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

/// The memory of a tree's processes, read the moment a marker was read: a worker may close its
/// browser or exit right after its last marker, so the reading cannot wait for the session's
/// loop. Every process's status first (cheap and exact), then their smaps_rollup.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    /// When the marker was read, and when the reading was done (CLOCK_BOOTTIME).
    pub at_ns: u64,
    pub done_ns: u64,
    /// Every process that could be read, by pid.
    pub samples: HashMap<u32, ProcSample>,
}

/// Reads the traced tree's memory from any thread: the session keeps its list of live pids
/// current, and the readers of the command's output read the tree the moment a marker comes.
///
/// smaps_rollup walks every mapping under the process's mmap lock (~2 ms a renderer, ~6 ms a
/// browser process: 1.3 s for the 193 processes of 17 browsers, measured). So a boundary or a
/// sample reads it only for a process whose resident counters moved since, or whose figures are
/// older than [`ROLLUP_MAX_AGE`]: an idle process (a browser left open, a spare renderer) costs
/// one read of its status (0.2 ms). PSS can move without the counters (another process starts
/// or stops sharing the pages), so the start and end of a trace read every process in full.
#[derive(Clone, Debug, Default)]
pub struct TreeReader(Arc<Mutex<TreeState>>);

#[derive(Debug, Default)]
struct TreeState {
    pids: Vec<u32>,
    /// The last full sample of each process, and when its smaps_rollup was read.
    rollups: HashMap<u32, (ProcSample, Instant)>,
}

/// How old a process's PSS figures may be when its resident counters have not moved: PSS can
/// change without them (another process starts or stops sharing its pages).
pub const ROLLUP_MAX_AGE: Duration = Duration::from_secs(10);

impl TreeReader {
    fn state(&self) -> std::sync::MutexGuard<'_, TreeState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live pids, as the session knows them now.
    pub fn set_pids(&self, pids: Vec<u32>) {
        let mut state = self.state();
        state.rollups.retain(|pid, _| pids.contains(pid));
        state.pids = pids;
    }

    /// Reads every live process now, for a boundary whose marker was read at `at_ns`; `full`
    /// reads every smaps_rollup.
    pub fn read(&self, at_ns: u64, full: bool) -> Reading {
        let pids = self.state().pids.clone();
        self.read_pids(&pids, at_ns, full)
    }

    /// Reads `pids` (status first, then smaps_rollup where needed) as a [`Reading`].
    pub fn read_pids(&self, pids: &[u32], at_ns: u64, full: bool) -> Reading {
        let statuses: Vec<(u32, procfs::process::Process, ProcSample)> = pids
            .iter()
            .filter_map(|&pid| {
                let process = procfs::process::Process::new(pid as i32).ok()?;
                let sample = status(&process)?;
                Some((pid, process, sample))
            })
            .collect();
        let known: HashMap<u32, (ProcSample, Instant)> = {
            let state = self.state();
            pids.iter()
                .filter_map(|pid| state.rollups.get(pid).map(|r| (*pid, *r)))
                .collect()
        };
        let mut samples = HashMap::with_capacity(statuses.len());
        let mut fresh = Vec::new();
        for (pid, process, mut sample) in statuses {
            match known.get(&pid) {
                Some((last, read_at))
                    if !full
                        && same_counters(last, &sample)
                        && read_at.elapsed() < ROLLUP_MAX_AGE =>
                {
                    samples.insert(pid, *last);
                }
                _ => {
                    if add_rollup(&process, &mut sample) {
                        samples.insert(pid, sample);
                        fresh.push((pid, sample));
                    }
                }
            }
        }
        let now = Instant::now();
        let mut state = self.state();
        for (pid, sample) in fresh {
            state.rollups.insert(pid, (sample, now));
        }
        Reading {
            at_ns,
            done_ns: boot_ns(),
            samples,
        }
    }
}

/// Whether two samples have the same resident counters (status): nothing was faulted in or
/// freed in between.
fn same_counters(a: &ProcSample, b: &ProcSample) -> bool {
    (a.rss_anon, a.rss_file, a.rss_shmem, a.vm_swap)
        == (b.rss_anon, b.rss_file, b.rss_shmem, b.vm_swap)
}

/// The command line, the executable's path and comm of a process, for its role.
pub struct Identity {
    pub cmdline: Vec<String>,
    pub exe: Option<String>,
    pub comm: String,
}

pub fn identity(pid: u32) -> Option<Identity> {
    let process = procfs::process::Process::new(pid as i32).ok()?;
    let comm = process.stat().ok()?.comm;
    let cmdline = process.cmdline().unwrap_or_default();
    let exe = process.exe().ok().map(|p| p.display().to_string());
    Some(Identity { cmdline, exe, comm })
}

/// The HOME of a process, from its environment (where Chromium keeps its default profile).
pub fn home_of(pid: u32) -> Option<std::path::PathBuf> {
    let environ = procfs::process::Process::new(pid as i32)
        .ok()?
        .environ()
        .ok()?;
    environ
        .get(std::ffi::OsStr::new("HOME"))
        .map(std::path::PathBuf::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_this_process_and_nothing_for_a_missing_one() {
        let own = sample(std::process::id()).expect("own sample");
        assert!(own.rss > 0 && own.pss > 0 && own.pss <= own.rss);
        assert!(own.rss_anon > 0);
        assert!(sample(u32::MAX / 2).is_none());
        let me = identity(std::process::id()).unwrap();
        assert!(!me.cmdline.is_empty());
    }
}
