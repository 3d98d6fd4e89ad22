//! One thread's memory syscall between its entry and its return: what `syscalls` stashes at
//! entry and `vma`'s walks add the classified bytes into.

use tracer_common::CLASS_COUNT;

/// One thread's memory syscall between entry and return.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    /// The call's first four arguments.
    pub args: [u64; 4],
    /// Page-aligned length (the old length for mremap).
    pub len: u64,
    /// The break before brk; total_vm (pages) before munmap and MAP_FIXED mmap.
    pub before: u64,
    pub out_mask: u64,
    pub into_mask: u64,
    /// Bytes per class the call removes (munmap, MAP_FIXED), releases (madvise), or moves out (mprotect).
    pub out: [u64; CLASS_COUNT],
    /// Bytes per class mprotect moves in.
    pub into: [u64; CLASS_COUNT],
    /// The calling process's generation in the tracked set, found at entry.
    pub generation: u64,
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

    pub fn out_total(&self) -> u64 {
        let mut total = 0;
        for bytes in self.out {
            total += bytes;
        }
        total
    }
}

/// Keeps a class index provably inside the per-class arrays for the verifier.
pub fn bounded(class: usize) -> usize {
    if class < CLASS_COUNT {
        class
    } else {
        CLASS_COUNT - 1
    }
}
