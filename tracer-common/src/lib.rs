//! Types shared by the eBPF programs (`tracer-ebpf`) and the loader (`tracer`).
//!
//! Every struct here crosses the kernel/user boundary by value, so each is `#[repr(C)]`, `Copy`,
//! free of `bool` and of implicit padding. The `user` feature adds `aya::Pod` for the loader.
#![no_std]

/// The region classes memory is sorted into, decided in the kernel from the VMA's flags.
///
/// The discriminant indexes [`ProcessFlows::classes`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RegionClass {
    /// The brk heap.
    Heap = 0,
    /// Private anonymous memory that is accessible (committed).
    Anon = 1,
    /// PROT_NONE, or private anonymous MAP_NORESERVE: address space held, not memory.
    Reserved = 2,
    /// Shared anonymous, shm, memfd: anything backed by tmpfs/shmem or hugetlbfs.
    Shared = 3,
    /// Mappings of ordinary files.
    File = 4,
    /// Executable mappings: code and JIT.
    Exec = 5,
    /// Stacks that grow down.
    Stack = 6,
    /// Bytes a munmap, madvise or mmap touched whose VMAs could not be read (the mm's lock was
    /// busy, or the walk was cut short): counted here so that a process's total stays exact.
    Unattributed = 7,
}

pub const CLASS_COUNT: usize = 8;

impl RegionClass {
    pub const ALL: [RegionClass; CLASS_COUNT] = [
        RegionClass::Heap,
        RegionClass::Anon,
        RegionClass::Reserved,
        RegionClass::Shared,
        RegionClass::File,
        RegionClass::Exec,
        RegionClass::Stack,
        RegionClass::Unattributed,
    ];

    /// The name used in reports and JSON.
    pub const fn name(self) -> &'static str {
        match self {
            RegionClass::Heap => "heap",
            RegionClass::Anon => "anon",
            RegionClass::Reserved => "reserved",
            RegionClass::Shared => "shared",
            RegionClass::File => "file",
            RegionClass::Exec => "exec",
            RegionClass::Stack => "stack",
            RegionClass::Unattributed => "unattributed",
        }
    }
}

/// Address-space flows of one region class in one process, in bytes (page-aligned lengths).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct ClassFlow {
    /// Newly mapped into this class: mmap, mremap growth, brk growth.
    pub mapped: u64,
    /// Removed from this class: munmap, mremap shrink, brk shrink, MAP_FIXED replacement.
    pub unmapped: u64,
    /// Moved into this class by mprotect (PROT_NONE -> read/write moves reserved into anon).
    pub committed: u64,
    /// Moved out of this class by mprotect.
    pub uncommitted: u64,
    /// Handed back with madvise(DONTNEED / FREE / REMOVE).
    pub released: u64,
    /// Successful calls that touched this class.
    pub calls: u64,
}

impl ClassFlow {
    /// Net change of this class's address space: what came in minus what went out.
    pub fn net(&self) -> i64 {
        (self.mapped + self.committed) as i64 - (self.unmapped + self.uncommitted) as i64
    }

    pub fn add(&mut self, other: &ClassFlow) {
        self.mapped += other.mapped;
        self.unmapped += other.unmapped;
        self.committed += other.committed;
        self.uncommitted += other.uncommitted;
        self.released += other.released;
        self.calls += other.calls;
    }
}

/// All flows of one process (keyed by tgid in the kernel's per-CPU hash map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessFlows {
    pub classes: [ClassFlow; CLASS_COUNT],
    /// Signed sum of (new break - old break) over brk calls, unaligned.
    pub brk_growth: i64,
}

/// The kernel's per-mm resident counters (`enum { MM_FILEPAGES, MM_ANONPAGES, MM_SWAPENTS,
/// MM_SHMEMPAGES }`); the loader maps names to indices from BTF.
pub const RSS_COUNTERS: usize = 4;

/// A process's resident counters as the kernel keeps them (`mm->rss_stat`), in pages, indexed by
/// the kernel's counter number: the last value seen and the highest.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resident {
    pub last: [u64; RSS_COUNTERS],
    pub peak: [u64; RSS_COUNTERS],
}

/// Kinds of [`LifecycleEvent`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LifecycleKind {
    Fork = 1,
    Exec = 2,
    Exit = 3,
}

/// A low-rate process event, the only thing that goes through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct LifecycleEvent {
    /// A [`LifecycleKind`] discriminant.
    pub kind: u32,
    /// The process the event is about (the child for `Fork`).
    pub tgid: u32,
    /// The forking process for `Fork`; 0 otherwise.
    pub parent_tgid: u32,
    /// The exit code (`task->exit_code`, wait(2) encoding) for `Exit`; 0 otherwise.
    pub exit_code: u32,
    /// The process's generation in the tracked set (see [`ProcessKey`]).
    pub generation: u32,
    pub _pad: u32,
    /// bpf_ktime_get_boot_ns() at the event.
    pub time_ns: u64,
    /// comm of the process after the event (the parent's for `Fork`).
    pub comm: [u8; 16],
}

/// Why an event or a figure was lost in the kernel; indexes the `LOST` per-CPU array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// The ring buffer was full: a fork/exec/exit event was dropped.
    RingBufferFull = 0,
    /// The tracked set was full: a child could not be followed.
    TrackedSetFull = 1,
    /// The per-process flow map was full: a process's flows were dropped.
    FlowMapFull = 2,
    /// The per-thread syscall stash was full: one call's flows were dropped.
    StashFull = 3,
    /// A range spanned more VMAs than one walk visits: the rest went unattributed.
    VmaWalkTruncated = 4,
    /// munmap or MAP_FIXED removed more than the walk attributed (a hole it could not step over,
    /// or another thread changing the address space at the same time).
    VmaUnattributed = 5,
    /// bpf_find_vma found the address-space lock taken and gave up on a range.
    VmaLockBusy = 6,
    /// A kernel read (bpf_probe_read_kernel) failed.
    KernelReadFailed = 7,
}

pub const LOST_REASON_COUNT: usize = 8;

impl LostReason {
    pub const ALL: [LostReason; LOST_REASON_COUNT] = [
        LostReason::RingBufferFull,
        LostReason::TrackedSetFull,
        LostReason::FlowMapFull,
        LostReason::StashFull,
        LostReason::VmaWalkTruncated,
        LostReason::VmaUnattributed,
        LostReason::VmaLockBusy,
        LostReason::KernelReadFailed,
    ];

    /// The key used in reports and JSON `events_lost`.
    pub const fn name(self) -> &'static str {
        match self {
            LostReason::RingBufferFull => "ring_buffer_full",
            LostReason::TrackedSetFull => "tracked_set_full",
            LostReason::FlowMapFull => "flow_map_full",
            LostReason::StashFull => "stash_full",
            LostReason::VmaWalkTruncated => "vma_walk_truncated",
            LostReason::VmaUnattributed => "vma_unattributed",
            LostReason::VmaLockBusy => "vma_lock_busy",
            LostReason::KernelReadFailed => "kernel_read_failed",
        }
    }
}

/// Kernel struct field offsets, read by the loader from the kernel's BTF, and the tracer's own
/// tgid. Set as the read-only global `CONFIG` before load, so the verifier sees constants.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelConfig {
    /// The loader's tgid: never tracked, never counted.
    pub own_tgid: u32,
    pub task_mm: u32,
    pub mm_start_brk: u32,
    pub mm_brk: u32,
    pub vma_start: u32,
    pub vma_end: u32,
    pub vma_flags: u32,
    pub vma_file: u32,
    pub file_inode: u32,
    pub inode_sb: u32,
    pub sb_magic: u32,
    pub mm_total_vm: u32,
    /// task_struct.exit_code, for the exit event.
    pub task_exit_code: u32,
    pub task_pid: u32,
    pub task_tgid: u32,
    /// mm_struct.owner (CONFIG_MEMCG): the task whose process an mm belongs to.
    pub mm_owner: u32,
    /// pt_regs offsets of the first four syscall arguments (di, si, dx, r10 on x86_64).
    pub regs_args: [u32; 4],
    /// Offsets of `mm->rss_stat[i].count` for each of the kernel's NR_MM_COUNTERS counters.
    pub rss_count: [u32; RSS_COUNTERS],
    /// 1 when the counters are `atomic_long_t` (before 6.2), which the verifier of those kernels
    /// cannot walk into: they are read with bpf_probe_read_kernel instead of a plain load.
    pub rss_probe_read: u32,
    /// Offset of `group_dead` in the `sched:sched_process_exit` record (from tracefs, 6.16+).
    pub exit_group_dead: u32,
    /// 1 when the record has no `group_dead`: the exit reads `task->signal->live` instead.
    pub exit_from_signal: u32,
    /// task_struct.signal and signal_struct.live, for `exit_from_signal`.
    pub task_signal: u32,
    pub signal_live: u32,
    /// For the rbtree VMA walk (kernels before 6.1): mm_struct.mm_rb, vm_area_struct.vm_rb and
    /// .vm_next, rb_node.rb_left and .rb_right.
    pub mm_rb: u32,
    pub vma_rb: u32,
    pub vma_next: u32,
    pub rb_left: u32,
    pub rb_right: u32,
    /// 1 when MAP_NORESERVE makes a VM_NORESERVE mapping (vm.overcommit_memory is not 2).
    pub noreserve_honoured: u32,
    /// The syscall stash's slot count minus one (a power of two): a thread's slot is its tid
    /// masked with this (see tracer-ebpf's `stash`).
    pub stash_slot_mask: u32,
}

/// Syscall numbers of the x86_64 ABI (the loader checks them against libc's at start).
pub mod syscall_nr {
    pub const MMAP: u64 = 9;
    pub const MPROTECT: u64 = 10;
    pub const MUNMAP: u64 = 11;
    pub const BRK: u64 = 12;
    pub const MREMAP: u64 = 25;
    pub const MADVISE: u64 = 28;
}

/// Where the memory syscalls' tracepoint records (`syscalls:sys_enter_*`, `sys_exit_*`) hold
/// the syscall number, the arguments (8 bytes each) and the return value: the kernel's
/// syscall-tracepoint layout, which the programs read at these fixed offsets and the loader
/// checks in tracefs before attaching them.
pub mod syscall_record {
    pub const NR: usize = 8;
    pub const ARGS: usize = 16;
    pub const RET: usize = 16;
}

/// Which process a `FLOWS` or `RESIDENT` entry belongs to. A pid alone is not enough: a process
/// of the tree can exit and a new one take its pid within a millisecond, before the loader has
/// collected the first one's figures; the new one must not add to them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ProcessKey {
    pub tgid: u32,
    /// The value of the process's `TRACKED` entry: [`GENERATION_OF_LOADER`] for processes the
    /// loader adds, a value the kernel picks at fork for the others.
    pub generation: u32,
}

/// A process's value in the tracked set (`TRACKED`, keyed by tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tracked {
    /// See [`ProcessKey`].
    pub generation: u32,
    pub _pad: u32,
    /// Moves on whenever the process's recorded mappings may have gone stale (tracer-ebpf's
    /// `mappings`); starts from the boot-time clock, so a later process with the same key never
    /// trusts an earlier one's records.
    pub epoch: u64,
}

/// The generation of a process the loader tracks itself (the launched command, or an attached
/// tree); the kernel never gives a forked child 0.
pub const GENERATION_OF_LOADER: u32 = 0;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: (this and each below) #[repr(C)] plain integers and arrays of them, without
    // padding, so every bit pattern is a value and none has uninitialised bytes.
    unsafe impl aya::Pod for super::ClassFlow {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessFlows {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::LifecycleEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::KernelConfig {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Resident {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ProcessKey {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Tracked {}
}
