//! The mappings the programs saw created, so that unmapping or releasing one is attributed
//! without walking VMAs.
//!
//! A VMA walk needs the mm's lock (`bpf_find_vma` only tries it): with many threads mapping and
//! unmapping, it is nearly always held, and the walk fails. But most munmaps and madvises are
//! of a whole mapping the process made with mmap, at the address mmap returned and with the
//! length it was given: looked up here by (process, address), its class is known lock-free.
//!
//! A record is only trusted while nothing has changed the process's mappings in a way the
//! records cannot follow: every mprotect (but one inside a recorded private anonymous mapping,
//! from its start: that record alone is dropped, see `reprotect`), mremap, MAP_FIXED mmap, exec,
//! and munmap that is not of a whole recorded mapping moves the process's epoch on (kept in its tracked-set entry, which
//! every program has looked up already), and a record made at an older epoch is ignored. The
//! calls move it at entry, where they have that entry at hand (mremap, which has no entry hook
//! where the kernel lends the registers at return, at return): a record made meanwhile, of a
//! mapping the call may still change, can only be of an address the call could not have aimed
//! at before mmap returned it. A walker that keeps the layout simple (whole mappings in, whole
//! mappings out) is attributed from here; any other keeps the walk, as before.

use aya_ebpf::{macros::map, maps::LruHashMap};
use tracer_common::ProcessKey;

use crate::maps::{TrackedProcess, atomic_add};

/// Mappings remembered at once; the least recently used go first.
const MAX_MAPPINGS: u32 = 65_536;

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
    /// mmap's flags for a private anonymous mapping, whose class follows from them and the
    /// protection alone (see `reprotect`); [`NOT_ANONYMOUS`] for any other.
    anonymous_flags: u64,
}

/// `Mapping::anonymous_flags` of a mapping whose class needs its VMA (file-backed, shared).
pub const NOT_ANONYMOUS: u64 = u64::MAX;

#[map]
static MAPPINGS: LruHashMap<MappingKey, Mapping> = LruHashMap::with_max_entries(MAX_MAPPINGS, 0);

/// Distrusts every record of the process made so far.
pub fn invalidate(process: &mut TrackedProcess) {
    atomic_add(&mut process.entry.epoch, 1);
}

/// Remembers a mapping mmap just made (`anonymous_flags`: see [`Mapping`]).
pub fn record(process: &TrackedProcess, addr: u64, len: u64, class: usize, anonymous_flags: u64) {
    let mapping = Mapping {
        len,
        class: class as u64,
        epoch: process.entry.epoch,
        anonymous_flags,
    };
    let _ = MAPPINGS.insert(
        MappingKey {
            process: process.key,
            addr,
        },
        mapping,
        0,
    );
}

/// The class of the whole mapping `[addr, addr + len)`, if it is one the process made and
/// nothing has changed since.
pub fn recorded(process: &TrackedProcess, addr: u64, len: u64) -> Option<usize> {
    let key = MappingKey {
        process: process.key,
        addr,
    };
    // SAFETY: a lookup in a map this program owns; the value is read at once.
    let mapping = unsafe { MAPPINGS.get(key) }?;
    (mapping.len == len && mapping.epoch == process.entry.epoch).then_some(mapping.class as usize)
}

/// mprotect of `[addr, addr + len)` inside a private anonymous mapping the process made, from
/// its start: the class those bytes had and the class they get (`class_with` its mmap flags),
/// without a walk. Only that mapping changes, so the process's other records stay trusted; its
/// own is dropped (split, or its class changed, or the call may yet fail).
pub fn reprotect(
    process: &TrackedProcess,
    addr: u64,
    len: u64,
    class_with: impl FnOnce(u64) -> usize,
) -> Option<(usize, usize)> {
    let key = MappingKey {
        process: process.key,
        addr,
    };
    // SAFETY: a lookup in a map this program owns; the value is read at once.
    let mapping = unsafe { MAPPINGS.get(key) }?;
    let (mapping_len, class, flags) = (mapping.len, mapping.class, mapping.anonymous_flags);
    if mapping.epoch != process.entry.epoch
        || flags == NOT_ANONYMOUS
        || len == 0
        || len > mapping_len
    {
        return None;
    }
    forget(&process.key, addr);
    Some((class as usize, class_with(flags)))
}

/// The mapping at `addr` is gone.
pub fn forget(process: &ProcessKey, addr: u64) {
    let _ = MAPPINGS.remove(MappingKey {
        process: *process,
        addr,
    });
}
