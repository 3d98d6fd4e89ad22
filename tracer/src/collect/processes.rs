//! The traced processes: what is known of each, from the kernel's events and counters and from
//! /proc samples, until the trace is written. Memory per process is fixed (last and peak
//! values), so it does not grow with the length of the trace.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use tracer_common::{ClassFlow, LifecycleEvent, LifecycleKind, ProcessFlows, ProcessKey, Resident};

use super::{
    kernel::{Kernel, RssIndices},
    regions::RegionGrowth,
    roles::{self, Role},
    sampler::{self, ProcSample, Reading},
    target::ProcInfo,
};

/// One process, as the trace goes on.
struct Tracked {
    info: ProcInfo,
    role: Role,
    exited: bool,
    exit_code: Option<i32>,
    /// When it exited (CLOCK_BOOTTIME): from the kernel's event, or when /proc found it gone.
    exited_ns: Option<u64>,
    /// Whether the last round of samples read it: what a boundary snapshot counts as live.
    sampled: bool,
    flows: ProcessFlows,
    /// Its generation in the kernel's tracked set: with the pid, the key of its kernel entries.
    generation: u32,
    /// The kernel's counters, in pages (eBPF only).
    resident: Option<Resident>,
    last_sample: Option<ProcSample>,
    /// Highest status values seen across samples (the /proc-only peak).
    peak_sample: ProcSample,
}

/// Every process seen, in the order it appeared; pids index only the live ones (a pid can be
/// reused by a later process, which is then a new entry).
pub struct ProcessTable {
    root_pid: u32,
    processes: Vec<Tracked>,
    live: HashMap<u32, usize>,
    /// Exited processes that may be zombies left to leaktrace (run mode is their subreaper).
    to_reap: Vec<u32>,
    /// Processes added since the last [`ProcessTable::take_joined`].
    joined: Vec<ProcInfo>,
    /// Exited processes folded together per role (see [`ProcessTable::fold_exited`]).
    folded: BTreeMap<Role, Folded>,
}

/// Exited processes of one role, folded together: how many, and their flows summed.
#[derive(Clone, Debug, Default)]
struct Folded {
    count: u32,
    flows: ProcessFlows,
}

/// The snapshot key of a role's folded entry: pid 0 (never a process's), and the role's name
/// hashed (FNV-1a) in place of a start time.
fn folded_key(role: &Role) -> (u32, u64) {
    let hash = role
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    (0, hash)
}

/// Exited processes kept one by one, at most: past this, the oldest are folded into one entry
/// per role, down to [`KEEP_EXITED`]. A scraper whose Chromium starts a renderer per page has
/// thousands of them a day; each boundary's snapshot would hold them all.
const MAX_EXITED: usize = 512;
const KEEP_EXITED: usize = 256;

/// How long after its start a process's role may still change without an exec, and is looked
/// at again at every sample: the zygote's children set their command line right after the
/// fork. Past it, /proc is not read again for the role (cmdline takes the process's mmap lock,
/// and the worker's own role was read at every boundary of a fast worker).
const ROLE_SETTLES_S: f64 = 5.0;

/// Seconds since boot at `at_ns` (now when 0: a reading without a time).
fn boot_s(at_ns: u64) -> f64 {
    let ns = if at_ns > 0 { at_ns } else { sampler::boot_ns() };
    ns as f64 / 1e9
}

impl ProcessTable {
    pub fn new(root_pid: u32) -> ProcessTable {
        ProcessTable {
            root_pid,
            processes: Vec::new(),
            live: HashMap::new(),
            to_reap: Vec::new(),
            joined: Vec::new(),
            folded: BTreeMap::new(),
        }
    }

    /// A new root: the next instance of a followed worker. The processes of the last keep the
    /// roles they had.
    pub fn set_root(&mut self, root_pid: u32) {
        self.root_pid = root_pid;
    }

    pub fn len(&self) -> usize {
        self.processes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.processes.is_empty()
    }

    pub fn live_pids(&self) -> Vec<u32> {
        self.live.keys().copied().collect()
    }

    /// A process that joined the tree, with its generation in the kernel's tracked set
    /// (`GENERATION_OF_LOADER` for one leaktrace tracked itself, or without eBPF).
    pub fn add(&mut self, info: ProcInfo, generation: u32) {
        if self.live.contains_key(&info.pid) {
            return;
        }
        let role = self.role_of(info.pid, info.ppid, &info.comm);
        self.live.insert(info.pid, self.processes.len());
        self.joined.push(info.clone());
        self.processes.push(Tracked {
            info,
            role,
            exited: false,
            exit_code: None,
            exited_ns: None,
            sampled: false,
            flows: ProcessFlows::default(),
            generation,
            resident: None,
            last_sample: None,
            peak_sample: ProcSample::default(),
        });
    }

    /// The role from /proc when the process is still there, else from its parent.
    fn role_of(&self, pid: u32, ppid: u32, comm: &str) -> Role {
        let chromium = match sampler::identity(pid) {
            Some(id) => roles::chromium_role(&id.cmdline, &id.comm, id.exe.as_deref()),
            None => roles::chromium_role(&[], comm, None),
        };
        self.role_with(chromium, pid, ppid)
    }

    fn role_with(&self, chromium: Option<Role>, pid: u32, ppid: u32) -> Role {
        let parent_role = self.live.get(&ppid).map(|&i| &self.processes[i].role);
        roles::role(chromium, pid == self.root_pid, parent_role)
    }

    /// The role from /proc again (a process may have exec'd, or set its command line since),
    /// or None when /proc no longer shows it: a role is never guessed from a gone process.
    fn current_role(&self, index: usize) -> Option<Role> {
        let info = &self.processes[index].info;
        // An exiting process (a zombie) has no command line left to tell.
        let id = sampler::identity(info.pid).filter(|id| !id.cmdline.is_empty())?;
        let chromium = roles::chromium_role(&id.cmdline, &id.comm, id.exe.as_deref());
        Some(self.role_with(chromium, info.pid, info.ppid))
    }

    /// Whether a later look at /proc may tell a process's role better: one that may still
    /// change (see [`Role::may_change`]), or a browser under a browser, which cannot be (a
    /// browser's fork reads as one until it execs, and is taken for one if the parent's own role
    /// or the child's look at its exec was missed on a busy machine).
    fn role_may_be_stale(&self, index: usize) -> bool {
        let process = &self.processes[index];
        let parent_role = || {
            let parent = *self.live.get(&process.info.ppid)?;
            Some(&self.processes[parent].role)
        };
        process.role.may_change()
            || (process.role == Role::Browser && parent_role() == Some(&Role::Browser))
    }

    /// Takes in one kernel event; an exiting process's counters are collected at once, before
    /// its pid can be reused.
    pub fn on_event(&mut self, event: &LifecycleEvent, kernel: &mut Kernel) {
        let comm = comm(&event.comm);
        match event.kind {
            k if k == LifecycleKind::Fork as u32 => self.add(
                ProcInfo {
                    pid: event.tgid,
                    ppid: event.parent_tgid,
                    comm,
                    start_time: event.time_ns as f64 / 1e9,
                },
                event.generation,
            ),
            k if k == LifecycleKind::Exec as u32 => {
                if let Some(&index) = self.live.get(&event.tgid) {
                    // A launcher that execs (Debian's /usr/bin/chromium script) becomes what
                    // it runs.
                    self.processes[index].info.comm = comm;
                    if let Some(role) = self.current_role(index) {
                        self.processes[index].role = role;
                    }
                }
            }
            k if k == LifecycleKind::Exit as u32 => {
                if let Some(index) = self.live.remove(&event.tgid) {
                    self.to_reap.push(event.tgid);
                    let process = &mut self.processes[index];
                    process.exited = true;
                    process.exited_ns = Some(event.time_ns);
                    process.exit_code = Some(exit_code(event.exit_code as i32));
                    let key = process.key();
                    if let Some(flows) = kernel.take_flows(key) {
                        process.flows = flows;
                    }
                    process.resident = kernel.resident(key, true).or(process.resident);
                }
            }
            _ => {}
        }
    }

    /// The processes added since the last call.
    pub fn take_joined(&mut self) -> Vec<ProcInfo> {
        std::mem::take(&mut self.joined)
    }

    /// Live processes with this role.
    pub fn live_with_role(&self, role: &Role) -> Vec<u32> {
        self.live
            .iter()
            .filter(|&(_, &i)| self.processes[i].role == *role)
            .map(|(&pid, _)| pid)
            .collect()
    }

    /// The role of a live process.
    pub fn role_of_pid(&self, pid: u32) -> Option<Role> {
        self.live.get(&pid).map(|&i| self.processes[i].role.clone())
    }

    /// Live processes with their start time (seconds since boot) and what they run, for the
    /// region readings.
    pub fn live_for_regions(&self) -> Vec<(u32, f64, crate::collect::regions::Runtime)> {
        self.live
            .iter()
            .map(|(&pid, &i)| {
                let p = &self.processes[i];
                let runtime = crate::collect::regions::Runtime::of(&p.role, &p.info.comm);
                (pid, p.info.start_time, runtime)
            })
            .collect()
    }

    /// Live processes with their start time (seconds since boot), to signal them safely.
    pub fn live(&self) -> Vec<(u32, f64)> {
        self.live
            .iter()
            .map(|(&pid, &i)| (pid, self.processes[i].info.start_time))
            .collect()
    }

    /// The `n` live processes that own the most memory (Pss_Anon + Pss_Shmem at their last
    /// sample), most first: pid, name, role, bytes.
    pub fn top_owned(&self, n: usize) -> Vec<(u32, String, Role, u64)> {
        let mut live: Vec<(u32, String, Role, u64)> = self
            .live
            .values()
            .map(|&i| &self.processes[i])
            .filter_map(|p| {
                let sample = p.last_sample?;
                let owned = sample.pss_anon + sample.pss_shmem;
                Some((p.info.pid, p.info.comm.clone(), p.role.clone(), owned))
            })
            .collect();
        live.sort_by(|a, b| b.3.cmp(&a.3).then(a.0.cmp(&b.0)));
        live.truncate(n);
        live
    }

    /// A process found gone without a kernel event (/proc-only tracing).
    pub fn mark_gone(&mut self, pid: u32) {
        if let Some(index) = self.live.remove(&pid) {
            self.to_reap.push(pid);
            self.processes[index].exited = true;
            self.processes[index].exited_ns = Some(sampler::boot_ns());
        }
    }

    /// Reaps exited descendants that were reparented to leaktrace (as their subreaper), except
    /// the command itself, whose status its own waiter collects. Others are not our children
    /// and waitpid just says so.
    pub fn reap(&mut self) {
        let root = self.root_pid;
        self.to_reap.retain(|&pid| {
            if pid == root {
                return false;
            }
            let mut status = 0;
            // SAFETY: waitpid on a specific pid with WNOHANG.
            let reaped = unsafe { libc::waitpid(pid as i32, &mut status, libc::WNOHANG) };
            // 0: our child, not dead yet (cannot happen after its exit event, but keep it).
            reaped == 0
        });
        self.fold_exited();
    }

    /// Past [`MAX_EXITED`] exited processes, folds the oldest into one entry per role (pid 0 in
    /// snapshots and in the trace), their flows summed, so memory and every boundary's work
    /// stay bounded however many processes come and go. Growth over a span is unchanged:
    /// `timeline::growth` takes a process that left the snapshot as having moved its flows to
    /// its role's folded entry.
    fn fold_exited(&mut self) {
        let exited = self.processes.iter().filter(|p| p.exited).count();
        if exited <= MAX_EXITED {
            return;
        }
        let mut to_fold = exited - KEEP_EXITED;
        let folded = &mut self.folded;
        self.processes.retain(|p| {
            if to_fold == 0 || !p.exited {
                return true;
            }
            to_fold -= 1;
            let entry = folded.entry(p.role.clone()).or_default();
            entry.count += 1;
            for (sum, flow) in entry.flows.classes.iter_mut().zip(&p.flows.classes) {
                sum.add(flow);
            }
            entry.flows.brk_growth += p.flows.brk_growth;
            false
        });
        self.live = self
            .processes
            .iter()
            .enumerate()
            .filter(|(_, p)| !p.exited)
            .map(|(index, p)| (p.info.pid, index))
            .collect();
    }

    /// Takes in a reading of the tree's processes and returns the tree's totals. A process the
    /// reading saw counts as live even if it has exited since (a boundary's reading is taken
    /// when its marker was read); one it did not see is not sampled this time.
    pub fn sample_with(&mut self, t_s: f64, reading: &Reading) -> TreeSample {
        let mut by_role: BTreeMap<Role, RoleTotals> = BTreeMap::new();
        let at_ns = reading.at_ns;
        for index in 0..self.processes.len() {
            let process = &self.processes[index];
            let exited_after_reading = process.exited_ns.is_some_and(|t| at_ns > 0 && t >= at_ns);
            let sample = reading
                .samples
                .get(&process.info.pid)
                .filter(|_| !process.exited || exited_after_reading);
            let Some(&sample) = sample else {
                self.processes[index].sampled = false;
                continue;
            };
            // Chromium's children can be told apart only once their command line is set (the
            // zygote's children never exec, and set it right after the fork); other Chromium
            // roles stay, and an exec is an event of its own.
            if self.role_may_be_stale(index)
                && boot_s(at_ns) - process.info.start_time < ROLE_SETTLES_S
                && let Some(role) = self.current_role(index)
            {
                self.processes[index].role = role;
            }
            let process = &mut self.processes[index];
            process.sampled = true;
            process.last_sample = Some(sample);
            let peak = &mut process.peak_sample;
            peak.rss_anon = peak.rss_anon.max(sample.rss_anon);
            peak.rss_file = peak.rss_file.max(sample.rss_file);
            peak.rss_shmem = peak.rss_shmem.max(sample.rss_shmem);
            peak.vm_swap = peak.vm_swap.max(sample.vm_swap);
            peak.pss = peak.pss.max(sample.pss);
            by_role
                .entry(process.role.clone())
                .or_default()
                .add(&sample);
        }
        TreeSample {
            t_s,
            pss: by_role.values().map(|r| r.pss).sum(),
            by_role,
        }
    }

    /// Whether the tree tore down right after a marker read at `at_ns`: among the processes
    /// alive then, the root or a browser, or most of them, exited by `until_ns`. A worker
    /// that closes its browser in the next breath after its marker makes Chromium free its
    /// pages and end its renderers before (or while) their memory is read: such a boundary
    /// measures the shutdown, not the cycle.
    pub fn teardown_after(&self, at_ns: u64, until_ns: u64) -> Option<String> {
        let alive = |p: &&Tracked| {
            (p.info.start_time * 1e9) as u64 <= at_ns && p.exited_ns.is_none_or(|t| t >= at_ns)
        };
        let alive_at_marker = self.processes.iter().filter(alive).count();
        let gone: Vec<&Tracked> = self
            .processes
            .iter()
            .filter(alive)
            .filter(|p| p.exited_ns.is_some_and(|t| t <= until_ns))
            .collect();
        let after_ms = |p: &Tracked| p.exited_ns.unwrap_or(at_ns).saturating_sub(at_ns) / 1_000_000;
        let key = gone
            .iter()
            .find(|p| p.info.pid == self.root_pid || p.role == Role::Browser);
        match key {
            Some(p) => Some(format!(
                "the {} (pid {}) exited {} ms after the marker",
                if p.info.pid == self.root_pid {
                    "worker"
                } else {
                    "browser"
                },
                p.info.pid,
                after_ms(p)
            )),
            None if gone.len() * 2 > alive_at_marker => Some(format!(
                "{} of the {alive_at_marker} processes alive at the marker exited within {} ms of it",
                gone.len(),
                gone.iter().map(|p| after_ms(p)).max().unwrap_or(0)
            )),
            None => None,
        }
    }

    /// The kernel's current figures for every process still alive.
    pub fn collect_kernel(&mut self, kernel: &mut Kernel) {
        for &index in self.live.values() {
            let key = self.processes[index].key();
            if let Some(flows) = kernel.flows(key) {
                self.processes[index].flows = flows;
            }
            if let Some(resident) = kernel.resident(key, false) {
                self.processes[index].resident = Some(resident);
            }
        }
    }

    /// The state of every process now, for cycle and phase deltas: cumulative flows, and
    /// resident memory of live processes (an exited one holds nothing).
    pub fn snapshot(&self, rss: Option<RssIndices>) -> Snapshot {
        let processes = self
            .processes
            .iter()
            .map(|p| {
                // Live at the boundary: read by its sample round (which may have been taken
                // when the marker was read, before a process exited).
                let live = p.sampled;
                let sample = p.last_sample.filter(|_| live).unwrap_or_default();
                ProcessState {
                    key: (p.info.pid, p.info.start_time.to_bits()),
                    role: p.role.clone(),
                    live,
                    flows: p.flows,
                    // /proc/PID/status sums the per-CPU parts of the kernel's counters (since
                    // Linux 6.16), so at a boundary it is exact to the page, where the counter
                    // the kernel programs read may trail by its per-CPU batches.
                    resident: match (live, p.last_sample) {
                        (false, _) => ResidentBytes::default(),
                        (true, Some(sample)) => ResidentBytes::from_status(&sample),
                        (true, None) => p.resident_bytes(rss).0,
                    },
                    pss: sample,
                }
            })
            .chain(self.folded.iter().map(|(role, folded)| ProcessState {
                key: folded_key(role),
                role: role.clone(),
                live: false,
                flows: folded.flows,
                resident: ResidentBytes::default(),
                pss: ProcSample::default(),
            }))
            .collect();
        Snapshot { processes }
    }

    /// The trace's process list. With the kernel's counters (`rss`), resident figures come from
    /// them; otherwise from the last /proc sample.
    pub fn processes(&self, rss: Option<RssIndices>) -> Vec<Process> {
        self.processes
            .iter()
            .map(|p| {
                let (resident, resident_peak) = p.resident_bytes(rss);
                let mut process = Process {
                    pid: p.info.pid,
                    ppid: p.info.ppid,
                    start_time: p.info.start_time,
                    comm: p.info.comm.clone(),
                    role: p.role.clone(),
                    exited: p.exited,
                    exit_code: p.exit_code,
                    address_space: BTreeMap::new(),
                    brk_growth: 0,
                    resident,
                    resident_peak,
                    pss: p.last_sample.map_or(0, |s| s.pss),
                    smaps_rollup: p.last_sample,
                    folded: 0,
                    regions: Vec::new(),
                };
                process.set_flows(&p.flows);
                process
            })
            .chain(self.folded.iter().map(|(role, folded)| {
                let mut process = Process {
                    comm: format!("({} exited, folded)", folded.count),
                    role: role.clone(),
                    exited: true,
                    folded: folded.count,
                    ..Process::default()
                };
                process.set_flows(&folded.flows);
                process
            }))
            .collect()
    }
}

impl Tracked {
    /// The key of its entries in the kernel's maps.
    fn key(&self) -> ProcessKey {
        ProcessKey {
            tgid: self.info.pid,
            generation: self.generation,
        }
    }

    /// Resident memory (last, peak) in bytes: the kernel's counters when there are any, else the
    /// /proc samples.
    fn resident_bytes(&self, rss: Option<RssIndices>) -> (ResidentBytes, ResidentBytes) {
        match (rss, self.resident) {
            (Some(rss), Some(counters)) => {
                let page = page_size();
                let bytes = |pages: &[u64; 4]| ResidentBytes {
                    anon: pages[rss.anon] * page,
                    file: pages[rss.file] * page,
                    shmem: pages[rss.shmem] * page,
                    swap: pages[rss.swap] * page,
                };
                (bytes(&counters.last), bytes(&counters.peak))
            }
            _ => (
                ResidentBytes::from_status(&self.last_sample.unwrap_or_default()),
                ResidentBytes::from_status(&self.peak_sample),
            ),
        }
    }
}

/// One process in a [`Snapshot`].
#[derive(Clone, Debug)]
pub struct ProcessState {
    /// (pid, start time bits): a reused pid is another process.
    pub key: (u32, u64),
    pub role: Role,
    pub live: bool,
    pub flows: ProcessFlows,
    pub resident: ResidentBytes,
    /// The smaps_rollup figures (zero for a process no longer live).
    pub pss: ProcSample,
}

/// Every process's state at one boundary.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    pub processes: Vec<ProcessState>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(4096) as u64
}

/// The kernel's counters (pages) from a /proc sample (bytes): the other direction of
/// `Tracked::resident_bytes`, to seed a process that predates the trace.
pub fn resident_pages(sample: &ProcSample, rss: RssIndices) -> Resident {
    let page = page_size();
    let mut last = [0; tracer_common::RSS_COUNTERS];
    last[rss.anon] = sample.rss_anon / page;
    last[rss.file] = sample.rss_file / page;
    last[rss.shmem] = sample.rss_shmem / page;
    last[rss.swap] = sample.vm_swap / page;
    Resident { last, peak: last }
}

fn comm(raw: &[u8; 16]) -> String {
    let end = raw.iter().position(|b| *b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// A wait(2) status as a shell would report it: the exit code, or 128 + the signal.
pub fn exit_code(status: i32) -> i32 {
    if status & 0x7f == 0 {
        (status >> 8) & 0xff
    } else {
        128 + (status & 0x7f)
    }
}

impl ResidentBytes {
    fn from_status(sample: &ProcSample) -> ResidentBytes {
        ResidentBytes {
            anon: sample.rss_anon,
            file: sample.rss_file,
            shmem: sample.rss_shmem,
            swap: sample.vm_swap,
        }
    }
}

/// Keeps a bounded series of tree samples: past `MAX_SAMPLES` it drops every other point and
/// keeps one sample in twice as many, so a trace of any length holds at most that many.
pub struct SampleSeries {
    points: Vec<TreeSample>,
    stride: usize,
    seen: usize,
}

const MAX_SAMPLES: usize = 720;

impl Default for SampleSeries {
    fn default() -> Self {
        SampleSeries {
            points: Vec::new(),
            stride: 1,
            seen: 0,
        }
    }
}

impl SampleSeries {
    pub fn push(&mut self, sample: TreeSample) {
        self.seen += 1;
        if !(self.seen - 1).is_multiple_of(self.stride) {
            return;
        }
        self.points.push(sample);
        if self.points.len() >= MAX_SAMPLES {
            let mut index = 0;
            self.points.retain(|_| {
                index += 1;
                index % 2 == 1
            });
            self.stride *= 2;
        }
    }

    pub fn points(&self) -> &[TreeSample] {
        &self.points
    }
}

// The records of processes and of the tree that the trace document holds (see `crate::trace`):
// made here, from what the collectors read.

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// Seconds since boot; with `pid`, the identity of a process (pids are reused).
    pub start_time: f64,
    pub comm: String,
    /// worker, browser, zygote, renderer, gpu, utility:<sub-type>, crashpad or other.
    #[serde(default)]
    pub role: Role,
    pub exited: bool,
    pub exit_code: Option<i32>,
    /// Per region class: mapped, unmapped, committed, uncommitted, released, calls.
    pub address_space: BTreeMap<String, ClassFlow>,
    /// Signed sum of break movements, in bytes.
    pub brk_growth: i64,
    /// Resident memory when last seen (at exit for an exited process).
    #[serde(default)]
    pub resident: ResidentBytes,
    #[serde(default)]
    pub resident_peak: ResidentBytes,
    /// Proportional set size at the last /proc sample (0 if never sampled).
    #[serde(default)]
    pub pss: u64,
    /// The last /proc sample, if any.
    #[serde(default)]
    pub smaps_rollup: Option<ProcSample>,
    /// For the entry (pid 0) that stands for exited processes folded together to bound a long
    /// trace's memory: how many, of this role. Their flows are its flows.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub folded: u32,
    /// Its top-growing regions (mappings grouped as they grow: see [`super::regions`]), between two
    ///  readings of its smaps at cycle ends; only those that grew.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub regions: Vec<RegionGrowth>,
}

impl Process {
    /// `running`, `exit 3`, or `exited` (the code unknown), as every table writes it.
    pub fn state(&self) -> String {
        match (self.exited, self.exit_code) {
            (false, _) => "running".into(),
            (true, Some(code)) => format!("exit {code}"),
            (true, None) => "exited".into(),
        }
    }
}

/// Resident memory by kind, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidentBytes {
    pub anon: u64,
    pub file: u64,
    pub shmem: u64,
    pub swap: u64,
}

/// The live processes of one role at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoleTotals {
    /// Sum of PSS.
    pub pss: u64,
    /// Sum of Pss_Anon.
    pub anon: u64,
    /// Sum of Pss_Shmem.
    pub shmem: u64,
    /// Sum of Pss_File.
    pub file: u64,
    pub count: u64,
}

impl RoleTotals {
    /// Counts one live process.
    pub fn add(&mut self, sample: &ProcSample) {
        self.pss += sample.pss;
        self.anon += sample.pss_anon;
        self.shmem += sample.pss_shmem;
        self.file += sample.pss_file;
        self.count += 1;
    }

    /// The PSS of the memory the processes made: anonymous and shared-memory pages. Growth is
    /// judged on this. File-backed pages are left out: they are reclaimable page cache, and
    /// their PSS share moves whenever a process outside the tree maps the same files (another
    /// Chromium starting takes a hundred megabytes off this tree's PSS, and gives it back when
    /// it exits).
    pub fn owned(&self) -> u64 {
        self.anon + self.shmem
    }
}

/// The whole tree at one /proc sample.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TreeSample {
    /// Seconds since the trace started.
    pub t_s: f64,
    pub pss: u64,
    pub by_role: BTreeMap<Role, RoleTotals>,
}

impl TreeSample {
    /// The PSS the whole tree owns (see `RoleTotals::owned`).
    pub fn owned(&self) -> u64 {
        self.by_role.values().map(RoleTotals::owned).sum()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn exit_codes_read_like_a_shell() {
        assert_eq!(exit_code(0), 0);
        assert_eq!(exit_code(3 << 8), 3);
        assert_eq!(exit_code(libc::SIGKILL), 128 + libc::SIGKILL);
    }

    /// A worker and 600 renderers that mapped a page each and moved the break by 10, all
    /// exited: the table and its snapshots before and after they are reaped (and so folded).
    pub(crate) fn table_with_600_exited() -> (ProcessTable, Snapshot, Snapshot) {
        let mut table = ProcessTable::new(1);
        table.add(
            ProcInfo {
                pid: 1,
                ppid: 0,
                comm: "worker".into(),
                start_time: 0.0,
            },
            0,
        );
        let mut flows = ProcessFlows::default();
        flows.classes[0].mapped = 4096;
        flows.classes[0].calls = 1;
        flows.brk_growth = 10;
        // Pids no process has here, children of the worker.
        for pid in 4_000_000..4_000_600 {
            table.add(
                ProcInfo {
                    pid,
                    ppid: 1,
                    comm: "renderer".into(),
                    start_time: 1.0,
                },
                0,
            );
            table.processes.last_mut().unwrap().flows = flows;
        }
        let before = table.snapshot(None);
        (4_000_000..4_000_600).for_each(|pid| table.mark_gone(pid));
        table.reap();
        let after = table.snapshot(None);
        (table, before, after)
    }

    /// Past the limit, exited processes are folded into one entry per role: the table stays at
    /// 256 exited, and the trace's flows do not change by it (nor any span's growth:
    /// `timeline::tests`).
    #[test]
    fn exited_processes_past_the_limit_are_folded_keeping_every_flow() {
        let total = |processes: &[Process]| -> (u64, i64) {
            processes.iter().fold((0, 0), |(mapped, brk), p| {
                let flow = p.address_space.values().map(|f| f.mapped).sum::<u64>();
                (mapped + flow, brk + p.brk_growth)
            })
        };
        let (table, _, _) = table_with_600_exited();
        let processes = table.processes(None);
        // The worker, the 256 latest exited, and one folded entry for the 344 others.
        assert_eq!(processes.len(), 1 + KEEP_EXITED + 1);
        let folded: Vec<&Process> = processes.iter().filter(|p| p.folded > 0).collect();
        assert_eq!(folded.len(), 1);
        assert_eq!(
            (folded[0].pid, folded[0].folded),
            (0, 600 - KEEP_EXITED as u32)
        );
        assert_eq!(
            total(&processes),
            (600 * 4096, 6000),
            "the trace's flows are all there"
        );
        assert_eq!(table.live_pids(), [1], "the live index rebuilt");
    }
    /// A browser's child taken for a browser (its fork read before it exec'd, its look at the
    /// exec missed) is read again at the next sample: here a real process whose command line
    /// says `--type=gpu-process`.
    #[test]
    fn a_browser_under_a_browser_is_read_again() {
        let mut gpu = std::process::Command::new("sh")
            .args([
                "-c",
                "read line",
                "/usr/lib/chromium/chromium",
                "--type=gpu-process",
            ])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (browser, child) = (4_100_000, gpu.id());
        // spawn() returns as the exec closes the parent's pipe, before the kernel has set the
        // new command line (/proc/PID/cmdline reads empty for a moment): wait for it, as the
        // table itself would at its next sample.
        let up = std::time::Instant::now();
        while sampler::identity(child).is_none_or(|id| id.cmdline.is_empty()) {
            assert!(up.elapsed().as_secs() < 5, "the child's command line");
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        // Started now, and long ago: only a young process's role is read again.
        let roles = |start_time: f64| {
            let mut table = ProcessTable::new(browser);
            for (pid, ppid) in [(browser, 0), (child, browser)] {
                let info = ProcInfo {
                    pid,
                    ppid,
                    comm: "chromium".into(),
                    start_time,
                };
                table.add(info, 0);
                table.processes.last_mut().unwrap().role = Role::Browser;
            }
            let mut reading = Reading::default();
            reading.samples.insert(child, ProcSample::default());
            table.sample_with(1.0, &reading);
            let roles: Vec<Role> = table.processes.iter().map(|p| p.role.clone()).collect();
            roles
        };
        let (young, settled) = (roles(boot_s(0)), roles(boot_s(0) - ROLE_SETTLES_S - 1.0));
        let _ = gpu.kill();
        let _ = gpu.wait();
        assert_eq!(young, [Role::Browser, Role::Gpu]);
        assert_eq!(settled, [Role::Browser, Role::Browser]);
    }

    #[test]
    fn the_sample_series_stays_bounded_and_spans_the_whole_trace() {
        let mut series = SampleSeries::default();
        for i in 0..100_000 {
            series.push(TreeSample {
                t_s: i as f64,
                pss: i,
                by_role: BTreeMap::new(),
            });
        }
        let points = series.points();
        assert!(points.len() < MAX_SAMPLES, "{} points", points.len());
        assert_eq!(points[0].t_s, 0.0);
        assert!(points.last().unwrap().t_s > 99_000.0);
        assert!(points.windows(2).all(|w| w[1].t_s > w[0].t_s));
    }
}
