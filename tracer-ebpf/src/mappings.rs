//! The mappings the programs saw created, so that unmapping or releasing one is attributed
//! without walking VMAs.
//!
//! A VMA walk needs the mm's lock (`bpf_find_vma` only tries it): with many threads mapping and
//! unmapping, it is nearly always held, and the walk fails. But most munmaps and madvises are
//! of a whole mapping the process made with mmap, at the address mmap returned and with the
//! length it was given: looked up here by (process, address), its class is known lock-free.
//!
//! A record is only trusted while nothing has changed the process's mappings in a way the
//! records cannot follow: every mprotect, mremap, MAP_FIXED mmap, exec, and munmap that is not
//! of a whole recorded mapping moves the process's epoch on when it returns, and a record made
//! at an older epoch is ignored. (At return is enough: a mapping is recorded before mmap returns
//! its address, so no other call of the process can have been aimed at it yet.) A walker that keeps the layout simple (whole mappings in, whole mappings out) is
//! attributed from here; any other keeps the walk, as before.

use aya_ebpf::{macros::map, maps::LruHashMap};
use tracer_common::ProcessKey;

use crate::maps::now_ns;

/// Mappings remembered at once; the least recently used go first.
const MAX_MAPPINGS: u32 = 65_536;
const MAX_PROCESSES: u32 = 65_536;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct MappingKey {
    process: ProcessKey,
    addr: u64,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Mapping {
    /// Page-aligned.
    len: u64,
    class: u64,
    /// The process's epoch when it was made.
    epoch: u64,
}

#[map]
static MAPPINGS: LruHashMap<MappingKey, Mapping> = LruHashMap::with_max_entries(MAX_MAPPINGS, 0);

/// Per process, a value that changes whenever its records may have gone stale.
#[map]
static EPOCHS: LruHashMap<ProcessKey, u64> = LruHashMap::with_max_entries(MAX_PROCESSES, 0);

/// A process's current epoch, started from the clock the first time (and again if it was
/// evicted, which then distrusts every older record).
fn epoch(process: &ProcessKey) -> u64 {
    // SAFETY: a lookup in a map this program owns; the value is read at once, before any update.
    if let Some(epoch) = unsafe { EPOCHS.get(process) } {
        return *epoch;
    }
    let epoch = now_ns();
    let _ = EPOCHS.insert(process, epoch, 0);
    epoch
}

/// Distrusts every record of the process made so far.
pub fn invalidate(process: &ProcessKey) {
    match EPOCHS.get_ptr_mut(process) {
        // Not atomic: two threads moving it at once both move it, which is all that counts.
        // SAFETY: the pointer is the map's value, valid for this program's run; a racing write from
        // another CPU can only move the epoch further, which is all that counts.
        Some(epoch) => unsafe { core::ptr::write_volatile(epoch, *epoch + 1) },
        None => {
            let _ = epoch(process);
        }
    }
}

/// Remembers a mapping mmap just made.
pub fn record(process: &ProcessKey, addr: u64, len: u64, class: usize) {
    let mapping = Mapping {
        len,
        class: class as u64,
        epoch: epoch(process),
    };
    let _ = MAPPINGS.insert(
        MappingKey {
            process: *process,
            addr,
        },
        mapping,
        0,
    );
}

/// The class of the whole mapping `[addr, addr + len)`, if it is one the process made and
/// nothing has changed since.
pub fn recorded(process: &ProcessKey, addr: u64, len: u64) -> Option<usize> {
    let key = MappingKey {
        process: *process,
        addr,
    };
    // SAFETY: lookups in maps this program owns; the values are read at once.
    let mapping = unsafe { MAPPINGS.get(key) }?;
    // SAFETY: as above.
    let current = unsafe { EPOCHS.get(process) }?;
    (mapping.len == len && mapping.epoch == *current).then_some(mapping.class as usize)
}

/// The mapping at `addr` is gone.
pub fn forget(process: &ProcessKey, addr: u64) {
    let _ = MAPPINGS.remove(MappingKey {
        process: *process,
        addr,
    });
}
