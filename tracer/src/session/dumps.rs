//! `--memory-dumps`: Chromium's own account of its memory (memory-infra: v8, blink_gc,
//! partition_alloc, malloc, ... per process) at a few cycle ends, for the analysis to say which
//! allocator grew.
//!
//! Off unless asked for, because a dump is not free (measured on Debian's Chromium 14x, a
//! scraper-sized tree): the first starts Chromium's tracing service, a `utility:tracing` process
//! of ~37 MB owned that stays, and gives the other processes ~1 MB of tracing buffers; later
//! dumps add nothing that stays, and take the browser 70–200 ms each. So the first dump is taken
//! as early as the browser can be reached (its cost lands in warm-up) and the others at cycles
//! 2, 4, 8, ...: a trace of N cycles takes about log2(N) of them, and the latest is never older
//! than half the trace.

use crate::{collect::browser::BrowserReader, collect::processes::ProcessTable, trace::MemoryDump};

#[derive(Default)]
pub(super) struct MemoryDumps {
    enabled: bool,
    pub(super) taken: Vec<MemoryDump>,
}

impl MemoryDumps {
    pub(super) fn new(enabled: bool) -> MemoryDumps {
        MemoryDumps {
            enabled,
            taken: Vec::new(),
        }
    }

    /// Whether a dump is due at the end of complete cycle `cycle`.
    fn due(&self, cycle: u32) -> bool {
        self.enabled
            && match self.taken.last() {
                None => true,
                Some(last) => cycle >= 2 * last.cycle.max(1),
            }
    }

    /// Takes a dump at the end of cycle `cycle` when one is due and the browser is reachable.
    pub(super) async fn at_cycle_end(
        &mut self,
        cycle: u32,
        t_s: f64,
        browser: &mut BrowserReader,
        table: &ProcessTable,
    ) {
        if !self.due(cycle) || !browser.is_connected() {
            return;
        }
        let Some((seconds, by_pid)) = browser.memory_dump().await else {
            return;
        };
        let processes = by_pid
            .into_iter()
            .filter(|(_, allocators)| !allocators.is_empty())
            .map(|(pid, allocators)| crate::collect::browser::DumpedProcess {
                pid,
                role: table.role_of_pid(pid),
                allocators,
            })
            .collect();
        self.taken.push(MemoryDump {
            cycle,
            t_s,
            seconds,
            processes,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dumps_come_at_the_first_chance_then_at_doubling_cycles() {
        let mut dumps = MemoryDumps::new(true);
        let mut at = Vec::new();
        for cycle in 3..=40 {
            if dumps.due(cycle) {
                at.push(cycle);
                dumps.taken.push(MemoryDump {
                    cycle,
                    ..MemoryDump::default()
                });
            }
        }
        assert_eq!(at, [3, 6, 12, 24]);
        assert!(!MemoryDumps::new(false).due(1));
    }
}
