//! A cycle of the worker's loop as the document holds it: its phases, the growth of each role
//! over them, and what a compacted cycle keeps.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tracer_common::ClassFlow;

use super::compact_map::CompactMap;
use crate::collect::{browser::BrowserView, processes::RoleTotals, roles::Role};

/// One cycle of the worker's loop (or the part of it the trace saw, when `cut`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Cycle {
    /// 1-based.
    pub index: u32,
    pub start_s: f64,
    pub end_s: f64,
    /// The trace ended before this cycle did.
    pub cut: bool,
    /// Among the first `--warmup` cycles.
    pub warmup: bool,
    /// Its end snapshot saw the tree tear down (the worker or its browser exited between the
    /// marker and the reading): kept, and left out of every fit.
    pub teardown: bool,
    /// Why, in plain words.
    pub teardown_reason: Option<String>,
    pub phases: Vec<Phase>,
    /// The live processes of each role at the end of the cycle.
    pub by_role: CompactMap<Role, RoleTotals>,
    /// What changed over the cycle, per role.
    pub growth: CompactMap<Role, Growth>,
    /// The worker's own figures sent with its markers (`key=value`), the last value per key.
    pub worker: CompactMap<String, f64>,
    /// What the browser held at the end of the cycle (DevTools), when leaktrace could read it.
    pub browser: Option<Box<BrowserView>>,
    /// An older cycle kept in compact form (see [`Cycle::compact`]): its `growth` and its
    /// phases' are left empty, and `tree` holds their sum over the roles.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub compacted: bool,
    /// A compacted cycle's change over the whole tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeChange>,
    /// Which of the trace's `segments` (instances of a followed worker) it belongs to: 0, the
    /// first, is left out of the JSON.
    #[serde(skip_serializing_if = "is_zero")]
    pub segment: u32,
}

/// One instance of a followed worker: from the moment leaktrace attached to it to its exit.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Segment {
    pub root_pid: u32,
    pub command: Vec<String>,
    /// Seconds since the trace started.
    pub start_s: f64,
    /// When the worker exited, if it did before the trace ended.
    pub end_s: Option<f64>,
    /// The index of the first cycle that began in it (the next cycle's, while it has none).
    pub first_cycle: u32,
}

impl Cycle {
    /// Ended at the worker's own marker: not cut by the trace's end or the worker's exit.
    pub fn is_complete(&self) -> bool {
        !self.cut
    }

    /// A whole cycle the fits can use: complete, and not measured on a tree tearing down.
    pub fn is_measured(&self) -> bool {
        self.is_complete() && !self.teardown
    }

    /// What changed over the cycle in the whole tree.
    pub fn tree(&self) -> TreeChange {
        self.tree.unwrap_or_else(|| TreeChange::of(&self.growth))
    }

    /// Keeps what the analysis reads of every cycle (its figures per role at the end, the
    /// worker's figures, the browser's counts and JS heap per site, the tree's change over it
    /// and over each phase) and drops the rest: per-role and per-class growth, the browser's
    /// process list and URLs. Long traces keep their recent cycles in full and the older ones
    /// like this, so memory and the JSON grow by a small record per cycle.
    pub fn compact(&mut self) {
        if self.compacted {
            return;
        }
        self.tree = Some(self.tree());
        self.growth = CompactMap::new();
        for phase in &mut self.phases {
            phase.tree = Some(phase.tree());
            phase.growth = CompactMap::new();
        }
        self.phases.shrink_to_fit();
        if let Some(view) = &mut self.browser {
            view.compact();
        }
        self.compacted = true;
    }
}

/// The change of the whole tree (every role summed) over a cycle or a phase: what the reports
/// and the analysis read of it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TreeChange {
    pub pss: i64,
    /// The PSS the processes own (see `RoleTotals::owned`).
    pub owned: i64,
    /// Resident anonymous memory, from the kernel's counters.
    pub anon: i64,
}

impl TreeChange {
    pub fn of(growth: &CompactMap<Role, Growth>) -> TreeChange {
        growth
            .values()
            .fold(TreeChange::default(), |sum, g| TreeChange {
                pss: sum.pss + g.pss,
                owned: sum.owned + g.owned(),
                anon: sum.anon + g.resident.anon,
            })
    }
}

/// A phase of a cycle: from its marker to the next phase or the end of the cycle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Phase {
    pub name: String,
    pub start_s: f64,
    pub end_s: f64,
    pub growth: CompactMap<Role, Growth>,
    /// Its end snapshot saw the tree tear down: left out of the phase figures.
    pub teardown: bool,
    /// In a compacted cycle, the phase's change over the whole tree (`growth` is empty).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tree: Option<TreeChange>,
}

impl Phase {
    /// What changed over the phase in the whole tree.
    pub fn tree(&self) -> TreeChange {
        self.tree.unwrap_or_else(|| TreeChange::of(&self.growth))
    }
}

/// The change of one role's figures between two boundaries: exact address-space flows per
/// region class, and the change of resident memory (to the page) and PSS.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Growth {
    pub address_space: CompactMap<String, ClassFlow>,
    pub brk_growth: i64,
    pub resident: ResidentChange,
    pub pss: i64,
    pub pss_anon: i64,
    pub pss_shmem: i64,
    pub pss_file: i64,
}

impl Growth {
    /// The change of the PSS the processes own (see `RoleTotals::owned`).
    pub fn owned(&self) -> i64 {
        self.pss_anon + self.pss_shmem
    }

    /// Adds the change over a following span (or another set of processes).
    pub fn add(&mut self, other: &Growth) {
        for (class, flow) in &other.address_space {
            self.address_space.get_or_default(class.clone()).add(flow);
        }
        self.brk_growth += other.brk_growth;
        self.resident.anon += other.resident.anon;
        self.resident.file += other.resident.file;
        self.resident.shmem += other.resident.shmem;
        self.resident.swap += other.resident.swap;
        self.pss += other.pss;
        self.pss_anon += other.pss_anon;
        self.pss_shmem += other.pss_shmem;
        self.pss_file += other.pss_file;
    }
}

/// What compacted cycles no longer hold one by one (see [`Cycle::compact`]), summed over them:
/// their growth per role and per phase, with the address-space flows per class.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CompactedCycles {
    /// How many cycles were compacted: the first `count` of `cycles`.
    pub count: u32,
    pub growth: CompactMap<Role, Growth>,
    /// Per phase name.
    pub phases: BTreeMap<String, CompactMap<Role, Growth>>,
}

impl CompactedCycles {
    /// Compacts `cycle`, adding the detail it drops to the sums.
    pub fn take(&mut self, cycle: &mut Cycle) {
        if cycle.compacted {
            return;
        }
        add_growth(&mut self.growth, &cycle.growth);
        for phase in &cycle.phases {
            let sums = self.phases.entry(phase.name.clone()).or_default();
            add_growth(sums, &phase.growth);
        }
        cycle.compact();
        self.count += 1;
    }
}

fn add_growth(sums: &mut CompactMap<Role, Growth>, growth: &CompactMap<Role, Growth>) {
    for (role, g) in growth {
        sums.get_or_default(role.clone()).add(g);
    }
}

/// A change of resident memory, in bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ResidentChange {
    pub anon: i64,
    pub file: i64,
    pub shmem: i64,
    pub swap: i64,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
