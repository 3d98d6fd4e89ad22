//! Fork, exec and exit: the tracked set grows at fork in the kernel, so a short-lived child is
//! never missed, and userspace hears of every process through the ring buffer.
//!
//! These fire a few times per process. `task_newtask` is attached as tp_btf, for the new
//! `task_struct` itself (its mm starts the child's resident counters); exec and exit are classic
//! tracepoints whose record layout the loader reads from tracefs (`CONFIG.exit_group_dead`, or
//! on kernels before 6.16, whose record lacks it, the task's `signal->live`).
//!
//! ```text
//! tp_btf task_newtask        (struct task_struct *task, u64 clone_flags)
//! sched:sched_process_exec   __data_loc char[] filename; pid_t pid; pid_t old_pid;
//! sched:sched_process_exit   char comm[16]; pid_t pid; int prio; bool group_dead (6.16+);
//! ```

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid},
    macros::{btf_tracepoint, tracepoint},
    programs::{BtfTracePointContext, TracePointContext},
};
use tracer_common::{LifecycleEvent, LifecycleKind, LostReason, ProcessKey, Tracked};

use crate::{
    mappings,
    maps::{
        EVENTS, TRACKED, TrackedProcess, btf_field, config, count_lost, current_task, now_ns,
        read_kernel, tracked,
    },
    resident,
};

/// A clone that makes a thread, not a process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> i32 {
    let parent = current_tgid();
    if tracked(parent).is_none() {
        return 0;
    }
    let task: u64 = ctx.arg(0);
    let clone_flags: u64 = ctx.arg(1);
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let child = ProcessKey {
        tgid: btf_field(task, config!(task_pid)),
        // Any value but the loader's 0 will do, as long as the next process to take this pid
        // gets another: the clock's low bits move every nanosecond.
        generation: now_ns() as u32 | 1,
    };
    // The child has not run yet (task_newtask fires in copy_process, before its first wake-up).
    let entry = Tracked {
        generation: child.generation,
        _pad: 0,
        epoch: now_ns(),
    };
    if TRACKED.insert(child.tgid, entry, 0).is_err() {
        count_lost(LostReason::TrackedSetFull);
        return 0;
    }
    let mm: u64 = btf_field(task, config!(task_mm));
    if mm != 0 {
        resident::start_from_mm(&child, |counter| resident::counter_of(mm, counter));
    }
    emit(LifecycleKind::Fork, &child, parent, 0);
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    if let Some(mut process) = tracked(current_tgid()) {
        // A new address space: no record of the old one's mappings holds.
        mappings::invalidate(&mut process);
        let key = process.key;
        let task = current_task();
        if let Some(mm) = read_kernel::<u64>(task, config!(task_mm)).filter(|mm| *mm != 0) {
            resident::start_from_mm(&key, |counter| read_kernel(mm, counter).unwrap_or(0));
        }
        emit(LifecycleKind::Exec, &key, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let Some(TrackedProcess { key, .. }) = tracked(current_tgid()) else {
        return 0;
    };
    // The tracepoint fires for every thread; the process is gone when its last one goes.
    let task = current_task();
    let group_dead = if config!(exit_from_signal) == 0 {
        // SAFETY: a checked read from the record (`bpf_probe_read_kernel` under the hood), at the
        // offset of `group_dead` the loader found in this tracepoint's format.
        unsafe { ctx.read_at::<u8>(config!(exit_group_dead) as usize) }.unwrap_or(1) != 0
    } else {
        // Before 6.16: signal->live counts the threads not yet exiting; do_exit decrements it
        // before the tracepoint, so it is 0 from the last thread's exit on.
        read_kernel::<u64>(task, config!(task_signal))
            .and_then(|signal| read_kernel::<i32>(signal, config!(signal_live)))
            .is_none_or(|live| live == 0)
    };
    if !group_dead {
        return 0;
    }
    let exit_code = read_kernel::<u32>(task, config!(task_exit_code)).unwrap_or(0);
    emit(LifecycleKind::Exit, &key, 0, exit_code);
    // A later process that reuses this pid is not ours unless it is forked from the tree.
    let _ = TRACKED.remove(key.tgid);
    0
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn emit(kind: LifecycleKind, process: &ProcessKey, parent_tgid: u32, exit_code: u32) {
    let event = LifecycleEvent {
        kind: kind as u32,
        tgid: process.tgid,
        parent_tgid,
        exit_code,
        generation: process.generation,
        _pad: 0,
        time_ns: now_ns(),
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if EVENTS.output::<LifecycleEvent>(&event, 0).is_err() {
        count_lost(LostReason::RingBufferFull);
    }
}
