//! leaktrace: which process, and which kind of memory in it, keeps growing.
//!
//! The pipeline, in the order data flows: [`target`] (launch or attach) -> [`kernel`] (eBPF
//! programs and their maps) -> [`sampler`] (/proc) and [`roles`] -> [`processes`] (what is known
//! of each process) -> [`session`] (follow the tree until the trace ends) -> [`trace`] (the JSON
//! document) -> [`report`] (the terminal view) -> [`cli`]. [`doctor`] checks the machine.

pub mod analysis;
pub mod browser;
pub mod cli;
pub mod compact_map;
pub mod diagnostics;
pub mod diff;
pub mod doctor;
pub mod html;
pub mod kernel;
pub mod markers;
pub mod metrics;
pub mod processes;
pub mod progress;
pub mod regions;
pub mod report;
pub mod roles;
pub mod sampler;
pub mod session;
pub mod spill;
pub mod target;
pub mod timeline;
pub mod trace;
pub mod trace_events;
