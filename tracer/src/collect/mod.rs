//! Collecting: what is read of the traced tree while it runs. Nothing here knows of cycles or
//! of the trace document; each collector hands on readings of its own types.
//!
//! [`target`] launches or attaches; [`kernel`] loads the eBPF programs and reads their maps;
//! [`sampler`] reads /proc; [`roles`] says what each process is; [`processes`] keeps what is
//! known of each process; [`regions`] reads which mapping grows; [`browser`] talks DevTools;
//! [`markers`] turns the worker's log lines and socket messages into boundaries.

pub mod browser;
pub mod kernel;
pub mod markers;
pub mod processes;
pub mod regions;
pub mod roles;
pub mod sampler;
pub mod target;
