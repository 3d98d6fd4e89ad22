//! Where a thread's memory syscall waits between its entry and its return: a slot per thread
//! in an array, a hash map only when two threads' slots collide.
//!
//! Why not just a hash map keyed by thread: its insert, lookup and delete cost ~270 ns a
//! stashed call (a brk loop under `kernel.bpf_stats_enabled`: entry 350 -> 204 ns, return
//! 249 -> 124 ns with the slots), about what a VMA walk costs. An array lookup is inlined by the
//! verifier into a bounds check and an add. A thread's slot is its tid modulo the table's size,
//! so two live threads can share one (when pid_max is larger than the table, and both are in a
//! memory syscall at once); the slot is claimed with an atomic add before it is written, and a
//! thread that finds it taken stashes in the hash map instead. Nothing is lost either way.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap},
};
use tracer_common::LostReason;

use crate::{
    maps::{atomic_add as add, config, count_lost},
    pending::Pending,
};

/// Slots in the table as built; the loader sizes it (`Kernel::load`): a power of two, so a
/// thread's slot is its tid's low bits (`CONFIG.stash_slot_mask`).
const SLOTS: u32 = 65_536;
/// Calls that fell back to the hash map in flight at once.
const OVERFLOW: u32 = 4_096;

#[repr(C)]
pub struct Slot {
    /// Threads holding or trying to claim the slot; the one that took it from 0 to 1 owns it.
    claims: u64,
    /// The owning thread's pid_tgid, 0 while free.
    owner: u64,
    pending: Pending,
}

#[map]
static SLOT_TABLE: Array<Slot> = Array::with_max_entries(SLOTS, 0);

/// The calls whose slot was taken: pid_tgid -> Pending.
#[map]
static OVERFLOWED: HashMap<u64, Pending> = HashMap::with_max_entries(OVERFLOW, 0);

/// How many calls are in OVERFLOWED, so that a return looks there only when one may be.
#[map]
static OVERFLOWED_COUNT: Array<u64> = Array::with_max_entries(1, 0);

fn slot(pid_tgid: u64) -> Option<&'static mut Slot> {
    let index = pid_tgid as u32 & config!(stash_slot_mask);
    // SAFETY: an element of a map this program owns, valid for its run; its fields are only
    // written by the thread that claimed it (`claims` only atomically).
    SLOT_TABLE
        .get_ptr_mut(index)
        .map(|slot| unsafe { &mut *slot })
}

/// A load that sees every thread's atomic adds so far.
#[inline(always)]
fn load(counter: &u64) -> u64 {
    // SAFETY: a valid, aligned u64 in a map value.
    unsafe { core::ptr::read_volatile(counter) }
}

/// Keeps `pending` for this thread's return; counted as lost when there is no room.
pub fn put(pid_tgid: u64, pending: &Pending) {
    if let Some(slot) = slot(pid_tgid) {
        // Still ours when a return went unseen (the call began before the exit hook attached).
        if slot.owner == pid_tgid {
            copy(pending, &mut slot.pending);
            return;
        }
        add(&mut slot.claims, 1);
        // Each claimant's add happens before its load, so at most one sees 1 (none, when two
        // come at once): the one that found it free. The others back off to the hash map.
        if load(&slot.claims) == 1 {
            copy(pending, &mut slot.pending);
            slot.owner = pid_tgid;
            return;
        }
        add(&mut slot.claims, u64::MAX);
    }
    overflow(pid_tgid, pending);
}

#[inline(never)]
fn overflow(pid_tgid: u64, pending: &Pending) {
    let Some(count) = OVERFLOWED_COUNT.get_ptr_mut(0) else {
        count_lost(LostReason::StashFull);
        return;
    };
    // SAFETY: the counter's cell, valid for this program's run; only changed atomically.
    let count = unsafe { &mut *count };
    add(count, 1);
    if insert(pid_tgid, pending).is_err() {
        add(count, u64::MAX);
        count_lost(LostReason::StashFull);
    }
}

/// Inserts `pending`, copied from where it is: passed by value, the 200-byte record would be
/// copied onto the stack first.
#[allow(clippy::needless_borrows_for_generic_args)]
#[inline(always)]
fn insert(pid_tgid: u64, pending: &Pending) -> Result<(), i32> {
    OVERFLOWED.insert(pid_tgid, pending, 0)
}

/// Word by word, volatile: a plain assignment becomes a memcpy the verifier steps through.
#[inline(always)]
fn copy(from: &Pending, to: &mut Pending) {
    let words = size_of::<Pending>() / 8;
    let (from, to) = (
        from as *const Pending as *const u64,
        to as *mut Pending as *mut u64,
    );
    for i in 0..words {
        // SAFETY: `i` < size_of::<Pending>() / 8: both accesses stay inside the two records.
        unsafe { core::ptr::write_volatile(to.add(i), core::ptr::read_volatile(from.add(i))) };
    }
}

/// Runs `on` with what this thread stashed at its call's entry, if anything, and frees it.
#[inline(always)]
pub fn take(pid_tgid: u64, on: impl FnOnce(&Pending)) {
    if let Some(slot) = slot(pid_tgid)
        && slot.owner == pid_tgid
    {
        on(&slot.pending);
        slot.owner = 0;
        add(&mut slot.claims, u64::MAX);
        return;
    }
    take_overflowed(pid_tgid, on);
}

#[inline(always)]
fn take_overflowed(pid_tgid: u64, on: impl FnOnce(&Pending)) {
    let Some(count) = OVERFLOWED_COUNT.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: as in `overflow`.
    let count = unsafe { &mut *count };
    if *count == 0 {
        return;
    }
    if let Some(pending) = OVERFLOWED.get_ptr(pid_tgid) {
        // SAFETY: this thread's value, valid for this program's run; only this thread writes
        // it, at its call's entry, which is over.
        on(unsafe { &*pending });
        let _ = OVERFLOWED.remove(pid_tgid);
        add(count, u64::MAX);
    }
}
