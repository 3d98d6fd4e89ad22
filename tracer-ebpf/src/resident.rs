//! Resident memory per tracked process, from the kernel's own counters (`mm->rss_stat`).
//!
//! `kmem:rss_stat` fires on every change of a counter, about once per faulted page, so nothing
//! is streamed: each event stores the counter's current value (and the peak) in `RESIDENT`.
//! Attached as tp_btf, the program receives the `mm_struct` itself rather than the hashed,
//! reusable `mm_id`, and attributes it through `mm->owner` to a process. Only an mm that is its
//! owner's current one counts: that skips the mm a fork is still copying, and the old mm that
//! exec or exit tears down (whose falling counters would otherwise overwrite the live ones).
//!
//! The value read is `percpu_counter.count`, the same one `/proc/PID/status` shows
//! (`get_mm_counter()` -> `percpu_counter_read_positive()`).

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{ProcessKey, RSS_COUNTERS, Resident};

use crate::maps::{RESIDENT, TrackedProcess, btf_field, config, read_kernel, tracked};

#[btf_tracepoint(function = "rss_stat")]
pub fn rss_stat(ctx: BtfTracePointContext) -> i32 {
    let mm: u64 = ctx.arg(0);
    let member: i32 = ctx.arg(1);
    let owner: u64 = btf_field(mm, config!(mm_owner));
    if owner == 0 {
        return 0;
    }
    let tgid: u32 = btf_field(owner, config!(task_tgid));
    let Some(TrackedProcess { key, .. }) = tracked(tgid) else {
        return 0;
    };
    if btf_field::<u64>(owner, config!(task_mm)) != mm {
        return 0;
    }
    let Some(counter) = counter_offset(member) else {
        return 0;
    };
    let pages = counter_of(mm, counter).max(0) as u64;
    if let Some(resident) = resident_of(&key) {
        let index = member as usize & (RSS_COUNTERS - 1);
        resident.last[index] = pages;
        if pages > resident.peak[index] {
            resident.peak[index] = pages;
        }
    }
    0
}

/// The counter at `offset` in a BTF-typed mm: a plain load of a `percpu_counter`'s count, or a
/// probe read of an `atomic_long_t` (see `KernelConfig::rss_probe_read`). The branch is on a
/// read-only constant, so the verifier only sees the one this kernel takes.
#[inline(always)]
pub fn counter_of(mm: u64, offset: u32) -> i64 {
    if config!(rss_probe_read) == 0 {
        btf_field(mm, offset)
    } else {
        read_kernel(mm, offset).unwrap_or(0)
    }
}

/// Constant offsets per counter: the verifier only allows fixed offsets into kernel structs.
fn counter_offset(member: i32) -> Option<u32> {
    match member {
        0 => Some(config!(rss_count[0])),
        1 => Some(config!(rss_count[1])),
        2 => Some(config!(rss_count[2])),
        3 => Some(config!(rss_count[3])),
        _ => None,
    }
}

fn resident_of(key: &ProcessKey) -> Option<&'static mut Resident> {
    if let Some(resident) = RESIDENT.get_ptr_mut(key) {
        // SAFETY: the map's value for `key`, valid for this program's run; updates are stores of
        // the kernel's absolute counter, so a racing writer leaves a correct value either way.
        return Some(unsafe { &mut *resident });
    }
    let _ = RESIDENT.insert(key, Resident::default(), 1);
    let resident = RESIDENT.get_ptr_mut(key)?;
    // SAFETY: as above, for the entry just made (or made by another CPU meanwhile).
    Some(unsafe { &mut *resident })
}

/// Starts a process's counters from its mm as it is now (a new mm at exec, a copied one at
/// fork), so counters that never change afterwards are still right. `read` reads a counter at
/// an offset into the mm: a plain load where the mm pointer is BTF-typed, a probe read where not.
#[inline(always)]
pub fn start_from_mm(key: &ProcessKey, read: impl Fn(u32) -> i64) {
    let Some(resident) = resident_of(key) else {
        return;
    };
    for member in 0..RSS_COUNTERS as i32 {
        if let Some(counter) = counter_offset(member) {
            let pages = read(counter).max(0) as u64;
            let index = member as usize & (RSS_COUNTERS - 1);
            resident.last[index] = pages;
            resident.peak[index] = pages;
        }
    }
}
