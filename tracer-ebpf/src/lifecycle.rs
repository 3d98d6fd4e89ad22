//! Fork, exec and exit: the tracked set grows at fork in the kernel, so a short-lived child is
//! never missed, and userspace hears of every process through the ring buffer.
//!
//! These fire a few times per process, so classic tracepoints are cheap enough here; their
//! record layouts are read from tracefs by the loader (`CONFIG.newtask_*`, `exit_group_dead`).
//!
//! ```text
//! task:task_newtask          pid_t pid; char comm[16]; u64 clone_flags; short oom_score_adj;
//! sched:sched_process_exec   __data_loc char[] filename; pid_t pid; pid_t old_pid;
//! sched:sched_process_exit   char comm[16]; pid_t pid; int prio; bool group_dead;
//! ```

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_boot_ns,
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{LifecycleEvent, LifecycleKind, LostReason, TRACKED as TRACKED_FLAG};

use crate::maps::{EVENTS, TRACKED, config, count_lost, is_tracked, read_kernel};

/// A clone that makes a thread, not a process.
const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let parent = current_tgid();
    if !is_tracked(parent) {
        return 0;
    }
    let Ok(clone_flags) = (unsafe { ctx.read_at::<u64>(config!(newtask_clone_flags) as usize) })
    else {
        count_lost(LostReason::KernelReadFailed);
        return 0;
    };
    if clone_flags & CLONE_THREAD != 0 {
        return 0;
    }
    let Ok(child) = (unsafe { ctx.read_at::<u32>(config!(newtask_pid) as usize) }) else {
        count_lost(LostReason::KernelReadFailed);
        return 0;
    };
    // The child has not run yet (task_newtask fires in copy_process, before its first wake-up).
    if TRACKED.insert(&child, &TRACKED_FLAG, 0).is_err() {
        count_lost(LostReason::TrackedSetFull);
        return 0;
    }
    emit(LifecycleKind::Fork, child, parent, 0);
    0
}

#[tracepoint]
pub fn sched_process_exec(_ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if is_tracked(tgid) {
        emit(LifecycleKind::Exec, tgid, 0, 0);
    }
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let tgid = current_tgid();
    if !is_tracked(tgid) {
        return 0;
    }
    // The tracepoint fires for every thread; the process is gone when its last one goes.
    let group_dead = unsafe { ctx.read_at::<u8>(config!(exit_group_dead) as usize) }.unwrap_or(1);
    if group_dead == 0 {
        return 0;
    }
    let task = unsafe { bpf_get_current_task() };
    let exit_code = read_kernel::<u32>(task, config!(task_exit_code)).unwrap_or(0);
    emit(LifecycleKind::Exit, tgid, 0, exit_code);
    // A later process that reuses this pid is not ours unless it is forked from the tree.
    let _ = TRACKED.remove(&tgid);
    0
}

fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

fn emit(kind: LifecycleKind, tgid: u32, parent_tgid: u32, exit_code: u32) {
    let event = LifecycleEvent {
        kind: kind as u32,
        tgid,
        parent_tgid,
        exit_code,
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        comm: bpf_get_current_comm().unwrap_or_default(),
    };
    if EVENTS.output::<LifecycleEvent>(&event, 0).is_err() {
        count_lost(LostReason::RingBufferFull);
    }
}
