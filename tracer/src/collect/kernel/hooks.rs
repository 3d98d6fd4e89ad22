//! The programs leaktrace loads and where each attaches: the table `leaktrace doctor` prints
//! and the loader walks.

/// Where a program attaches.
#[derive(Debug)]
pub enum AttachPoint {
    /// A BTF-typed raw tracepoint (tp_btf): its pointer arguments can be read directly.
    Btf(&'static str),
    Tracepoint(&'static str, &'static str),
    /// `syscalls:<prefix>_<name>` for the [`hooked_syscalls`]: one program on several
    /// tracepoints, which only those syscalls reach.
    Syscalls(&'static str),
}

/// One program and where it goes; `leaktrace doctor` lists these.
#[derive(Debug)]
pub struct Hook {
    pub program: &'static str,
    /// The program loaded instead where the kernel needs a fallback of this hook's own (see
    /// `features`): the syscall hooks' rbtree VMA walk, before 5.17.
    pub fallback_program: Option<&'static str>,
    pub attach: AttachPoint,
    pub description: &'static str,
}

/// The memory syscalls, whose own tracepoints the syscall hooks attach to (which of them each
/// program takes: [`hooked_syscalls`]).
pub const MEMORY_SYSCALLS: [&str; 6] = ["mmap", "munmap", "brk", "mremap", "mprotect", "madvise"];

/// The syscalls whose `syscalls:<prefix>_<name>` tracepoints a syscall hook's program attaches
/// to: all six, but mremap's entry only for the fallback (5.10) program. The native one reads
/// mremap's arguments at return, and every tracepoint left out saves each call of that syscall,
/// traced or not, the cost of a dispatch.
pub fn hooked_syscalls(prefix: &str, fallback: bool) -> impl Iterator<Item = &'static str> {
    let skip = (prefix == "sys_enter" && !fallback).then_some("mremap");
    MEMORY_SYSCALLS
        .into_iter()
        .filter(move |name| Some(*name) != skip)
}

pub static HOOKS: [Hook; 6] = [
    Hook {
        program: "syscall_enter",
        fallback_program: Some("syscall_enter_rbtree"),
        attach: AttachPoint::Syscalls("sys_enter"),
        description: "syscalls:sys_enter_{mmap,munmap,brk,mprotect,madvise} (and mremap on 5.10): the memory a call will change",
    },
    Hook {
        program: "syscall_exit",
        fallback_program: Some("syscall_exit_rbtree"),
        attach: AttachPoint::Syscalls("sys_exit"),
        description: "syscalls:sys_exit_{...}: their return values",
    },
    Hook {
        program: "task_newtask",
        fallback_program: None,
        attach: AttachPoint::Btf("task_newtask"),
        description: "tp_btf task_newtask: forked children join the tracked set",
    },
    Hook {
        program: "sched_process_exec",
        fallback_program: None,
        attach: AttachPoint::Tracepoint("sched", "sched_process_exec"),
        description: "tracepoint sched:sched_process_exec",
    },
    Hook {
        program: "sched_process_exit",
        fallback_program: None,
        attach: AttachPoint::Tracepoint("sched", "sched_process_exit"),
        description: "tracepoint sched:sched_process_exit",
    },
    Hook {
        program: "rss_stat",
        fallback_program: None,
        attach: AttachPoint::Btf("rss_stat"),
        description: "tp_btf rss_stat: the kernel's resident counters, per process",
    },
];
