//! Shared code for leaktrace's end-to-end fixtures and the integration tests that check them.
//!
//! The fixture binaries (`ledger`, `ledger_exec`) perform a scripted set of memory syscalls and
//! append, per process, one JSON line saying exactly what each did to every region class. The
//! integration tests run them twice under the tracer, once with `--baseline` (same process tree,
//! no ledger syscalls), and compare the difference of the tracer's counters with those lines.
//!
//! - [`model`]: the serde view of a ledger line, and [`read_ledger`], for the tests.
//! - [`record`]: the fixture side: region classes, the per-process [`Flows`] accumulator and the
//!   allocation-free JSON line writer.
//! - [`sys`]: thin, allocation-free syscall wrappers used by the fixtures.
//! - [`args`]: allocation-free command-line parsing for the fixtures.
//! - [`proc`]: independent readings of /proc (descendants, smaps_rollup) to check against.

pub mod args;
pub mod model;
pub mod proc;
pub mod record;
pub mod sys;

pub use model::{ClassFlow, LedgerLine, read_ledger};
pub use record::{Class, Flows};

/// The value after `name` in a fixture's arguments (`--cycles 4` -> "4"). For the fixtures that
/// may allocate freely; `ledger` parses its arguments without allocating (`args`).
pub fn arg_value(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}
