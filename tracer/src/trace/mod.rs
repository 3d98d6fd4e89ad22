//! The trace document and its parts: [`document`] (the JSON written with `-o`, schema
//! `leaktrace/1`, and its files), [`cycle`] (a cycle, its phases and growth), [`timeline`]
//! (cycles cut at the markers while a trace runs), [`spill`] (a long trace's older cycles on
//! disk), [`digest`] (the fixed-size record of every cycle the fits read), [`findings`] and
//! [`series`] (the analysis section's types), [`compact_map`].
//!
//! Its keys are a contract others script against: add, never rename.

pub mod compact_map;
pub mod cycle;
pub mod digest;
pub mod document;
pub mod findings;
pub mod series;
pub mod spill;
pub mod timeline;

pub use tracer_common::ClassFlow;

pub use self::{
    cycle::{CompactedCycles, Cycle, Growth, Phase, ResidentChange, Segment, TreeChange},
    document::*,
    findings::Analysis,
};
pub use crate::collect::{
    browser::{BrowserSummary, BrowserView, MemoryDump},
    processes::{Process, ResidentBytes, RoleTotals, TreeSample},
    roles::Role,
    sampler::{ProcSample, RollupCost},
};
