//! leaktrace's kernel side: follow a process tree and count how its address space moves.
//!
//! `lifecycle` keeps the tracked set (children join at fork, in the kernel) and reports fork, exec
//! and exit through the ring buffer; `syscalls` pairs each memory syscall's entry with its return
//! (the call in flight is a `pending` record, kept in the `stash`) and adds the flows to
//! per-process, per-class counters; `vma` classifies the memory a range touches; `mappings`
//! remembers the mappings mmap made, so a whole one unmapped needs no walk; `resident` keeps the
//! kernel's resident counters per process; `maps` holds the maps the loader reads and the
//! loader-provided configuration. Imports run one way: each probe file uses `maps` (and
//! `pending`), never another's internals but `vma`'s walk and `mappings`' records.
// Built for BPF it is a no_std object without a main; for the host (`cargo clippy --workspace`,
// `cargo check`) an ordinary binary, so that the workspace checks as a whole.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// The one atomic add (`stash`) is inline assembly: the BPF target has no compare-and-swap.
#![cfg_attr(target_arch = "bpf", feature(asm_experimental_arch))]

mod lifecycle;
mod mappings;
mod maps;
mod pending;
mod resident;
mod stash;
mod syscalls;
mod vma;

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// BTF-typed helpers (bpf_get_current_task_btf, bpf_find_vma) need a GPL-compatible licence.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
