//! Which region class memory belongs to, read from the VMA that holds it.
//!
//! munmap, mprotect and madvise are attributed to the memory they touch, so a range is walked
//! VMA by VMA before the call changes it, in one of two ways ([`Lookup`]):
//!
//! - [`FindVma`] (Linux 5.17+): `bpf_find_vma` under the mm's lock (tried, never waited for),
//!   one VMA per `bpf_loop` step, so any number of VMAs is verified once.
//! - [`RbTree`] (before 6.1, whose mm still keeps VMAs in `mm_rb` and a `vm_next` list): the
//!   lookup `find_vma()` does, over `mm->mm_rb`, then `vm_next`, with probe reads in bounded
//!   loops. No lock is taken: a range another thread changes at the same moment may be
//!   misattributed, which the munmap check counts in `vma_unattributed`.
//!
//! Each VMA gets one class:
//!
//! 1. no access at all -> `reserved`      2. executable -> `exec`
//! 3. backed by tmpfs/shmem or hugetlbfs (shared anonymous, shm, memfd) -> `shared`; other file -> `file`
//! 4. private anonymous MAP_NORESERVE -> `reserved`
//! 5. overlapping the brk heap -> `heap`  6. grows down -> `stack`   7. otherwise -> `anon`

use core::{ffi::c_void, mem::MaybeUninit};

use aya_ebpf::{
    helpers::generated::{bpf_find_vma, bpf_get_current_task_btf, bpf_loop},
    macros::map,
    maps::PerCpuArray,
};
use tracer_common::{LostReason, RegionClass};

use crate::{
    maps::{btf_field, config, count_lost, current_task, read_kernel},
    pending::Pending,
};

pub const PAGE_SIZE: u64 = 4096;
/// `Walk::run`'s `new_prot` for calls other than mprotect.
pub const NO_PROT: u64 = u64::MAX;
/// VMAs one walk visits; a longer range is counted in `vma_walk_truncated`.
const MAX_VMAS: u32 = 1024;
/// The same for the rbtree walk, whose bounded loop the verifier steps through VMA by VMA.
const MAX_RBTREE_VMAS: u32 = 32;
/// Levels of `mm_rb` descended: a red-black tree of n nodes is at most 2 log2(n + 1) deep, so 32
/// covers 65,535 VMAs, the default vm.max_map_count.
const MAX_RB_DEPTH: u32 = 32;

// vm_flags bits (include/linux/mm.h); the access bits equal PROT_READ/WRITE/EXEC.
const VM_ACCESS: u64 = 0x7;
const VM_EXEC: u64 = 0x4;
const VM_GROWSDOWN: u64 = 0x100;
const VM_NORESERVE: u64 = 0x0020_0000;
// include/uapi/linux/magic.h
const TMPFS_MAGIC: u64 = 0x0102_1994;
const HUGETLBFS_MAGIC: u64 = 0x9584_58f6;

const NO_FILE: u64 = 0;
const SHMEM_FILE: u64 = 1;
const OTHER_FILE: u64 = 2;
const ENOENT: i64 = 2;

pub const fn page_align(len: u64) -> u64 {
    (len + PAGE_SIZE - 1) & !(PAGE_SIZE - 1)
}

/// What classification needs of one VMA.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Vma {
    start: u64,
    end: u64,
    flags: u64,
    file_kind: u64,
    /// Set by the `bpf_find_vma` callback once it ran.
    found: u64,
}

impl Vma {
    /// Nothing found yet, zeroed in place word by word: `Vma::default()` compiles to a call of
    /// a byte-by-byte memset (40 bytes, 40 steps), and one is made at every walk step.
    #[inline(always)]
    fn zeroed_in(slot: &mut MaybeUninit<Vma>) -> &mut Vma {
        let words = slot.as_mut_ptr() as *mut u64;
        for i in 0..size_of::<Vma>() / 8 {
            // SAFETY: `i` < size_of::<Vma>() / 8: every write stays inside `slot`.
            unsafe { core::ptr::write_volatile(words.add(i), 0) };
        }
        // SAFETY: every field is a u64 and every word was written.
        unsafe { slot.assume_init_mut() }
    }
}

/// The current process's brk heap, `[start_brk, PAGE_ALIGN(brk))`.
#[repr(C)]
pub struct Heap {
    start: u64,
    end: u64,
}

/// The current process's `mm_struct`; None for a task without one.
///
/// Where the lookup's kernels lend the running task BTF-typed ([`Lookup::BTF_TASK`]), the mm
/// and then its fields ([`mm_field`]) are plain loads the verifier checks against the kernel's
/// types; before that they are probe reads, each a helper call.
#[inline(always)]
pub fn current_mm<L: Lookup>() -> Option<u64> {
    let mm = if L::BTF_TASK {
        // SAFETY: the helper takes no arguments and returns the running task, BTF-typed.
        let task = unsafe { bpf_get_current_task_btf() } as u64;
        btf_field(task, config!(task_mm))
    } else {
        read_kernel::<u64>(current_task(), config!(task_mm))?
    };
    (mm != 0).then_some(mm)
}

/// A field of the mm [`current_mm`] returned, read the same way.
#[inline(always)]
pub fn mm_field<L: Lookup>(mm: u64, offset: u32) -> Option<u64> {
    if L::BTF_TASK {
        Some(btf_field(mm, offset))
    } else {
        read_kernel(mm, offset)
    }
}

pub fn current_heap<L: Lookup>() -> Heap {
    let Some(mm) = current_mm::<L>() else {
        return Heap { start: 0, end: 0 };
    };
    let start = mm_field::<L>(mm, config!(mm_start_brk)).unwrap_or(0);
    let brk = mm_field::<L>(mm, config!(mm_brk)).unwrap_or(0);
    Heap {
        start,
        end: page_align(brk),
    }
}

/// A file mapping's kind from its filesystem's magic.
fn file_kind_of(magic: u64) -> u64 {
    if magic == TMPFS_MAGIC || magic == HUGETLBFS_MAGIC {
        SHMEM_FILE
    } else {
        OTHER_FILE
    }
}

/// The class of a VMA with these flags, file kind and bounds.
fn classify(flags: u64, file_kind: u64, start: u64, end: u64, heap: &Heap) -> usize {
    let class = if flags & VM_ACCESS == 0 {
        RegionClass::Reserved
    } else if flags & VM_EXEC != 0 {
        RegionClass::Exec
    } else if file_kind == SHMEM_FILE {
        RegionClass::Shared
    } else if file_kind == OTHER_FILE {
        RegionClass::File
    } else if flags & VM_NORESERVE != 0 {
        RegionClass::Reserved
    } else if heap.start < heap.end && start < heap.end && end > heap.start {
        RegionClass::Heap
    } else if flags & VM_GROWSDOWN != 0 {
        RegionClass::Stack
    } else {
        RegionClass::Anon
    };
    class as usize
}

/// `bpf_find_vma` callback: copies out what classification needs. Kept small: it is verified
/// once per call site.
#[inline(never)]
unsafe extern "C" fn on_vma(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Vma` that `find_into` passed to bpf_find_vma, live on its stack
    // for the callback's whole run.
    let out = unsafe { &mut *(ctx as *mut Vma) };
    // `vma` is BTF-typed: direct loads.
    let vma = vma as u64;
    out.start = btf_field(vma, config!(vma_start));
    out.end = btf_field(vma, config!(vma_end));
    out.flags = btf_field(vma, config!(vma_flags));
    let file: u64 = btf_field(vma, config!(vma_file));
    out.file_kind = if file == 0 {
        NO_FILE
    } else {
        let inode: u64 = btf_field(file, config!(file_inode));
        let sb: u64 = btf_field(inode, config!(inode_sb));
        file_kind_of(btf_field(sb, config!(sb_magic)))
    };
    out.found = 1;
    0
}

/// How the VMAs of the current process are found.
pub trait Lookup {
    /// Whether kernels of this lookup's era also have `bpf_task_pt_regs` (5.15; `bpf_find_vma`
    /// came in 5.17), so syscall arguments can be read at return (see `syscalls`).
    const TASK_PT_REGS: bool;
    /// Whether kernels of this lookup's era have `bpf_get_current_task_btf` (5.11), so the
    /// task's mm is read by plain loads (see [`current_mm`]).
    const BTF_TASK: bool;
    /// The VMA containing `addr`, or None in a hole (or, counted, when it cannot be read).
    fn find(addr: u64) -> Option<Vma>;
    /// Steps `walk` over its range, VMA by VMA, until it ends, meets a hole or gives up.
    fn walk(walk: &mut Walk);
}

/// `bpf_find_vma` and `bpf_loop` (Linux 5.17+).
pub struct FindVma;

impl FindVma {
    /// `bpf_find_vma`'s result for `addr`: 0 with `vma` filled, -ENOENT in a hole, or another
    /// error (the mm's lock was busy), which is counted.
    fn find_into(addr: u64, vma: &mut Vma) -> i64 {
        // SAFETY: the running task, BTF-typed, as bpf_find_vma requires.
        let task = unsafe { bpf_get_current_task_btf() };
        // SAFETY: `on_vma` matches the callback's signature and `vma` outlives the call, which
        // does not keep the pointer.
        let ret = unsafe {
            bpf_find_vma(
                task,
                addr,
                on_vma as *mut c_void,
                vma as *mut Vma as *mut c_void,
                0,
            )
        };
        if ret != 0 && ret != -ENOENT {
            count_lost(LostReason::VmaLockBusy);
        }
        ret
    }
}

impl Lookup for FindVma {
    const TASK_PT_REGS: bool = true;
    const BTF_TASK: bool = true;

    fn find(addr: u64) -> Option<Vma> {
        let mut slot = MaybeUninit::uninit();
        let vma = Vma::zeroed_in(&mut slot);
        (Self::find_into(addr, vma) == 0 && vma.found != 0).then_some(*vma)
    }

    fn walk(walk: &mut Walk) {
        // bpf_loop: the verifier checks the step once, whatever the number of VMAs. Its context
        // must live on the stack, so it carries a pointer to this (map-held) walk.
        let mut step = Step {
            walk: walk as *mut Walk,
        };
        // SAFETY: `walk_step` matches bpf_loop's callback signature, and `step` outlives the call,
        // which does not keep the pointer.
        unsafe {
            bpf_loop(
                MAX_VMAS,
                walk_step as *mut c_void,
                &mut step as *mut Step as *mut c_void,
                0,
            );
        }
    }
}

#[repr(C)]
struct Step {
    walk: *mut Walk,
}

#[inline(never)]
unsafe extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: `ctx` is the `Step` that `run` passed to bpf_loop, pointing at this CPU's walk;
    // programs do not nest on one CPU.
    let walk = unsafe { &mut *(*(ctx as *mut Step)).walk };
    if walk.cur >= walk.end {
        walk.stopped = 1;
        return 1;
    }
    let mut slot = MaybeUninit::uninit();
    let vma = Vma::zeroed_in(&mut slot);
    let ret = FindVma::find_into(walk.cur, vma);
    if ret == 0 && vma.found != 0 && walk.step(vma) {
        return 0;
    }
    if ret != 0 && ret != -ENOENT {
        walk.failed = 1;
    }
    walk.stopped = 1;
    1
}

/// `mm->mm_rb` and `vm_next`, read with bpf_probe_read_kernel (kernels before 6.1).
///
/// Written for the verifier of those kernels, which steps through bounded loops iteration by
/// iteration: few branches per step (a failed read gives 0, which ends the walk like a hole).
pub struct RbTree;

impl RbTree {
    /// The VMA containing `addr`, as a kernel pointer; 0 in a hole. `find_vma()`'s descent.
    fn containing(addr: u64) -> u64 {
        let Some(mm) = current_mm::<Self>() else {
            return 0;
        };
        let mut node: u64 = read_kernel(mm, config!(mm_rb)).unwrap_or(0);
        for _ in 0..MAX_RB_DEPTH {
            if node == 0 {
                return 0;
            }
            let vma = node - config!(vma_rb) as u64;
            if read_kernel::<u64>(vma, config!(vma_end)).unwrap_or(0) <= addr {
                node = read_kernel(node, config!(rb_right)).unwrap_or(0);
            } else if read_kernel::<u64>(vma, config!(vma_start)).unwrap_or(u64::MAX) <= addr {
                return vma;
            } else {
                node = read_kernel(node, config!(rb_left)).unwrap_or(0);
            }
        }
        0
    }

    /// What classification needs of the VMA at kernel address `vma`.
    fn read(vma: u64) -> Vma {
        let file: u64 = read_kernel(vma, config!(vma_file)).unwrap_or(0);
        let file_kind = if file == 0 {
            NO_FILE
        } else {
            let inode: u64 = read_kernel(file, config!(file_inode)).unwrap_or(0);
            let sb: u64 = read_kernel(inode, config!(inode_sb)).unwrap_or(0);
            file_kind_of(read_kernel(sb, config!(sb_magic)).unwrap_or(0))
        };
        Vma {
            start: read_kernel(vma, config!(vma_start)).unwrap_or(0),
            end: read_kernel(vma, config!(vma_end)).unwrap_or(0),
            flags: read_kernel(vma, config!(vma_flags)).unwrap_or(0),
            file_kind,
            found: 1,
        }
    }
}

impl Lookup for RbTree {
    const TASK_PT_REGS: bool = false;
    const BTF_TASK: bool = false;

    fn find(addr: u64) -> Option<Vma> {
        match Self::containing(addr) {
            0 => None,
            vma => Some(Self::read(vma)),
        }
    }

    fn walk(walk: &mut Walk) {
        let mut at = Self::containing(walk.cur);
        for _ in 0..MAX_RBTREE_VMAS {
            if at == 0 || walk.cur >= walk.end {
                walk.stopped = 1;
                return;
            }
            let vma = Self::read(at);
            // The next VMA starts past the range walked so far: a hole.
            if vma.start > walk.cur || !walk.step(&vma) {
                walk.stopped = 1;
                return;
            }
            at = read_kernel(at, config!(vma_next)).unwrap_or(0);
        }
    }
}

/// The class of the memory at `addr`, if any is mapped there.
pub fn class_at<L: Lookup>(addr: u64) -> Option<usize> {
    let heap = current_heap::<L>();
    L::find(addr).map(|vma| classify(vma.flags, vma.file_kind, vma.start, vma.end, &heap))
}

/// Scratch space for one VMA walk per CPU: a walk is too large for the 512-byte stack.
#[map]
static WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

pub fn scratch_walk() -> Option<&'static mut Walk> {
    // SAFETY: the pointer is this CPU's slot of a map this program owns, valid for its run, and
    // programs do not nest on one CPU.
    WALK.get_ptr_mut(0).map(|walk| unsafe { &mut *walk })
}

/// A walk over `[cur, end)`, one VMA per step, adding into `pending`.
#[repr(C)]
pub struct Walk {
    pub pending: Pending,
    cur: u64,
    end: u64,
    /// mprotect's new protection; only bytes whose class it changes are counted.
    new_prot: u64,
    has_new_prot: u64,
    heap: Heap,
    stopped: u64,
    /// A lookup failed or the walk was cut short: the rest of the range is not classified.
    failed: u64,
}

impl Walk {
    /// Zeroes a scratch walk in place. Volatile stores: a plain zero-initialiser becomes a
    /// byte-by-byte memset that the verifier has to step through.
    pub fn reset(&mut self) {
        let words = size_of::<Walk>() / 8;
        let base = self as *mut Walk as *mut u64;
        for i in 0..words {
            // SAFETY: `i` < size_of::<Walk>() / 8, so every write stays inside `self`.
            unsafe { core::ptr::write_volatile(base.add(i), 0) };
        }
    }

    /// Walks `[start, end)` and adds the bytes of each class to `pending.out`. With a
    /// `new_prot` other than [`NO_PROT`] (mprotect), only bytes whose class the new protection
    /// changes are counted: out of the old class in `pending.out`, into the new one in
    /// `pending.into`. (Not an Option: when this is a BPF function of its own, a `None` leaves
    /// the payload register unset, and the verifier refuses the read before 5.13.)
    pub fn run<L: Lookup>(&mut self, start: u64, end: u64, new_prot: u64) {
        self.cur = start;
        self.end = end;
        self.has_new_prot = (new_prot != NO_PROT) as u64;
        self.new_prot = new_prot & VM_ACCESS;
        self.heap = current_heap::<L>();
        L::walk(self);
        if self.stopped == 0 && self.cur < self.end {
            count_lost(LostReason::VmaWalkTruncated);
            self.failed = 1;
        }
        // What could not be classified still counts, so that the process's total stays
        // exact (an mprotect moves bytes between classes: its total does not change).
        if self.failed != 0 && self.has_new_prot == 0 && self.cur < self.end {
            self.pending
                .add_out(RegionClass::Unattributed as usize, self.end - self.cur);
        }
    }

    /// Adds the part of `vma` (the one at `cur`) inside the range; false when the walk is over.
    /// A hole ends a walk: munmap and MAP_FIXED check on return what was really removed.
    #[inline(always)]
    fn step(&mut self, vma: &Vma) -> bool {
        let seg_end = if vma.end < self.end {
            vma.end
        } else {
            self.end
        };
        if seg_end <= self.cur {
            return false;
        }
        let bytes = seg_end - self.cur;
        let class = classify(vma.flags, vma.file_kind, vma.start, vma.end, &self.heap);
        if self.has_new_prot == 0 {
            self.pending.add_out(class, bytes);
        } else {
            let flags = (vma.flags & !VM_ACCESS) | (self.new_prot & VM_ACCESS);
            let new_class = classify(flags, vma.file_kind, vma.start, vma.end, &self.heap);
            if new_class != class {
                self.pending.add_out(class, bytes);
                self.pending.add_into(new_class, bytes);
            }
        }
        self.cur = seg_end;
        true
    }
}
