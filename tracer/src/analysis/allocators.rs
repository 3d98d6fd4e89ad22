//! Which of Chromium's allocators grew: the memory-infra dumps (`--memory-dumps`) summed per
//! role and allocator, compared between the dump nearest the start of the fitted cycles and the
//! last one.

use std::collections::BTreeMap;

use crate::trace::{MemoryDump, findings::AllocatorGrowth};

/// Rows kept: the largest changes.
const TOP: usize = 12;

/// The allocators' growth between two of `dumps` taken from cycle `since` on (a followed
/// worker's latest instance): the first at or after `fitted_from`, else the last before the
/// last, and the last. The very first dump is compared only when there is no other: it started
/// Chromium's tracing service and its buffers, which the next ones count. Largest change
/// first; empty with fewer than two dumps.
pub fn growth(dumps: &[MemoryDump], since: u32, fitted_from: u32) -> Vec<AllocatorGrowth> {
    let dumps: Vec<&MemoryDump> = dumps.iter().filter(|d| d.cycle >= since).collect();
    let Some((last, mut earlier)) = dumps.split_last() else {
        return Vec::new();
    };
    if earlier.len() > 1 {
        earlier = &earlier[1..];
    }
    let Some(first) = earlier
        .iter()
        .find(|d| d.cycle >= fitted_from)
        .or(earlier.last())
    else {
        return Vec::new();
    };
    let (before, after) = (by_role(first), by_role(last));
    let mut rows: Vec<AllocatorGrowth> = before
        .keys()
        .chain(after.keys())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .map(|key| {
            let (from, to) = (
                before.get(key).copied().unwrap_or(0),
                after.get(key).copied().unwrap_or(0),
            );
            AllocatorGrowth {
                role: key.0.clone(),
                allocator: key.1.clone(),
                from_cycle: first.cycle,
                to_cycle: last.cycle,
                from,
                to,
                growth: to as i64 - from as i64,
            }
        })
        .collect();
    rows.sort_by_key(|r| std::cmp::Reverse(r.growth.abs()));
    rows.truncate(TOP);
    rows
}

/// Bytes per (role, allocator) in one dump; a process leaktrace does not trace counts as
/// `untraced`.
fn by_role(dump: &MemoryDump) -> BTreeMap<(String, String), u64> {
    let mut sums = BTreeMap::new();
    for process in &dump.processes {
        let role = process
            .role
            .as_ref()
            .map_or("untraced".to_string(), |r| r.to_string());
        for (allocator, bytes) in &process.allocators {
            *sums.entry((role.clone(), allocator.clone())).or_default() += bytes;
        }
    }
    sums
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{collect::browser::DumpedProcess, collect::roles::Role};

    fn dump(cycle: u32, renderers: &[(u64, u64)]) -> MemoryDump {
        MemoryDump {
            cycle,
            processes: renderers
                .iter()
                .enumerate()
                .map(|(i, &(v8, partition_alloc))| DumpedProcess {
                    pid: 100 + i as u32,
                    role: Some(Role::Renderer),
                    allocators: [
                        ("v8".to_string(), v8),
                        ("partition_alloc".to_string(), partition_alloc),
                    ]
                    .into(),
                })
                .collect(),
            ..MemoryDump::default()
        }
    }

    #[test]
    fn growth_is_summed_per_role_from_the_fitted_start_to_the_last_dump() {
        let dumps = [
            dump(1, &[(10, 5)]),
            dump(2, &[(12, 5)]),
            dump(4, &[(20, 5)]),
            // A second renderer came: its allocators count in the sum.
            dump(8, &[(40, 6), (3, 1)]),
        ];
        let rows = growth(&dumps, 0, 3);
        assert_eq!((rows[0].from_cycle, rows[0].to_cycle), (4, 8));
        // Not the first dump, while there is another before the last.
        assert_eq!(growth(&dumps, 0, 0)[0].from_cycle, 2);
        assert_eq!(growth(&dumps[2..], 0, 0)[0].from_cycle, 4);
        assert_eq!(
            (
                rows[0].allocator.as_str(),
                rows[0].from,
                rows[0].to,
                rows[0].growth
            ),
            ("v8", 20, 43, 23)
        );
        assert_eq!(
            (rows[1].allocator.as_str(), rows[1].growth),
            ("partition_alloc", 2)
        );
        // The fitted start past every dump but the last: the one before it.
        assert_eq!(growth(&dumps, 0, 7)[0].from_cycle, 4);
        // A followed worker's latest instance only; one dump tells nothing.
        assert!(growth(&dumps, 5, 0).is_empty());
    }
}
