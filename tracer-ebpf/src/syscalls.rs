//! mmap, munmap, brk, mremap, mprotect and madvise of tracked processes, entry paired with return.
//!
//! Why the per-syscall tracepoints (`syscalls:sys_enter_mmap`, `syscalls:sys_exit_mmap`, ...):
//! the kernel tests each syscall against a bitmap of enabled ones before any program runs, so the
//! other syscalls of every process on the host, and a bystander's memory syscalls up to one
//! tracked-set lookup, pay next to nothing. Raw `sys_enter`/`sys_exit` would run these programs
//! for every syscall of every task (measured: +42 ns on a bystander's `getppid`); fentry is not
//! available on every kernel leaktrace supports. The record's layout (`__syscall_nr` at 8, the
//! arguments from 16, `ret` at 16) is the kernel's syscall-tracepoint ABI; the loader checks it
//! in tracefs before attaching (`kernel::features`).
//!
//! At entry, calls that change existing memory (munmap, mprotect, madvise, brk, MAP_FIXED mmap)
//! have the range they touch classified (`vma::walk`) before it changes, and are stashed per
//! thread with their arguments. At return, only a successful call's flows are added, using the
//! real return value (the address mmap chose, the break brk set). mmap and mremap need nothing
//! from entry where the kernel lends the task's saved registers (`bpf_task_pt_regs`, 5.15): the
//! return reads their arguments there, so the most frequent calls skip the stash. Before that
//! (5.10) they are stashed too.

use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_pid_tgid,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    CLASS_COUNT, LostReason, ProcessFlows, ProcessKey, RegionClass, syscall_nr,
    syscall_record::{ARGS as RECORD_ARGS, NR as RECORD_NR, RET as RECORD_RET},
};

use crate::{
    mappings,
    maps::{TrackedProcess, btf_field, config, count_lost, flows_of, flows_stopped, tracked},
    pending::{Pending, bounded},
    stash,
    vma::{self, FindVma, Lookup, NO_PROT, PAGE_SIZE, RbTree, Walk, page_align, scratch_walk},
};

const MAP_TYPE: u64 = 0x03;
const MAP_PRIVATE: u64 = 0x02;
const MAP_FIXED: u64 = 0x10;
const MAP_ANONYMOUS: u64 = 0x20;
const MAP_GROWSDOWN: u64 = 0x0100;
const MAP_NORESERVE: u64 = 0x4000;
const PROT_EXEC: u64 = 0x4;
const PROT_ACCESS: u64 = 0x7;
/// PROT_GROWSDOWN | PROT_GROWSUP: mprotect extends the range to the VMA's end.
const PROT_GROWS: u64 = 0x0300_0000;
const MAP_HUGETLB: u64 = 0x0004_0000;
const MADV_DONTNEED: u64 = 4;
const MADV_FREE: u64 = 8;
const MADV_REMOVE: u64 = 9;

/// A field of the tracepoint's record, at a constant offset: a plain load from the context.
#[inline(always)]
fn record<T: Copy>(ctx: &TracePointContext, offset: usize) -> T {
    // SAFETY: `offset` is a constant inside the tracepoint's record (its layout is checked by the
    // loader in tracefs) and the verifier bounds the load to the context.
    unsafe { core::ptr::read_volatile((ctx.as_ptr() as *const u8).add(offset) as *const T) }
}

/// Attached to `syscalls:sys_enter_{mmap,munmap,brk,mprotect,madvise}` (mremap's arguments are
/// read at its return; see `kernel::hooked_syscalls` in the loader).
#[tracepoint]
pub fn syscall_enter(ctx: TracePointContext) -> u32 {
    enter::<FindVma>(&ctx);
    0
}

/// `syscall_enter` for kernels without `bpf_find_vma` (see `vma::RbTree`), on mremap's entry too.
#[tracepoint]
pub fn syscall_enter_rbtree(ctx: TracePointContext) -> u32 {
    enter::<RbTree>(&ctx);
    0
}

/// Attached to `syscalls:sys_exit_{mmap,munmap,brk,mremap,mprotect,madvise}`.
#[tracepoint]
pub fn syscall_exit(ctx: TracePointContext) -> u32 {
    exit::<FindVma>(&ctx)
}

/// `syscall_exit` for kernels without `bpf_find_vma`.
#[tracepoint]
pub fn syscall_exit_rbtree(ctx: TracePointContext) -> u32 {
    exit::<RbTree>(&ctx)
}

#[inline(always)]
fn enter<L: Lookup>(ctx: &TracePointContext) -> Option<()> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut process = tracked((pid_tgid >> 32) as u32)?;
    if flows_stopped() {
        return None;
    }
    let nr = record::<i32>(ctx, RECORD_NR) as u64;
    let args = args::<L>(ctx, nr)?;
    // A new mapping needs nothing from entry where the exit can read the arguments itself, not
    // even a zeroed scratch walk.
    if L::TASK_PT_REGS && is_new_mapping(nr, args[3]) {
        return None;
    }
    let walk = scratch_walk()?;
    walk.reset();
    walk.pending.generation = process.key.generation as u64;
    walk.pending.args = args;
    if on_enter::<L>(nr, &mut process, walk).is_some() {
        stash::put(pid_tgid, &walk.pending);
    }
    None
}

/// mremap, or mmap without MAP_FIXED (which replaces what it lands on): only the new mapping
/// counts, so nothing needs to be seen before the call.
fn is_new_mapping(nr: u64, arg3: u64) -> bool {
    nr == syscall_nr::MREMAP || (nr == syscall_nr::MMAP && arg3 & MAP_FIXED == 0)
}

/// The call's first four arguments: from the task's saved registers where the kernel lends
/// them (`bpf_task_pt_regs`, 5.15), else from the record. The kernel refuses to attach a
/// program that loads past the smallest record it is attached to (brk's: the number and one
/// argument), so past the first argument the record is probe-read, in one go.
#[inline(always)]
fn args<L: Lookup>(ctx: &TracePointContext, nr: u64) -> Option<[u64; 4]> {
    if L::TASK_PT_REGS {
        // SAFETY: the running task, BTF-typed; the helper returns its saved user registers.
        let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf() as *mut _) } as u64;
        return Some([
            btf_field(regs, config!(regs_args[0])),
            btf_field(regs, config!(regs_args[1])),
            btf_field(regs, config!(regs_args[2])),
            btf_field(regs, config!(regs_args[3])),
        ]);
    }
    let first = record(ctx, RECORD_ARGS);
    if nr == syscall_nr::BRK {
        return Some([first, 0, 0, 0]);
    }
    // SAFETY: a checked read from the record; a failure is returned and counted.
    match unsafe { ctx.read_at::<[u64; 3]>(RECORD_ARGS + 8) } {
        Ok([a1, a2, a3]) => Some([first, a1, a2, a3]),
        Err(_) => {
            count_lost(LostReason::KernelReadFailed);
            None
        }
    }
}

fn total_vm<L: Lookup>() -> Option<u64> {
    vma::mm_field::<L>(vma::current_mm::<L>()?, config!(mm_total_vm))
}

/// Fills `walk.pending` for a call about to run; None when the call is of no interest.
fn on_enter<L: Lookup>(nr: u64, process: &mut TrackedProcess, walk: &mut Walk) -> Option<()> {
    let [addr, arg1, arg2, arg3] = walk.pending.args;
    match nr {
        syscall_nr::MMAP => {
            if arg3 & MAP_FIXED == 0 {
                // Nothing to see before the call but its arguments.
                return Some(());
            }
            // MAP_FIXED unmaps whatever it lands on.
            mappings::invalidate(process);
            let len = page_align(arg1);
            walk.pending.len = len;
            walk.pending.before = total_vm::<L>()?;
            walk.run::<L>(addr, addr + len, NO_PROT);
        }
        syscall_nr::MUNMAP => {
            let len = page_align(arg1);
            walk.pending.len = len;
            walk.pending.before = total_vm::<L>()?;
            out_of_mapping::<L>(process, addr, len, walk, true);
        }
        syscall_nr::MPROTECT => {
            let len = page_align(arg1);
            let prot = arg2;
            // Inside a private anonymous mapping the process made, from its start, only its
            // bytes change: their classes follow from the record, and no other record goes stale.
            let reprotected = if prot & PROT_GROWS == 0 {
                mappings::reprotect(process, addr, len, |flags| anonymous_class(prot, flags))
            } else {
                None
            };
            match reprotected {
                Some((old, new)) => {
                    if old != new {
                        walk.pending.add_out(old, len);
                        walk.pending.add_into(new, len);
                    }
                }
                None => {
                    mappings::invalidate(process);
                    walk.run::<L>(addr, addr + len, prot & PROT_ACCESS);
                }
            }
        }
        // Only where mremap is stashed (see `is_new_mapping`).
        syscall_nr::MREMAP => mappings::invalidate(process),
        syscall_nr::MADVISE => {
            let advice = arg2;
            if !matches!(advice, MADV_DONTNEED | MADV_FREE | MADV_REMOVE) {
                return None;
            }
            out_of_mapping::<L>(process, addr, page_align(arg1), walk, false);
        }
        _ => {
            // brk: the break before the call, from the mm itself (the process may predate us).
            walk.pending.before = vma::mm_field::<L>(vma::current_mm::<L>()?, config!(mm_brk))?;
        }
    }
    Some(())
}

/// munmap or madvise of `[addr, addr + len)`: from the record when it is a whole mapping the
/// process made, else from a walk (and after such a munmap, no record is trusted).
#[inline(always)]
fn out_of_mapping<L: Lookup>(
    process: &mut TrackedProcess,
    addr: u64,
    len: u64,
    walk: &mut Walk,
    unmaps: bool,
) {
    match mappings::recorded(process, addr, len) {
        Some(class) => {
            walk.pending.add_out(class, len);
            // Forgotten now, not at return: once the kernel has unmapped it, another thread's
            // mmap may get the same address, and its record must not be the one deleted.
            if unmaps {
                mappings::forget(&process.key, addr);
            }
        }
        None => {
            if unmaps {
                mappings::invalidate(process);
            }
            walk.run::<L>(addr, addr + len, NO_PROT);
        }
    }
}

#[inline(always)]
fn exit<L: Lookup>(ctx: &TracePointContext) -> u32 {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tgid = (pid_tgid >> 32) as u32;
    let nr = record::<i32>(ctx, RECORD_NR) as u64;
    let ret: i64 = record(ctx, RECORD_RET);
    // -4095..-1 are errors; brk reports failure by returning the old break, which counts nothing.
    let succeeded = !(-4095..0).contains(&ret);
    // Only a tracked thread's call was stashed at entry.
    let mut stashed = false;
    stash::take(pid_tgid, |pending| {
        stashed = true;
        let key = ProcessKey {
            tgid,
            generation: pending.generation as u32,
        };
        if succeeded && let Some(flows) = flows_of(&key) {
            on_return::<L>(nr, ret as u64, pending, &key, flows);
        }
    });
    if !stashed
        && L::TASK_PT_REGS
        && succeeded
        && (nr == syscall_nr::MMAP || nr == syscall_nr::MREMAP)
        && let Some(mut process) = tracked(tgid)
        && let Some(args) = args::<L>(ctx, nr)
        && is_new_mapping(nr, args[3])
        && let Some(flows) = flows_of(&process.key)
    {
        on_new_mapping::<L>(nr, ret as u64, &args, Some(&mut process), flows);
    }
    0
}

/// mmap (the mapping part) and mremap, from their arguments. `process` (its tracked-set entry)
/// is for the records of mappings, which the flows do not need.
fn on_new_mapping<L: Lookup>(
    nr: u64,
    addr: u64,
    args: &[u64; 4],
    process: Option<&mut TrackedProcess>,
    flows: &mut ProcessFlows,
) {
    if nr == syscall_nr::MREMAP {
        if let Some(process) = process {
            mappings::invalidate(process);
        }
        let (old, new) = (args[1], args[2]);
        let (old, new) = (page_align(old), page_align(new));
        // The call succeeded, so there is a mapping at `addr`: only a busy lock hides it.
        let class = vma::class_at::<L>(addr).unwrap_or(RegionClass::Unattributed as usize);
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
    let [_, len, prot, map_flags] = *args;
    // Private anonymous memory's class follows from the call; MAP_HUGETLB's lives in a
    // hugetlbfs file, as the walks see it.
    let anonymous = map_flags & (MAP_ANONYMOUS | MAP_HUGETLB) == MAP_ANONYMOUS
        && map_flags & MAP_TYPE == MAP_PRIVATE;
    let (class, anonymous_flags) = if anonymous {
        (anonymous_class(prot, map_flags), map_flags)
    } else {
        // File-backed or shared: the VMA says whether it lives on shmem (and only a busy
        // lock hides the mapping the call just made).
        let class = vma::class_at::<L>(addr).unwrap_or(RegionClass::Unattributed as usize);
        (class, mappings::NOT_ANONYMOUS)
    };
    let len = page_align(len);
    if let Some(process) = process {
        mappings::record(process, addr, len, class, anonymous_flags);
    }
    let flow = &mut flows.classes[bounded(class)];
    flow.mapped += len;
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

fn on_return<L: Lookup>(
    nr: u64,
    ret: u64,
    pending: &Pending,
    process: &ProcessKey,
    flows: &mut ProcessFlows,
) {
    // The records were invalidated at entry where the call needs it (`on_enter`).
    match nr {
        syscall_nr::MMAP | syscall_nr::MREMAP => {
            if nr == syscall_nr::MMAP && pending.args[3] & MAP_FIXED != 0 {
                apply_out(pending, flows, Flow::Unmapped);
                check_attributed::<L>(pending, pending.len);
            }
            // A record needs the process's entry, which the stash does not carry.
            let mut entry = tracked(process.tgid).filter(|entry| entry.key == *process);
            on_new_mapping::<L>(nr, ret, &pending.args, entry.as_mut(), flows);
        }
        syscall_nr::MUNMAP => {
            apply_out(pending, flows, Flow::Unmapped);
            check_attributed::<L>(pending, 0);
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
fn check_attributed<L: Lookup>(pending: &Pending, added: u64) {
    let Some(after) = total_vm::<L>() else { return };
    let removed = (pending.before * PAGE_SIZE + added).saturating_sub(after * PAGE_SIZE);
    if pending.out_total() < removed {
        count_lost(LostReason::VmaUnattributed);
    }
}
