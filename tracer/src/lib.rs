//! leaktrace: which process, and which kind of memory in it, keeps growing.
//!
//! The folders are the pipeline's stages, in the order data flows; each imports only from the
//! stages before it (see ARCHITECTURE.md):
//!
//! - [`collect`]: what is read of the traced tree: the kernel's programs and counters, /proc,
//!   the browser over DevTools, the worker's markers.
//! - [`trace`]: the trace document those readings become: cycles and phases cut at the
//!   markers, and the JSON written with `-o`.
//! - [`analysis`]: fits, answers and the verdict, from a trace.
//! - [`render`]: what people read: the text and Markdown report, HTML, diff, Trace Event
//!   Format, the progress line and the metrics endpoint.
//! - [`session`]: drives the stages while a trace runs; [`cli`] parses the command line,
//!   [`doctor`] checks the machine, [`diagnostics`] writes warnings and notes, [`units`]
//!   formats sizes and durations for every stage.

pub mod analysis;
pub mod cli;
pub mod collect;
pub mod diagnostics;
pub mod doctor;
#[cfg(test)]
mod layers;
pub mod render;
pub mod session;
pub mod trace;
pub mod units;
