//! The kernel side, seen from userspace: load the eBPF programs with the offsets this kernel
//! needs, attach them, seed the tracked set, and drain what they collect.
//!
//! Hooks (see `tracer-ebpf` and [`HOOKS`]): the memory syscalls' own entry and exit tracepoints,
//! `task_newtask` (tp_btf), `sched:sched_process_exec` and `sched:sched_process_exit` for the
//! process tree, `rss_stat` (tp_btf) for resident memory. The syscall hooks stop counting when
//! the trace ends ([`Kernel::stop_flows`]); links detach when [`Kernel`] is dropped, in a copy
//! of leaktrace that leaktrace does not wait for (see [`Links`]).

pub mod btf;
mod error;
pub mod features;
mod hooks;
pub mod tracefs;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{BtfTracePoint, ProgramError, TracePoint},
};
use tracer_common::{
    GENERATION_OF_LOADER, KernelConfig, LOST_REASON_COUNT, LifecycleEvent, ProcessFlows,
    ProcessKey, Resident, Tracked,
};

pub use self::{
    error::KernelError,
    features::{Features, RssIndices},
    hooks::{AttachPoint, HOOKS, Hook, MEMORY_SYSCALLS, hooked_syscalls},
};

#[cfg(not(target_arch = "x86_64"))]
compile_error!(
    "leaktrace reads x86_64 syscall registers; other architectures are not supported yet"
);

/// The eBPF object built by build.rs from `tracer-ebpf`.
static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer-ebpf"));

/// Loaded and attached programs with their maps.
pub struct Kernel {
    /// Held for its `Drop`; declared first, so the links go before the programs.
    _links: Links,
    ebpf: Ebpf,
    events: RingBuf<MapData>,
    /// The resident counters' indices; `None` when `rss_stat` is not attached on this kernel.
    pub rss: Option<RssIndices>,
    /// Whether the syscall hooks are attached, so address-space flows are counted.
    pub flows: bool,
    /// What this kernel's missing features cost the trace, in plain words.
    pub losses: Vec<String>,
}

/// Overrides the syscall stash's slot count (a power of two), so that tests can make threads
/// share slots on a machine where none would.
pub const STASH_SLOTS_ENV: &str = "LEAKTRACE_STASH_SLOTS";

/// Most slots the stash gets: 65,536 of 216 bytes, 13.5 MiB of kernel memory.
const MAX_STASH_SLOTS: u32 = 65_536;

/// Slots of the kernel's syscall stash (tracer-ebpf's `stash`): one per pid up to pid_max, so
/// that where pid_max is no larger than [`MAX_STASH_SLOTS`] no two threads share one (where it
/// is, sharing threads fall back to a hash map, which costs time, not exactness).
fn stash_slots() -> Result<u32, KernelError> {
    if let Ok(value) = std::env::var(STASH_SLOTS_ENV) {
        return value
            .parse::<u32>()
            .ok()
            .filter(|n| n.is_power_of_two() && *n <= MAX_STASH_SLOTS)
            .ok_or(KernelError::BadEnv {
                var: STASH_SLOTS_ENV,
                value,
                wants: "a power of two up to 65536",
            });
    }
    let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok())
        .unwrap_or(MAX_STASH_SLOTS);
    Ok(pid_max.next_power_of_two().clamp(1, MAX_STASH_SLOTS))
}

pub fn is_privileged() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

impl Kernel {
    /// Loads the programs and attaches every hook this kernel supports (see [`Features`]);
    /// `leaktrace`'s own tgid is never tracked.
    pub fn load() -> Result<Kernel, KernelError> {
        if !is_privileged() {
            return Err(KernelError::NotPrivileged);
        }
        if EBPF_OBJECT.is_empty() {
            return Err(KernelError::NotBuilt);
        }
        let features = Features::probe(std::process::id())?;
        let essential_missing: Vec<String> = features
            .hooks
            .iter()
            .filter(|h| h.essential() && !h.attaches())
            .map(|h| format!("{} needs {}", h.hook.program, h.missing().join(", ")))
            .collect();
        if !essential_missing.is_empty() {
            return Err(KernelError::Unsupported(essential_missing.join("; ")));
        }
        raise_memlock_limit();
        let slots = stash_slots()?;
        let config = KernelConfig {
            stash_slot_mask: slots - 1,
            ..features.config
        };
        let mut ebpf = EbpfLoader::new()
            .map_max_entries("SLOT_TABLE", slots)
            .override_global("CONFIG", &config, true)
            .load(EBPF_OBJECT)
            .map_err(KernelError::Load)?;
        let btf = aya::Btf::from_sys_fs().map_err(|e| KernelError::Load(e.into()))?;
        let mut links = Links::default();
        for support in features.hooks.iter().filter(|h| h.attaches()) {
            let hook = support.hook;
            attach(&mut ebpf, hook, support.program, &btf, &mut links)
                .map_err(|source| KernelError::Attach { hook, source })?;
        }
        let events = ebpf
            .take_map("EVENTS")
            .ok_or(KernelError::MissingMap {
                name: "EVENTS",
                source: None,
            })
            .and_then(|map| {
                RingBuf::try_from(map).map_err(|source| KernelError::MissingMap {
                    name: "EVENTS",
                    source: Some(source),
                })
            })?;
        Ok(Kernel {
            _links: links,
            ebpf,
            events,
            rss: features.rss,
            flows: features.flows(),
            losses: features.losses(),
        })
    }

    /// Stops counting address-space flows, at once: the trace is ending. The syscall hooks stay
    /// attached until the end (see [`Links`]), counting nothing; the process tree and resident
    /// counters stay followed.
    pub fn stop_flows(&mut self) -> Result<(), KernelError> {
        let mut stopped: Array<_, u32> = self.map_mut("FLOWS_STOPPED")?;
        stopped
            .set(0, 1, 0)
            .map_err(|source| KernelError::MissingMap {
                name: "FLOWS_STOPPED",
                source: Some(source),
            })
    }

    /// Adds a process to the tracked set; its future children join it in the kernel. Returns
    /// its key: a process the kernel already follows (forked from one tracked before) keeps
    /// the generation the kernel gave it.
    pub fn track(&mut self, tgid: u32) -> Result<ProcessKey, KernelError> {
        let mut tracked: HashMap<_, u32, Tracked> = self.map_mut("TRACKED")?;
        let entry = Tracked {
            generation: GENERATION_OF_LOADER,
            _pad: 0,
            // The programs' clock: an earlier process with this key has an older epoch.
            epoch: crate::collect::sampler::boot_ns(),
        };
        // BPF_NOEXIST: never renumber a process whose entries already count.
        match tracked.insert(tgid, entry, 1) {
            Ok(()) => Ok(ProcessKey {
                tgid,
                generation: GENERATION_OF_LOADER,
            }),
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                let generation = tracked
                    .get(&tgid, 0)
                    .map_or(GENERATION_OF_LOADER, |entry| entry.generation);
                Ok(ProcessKey { tgid, generation })
            }
            Err(source) => Err(KernelError::MapOperation {
                name: "TRACKED",
                action: "insert",
                source,
            }),
        }
    }

    /// Starts a process's resident counters (from /proc, for a process that predates the
    /// trace); values the kernel already holds win.
    pub fn seed_resident(
        &mut self,
        key: ProcessKey,
        resident: Resident,
    ) -> Result<(), KernelError> {
        let mut map: HashMap<_, ProcessKey, Resident> = self.map_mut("RESIDENT")?;
        match map.insert(key, resident, 1) {
            Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => {
                Ok(())
            }
            other => other.map_err(|source| KernelError::MapOperation {
                name: "RESIDENT",
                action: "insert",
                source,
            }),
        }
    }

    /// A process's resident counters (pages); with `remove`, also forgets them (the pid may be
    /// reused).
    pub fn resident(&mut self, key: ProcessKey, remove: bool) -> Option<Resident> {
        let mut map: HashMap<_, ProcessKey, Resident> = self.map_mut("RESIDENT").ok()?;
        let resident = map.get(&key, 0).ok();
        if remove {
            let _ = map.remove(&key);
        }
        resident
    }

    /// Hands every fork/exec/exit event waiting in the ring buffer to `on_event`.
    pub fn drain_events(&mut self, mut on_event: impl FnMut(LifecycleEvent)) {
        while let Some(item) = self.events.next() {
            if item.len() >= size_of::<LifecycleEvent>() {
                // SAFETY: the kernel wrote a LifecycleEvent (repr(C), Pod); read_unaligned
                // because the ring buffer only guarantees 8-byte alignment of records.
                let event = unsafe { (item.as_ptr() as *const LifecycleEvent).read_unaligned() };
                on_event(event);
            }
        }
    }

    /// A process's flows summed over CPUs, removed from the map (the process has exited).
    pub fn take_flows(&mut self, key: ProcessKey) -> Option<ProcessFlows> {
        let total = self.flows(key)?;
        let mut flows: PerCpuHashMap<_, ProcessKey, ProcessFlows> = self.map_mut("FLOWS").ok()?;
        let _ = flows.remove(&key);
        Some(total)
    }

    /// A process's flows summed over CPUs (left in the map).
    ///
    /// Looked up by key: walking the map instead (`get_next_key` from bucket to bucket) costs
    /// as much as its capacity however few processes are in it, and it was a fifth of
    /// leaktrace's CPU on a fast worker.
    pub fn flows(&mut self, key: ProcessKey) -> Option<ProcessFlows> {
        let flows: PerCpuHashMap<_, ProcessKey, ProcessFlows> = self.map_mut("FLOWS").ok()?;
        let per_cpu = flows.get(&key, 0).ok()?;
        Some(sum_flows(per_cpu.iter()))
    }

    /// Lost-event counters, indexed by `LostReason`, summed over CPUs.
    pub fn lost(&mut self) -> [u64; LOST_REASON_COUNT] {
        let mut totals = [0; LOST_REASON_COUNT];
        if let Ok(lost) = self.map_mut::<PerCpuArray<_, u64>>("LOST") {
            for (index, total) in totals.iter_mut().enumerate() {
                if let Ok(values) = lost.get(&(index as u32), 0) {
                    *total = values.iter().sum();
                }
            }
        }
        totals
    }

    fn map_mut<'a, T>(&'a mut self, name: &'static str) -> Result<T, KernelError>
    where
        T: TryFrom<&'a mut aya::maps::Map, Error = MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or(KernelError::MissingMap { name, source: None })?;
        T::try_from(map).map_err(|source| KernelError::MissingMap {
            name,
            source: Some(source),
        })
    }
}

/// Before 5.11 the kernel charges BPF maps and programs to RLIMIT_MEMLOCK, whose default (8 MiB
/// or less) is smaller than leaktrace's maps; later kernels charge the memory cgroup and ignore
/// it. Raising it for leaktrace's own process changes nothing for the traced ones.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: setrlimit with a valid rlimit; a failure leaves the limit as it was, and the
    // load below then reports the kernel's error.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

fn attach(
    ebpf: &mut Ebpf,
    hook: &Hook,
    name: &str,
    btf: &aya::Btf,
    links: &mut Links,
) -> Result<(), ProgramError> {
    let program = ebpf.program_mut(name).ok_or(ProgramError::NotLoaded)?;
    match hook.attach {
        AttachPoint::Btf(event) => {
            let program: &mut BtfTracePoint = program.try_into()?;
            program.load(event, btf)?;
            let id = program.attach()?;
            links.0.push(Box::new(program.take_link(id)?));
        }
        AttachPoint::Tracepoint(category, event) => {
            let program: &mut TracePoint = program.try_into()?;
            program.load()?;
            let id = program.attach(category, event)?;
            links.0.push(Box::new(program.take_link(id)?));
        }
        AttachPoint::Syscalls(prefix) => {
            let fallback = hook.fallback_program == Some(name);
            let program: &mut TracePoint = program.try_into()?;
            program.load()?;
            for name in hooked_syscalls(prefix, fallback) {
                let id = program.attach("syscalls", &format!("{prefix}_{name}"))?;
                links.0.push(Box::new(program.take_link(id)?));
            }
        }
    }
    Ok(())
}

/// Every attachment. Detaching a tracepoint waits for RCU grace periods (~40–75 ms each here):
/// the 14 links held leaktrace for half a second or more after the traced command had exited,
/// and side by side they once locked up Debian 11's kernel (5.10, a soft lockup in the vmtest).
/// So leaktrace does not wait: when the links are dropped, a forked copy of leaktrace keeps a
/// reference to each until leaktrace has exited, and its own exit detaches them, in the
/// background. The syscall hooks count nothing by then ([`Kernel::stop_flows`]).
#[derive(Default)]
struct Links(Vec<Link>);

/// A link, held for its `Drop`, which detaches it.
type Link = Box<dyn Send>;

impl Drop for Links {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            detach_after_exit();
        }
        // With the copy holding them, these are not the last references: no waiting.
        self.0.clear();
    }
}

/// Forks the copy that holds every open file (the links among them) until this process has
/// exited, then exits, which detaches the links. The copy closes its standard streams at once,
/// so whoever reads leaktrace's output sees its end when leaktrace exits. If fork fails, the
/// links detach here, as they would have.
fn detach_after_exit() {
    // SAFETY: getpid has no preconditions.
    let leaktrace = unsafe { libc::getpid() };
    // SAFETY: the child of a multithreaded process may only make async-signal-safe calls:
    // close, getppid, nanosleep and _exit are, and it allocates nothing.
    unsafe {
        if libc::fork() == 0 {
            for fd in 0..3 {
                libc::close(fd);
            }
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 10_000_000,
            };
            // Reparented when leaktrace exits.
            while libc::getppid() == leaktrace {
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
            libc::_exit(0);
        }
    }
}

fn sum_flows<'a>(per_cpu: impl Iterator<Item = &'a ProcessFlows>) -> ProcessFlows {
    let mut total = ProcessFlows::default();
    for flows in per_cpu {
        for (sum, class) in total.classes.iter_mut().zip(&flows.classes) {
            sum.add(class);
        }
        total.brk_growth += flows.brk_growth;
    }
    total
}

#[cfg(test)]
mod tests {
    use tracer_common::syscall_nr;

    #[test]
    fn syscall_numbers_match_the_c_library() {
        assert_eq!(syscall_nr::MMAP, libc::SYS_mmap as u64);
        assert_eq!(syscall_nr::MPROTECT, libc::SYS_mprotect as u64);
        assert_eq!(syscall_nr::MUNMAP, libc::SYS_munmap as u64);
        assert_eq!(syscall_nr::BRK, libc::SYS_brk as u64);
        assert_eq!(syscall_nr::MREMAP, libc::SYS_mremap as u64);
        assert_eq!(syscall_nr::MADVISE, libc::SYS_madvise as u64);
    }
}
