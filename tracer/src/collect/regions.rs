//! Resident growth by region: which mapping of a process grew, from `/proc/PID/smaps` read at a
//! few cycle ends.
//!
//! Most growth does not come through syscalls a flow could see: Bun faults pages into regions
//! its allocators mapped at start-up, Chromium commits memory inside reservations by `mprotect`
//! and touching it, malloc grows `[heap]`. So the resident side is read per mapping, and the
//! mappings are grouped into **regions** that grow as one:
//!
//! - `[heap]`, `[stack]`, and named anonymous mappings (`[anon:NAME]`) by their name;
//! - a file's mappings together, counting only their private (copied-on-write) pages, which
//!   are the process's own; the rest is page cache;
//! - shared memory (memfd, `/dev/shm`, System V, shared anonymous mappings) by its name;
//! - anonymous private mappings that touch each other as one region: a reservation (PROT_NONE or
//!   MAP_NORESERVE) and the pages committed inside it are split into many mappings that stay
//!   adjacent, so they are one region.
//!
//! A region is named by what it most likely is where its shape says so, with the evidence in
//! `why` (see [`name_anonymous`]); otherwise it is an "anonymous region" at its address.
//! Readings are taken at cycle ends within [`SHARE`] of the trace's time, and the growth is
//! taken between the reading nearest the start of the fitted cycles and the last.

use std::{collections::HashMap, time::Instant};

use serde::{Deserialize, Serialize};

/// The share of the trace's time region readings may take: a Chromium tree's smaps is read in
/// tens of milliseconds, under each process's mmap lock.
pub const SHARE: f64 = 0.01;
/// Readings kept per process besides the latest: when more come, every other one goes, so
/// they thin out over a long trace while the early ones (where the fitted window starts) stay
/// close together.
const KEPT: usize = 4;
/// Regions owning less than this are left out of a reading: a Chromium process has hundreds of
/// such (a few pages of a file copied on write), and a long trace keeps several readings of
/// every process. A region that grows past it later counts from zero, 64 KiB too much at most.
const MIN_OWNED: u64 = 64 * KIB;

/// Regions per process in the trace.
pub const TOP_PER_PROCESS: usize = 5;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;

/// One mapping of `/proc/PID/smaps`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// `rw-p`, `---p`, `r-xs` ...
    pub perms: String,
    /// The path or pseudo-path (`[heap]`, `/memfd:x (deleted)`); empty when anonymous.
    pub path: String,
    pub rss: u64,
    pub pss: u64,
    /// Resident anonymous pages (in a file mapping: its copied-on-write pages).
    pub anonymous: u64,
}

impl Mapping {
    fn size(&self) -> u64 {
        self.end - self.start
    }

    fn shared(&self) -> bool {
        self.perms.as_bytes().get(3) == Some(&b's')
    }

    fn inaccessible(&self) -> bool {
        self.perms.starts_with("---")
    }
}

/// Parses the text of `/proc/PID/smaps`.
pub fn parse_smaps(text: &str) -> Vec<Mapping> {
    let mut maps = Vec::new();
    for line in text.lines() {
        // A header: `start-end perms offset dev inode [path]`; a field: `Name:  value kB`.
        let mut words = line.splitn(6, ' ');
        let range = words.next().unwrap_or_default();
        if let Some((start, end)) = range.split_once('-')
            && let (Ok(start), Ok(end)) =
                (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            let perms = words.next().unwrap_or_default().to_string();
            let path = words.nth(3).unwrap_or_default().trim().to_string();
            maps.push(Mapping {
                start,
                end,
                perms,
                path,
                ..Mapping::default()
            });
            continue;
        }
        let Some(map) = maps.last_mut() else { continue };
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let kib = || {
            value
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or(0)
                * KIB
        };
        match name {
            "Rss" => map.rss = kib(),
            "Pss" => map.pss = kib(),
            "Anonymous" => map.anonymous = kib(),
            _ => {}
        }
    }
    maps
}

/// The label of a Node process's V8 heap pages (see [`name_anonymous`]).
pub const V8_HEAP_PAGES: &str = "V8 heap pages (likely)";

/// What a process runs, as far as naming its regions goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    /// Chromium's browser, renderer, GPU, utility processes: its reservations.
    Chromium,
    /// Node: V8's heap pages.
    Node,
    Other,
}

impl Runtime {
    /// From the role leaktrace gave the process and its name (`/proc/PID/comm`).
    pub fn of(role: &crate::collect::roles::Role, comm: &str) -> Runtime {
        use crate::collect::roles::Role;
        match role {
            Role::Worker | Role::Other if comm == "node" || comm == "nodejs" => Runtime::Node,
            Role::Worker | Role::Other => Runtime::Other,
            _ => Runtime::Chromium,
        }
    }
}

/// What kind of region, for the reader and for matching readings.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum RegionKind {
    /// malloc's brk heap.
    Heap,
    /// The main thread's stack.
    Stack,
    ThreadStack,
    SharedMemory,
    File,
    #[default]
    Anonymous,
    /// `[vdso]`, `[vvar]` and the like.
    Other,
    /// The regions of a process past its top ones, summed.
    Rest,
}

impl RegionKind {
    /// Kinds found by address rather than by name.
    fn by_address(self) -> bool {
        matches!(self, RegionKind::Anonymous | RegionKind::ThreadStack)
    }
}

/// One region of one process at one reading.
#[derive(Clone, Debug, PartialEq)]
pub struct Region {
    pub kind: RegionKind,
    pub name: String,
    /// How the name was inferred: fixed words, so that the readings kept hold no copy of them.
    pub why: &'static str,
    pub start: u64,
    /// Its address space, reserved or not.
    pub size: u64,
    /// The memory the process owns in it: PSS, and in a file mapping only its private pages.
    pub owned: u64,
}

/// The regions of a process's mappings; `runtime` says what shapes to expect; `stacks`, the
/// stack pointers of its threads blocked in the kernel, with their thread ids.
pub fn regions(maps: &[Mapping], runtime: Runtime, stacks: &[(u64, u32)]) -> Vec<Region> {
    let mut regions: Vec<Region> = Vec::new();
    let mut by_name: HashMap<(RegionKind, String), usize> = HashMap::new();
    let anonymous = |m: &Mapping| m.path.is_empty() && !m.shared();
    let stack_of = |m: &Mapping| {
        stacks
            .iter()
            .find(|&&(sp, _)| m.start <= sp && sp < m.end)
            .map(|&(_, tid)| tid)
    };
    // A PROT_NONE guard right below another anonymous mapping.
    let guard = |g: usize| {
        let map = &maps[g];
        anonymous(map)
            && map.inaccessible()
            && map.size() <= 64 * KIB
            && maps
                .get(g + 1)
                .is_some_and(|above| anonymous(above) && above.start == map.end)
    };
    // A thread's stack (with its guard, if it has one) starting at `at`: where it ends, and
    // whose it is. It is a region of its own, whatever touches it (an allocation can land
    // right above a stack).
    let stack_at = |at: usize| match stack_of(&maps[at]) {
        Some(tid) => Some((at + 1, tid)),
        None if guard(at) => stack_of(&maps[at + 1]).map(|tid| (at + 2, tid)),
        None => None,
    };
    let mut i = 0;
    while i < maps.len() {
        let map = &maps[i];
        if anonymous(map) {
            if let Some((end, tid)) = stack_at(i) {
                regions.push(thread_stack(&maps[i..end], tid));
                i = end;
                continue;
            }
            // Anonymous private mappings that touch: one region, up to a thread's stack.
            let mut j = i + 1;
            while j < maps.len()
                && anonymous(&maps[j])
                && maps[j].start == maps[j - 1].end
                && stack_at(j).is_none()
            {
                j += 1;
            }
            regions.push(name_anonymous(&maps[i..j], runtime));
            i = j;
            continue;
        }
        let (kind, name, why, owned) = name_named(map);
        match by_name.get(&(kind, name.clone())) {
            Some(&at) => {
                let region = &mut regions[at];
                region.size += map.size();
                region.owned += owned;
            }
            None => {
                by_name.insert((kind, name.clone()), regions.len());
                regions.push(Region {
                    kind,
                    name,
                    why,
                    start: map.start,
                    size: map.size(),
                    owned,
                });
            }
        }
        i += 1;
    }
    regions
}

/// A mapping with a path or a pseudo-path: its kind, name, evidence and owned memory.
fn name_named(map: &Mapping) -> (RegionKind, String, &'static str, u64) {
    let path = map.path.trim_end_matches(" (deleted)");
    let shared = |name: String, why: &'static str| (RegionKind::SharedMemory, name, why, map.pss);
    if path == "[heap]" {
        (
            RegionKind::Heap,
            path.into(),
            "malloc's brk heap ([heap])",
            map.pss,
        )
    } else if path == "[stack]" {
        (
            RegionKind::Stack,
            path.into(),
            "the main thread's stack ([stack])",
            map.pss,
        )
    } else if let Some(name) = path.strip_prefix("[anon:") {
        let name = name.trim_end_matches(']');
        (
            RegionKind::Anonymous,
            format!("anonymous: {name}"),
            "named by the process itself (PR_SET_VMA_ANON_NAME)",
            map.pss,
        )
    } else if let Some(name) = path.strip_prefix("[anon_shmem:") {
        shared(
            format!("shared memory: {}", name.trim_end_matches(']')),
            "shared anonymous memory named by the process (PR_SET_VMA_ANON_NAME)",
        )
    } else if path.starts_with('[') {
        (
            RegionKind::Other,
            path.into(),
            "a kernel-provided mapping",
            map.pss,
        )
    } else if let Some(name) = path.strip_prefix("/memfd:") {
        shared(
            format!("memfd: {name}"),
            "a memfd (memfd_create): shared memory",
        )
    } else if path.starts_with("/dev/shm/") {
        shared(path.to_string(), "a POSIX shared memory object (/dev/shm)")
    } else if let Some(key) = path.strip_prefix("/SYSV") {
        shared(
            format!("System V segment {key}"),
            "a System V shared memory segment",
        )
    } else if path == "/dev/zero" && map.shared() {
        shared(
            "shared anonymous memory".into(),
            "a MAP_SHARED | MAP_ANONYMOUS mapping (/dev/zero in smaps)",
        )
    } else if map.shared() {
        (
            RegionKind::File,
            path.to_string(),
            "a file mapped shared: its pages are the file's (page cache), none the process's own",
            map.anonymous,
        )
    } else {
        (
            RegionKind::File,
            path.to_string(),
            "a file mapped private: only its copied-on-write pages are the process's own",
            map.anonymous,
        )
    }
}

/// A thread's stack (and its guard), found by the thread's stack pointer.
fn thread_stack(maps: &[Mapping], tid: u32) -> Region {
    let start = maps[0].start;
    Region {
        kind: RegionKind::ThreadStack,
        name: format!("stack of thread {tid}"),
        why: "holds the thread's stack pointer (/proc/PID/task/TID/syscall)",
        start,
        size: maps.iter().map(Mapping::size).sum(),
        owned: maps.iter().map(|m| m.pss).sum(),
    }
}

/// Names a run of adjacent anonymous private mappings by its shape, saying how.
fn name_anonymous(maps: &[Mapping], runtime: Runtime) -> Region {
    let chromium = runtime == Runtime::Chromium;
    let start = maps[0].start;
    let size: u64 = maps.iter().map(Mapping::size).sum();
    let owned = maps.iter().map(|m| m.pss).sum();
    let reserved: u64 = maps
        .iter()
        .filter(|m| m.inaccessible())
        .map(Mapping::size)
        .sum();
    let aligned = |to: u64| start.is_multiple_of(to);
    let (kind, name, why) = match maps {
        [guard, stack]
            if guard.inaccessible()
                && guard.size() <= 64 * KIB
                && stack.perms.starts_with("rw") =>
        {
            (
                RegionKind::ThreadStack,
                format!("thread stack at {start:#x}"),
                "a read-write mapping right above a PROT_NONE guard of 64 KiB at most: how \
                 pthread stacks are laid out",
            )
        }
        _ if chromium && size >= 1 << 40 => (
            RegionKind::Anonymous,
            format!("V8 sandbox at {start:#x} (likely)"),
            "a reservation of 1 TiB or more in a Chromium process: V8's sandbox reserves 1 TiB",
        ),
        _ if chromium && size == 4 * GIB && aligned(4 * GIB) => (
            RegionKind::Anonymous,
            format!("V8 or Oilpan cage at {start:#x} (likely)"),
            "a 4 GiB-aligned 4 GiB reservation in a Chromium process: V8's pointer-compression \
             cage and Oilpan's cage are laid out so",
        ),
        _ if chromium && size == 16 * GIB => (
            RegionKind::Anonymous,
            format!("PartitionAlloc pool at {start:#x} (likely)"),
            "a 16 GiB reservation in a Chromium process: the size of PartitionAlloc's pools",
        ),
        _ if runtime == Runtime::Node
            && reserved == 0
            && aligned(256 * KIB)
            && size <= 64 * MIB
            && maps.iter().all(|m| m.perms.starts_with("rw")) =>
        {
            (
                RegionKind::Anonymous,
                format!("V8 heap pages at {start:#x} (likely)"),
                "read-write memory at a 256 KiB-aligned address in a Node process: V8 maps its \
                 heap in 256 KiB-aligned pages, while Buffers and other native memory come from \
                 malloc",
            )
        }
        _ if size == 64 * MIB && aligned(64 * MIB) && reserved > 0 => (
            RegionKind::Anonymous,
            format!("malloc arena at {start:#x} (likely)"),
            "a 64 MiB-aligned 64 MiB reservation, committed from its start: how glibc lays out a \
             thread's malloc arena",
        ),
        _ => (
            RegionKind::Anonymous,
            format!("anonymous region at {start:#x}"),
            "adjacent anonymous mappings (a reservation and what is committed in it) whose size \
             and alignment say no more",
        ),
    };
    Region {
        kind,
        name,
        why,
        start,
        size,
        owned,
    }
}

/// How one region of a process changed between two readings.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionGrowth {
    pub name: String,
    pub kind: RegionKind,
    /// How the name was inferred.
    pub why: String,
    pub start: u64,
    /// Its address space at the later reading.
    pub size: u64,
    /// The cycle ends the two readings were taken at.
    pub from_cycle: u32,
    pub to_cycle: u32,
    /// The memory the process owned in it at each (see [`Region::owned`]).
    pub from_owned: u64,
    pub to_owned: u64,
    pub growth: i64,
    /// How many regions this entry sums: those of the same name but their address (V8's heap
    /// pages lie scattered), or those past the top ones (`rest`). 1 for a single region.
    pub regions: u32,
}

impl RegionGrowth {
    /// Its name without an address: "V8 or Oilpan cage at 0x... (likely)" is "V8 or Oilpan
    /// cage (likely)".
    pub fn label(&self) -> String {
        if self.kind == RegionKind::ThreadStack {
            return "thread stacks".into();
        }
        match self.name.split_once(" at 0x") {
            Some((head, tail)) => {
                let rest = tail.split_once(' ').map_or("", |(_, rest)| rest);
                format!("{head} {rest}").trim_end().to_string()
            }
            None => self.name.clone(),
        }
    }

    /// Adds another region's figures to this entry.
    fn add(&mut self, other: &RegionGrowth) {
        self.size += other.size;
        self.from_owned += other.from_owned;
        self.to_owned += other.to_owned;
        self.growth += other.growth;
        self.regions += other.regions;
    }
}

/// The top-growing regions of one process: regions of the same name but their address summed
/// (one entry, named without the address), the [`TOP_PER_PROCESS`] that grew most, then the
/// rest summed in one `rest` entry.
fn top_of(grown: Vec<RegionGrowth>) -> Vec<RegionGrowth> {
    let mut by_label: Vec<RegionGrowth> = Vec::new();
    let mut at: HashMap<(RegionKind, String), usize> = HashMap::new();
    for region in grown.into_iter().filter(|g| g.growth > 0) {
        let key = (region.kind, region.label());
        match at.get(&key) {
            Some(&i) => {
                let entry = &mut by_label[i];
                entry.add(&region);
                entry.name = key.1;
            }
            None => {
                at.insert(key, by_label.len());
                by_label.push(region);
            }
        }
    }
    by_label.sort_by_key(|g| std::cmp::Reverse(g.growth));
    if by_label.len() > TOP_PER_PROCESS + 1 {
        let rest = by_label.split_off(TOP_PER_PROCESS);
        let mut sum = RegionGrowth {
            kind: RegionKind::Rest,
            why: "the process's other regions that grew, summed".into(),
            from_cycle: rest[0].from_cycle,
            to_cycle: rest[0].to_cycle,
            regions: 0,
            ..RegionGrowth::default()
        };
        rest.iter().for_each(|r| sum.add(r));
        sum.name = format!("{} other regions", sum.regions);
        by_label.push(sum);
    }
    by_label
}

/// Each region of `after` with what the same region held in `before`: by name, or for
/// anonymous regions by address (a region that grew past its neighbour's end, or into the
/// reservation beside it, still contains the addresses it had).
pub fn growth(before: &Reading, after: &Reading) -> Vec<RegionGrowth> {
    let overlaps =
        |a: &Region, b: &Region| a.start < b.start + b.size && b.start < a.start + a.size;
    let mut grown: Vec<RegionGrowth> = after
        .regions
        .iter()
        .map(|region| {
            let from_owned: u64 = before
                .regions
                .iter()
                .filter(|old| {
                    if region.kind.by_address() {
                        old.kind.by_address() && overlaps(old, region)
                    } else {
                        old.kind == region.kind && old.name == region.name
                    }
                })
                .map(|old| old.owned)
                .sum();
            RegionGrowth {
                name: region.name.clone(),
                kind: region.kind,
                why: region.why.to_string(),
                start: region.start,
                size: region.size,
                from_cycle: before.cycle,
                to_cycle: after.cycle,
                from_owned,
                to_owned: region.owned,
                growth: region.owned as i64 - from_owned as i64,
                regions: 1,
            }
        })
        .collect();
    grown.sort_by_key(|g| std::cmp::Reverse(g.growth));
    grown
}

/// One process's regions at a cycle end.
#[derive(Clone, Debug, Default)]
pub struct Reading {
    pub cycle: u32,
    /// Only those owning [`MIN_OWNED`] or more.
    pub regions: Vec<Region>,
}

/// The stack pointers of a process's threads that are blocked in the kernel (a running thread
/// has none to read), with their thread ids.
fn stack_pointers(pid: u32) -> Vec<(u64, u32)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            // `nr arg1 .. arg6 sp pc`, or `-1 sp pc` outside a syscall, or `running`.
            let text = std::fs::read_to_string(task.path().join("syscall")).ok()?;
            let words: Vec<&str> = text.split_whitespace().collect();
            let sp = words.len().checked_sub(2).map(|i| words[i])?;
            let sp = u64::from_str_radix(sp.strip_prefix("0x")?, 16).ok()?;
            Some((sp, tid))
        })
        .collect()
}

/// Reads one process's regions, if it is still there and readable.
pub fn read(pid: u32, runtime: Runtime, cycle: u32) -> Option<Reading> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut regions = regions(&parse_smaps(&text), runtime, &stack_pointers(pid));
    regions.retain(|r| r.owned >= MIN_OWNED);
    Some(Reading { cycle, regions })
}

/// The readings of one process: a few spread over the trace, and the latest.
#[derive(Debug, Default)]
struct History {
    kept: Vec<Reading>,
    latest: Option<Reading>,
}

impl History {
    fn push(&mut self, reading: Reading) {
        if let Some(latest) = self.latest.replace(reading) {
            self.kept.push(latest);
            if self.kept.len() > KEPT {
                // Keep the first and every other one after it.
                let mut index = 0;
                self.kept.retain(|_| {
                    index += 1;
                    index % 2 == 1
                });
            }
        }
    }

    /// The growth from the earliest reading at or after `from_cycle` (else the last before it)
    /// to the latest.
    fn growth(&self, from_cycle: u32) -> Vec<RegionGrowth> {
        let Some(latest) = &self.latest else {
            return Vec::new();
        };
        let baseline = self
            .kept
            .iter()
            .find(|r| r.cycle >= from_cycle)
            .or_else(|| self.kept.last());
        baseline.map_or_else(Vec::new, |before| growth(before, latest))
    }
}

/// What the region readings cost leaktrace (and, under each process's mmap lock, the process).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegionCost {
    /// Cycle ends at which the tree's regions were read.
    pub readings: u64,
    /// smaps files read.
    pub reads: u64,
    /// The wall time they took, in seconds.
    pub seconds: f64,
}

/// Region readings of the traced processes, at cycle ends within [`SHARE`] of the time.
#[derive(Debug)]
pub struct RegionSampler {
    /// Per process: pid and start time in clock ticks (pids are reused).
    processes: HashMap<(u32, u64), History>,
    started: Instant,
    cost: RegionCost,
}

impl Default for RegionSampler {
    fn default() -> Self {
        RegionSampler {
            processes: HashMap::new(),
            started: Instant::now(),
            cost: RegionCost::default(),
        }
    }
}

/// A process's key: its pid and start time in hundredths of a second since boot (clock ticks).
pub fn key(pid: u32, start_time: f64) -> (u32, u64) {
    (pid, (start_time * 100.0).round() as u64)
}

impl RegionSampler {
    /// Whether a reading now stays within [`SHARE`] of the time so far (the first always does).
    pub fn due(&self) -> bool {
        self.cost.seconds <= SHARE * self.started.elapsed().as_secs_f64()
    }

    /// Reads every process given (pid, start time, runtime) at the end of `cycle`.
    pub fn read_all(&mut self, cycle: u32, processes: &[(u32, f64, Runtime)]) {
        let began = Instant::now();
        for &(pid, start_time, runtime) in processes {
            if let Some(reading) = read(pid, runtime, cycle) {
                self.cost.reads += 1;
                self.processes
                    .entry(key(pid, start_time))
                    .or_default()
                    .push(reading);
            }
        }
        self.cost.readings += 1;
        self.cost.seconds += began.elapsed().as_secs_f64();
    }

    pub fn cost(&self) -> RegionCost {
        self.cost
    }

    /// The top-growing regions of a process since the reading nearest `from_cycle` (see
    /// [`top_of`]).
    /// [`RegionSampler::top`] of every process read, by [`key`].
    pub fn tops(&self, from_cycle: u32) -> HashMap<(u32, u64), Vec<RegionGrowth>> {
        self.processes
            .iter()
            .map(|(key, history)| (*key, top_of(history.growth(from_cycle))))
            .collect()
    }

    pub fn top(&self, pid: u32, start_time: f64, from_cycle: u32) -> Vec<RegionGrowth> {
        top_of(
            self.processes
                .get(&key(pid, start_time))
                .map(|h| h.growth(from_cycle))
                .unwrap_or_default(),
        )
    }
}

/// A region's growth summed over the processes of a role that have it, by its name without its
/// address (nine renderers' cages are one line).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RoleRegion {
    pub role: String,
    pub name: String,
    pub kind: RegionKind,
    pub why: String,
    pub processes: u32,
    pub growth: i64,
}

/// Regions across the roles, the most grown first: the `count` largest.
pub fn by_role<'a>(
    processes: impl IntoIterator<Item = (&'a str, &'a [RegionGrowth])>,
    count: usize,
) -> Vec<RoleRegion> {
    // Each sum, with the last process counted in it.
    let mut sums: HashMap<(String, RegionKind, String), (RoleRegion, usize)> = HashMap::new();
    for (index, (role, regions)) in processes.into_iter().enumerate() {
        for region in regions {
            let label = match region.kind {
                RegionKind::Rest => "other regions".to_string(),
                _ => region.label(),
            };
            let (sum, counted) = sums
                .entry((role.to_string(), region.kind, label.clone()))
                .or_insert_with(|| {
                    let sum = RoleRegion {
                        role: role.to_string(),
                        name: label,
                        kind: region.kind,
                        why: region.why.clone(),
                        ..RoleRegion::default()
                    };
                    (sum, usize::MAX)
                });
            if *counted != index {
                sum.processes += 1;
                *counted = index;
            }
            sum.growth += region.growth;
        }
    }
    let sums = sums.into_values().map(|(sum, _)| sum);
    let mut all: Vec<RoleRegion> = sums.collect();
    all.sort_by(|a, b| b.growth.cmp(&a.growth).then(a.name.cmp(&b.name)));
    all.truncate(count);
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Rss:                 100 kB
Pss:                 100 kB
Anonymous:           100 kB
VmFlags: rd wr mr mw me ac
7f0000000000-7f0000001000 ---p 00000000 00:00 0 
Size:                  4 kB
Rss:                   0 kB
Pss:                   0 kB
Anonymous:             0 kB
7f0000001000-7f0000801000 rw-p 00000000 00:00 0 
Size:               8192 kB
Rss:                  16 kB
Pss:                  16 kB
Anonymous:            16 kB
7f1000000000-7f1000200000 rw-p 00000000 00:00 0 
Size:               2048 kB
Rss:                2048 kB
Pss:                2048 kB
Anonymous:          2048 kB
7f1000200000-7f1004000000 ---p 00000000 00:00 0 
Size:              63488 kB
Rss:                   0 kB
Pss:                   0 kB
Anonymous:             0 kB
7f2000000000-7f2000400000 rw-s 00000000 00:01 77                         /memfd:blobs (deleted)
Size:               4096 kB
Rss:                4096 kB
Pss:                2048 kB
Anonymous:             0 kB
7f3000000000-7f3000010000 r--p 00000000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                 64 kB
Rss:                  64 kB
Pss:                  10 kB
Anonymous:             0 kB
7f3000010000-7f3000012000 rw-p 00010000 08:01 99                         /usr/lib/x86_64-linux-gnu/libc.so.6
Size:                  8 kB
Rss:                   8 kB
Pss:                   8 kB
Anonymous:             8 kB
7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                  12 kB
Pss:                  12 kB
Anonymous:            12 kB
";

    #[test]
    fn smaps_becomes_regions_named_by_their_shape() {
        let maps = parse_smaps(SMAPS);
        assert_eq!(maps.len(), 9);
        assert_eq!(maps[5].path, "/memfd:blobs (deleted)");
        assert_eq!((maps[0].rss, maps[5].pss), (100 * KIB, 2048 * KIB));
        let regions = regions(&maps, Runtime::Other, &[]);
        let named: Vec<(RegionKind, &str, u64)> = regions
            .iter()
            .map(|r| (r.kind, r.name.as_str(), r.owned))
            .collect();
        assert_eq!(
            named,
            [
                (RegionKind::Heap, "[heap]", 100 * KIB),
                (
                    RegionKind::ThreadStack,
                    "thread stack at 0x7f0000000000",
                    16 * KIB
                ),
                (
                    RegionKind::Anonymous,
                    "malloc arena at 0x7f1000000000 (likely)",
                    2048 * KIB
                ),
                (RegionKind::SharedMemory, "memfd: blobs", 2048 * KIB),
                // Only the private copies of a file are the process's own.
                (
                    RegionKind::File,
                    "/usr/lib/x86_64-linux-gnu/libc.so.6",
                    8 * KIB
                ),
                (RegionKind::Stack, "[stack]", 12 * KIB),
            ]
        );
        assert_eq!(regions[2].size, 64 * MIB);
        // With the thread's stack pointer read, the stack is that thread's, and kept apart
        // from an anonymous mapping that lands right above it.
        let mut maps = maps;
        maps.insert(
            3,
            Mapping {
                start: 0x7f0000801000,
                end: 0x7f0000901000,
                perms: "rw-p".into(),
                pss: MIB,
                ..Mapping::default()
            },
        );
        let regions = super::regions(&maps, Runtime::Other, &[(0x7f00007ff000, 42)]);
        let named: Vec<(&str, u64)> = regions[1..3]
            .iter()
            .map(|r| (r.name.as_str(), r.owned))
            .collect();
        assert_eq!(
            named,
            [
                ("stack of thread 42", 16 * KIB),
                ("anonymous region at 0x7f0000801000", MIB)
            ]
        );
    }

    #[test]
    fn an_anonymous_region_is_matched_by_address_as_it_grows() {
        let region = |start: u64, size: u64, owned: u64| Region {
            kind: RegionKind::Anonymous,
            name: format!("anonymous region at {start:#x}"),
            why: "",
            start,
            size,
            owned,
        };
        let before = Reading {
            cycle: 2,
            regions: vec![region(0x1000_0000, 4 * MIB, MIB)],
        };
        // It grew down past its start (a new mapping joined below), and by 3 MiB.
        let after = Reading {
            cycle: 9,
            regions: vec![region(0x0f00_0000, 20 * MIB, 4 * MIB)],
        };
        let grown = growth(&before, &after);
        assert_eq!(grown.len(), 1);
        assert_eq!(
            (
                grown[0].from_owned,
                grown[0].growth,
                grown[0].from_cycle,
                grown[0].to_cycle
            ),
            (MIB, 3 * MIB as i64, 2, 9)
        );
    }

    #[test]
    fn readings_thin_out_but_keep_the_first_and_the_latest() {
        let mut history = History::default();
        for cycle in 1..=40 {
            history.push(Reading {
                cycle,
                regions: Vec::new(),
            });
        }
        assert!(history.kept.len() <= KEPT);
        assert_eq!(history.kept[0].cycle, 1);
        assert_eq!(history.latest.as_ref().unwrap().cycle, 40);
        let cycles: Vec<u32> = history.kept.iter().map(|r| r.cycle).collect();
        assert!(cycles.windows(2).all(|w| w[0] < w[1]), "{cycles:?}");
    }
}
