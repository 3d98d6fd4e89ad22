//! The ledger file as the integration tests read it: one [`LedgerLine`] per process and stage.
//!
//! The fixtures write these lines with [`crate::record::write_line`]; this module is the serde
//! mirror of that format, so both sides live in one crate and cannot drift apart.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

pub use tracer_common::ClassFlow;

/// One line of the ledger: one process at one stage (`root`, `child`, `exec`, `grandchild`).
///
/// The `child` and `exec` lines share a pid: they are the same process before and after execv.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct LedgerLine {
    pub role: String,
    pub pid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// Signed sum of (new break - old break), unaligned, over the stage's brk calls.
    pub brk_growth: i64,
    /// Every class, always present; keyed by the class names in [`crate::Class::ALL`] (`tracer_common::RegionClass`).
    pub flows: BTreeMap<String, ClassFlow>,
}

impl LedgerLine {
    /// The flow for `class`, zero when the line lacks it.
    pub fn flow(&self, class: &str) -> ClassFlow {
        self.flows.get(class).copied().unwrap_or_default()
    }

    /// True for a baseline line: nothing mapped, moved or released, no brk growth.
    pub fn is_zero(&self) -> bool {
        self.brk_growth == 0
            && self
                .flows
                .values()
                .all(|flow| *flow == ClassFlow::default())
    }
}

/// Reads every line of a ledger file, panicking with the path and line on any error: this is a
/// test helper, and a malformed ledger is a broken fixture.
pub fn read_ledger(path: impl AsRef<Path>) -> Vec<LedgerLine> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading ledger {}: {e}", path.display()));
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(n, line)| {
            serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("ledger {} line {}: {e}: {line}", path.display(), n + 1))
        })
        .collect()
}
