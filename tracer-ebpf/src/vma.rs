//! Which region class memory belongs to, read from the VMA that holds it.
//!
//! munmap, mprotect and madvise are attributed to the memory they touch, so a range is walked
//! VMA by VMA with `bpf_find_vma` before the call changes it. Each VMA gets one class:
//!
//! 1. no access at all -> `reserved`      2. executable -> `exec`
//! 3. backed by tmpfs/shmem or hugetlbfs (shared anonymous, shm, memfd) -> `shared`; other file -> `file`
//! 4. private anonymous MAP_NORESERVE -> `reserved`
//! 5. overlapping the brk heap -> `heap`  6. grows down -> `stack`   7. otherwise -> `anon`

use core::ffi::c_void;

use aya_ebpf::helpers::generated::{
    bpf_find_vma, bpf_get_current_task, bpf_get_current_task_btf, bpf_loop,
};
use tracer_common::{CLASS_COUNT, LostReason, RegionClass};

use crate::maps::{btf_field, config, count_lost, read_kernel};
use crate::syscalls::Pending;

pub const PAGE_SIZE: u64 = 4096;
/// VMAs one walk visits; a longer range is counted in `vma_walk_truncated`.
const MAX_VMAS: u32 = 1024;

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

/// What the `bpf_find_vma` callback saw of one VMA.
#[repr(C)]
#[derive(Default)]
struct Vma {
    start: u64,
    end: u64,
    flags: u64,
    file_kind: u64,
    found: u64,
}

/// The current process's brk heap, `[start_brk, PAGE_ALIGN(brk))`.
#[repr(C)]
pub struct Heap {
    start: u64,
    end: u64,
}

pub fn current_mm() -> Option<u64> {
    let task = unsafe { bpf_get_current_task() };
    read_kernel::<u64>(task, config!(task_mm)).filter(|mm| *mm != 0)
}

pub fn current_heap() -> Heap {
    let Some(mm) = current_mm() else {
        return Heap { start: 0, end: 0 };
    };
    let start = read_kernel::<u64>(mm, config!(mm_start_brk)).unwrap_or(0);
    let brk = read_kernel::<u64>(mm, config!(mm_brk)).unwrap_or(0);
    Heap {
        start,
        end: page_align(brk),
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
        let magic: u64 = btf_field(sb, config!(sb_magic));
        if magic == TMPFS_MAGIC || magic == HUGETLBFS_MAGIC {
            SHMEM_FILE
        } else {
            OTHER_FILE
        }
    };
    out.found = 1;
    0
}

/// The VMA containing `addr`, or None in a hole (or, counted, when the mm lock was busy).
fn find(addr: u64) -> Option<Vma> {
    let mut vma = Vma::default();
    let task = unsafe { bpf_get_current_task_btf() };
    let ret = unsafe {
        bpf_find_vma(
            task,
            addr,
            on_vma as *mut c_void,
            &mut vma as *mut Vma as *mut c_void,
            0,
        )
    };
    if ret == 0 && vma.found != 0 {
        return Some(vma);
    }
    if ret != -ENOENT {
        count_lost(LostReason::VmaLockBusy);
    }
    None
}

/// The class of the memory at `addr`, if any is mapped there.
pub fn class_at(addr: u64) -> Option<usize> {
    let heap = current_heap();
    find(addr).map(|vma| classify(vma.flags, vma.file_kind, vma.start, vma.end, &heap))
}

/// A walk over `[cur, end)`, one VMA per `bpf_loop` step, adding into `pending`.
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
}

impl Walk {
    /// Zeroes a scratch walk in place. Volatile stores: a plain zero-initialiser becomes a
    /// byte-by-byte memset that the verifier has to step through.
    pub fn reset(&mut self) {
        let words = size_of::<Walk>() / 8;
        let base = self as *mut Walk as *mut u64;
        for i in 0..words {
            unsafe { core::ptr::write_volatile(base.add(i), 0) };
        }
    }

    /// Walks `[start, end)` and adds the bytes of each class to `pending.out`. With `new_prot`
    /// (mprotect), only bytes whose class the new protection changes are counted: out of the
    /// old class in `pending.out`, into the new one in `pending.into`.
    pub fn run(&mut self, start: u64, end: u64, new_prot: Option<u64>) {
        self.cur = start;
        self.end = end;
        self.new_prot = new_prot.unwrap_or(0);
        self.has_new_prot = new_prot.is_some() as u64;
        self.heap = current_heap();
        // bpf_loop: the verifier checks the step once, whatever the number of VMAs. Its context
        // must live on the stack, so it carries a pointer to this (map-held) walk.
        let mut step = Step {
            walk: self as *mut Walk,
        };
        unsafe {
            bpf_loop(
                MAX_VMAS,
                walk_step as *mut c_void,
                &mut step as *mut Step as *mut c_void,
                0,
            );
        }
        if self.stopped == 0 && self.cur < self.end {
            count_lost(LostReason::VmaWalkTruncated);
        }
    }
}

#[repr(C)]
struct Step {
    walk: *mut Walk,
}

#[inline(never)]
unsafe extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    let walk = unsafe { &mut *(*(ctx as *mut Step)).walk };
    if walk.cur >= walk.end {
        walk.stopped = 1;
        return 1;
    }
    // A hole ends the walk: munmap and MAP_FIXED check on return what was really removed.
    let Some(vma) = find(walk.cur) else {
        walk.stopped = 1;
        return 1;
    };
    let seg_end = if vma.end < walk.end {
        vma.end
    } else {
        walk.end
    };
    if seg_end <= walk.cur {
        walk.stopped = 1;
        return 1;
    }
    let bytes = seg_end - walk.cur;
    let class = classify(vma.flags, vma.file_kind, vma.start, vma.end, &walk.heap);
    if walk.has_new_prot == 0 {
        walk.pending.add_out(class, bytes);
    } else {
        let flags = (vma.flags & !VM_ACCESS) | (walk.new_prot & VM_ACCESS);
        let new_class = classify(flags, vma.file_kind, vma.start, vma.end, &walk.heap);
        if new_class != class {
            walk.pending.add_out(class, bytes);
            walk.pending.add_into(new_class, bytes);
        }
    }
    walk.cur = seg_end;
    0
}

/// Keeps a class index provably inside the per-class arrays for the verifier.
pub fn bounded(class: usize) -> usize {
    if class < CLASS_COUNT {
        class
    } else {
        CLASS_COUNT - 1
    }
}
