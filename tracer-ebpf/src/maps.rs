//! Maps shared with the loader, the loader-provided configuration, and small accessors.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_ktime_get_boot_ns},
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use tracer_common::{
    KernelConfig, LOST_REASON_COUNT, LostReason, ProcessFlows, ProcessKey, RSS_COUNTERS, Resident,
    Tracked,
};

/// Processes (tgids) and threads followed at once.
const MAX_PROCESSES: u32 = 65_536;
/// Processes with flows at once (an exited process's are taken out by the loader). Fewer than
/// the tracked set: the kernel allocates every entry of a per-CPU map up front, one per-CPU
/// allocation each (392 bytes on every CPU: 25 MiB a CPU, and ~60 ms of the start, at 65,536);
/// a browser's tree is tens to hundreds of processes. One that finds the map full counts as
/// `flow_map_full`.
const MAX_FLOWING: u32 = 8_192;

/// Set by the loader before load (`.rodata`), so the verifier treats every field as a constant.
#[unsafe(no_mangle)]
static CONFIG: KernelConfig = KernelConfig {
    own_tgid: 0,
    task_mm: 0,
    mm_start_brk: 0,
    mm_brk: 0,
    vma_start: 0,
    vma_end: 0,
    vma_flags: 0,
    vma_file: 0,
    file_inode: 0,
    inode_sb: 0,
    sb_magic: 0,
    mm_total_vm: 0,
    task_exit_code: 0,
    task_pid: 0,
    task_tgid: 0,
    mm_owner: 0,
    regs_args: [0; 4],
    rss_count: [0; RSS_COUNTERS],
    rss_probe_read: 0,
    exit_group_dead: 0,
    exit_from_signal: 0,
    task_signal: 0,
    signal_live: 0,
    mm_rb: 0,
    vma_rb: 0,
    vma_next: 0,
    rb_left: 0,
    rb_right: 0,
    noreserve_honoured: 0,
    stash_slot_mask: 0,
};

/// Reads one configuration field; volatile so the compiler cannot fold the zero initialiser.
macro_rules! config {
    ($($field:tt)+) => {
        $crate::maps::read_config(&$crate::maps::config_ref().$($field)+)
    };
}
pub(crate) use config;

pub fn config_ref() -> &'static KernelConfig {
    &CONFIG
}

#[inline(always)]
pub fn read_config(field: &u32) -> u32 {
    // SAFETY: `field` is a reference into CONFIG, a static that is valid and aligned.
    unsafe { core::ptr::read_volatile(field) }
}

/// The tracked set: tgid -> its generation (see `ProcessKey`) and its mappings' epoch.
#[map]
pub static TRACKED: HashMap<u32, Tracked> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Per-process flows, per CPU so that updates need no atomics.
#[map]
pub static FLOWS: PerCpuHashMap<ProcessKey, ProcessFlows> =
    PerCpuHashMap::with_max_entries(MAX_FLOWING, 0);

/// A zeroed `ProcessFlows` to insert from: the value is too large for the 512-byte stack.
#[map]
static ZERO_FLOWS: PerCpuArray<ProcessFlows> = PerCpuArray::with_max_entries(1, 0);

/// Resident counters per tracked tgid, from kmem:rss_stat. Not per CPU: each update stores the
/// kernel's absolute counter value, so the last writer is right.
#[map]
pub static RESIDENT: HashMap<ProcessKey, Resident> = HashMap::with_max_entries(MAX_PROCESSES, 0);

/// Set to 1 by the loader when the trace ends: from then on the syscall hooks count nothing,
/// at once, though detaching them takes the kernel the better part of a second (see the
/// loader's `Links`).
#[map]
static FLOWS_STOPPED: Array<u32> = Array::with_max_entries(1, 0);

pub fn flows_stopped() -> bool {
    FLOWS_STOPPED.get(0).is_some_and(|stopped| *stopped != 0)
}

/// Fork, exec and exit events: the only per-event traffic to userspace.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Lost-event counters, indexed by `LostReason`.
#[map]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(LOST_REASON_COUNT as u32, 0);

pub fn count_lost(reason: LostReason) {
    if let Some(counter) = LOST.get_ptr_mut(reason as u32) {
        // SAFETY: this CPU's slot of a per-CPU array: no other writer while the program runs.
        unsafe { *counter += 1 };
    }
}

/// A tracked process: the key of its entries, and its own entry in the tracked set.
pub struct TrackedProcess {
    pub key: ProcessKey,
    pub entry: &'static mut Tracked,
}

/// The tracked process `tgid`, or None when it is not tracked.
pub fn tracked(tgid: u32) -> Option<TrackedProcess> {
    if tgid == config!(own_tgid) {
        return None;
    }
    // SAFETY: the map's value, valid for this program's run; only its epoch is written, by
    // `mappings`, atomically.
    let entry = unsafe { &mut *TRACKED.get_ptr_mut(tgid)? };
    let key = ProcessKey {
        tgid,
        generation: entry.generation,
    };
    Some(TrackedProcess { key, entry })
}

/// The calling CPU's flows of a process, created on first use.
pub fn flows_of(key: &ProcessKey) -> Option<&'static mut ProcessFlows> {
    if flows_stopped() {
        return None;
    }
    if let Some(flows) = FLOWS.get_ptr_mut(key) {
        // SAFETY: this CPU's value of a per-CPU map, valid for this program's run.
        return Some(unsafe { &mut *flows });
    }
    // SAFETY: the zero value of a per-CPU array, only ever read.
    let zero = unsafe { &*ZERO_FLOWS.get_ptr(0)? };
    // BPF_NOEXIST: another CPU may have created it meanwhile; that is fine, values are per CPU.
    let _ = FLOWS.insert(key, zero, 1);
    match FLOWS.get_ptr_mut(key) {
        // SAFETY: as above: this CPU's value, valid for this program's run.
        Some(flows) => Some(unsafe { &mut *flows }),
        None => {
            count_lost(LostReason::FlowMapFull);
            None
        }
    }
}

/// Adds `delta` atomically: an XADD, the one atomic every kernel leaktrace runs on has (and
/// the only one the BPF target offers without `-mcpu=v3`; Rust's `fetch_add` needs a
/// compare-and-swap). On x86 it is a locked add, a full barrier.
#[inline(always)]
pub fn atomic_add(counter: &mut u64, delta: u64) {
    #[cfg(target_arch = "bpf")]
    // SAFETY: `counter` is a valid, aligned u64 in a map value; the instruction only adds to it.
    unsafe {
        core::arch::asm!("lock *(u64 *)({0} + 0) += {1}", in(reg) counter as *mut u64, in(reg) delta);
    }
    // The host build only type-checks this crate.
    #[cfg(not(target_arch = "bpf"))]
    {
        *counter = counter.wrapping_add(delta);
    }
}

/// A field of a BTF-typed kernel pointer. The offsets are read-only constants (CONFIG), so the
/// verifier checks this load against the kernel's types and lets it be a plain load rather than
/// a bpf_probe_read_kernel call; a bad pointer reads as 0.
#[inline(always)]
pub fn btf_field<T: Copy>(base: u64, offset: u32) -> T {
    // SAFETY: `base` is a BTF-typed kernel pointer and `offset` a constant the loader read from
    // the kernel's BTF; the verifier checks the load against the type and turns a fault into 0.
    unsafe { core::ptr::read_volatile((base as *const u8).add(offset as usize) as *const T) }
}

/// The boot-time clock, in ns.
#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: the helper takes no arguments and only reads the clock.
    unsafe { bpf_ktime_get_boot_ns() }
}

/// The running task's address, untyped (its BTF-typed twin needs 5.11): for probe reads.
#[inline(always)]
pub fn current_task() -> u64 {
    // SAFETY: the helper takes no arguments and returns the running task's address.
    unsafe { bpf_get_current_task() }
}

/// Reads a kernel value at `base + offset`, counting a failure as lost.
pub fn read_kernel<T: Copy>(base: u64, offset: u32) -> Option<T> {
    // SAFETY: a checked read: the helper returns an error for an address it cannot read.
    match unsafe { aya_ebpf::helpers::bpf_probe_read_kernel((base + offset as u64) as *const T) } {
        Ok(value) => Some(value),
        Err(_) => {
            count_lost(LostReason::KernelReadFailed);
            None
        }
    }
}
