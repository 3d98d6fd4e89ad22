//! mmap, munmap, brk, mremap, mprotect and madvise of tracked processes, entry paired with return.
//!
//! Why raw tracepoints on `sys_enter`/`sys_exit`: fentry/fexit are refused on this kernel, a raw
//! tracepoint costs ~8 ns per event against ~41 ns for the classic per-syscall ones, and enabling
//! any syscall tracepoint puts every syscall on the slow path anyway. Every syscall of every task
//! reaches these programs, so they test the syscall number first (a register, no helper), then
//! the tracked set, and only then read arguments. Argument registers are found in `pt_regs` at
//! offsets the loader read from the kernel's BTF.
//!
//! Calls that change existing memory (munmap, mprotect, madvise, brk, MAP_FIXED mmap) have the
//! range they touch classified at entry (`vma::walk`) and stashed per thread; at return, only a
//! successful call's flows are added, using the real return value (the address mmap chose, the
//! break brk set). mmap and mremap need nothing from entry: their arguments are still in
//! `pt_regs` at return, and the new mapping is classified from them (private anonymous) or from
//! its VMA, so the most frequent calls skip the stash.

use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use tracer_common::{CLASS_COUNT, LostReason, ProcessFlows, RegionClass, syscall_nr};

use crate::maps::{
    STASH, btf_field, config, count_lost, flows_of, is_tracked, read_kernel, scratch_walk,
};
use crate::vma::{self, FindVma, Lookup, NO_PROT, PAGE_SIZE, RbTree, Walk, bounded, page_align};

const MAP_TYPE: u64 = 0x03;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x0100;
const MAP_NORESERVE: u64 = 0x4000;
const PROT_EXEC: u64 = 0x4;
const PROT_ACCESS: u64 = 0x7;
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;

/// One thread's memory syscall between entry and return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    addr: u64,
    /// Page-aligned length (the old length for mremap).
    len: u64,
    /// The break before brk; total_vm (pages) before munmap and MAP_FIXED mmap.
    before: u64,
    out_mask: u64,
    into_mask: u64,
    /// Bytes per class the call removes (munmap, MAP_FIXED), releases (madvise), or moves out (mprotect).
    out: [u64; CLASS_COUNT],
    /// Bytes per class mprotect moves in.
    into: [u64; CLASS_COUNT],
}

impl Pending {
    pub fn add_out(&mut self, class: usize, bytes: u64) {
        let class = bounded(class);
        self.out[class] += bytes;
        self.out_mask |= 1 << class;
    }

    pub fn add_into(&mut self, class: usize, bytes: u64) {
        let class = bounded(class);
        self.into[class] += bytes;
        self.into_mask |= 1 << class;
    }

    fn out_total(&self) -> u64 {
        let mut total = 0;
        for bytes in self.out {
            total += bytes;
        }
        total
    }
}

fn is_memory_syscall(nr: u64) -> bool {
    matches!(
        nr,
        syscall_nr::MMAP
            | syscall_nr::MUNMAP
            | syscall_nr::BRK
            | syscall_nr::MREMAP
            | syscall_nr::MPROTECT
            | syscall_nr::MADVISE
    )
}

/// The calls that must be seen at entry, before they change the memory they touch.
fn needs_entry(nr: u64) -> bool {
    matches!(
        nr,
        syscall_nr::MMAP
            | syscall_nr::MUNMAP
            | syscall_nr::BRK
            | syscall_nr::MPROTECT
            | syscall_nr::MADVISE
    )
}

#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter(ctx: BtfTracePointContext) -> i32 {
    enter::<FindVma>(ctx)
}

/// `sys_enter` for kernels without `bpf_find_vma` (see `vma::RbTree`).
#[btf_tracepoint(function = "sys_enter")]
pub fn sys_enter_rbtree(ctx: BtfTracePointContext) -> i32 {
    enter::<RbTree>(ctx)
}

#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit(ctx: BtfTracePointContext) -> i32 {
    exit::<FindVma>(ctx)
}

/// `sys_exit` for kernels without `bpf_find_vma`.
#[btf_tracepoint(function = "sys_exit")]
pub fn sys_exit_rbtree(ctx: BtfTracePointContext) -> i32 {
    exit::<RbTree>(ctx)
}

#[inline(always)]
fn enter<L: Lookup>(ctx: BtfTracePointContext) -> i32 {
    let nr: u64 = ctx.arg(1);
    if !needs_entry(nr) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    if !is_tracked((pid_tgid >> 32) as u32) {
        return 0;
    }
    let regs: u64 = ctx.arg(0);
    let Some(walk) = scratch_walk() else {
        return 0;
    };
    walk.reset();
    if on_enter::<L>(nr, regs, walk).is_some() && STASH.insert(&pid_tgid, &walk.pending, 0).is_err()
    {
        count_lost(LostReason::StashFull);
    }
    0
}

fn syscall_arg(regs: u64, index: usize) -> Option<u64> {
    let offset = match index {
        0 => config!(regs_args[0]),
        1 => config!(regs_args[1]),
        2 => config!(regs_args[2]),
        3 => config!(regs_args[3]),
        _ => config!(regs_args[4]),
    };
    Some(btf_field(regs, offset))
}

fn total_vm() -> Option<u64> {
    read_kernel::<u64>(vma::current_mm()?, config!(mm_total_vm))
}

/// Fills `walk.pending` for a call about to run; None when the call is of no interest.
fn on_enter<L: Lookup>(nr: u64, regs: u64, walk: &mut Walk) -> Option<()> {
    let addr = syscall_arg(regs, 0)?;
    walk.pending.addr = addr;
    match nr {
        syscall_nr::MMAP => {
            if syscall_arg(regs, 3)? & MAP_FIXED == 0 {
                // Nothing to see before the call: sys_exit handles it alone.
                return None;
            }
            // MAP_FIXED unmaps whatever it lands on.
            let len = page_align(syscall_arg(regs, 1)?);
            walk.pending.len = len;
            walk.pending.before = total_vm()?;
            walk.run::<L>(addr, addr + len, NO_PROT);
        }
        syscall_nr::MUNMAP => {
            let len = page_align(syscall_arg(regs, 1)?);
            walk.pending.len = len;
            walk.pending.before = total_vm()?;
            walk.run::<L>(addr, addr + len, NO_PROT);
        }
        syscall_nr::MPROTECT => {
            let len = page_align(syscall_arg(regs, 1)?);
            let prot = syscall_arg(regs, 2)?;
            walk.run::<L>(addr, addr + len, prot & PROT_ACCESS);
        }
        syscall_nr::MADVISE => {
            let advice = syscall_arg(regs, 2)?;
            if !matches!(advice, MADV_DONTNEED | MADV_FREE | MADV_REMOVE) {
                return None;
            }
            let len = page_align(syscall_arg(regs, 1)?);
            walk.run::<L>(addr, addr + len, NO_PROT);
        }
        _ => {
            // brk: the break before the call, from the mm itself (the process may predate us).
            walk.pending.before = read_kernel::<u64>(vma::current_mm()?, config!(mm_brk))?;
        }
    }
    Some(())
}

#[inline(always)]
fn exit<L: Lookup>(ctx: BtfTracePointContext) -> i32 {
    let regs: u64 = ctx.arg(0);
    let nr = btf_field(regs, config!(regs_syscall_nr));
    if !is_memory_syscall(nr) {
        return 0;
    }
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let ret: i64 = ctx.arg(1);
    // -4095..-1 are errors; brk reports failure by returning the old break, which counts nothing.
    let succeeded = !(-4095..0).contains(&ret);
    match STASH.get_ptr(&pid_tgid) {
        Some(pending) => {
            if succeeded && let Some(flows) = flows_of(tgid) {
                on_return::<L>(nr, ret as u64, regs, unsafe { &*pending }, flows);
            }
            let _ = STASH.remove(&pid_tgid);
        }
        None => {
            // mmap without MAP_FIXED and mremap are not stashed at entry.
            let stashless = nr == syscall_nr::MMAP || nr == syscall_nr::MREMAP;
            if succeeded
                && stashless
                && is_tracked(tgid)
                && let Some(flows) = flows_of(tgid)
            {
                on_new_mapping::<L>(nr, ret as u64, regs, flows);
            }
        }
    }
    0
}

/// mmap (the mapping part) and mremap, from their arguments, still in `pt_regs`.
fn on_new_mapping<L: Lookup>(nr: u64, addr: u64, regs: u64, flows: &mut ProcessFlows) {
    if nr == syscall_nr::MREMAP {
        let (Some(old), Some(new)) = (syscall_arg(regs, 1), syscall_arg(regs, 2)) else {
            return;
        };
        let (old, new) = (page_align(old), page_align(new));
        let Some(class) = vma::class_at::<L>(addr) else {
            return;
        };
        let flow = &mut flows.classes[bounded(class)];
        if old == 0 {
            // old_size 0 duplicates a shared mapping.
            flow.mapped += new;
        } else if new > old {
            flow.mapped += new - old;
        } else if new < old {
            flow.unmapped += old - new;
        }
        if old != new || old == 0 {
            flow.calls += 1;
        }
        return;
    }
    let (Some(len), Some(prot), Some(map_flags)) = (
        syscall_arg(regs, 1),
        syscall_arg(regs, 2),
        syscall_arg(regs, 3),
    ) else {
        return;
    };
    let class = if map_flags & MAP_ANONYMOUS != 0 && map_flags & MAP_TYPE == MAP_PRIVATE {
        anonymous_class(prot, map_flags)
    } else {
        // File-backed or shared: the VMA says whether it lives on shmem.
        match vma::class_at::<L>(addr) {
            Some(class) => class,
            None => return,
        }
    };
    let flow = &mut flows.classes[bounded(class)];
    flow.mapped += page_align(len);
    flow.calls += 1;
}

/// The class a new private anonymous mapping gets: `vma::classify` for the VMA mmap makes from
/// these protection bits and flags (it cannot land in the brk heap).
fn anonymous_class(prot: u64, map_flags: u64) -> usize {
    let class = if prot & PROT_ACCESS == 0 {
        RegionClass::Reserved
    } else if prot & PROT_EXEC != 0 {
        RegionClass::Exec
    } else if map_flags & MAP_NORESERVE != 0 && config!(noreserve_honoured) != 0 {
        RegionClass::Reserved
    } else if map_flags & MAP_GROWSDOWN != 0 {
        RegionClass::Stack
    } else {
        RegionClass::Anon
    };
    class as usize
}

fn on_return<L: Lookup>(nr: u64, ret: u64, regs: u64, pending: &Pending, flows: &mut ProcessFlows) {
    match nr {
        syscall_nr::MMAP => {
            apply_out(pending, flows, Flow::Unmapped);
            check_attributed(pending, pending.len);
            on_new_mapping::<L>(nr, ret, regs, flows);
        }
        syscall_nr::MUNMAP => {
            apply_out(pending, flows, Flow::Unmapped);
            check_attributed(pending, 0);
        }
        syscall_nr::MPROTECT => {
            apply_out(pending, flows, Flow::Uncommitted);
            for class in 0..CLASS_COUNT {
                let flow = &mut flows.classes[class];
                flow.committed += pending.into[class];
                if pending.into_mask & (1 << class) != 0 && pending.out_mask & (1 << class) == 0 {
                    flow.calls += 1;
                }
            }
        }
        syscall_nr::MADVISE => apply_out(pending, flows, Flow::Released),
        _ => {
            let (old, new) = (pending.before, ret);
            if new == old {
                return;
            }
            flows.brk_growth += new as i64 - old as i64;
            let flow = &mut flows.classes[RegionClass::Heap as usize];
            let (old, new) = (page_align(old), page_align(new));
            if new > old {
                flow.mapped += new - old;
            } else {
                flow.unmapped += old - new;
            }
            flow.calls += 1;
        }
    }
}

enum Flow {
    Unmapped,
    Uncommitted,
    Released,
}

/// Adds `pending.out` to one flow of each class, and a call to each class touched.
fn apply_out(pending: &Pending, flows: &mut ProcessFlows, kind: Flow) {
    for class in 0..CLASS_COUNT {
        let flow = &mut flows.classes[class];
        let bytes = pending.out[class];
        match kind {
            Flow::Unmapped => flow.unmapped += bytes,
            Flow::Uncommitted => flow.uncommitted += bytes,
            Flow::Released => flow.released += bytes,
        }
        if pending.out_mask & (1 << class) != 0 {
            flow.calls += 1;
        }
    }
}

/// munmap and MAP_FIXED: compare what the walk attributed with what total_vm says left.
/// `added` is what the call mapped at the same time (the new MAP_FIXED mapping).
fn check_attributed(pending: &Pending, added: u64) {
    let Some(after) = total_vm() else { return };
    let removed = (pending.before * PAGE_SIZE + added).saturating_sub(after * PAGE_SIZE);
    if pending.out_total() < removed {
        count_lost(LostReason::VmaUnattributed);
    }
}
